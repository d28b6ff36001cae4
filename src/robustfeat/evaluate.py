"""The evaluation suite's entry point and results schema (``robustfeat.results/1``).

Every model is evaluated through ``Method.eval_model()`` (x in [0,1] -> logits, eval mode);
accuracies are fractions in [0, 1] and eps is in pixel units of [0, 1] images.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from .adversarial.pgd import model_mode
from .data.base import ImageDataset
from .data.loader import iterate_batches
from .methods._base import Method

SCHEMA = "robustfeat.results/1"


def as_eval_model(method_or_model: Method | nn.Module) -> nn.Module:
    return method_or_model.eval_model() if isinstance(method_or_model, Method) else method_or_model


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(model: nn.Module, dataset: ImageDataset, batch_size: int = 500) -> torch.Tensor:
    """Logits (float32, CPU) of the whole dataset, in order, with the model in eval mode."""
    device = model_device(model)
    outs = []
    with model_mode(model, "eval"):
        for x, _ in iterate_batches(dataset, batch_size, device):
            outs.append(model(x).float().cpu())
    return torch.cat(outs)


def clean_accuracy(model: nn.Module, dataset: ImageDataset, batch_size: int = 500) -> float:
    logits = predict(model, dataset, batch_size)
    return (logits.argmax(1) == dataset.labels).float().mean().item()


def evaluate(
    method_or_model: Method | nn.Module,
    data: ImageDataset,
    suite: str = "clean",
    n: int | None = None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate on ``data`` (the test split) and return the results dict (see SCHEMA)."""
    model = as_eval_model(method_or_model)
    start = time.perf_counter()
    accuracy = clean_accuracy(model, data)
    return {
        "schema": SCHEMA,
        "run": run or {},
        "suite": suite,
        "clean": {"accuracy": accuracy, "n": len(data), "seconds": time.perf_counter() - start},
        "attacks": [],
        "worst_case": {"accuracy": accuracy, "attack": "clean"},
        "flags": [],
    }
