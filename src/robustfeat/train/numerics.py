"""How a training step computes on its device: the autocast dtype of a ``precision`` setting
(``auto`` is resolved by ``runtime.resolve_precision``), a warning where a CPU only emulates bf16,
the record of the precisions a resumed run computed in, and, with ``deterministic: true``,
deterministic kernels for the run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

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


def precision_segments(
    recorded: list[dict[str, Any]] | None, step: int, precision: str
) -> list[dict[str, Any]]:
    """The precisions a run has computed in, ``[{"from_step": s, "precision": p}, ...]``, once it
    goes on at ``step`` in ``precision``. ``auto`` resolves per machine, so a run resumed on
    another one (a CPU with or without native bf16, a GPU without bf16) can change precision
    mid-run; it goes on in what this machine computes fast and the record keeps both. A
    checkpoint written before the record existed is taken to have computed in ``precision``."""
    segments = list(recorded or [{"from_step": 0, "precision": precision}])
    if segments[-1]["precision"] != precision:
        segments.append({"from_step": step, "precision": precision})
    return segments


def recorded_precision(segments: list[dict[str, Any]]) -> str:
    """results.json's ``run.precision``: the one precision of the run, or ``mixed``."""
    kinds = {segment["precision"] for segment in segments}
    return kinds.pop() if len(kinds) == 1 else "mixed"


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
