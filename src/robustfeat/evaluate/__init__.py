"""Evaluation of a trained method or model, into ``robustfeat.results/1`` results dicts.

``suite.py`` runs an evaluation suite (``evaluate``); ``accuracy.py`` holds the logits and
accuracies every part shares; ``records.py`` the results schema, the trainer's train-fit record
and the console summary; ``multilabel.py`` the clean metrics of multi-hot labels (mosaics).
"""

from .accuracy import as_eval_model, clean_accuracy, fraction, predict, topk_correct
from .records import SCHEMA, keep_training_record, print_summary, train_fit
from .suite import Progress, evaluate, run_attack

__all__ = [
    "SCHEMA",
    "Progress",
    "as_eval_model",
    "clean_accuracy",
    "evaluate",
    "fraction",
    "keep_training_record",
    "predict",
    "print_summary",
    "run_attack",
    "topk_correct",
    "train_fit",
]
