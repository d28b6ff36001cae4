"""How a training step computes on its device: the autocast dtype of a ``precision`` setting
(``auto`` is resolved by ``runtime.resolve_precision``), a warning where a CPU only emulates bf16,
and, with ``deterministic: true``, deterministic kernels for the run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from ..runtime import native_cpu_bf16


def emulated_bf16_warning(precision: str, device: torch.device) -> str | None:
    """One line for a run that asked for half precision on a CPU that only emulates bf16."""
    if device.type != "cpu" or precision not in ("bf16", "amp") or native_cpu_bf16():
        return None
    return (
        f"precision {precision} on this CPU ({torch.backends.cpu.get_cpu_capability()}, no "
        "AVX512-BF16 or AMX) runs emulated bf16, several times slower than fp32: set precision "
        "auto or fp32"
    )


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" or device.type == "cpu" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``deterministic: true``: deterministic kernels only while training (cuDNN without
    autotuning, PyTorch's deterministic implementations, a warning for an op that has none), so
    that a CUDA run and a resume of it repeat bit for bit; the previous settings come back after.
    cuBLAS reads CUBLAS_WORKSPACE_CONFIG at its first use: set here when unset, it takes effect
    in a process that has not used cuBLAS yet (a fresh ``robustfeat train``)."""
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark = saved[2], saved[3]
