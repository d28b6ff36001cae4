"""The optimizer (SGD or AdamW over the method's parameter groups) and the learning-rate
schedule (constant, cosine, multistep, one-cycle, with linear warmup) applied at every step."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import TrainConfig
from ..methods import Method


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` of ``total``."""
    t = step + 1
    warm = cfg.warmup * total
    if cfg.schedule == "onecycle":  # linear up to the peak, linear down to zero
        return float(np.interp(t, [0, max(warm, 1e-9), total], [0.0, 1.0, 0.0]))
    ramp = min(1.0, t / warm) if warm > 0 else 1.0
    if cfg.schedule == "cosine":
        progress = max(0.0, (t - warm) / max(total - warm, 1))
        return ramp * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.schedule == "multistep":
        return ramp * cfg.gamma ** sum(t > m * total for m in cfg.milestones)
    return ramp  # constant


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Each group's lr = its base lr times the schedule's ``factor``; a group with ``fixed_lr``
    (e.g. L-ALFA's eta, constant in the official code) keeps its base lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * (1.0 if group.get("fixed_lr") else factor)


def build_optimizer(method: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = method.param_groups({"lr": cfg.lr, "weight_decay": cfg.weight_decay})
    for group in groups:
        group["base_lr"] = group["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=cfg.lr)
