"""The results dict (``robustfeat.results/1``): its schema, the training facts the trainer
records beside the evaluation (``train_fit``, kept on re-evaluation by ``keep_training_record``),
and its console summary. Results schema (keys beyond these may be added)::

    {"schema": "robustfeat.results/1", "run": {...}, "suite": "standard",
     "clean": {"accuracy", "n", "seconds", "topk": {"1", "2", "3"}, "per_class": {...}},
     "attacks": [{"label", "name", "kind", "norm", "eps", "steps", "step_size", "loss",
                  "accuracy", "n", "seconds", "topk", "per_class", "stages"}],
     "worst_case": {"accuracy", "n", "attack", ...},
     "adaptive": {"losses": [...], "table": [{"template", "loss", "accuracy"}]},
     "checks": {"eps_sweep": [...], "gradients": {...}, "outputs": {...}},
     "corruptions": {"source", "mce", "per_corruption": {name: [5 errors]}, ...},
     "shift": {name: {"accuracy", "n", "drop"}},
     "train": {"accuracy", "n", "seconds", + with label noise: "accuracy_true_labels",
               "mislabelled", "memorised"}   (written by the trainer: ``train_fit``),
     "flags": [{"name", "detail", "values"}], "seconds": total}
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from ..data.base import ImageDataset
from .accuracy import fraction, predict

SCHEMA = "robustfeat.results/1"

# what the trainer records in results.json beside the evaluation: re-evaluating keeps it
TRAINING_KEYS = ("train", "best_epoch")
RUN_TRAINING_KEYS = ("train_seconds",)


def keep_training_record(previous: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """``evaluation`` (a new results dict) with the training facts of the run's ``previous``
    results kept: its train fit, best-epoch selection and training time. The evaluation's own
    sections (clean, attacks, corruptions, ...) replace the old ones."""
    merged = {**evaluation}
    for key in TRAINING_KEYS:
        if key in previous and key not in merged:
            merged[key] = previous[key]
    old_run = previous.get("run") if isinstance(previous.get("run"), dict) else {}
    kept = {k: old_run[k] for k in RUN_TRAINING_KEYS if k in old_run}
    merged["run"] = {**kept, **(evaluation.get("run") or {})}
    return merged


def train_fit(model: nn.Module, train: ImageDataset, batch_size: int = 500) -> dict[str, Any]:
    """How well the model fits its training set: accuracy in eval mode on the un-augmented
    training images against the labels it was trained on (``accuracy``).

    With injected label noise (``train.clean_labels``) also: ``accuracy_true_labels`` (against
    the clean labels), ``mislabelled`` (the fraction of wrong training labels) and ``memorised``
    (of the mislabelled images, the fraction predicted as their wrong label). A network that has
    memorised the noise has ``accuracy`` above ``1 - mislabelled``.
    """
    start = time.perf_counter()
    predicted = predict(model, train, batch_size).argmax(1)
    fit: dict[str, Any] = {"accuracy": fraction(predicted == train.labels), "n": len(train)}
    clean = train.clean_labels
    if clean is not None:
        wrong = train.labels != clean
        fit["accuracy_true_labels"] = fraction(predicted == clean)
        fit["mislabelled"] = fraction(wrong)
        fit["memorised"] = fraction(predicted[wrong] == train.labels[wrong])
    fit["seconds"] = time.perf_counter() - start
    return fit


def print_summary(results: dict[str, Any]) -> None:
    """A console table of a results dict: clean, attacks, worst case, corruptions, flags."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"robustfeat eval: suite {results['suite']}")
    for column in ("part", "accuracy", "n", "seconds"):
        table.add_column(column, justify="left" if column == "part" else "right")
    clean = results["clean"]
    table.add_row("clean", f"{clean['accuracy']:.4f}", str(clean["n"]), f"{clean['seconds']:.1f}")
    for a in results["attacks"]:
        table.add_row(a["label"], f"{a['accuracy']:.4f}", str(a["n"]), f"{a['seconds']:.1f}")
    wc = results["worst_case"]
    table.add_row("[bold]worst case", f"[bold]{wc['accuracy']:.4f}", str(wc["n"]), "")
    corruptions = results.get("corruptions")
    if corruptions:
        table.add_row(
            f"corruptions mCE ({corruptions['source']})",
            f"{corruptions['mce']:.4f} err",
            str(corruptions["n"]),
            f"{corruptions['seconds']:.1f}",
        )
    for name, entry in results.get("shift", {}).items():
        table.add_row(f"shift: {name}", f"{entry['accuracy']:.4f}", str(entry["n"]), "")
    console = Console()
    console.print(table)
    for f in results["flags"]:
        console.print(f"[yellow]flag[/] {f['name']}: {f['detail']}")
