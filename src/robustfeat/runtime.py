"""Runtime helpers every layer uses (training, evaluation, attacks, methods, interpretation):
the device a name asks for and the precision it computes in, a model's train / eval mode set and
restored around a piece of work, and Gaussian noise shaped like a tensor.

A neutral module: it imports nothing of the package but its errors, so anything may import it
without a cycle (interpret -> adversarial -> methods -> interpret was one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .errors import ConfigError


@contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Put ``model`` in ``"eval"`` or ``"train"`` mode (``"keep"``: unchanged) and restore every
    submodule's own mode afterwards, even on error."""
    if mode not in ("eval", "train", "keep"):
        raise ConfigError(f"model mode must be eval, train or keep, got {mode!r}")
    saved = [(m, m.training) for m in model.modules()]
    if mode != "keep":
        model.train(mode == "train")
    try:
        yield model
    finally:
        for module, training in saved:
            module.training = training


def gaussian_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """N(0, 1) noise of ``t``'s shape, sampled contiguous: ``torch.randn_like`` keeps a
    channels_last layout and then samples element by element, about 10x slower on CPU (it was
    9% of a feature-noise training step)."""
    return torch.randn(t.shape, dtype=dtype or t.dtype, device=t.device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"bad device {name!r}: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} asked for, but CUDA is not available here; use cpu or auto"
        )
    return device


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). Elsewhere oneDNN emulates
    it: a bf16 ResNet-20 step on an AVX2-only CPU took 10.5x an fp32 one, one thread
    (benchmarks/results/step_time_precision_cpu.json)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence getattr
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run computes in: ``auto`` is bf16 where the device computes it natively
    (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX), fp16 ``amp`` on an older GPU,
    fp32 elsewhere; any other setting stands as written."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "amp"
    return "bf16" if device.type == "cpu" and native_cpu_bf16() else "fp32"
