"""A model's logits on a dataset and accuracies from logits, shared by every evaluation part and
by the trainer's validation.

Every model is evaluated through ``Method.eval_model()`` (x in [0,1] -> logits, eval mode);
accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.base import ImageDataset
from ..data.loader import iterate_batches
from ..methods._base import Method
from ..runtime import model_mode


def as_eval_model(method_or_model: Method | nn.Module) -> nn.Module:
    return method_or_model.eval_model() if isinstance(method_or_model, Method) else method_or_model


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, dataset: ImageDataset, batch_size: int = 500) -> torch.Tensor:
    """Logits (float32, CPU) of the whole dataset, in order, with the model in eval mode."""
    device = model_device(model)
    outs = []
    with model_mode(model, "eval"):
        for x, _ in iterate_batches(dataset, batch_size, device):
            outs.append(model(x).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0, 0)


def clean_accuracy(model: nn.Module, dataset: ImageDataset, batch_size: int = 500) -> float:
    logits = predict(model, dataset, batch_size)
    return fraction(logits.argmax(1) == dataset.labels)


def fraction(mask: torch.Tensor) -> float:
    """Mean of a bool vector as an exact Python float (0.0 when empty)."""
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


def topk_correct(
    logits: torch.Tensor, y: torch.Tensor, ks: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """Per-sample "label among the top-k logits" for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    return {str(k): (top[:, :k] == y[:, None]).any(1) for k in ks}


def per_class_accuracy(
    correct: torch.Tensor, y: torch.Tensor, class_names: list[str]
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for c, name in enumerate(class_names):
        mask = y == c
        out[name] = fraction(correct[mask]) if mask.any() else None
    return out
