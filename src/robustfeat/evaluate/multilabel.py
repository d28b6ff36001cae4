"""Multi-label evaluation (HNC, Sun et al. 2020, Sec. 4.2 / Table 4): mAP and per-class (C) and
overall (O) precision, recall and F1 (Zhang & Zhou 2014), for data with multi-hot labels (the
``mosaic`` datasets).

- AP of a class: the mean, over its positive samples, of the precision among the samples scored
  at least as high (non-interpolated AP, as sklearn's ``average_precision_score``); mAP averages
  the classes that have positives.
- A class is predicted when its sigmoid probability is >= 0.5 (logit >= 0). P-C / R-C are the
  means of the per-class precisions / recalls (a class never predicted has precision 0); F1-C is
  the mean of the per-class F1 scores: Table 4's F1-C values are below the harmonic mean of its
  P-C and R-C in every row (e.g. 78.9 / 67.4 -> 72.7, reported 72.3), which the mean of per-class
  F1 gives. P-O / R-O / F1-O pool the counts of all classes.
- ``accuracy`` in the results is the exact-match ratio (every class right), so the trainer's and
  the demo's ``clean.accuracy`` stay meaningful.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..data.base import ImageDataset
from ..errors import DataError
from .accuracy import as_eval_model, predict
from .records import SCHEMA


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Non-interpolated AP of one class: (N,) scores, (N,) 0/1 targets (NaN without positives)."""
    positives = targets > 0.5
    if not positives.any():
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    hits = positives[order].float()
    # ties: every sample of a tied group sees the precision at the group's last position
    sorted_scores = scores[order]
    last_of_group = torch.searchsorted(-sorted_scores, -sorted_scores, right=True) - 1
    precision_at = hits.cumsum(0) / torch.arange(1, hits.numel() + 1)
    return float((precision_at[last_of_group] * hits).sum() / hits.sum())


def mean_average_precision(
    scores: torch.Tensor, targets: torch.Tensor
) -> tuple[float, list[float]]:
    """(mAP over classes with positives, per-class AP) for (N, C) scores and 0/1 targets."""
    per_class = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    valid = [ap for ap in per_class if ap == ap]
    return (sum(valid) / len(valid) if valid else float("nan")), per_class


def precision_recall_f1(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """Per-class and overall P, R, F1 of the predictions ``logits >= 0`` (sigmoid >= 0.5)."""
    predicted = logits >= 0
    truth = targets > 0.5
    tp = (predicted & truth).sum(0).double()
    fp = (predicted & ~truth).sum(0).double()
    fn = (~predicted & truth).sum(0).double()
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(
        precision + recall > 0,
        2 * precision * recall / (precision + recall).clamp_min(1e-12),
        torch.zeros_like(tp),
    )
    op = float(tp.sum() / (tp.sum() + fp.sum()).clamp_min(1))
    orec = float(tp.sum() / (tp.sum() + fn.sum()).clamp_min(1))
    return {
        "P-C": float(precision.mean()),
        "R-C": float(recall.mean()),
        "F1-C": float(f1.mean()),
        "P-O": op,
        "R-O": orec,
        "F1-O": 2 * op * orec / (op + orec) if op + orec > 0 else 0.0,
        "per_class_precision": precision.tolist(),
        "per_class_recall": recall.tolist(),
        "per_class_f1": f1.tolist(),
    }


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """mAP, the P/R/F1 of Table 4 and the exact-match accuracy."""
    mean_ap, per_class_ap = mean_average_precision(logits.float(), targets)
    out = {"mAP": mean_ap, "per_class_ap": per_class_ap}
    out.update(precision_recall_f1(logits, targets))
    out["accuracy"] = float(((logits >= 0) == (targets > 0.5)).all(1).float().mean())
    return out


def evaluate_multilabel(
    method_or_model: nn.Module,
    data: ImageDataset,
    run: dict[str, Any] | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """The results dict (``robustfeat.results/1``, suite ``multilabel``) of clean multi-label
    metrics; no attacks (the attack suite assumes single labels)."""
    if not data.multilabel:
        raise DataError(f"{data.name!r} has single labels; use robustfeat.evaluate")
    start = time.perf_counter()
    logits = predict(as_eval_model(method_or_model), data, batch_size)
    metrics = multilabel_metrics(logits, data.labels)
    clean = {"n": len(data), "seconds": time.perf_counter() - start, **metrics}
    clean["per_class"] = {
        name: {
            "ap": metrics["per_class_ap"][c],
            "precision": metrics["per_class_precision"][c],
            "recall": metrics["per_class_recall"][c],
            "f1": metrics["per_class_f1"][c],
        }
        for c, name in enumerate(data.class_names)
    }
    for key in ("per_class_ap", "per_class_precision", "per_class_recall", "per_class_f1"):
        del clean[key]
    return {
        "schema": SCHEMA,
        "run": run or {},
        "suite": "multilabel",
        "clean": clean,
        "attacks": [],
        "worst_case": {"accuracy": clean["accuracy"], "attack": "clean"},
        "flags": [],
    }
