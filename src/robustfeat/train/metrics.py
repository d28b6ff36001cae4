"""What a run logs while it trains: running sums of every scalar the method returns (kept on
the device, checkpointed mid-epoch) and the log they are written to (metrics.jsonl, and TensorBoard
scalars through ``scalar_log``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import io
from ..errors import OutputError
from ..scalar_log import ScalarLog


class RunningMetrics:
    """Sums of every scalar the method returns, kept as tensors (no per-step sync)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.skipped = 0
        self.correct = 0.0
        self.seen = 0

    def add(self, out: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        for key, value in out.items():
            if key == "logits" or not isinstance(value, torch.Tensor) or value.numel() != 1:
                continue
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        logits = out.get("logits")
        if logits is not None and logits.shape[0] == y.shape[0] and y.ndim == 1:
            self.correct += (logits.detach().argmax(1) == y).sum()
            self.seen += y.shape[0]
        self.count += 1

    def summary(self) -> dict[str, float]:
        out = {k: (v / max(self.count, 1)).item() for k, v in self.sums.items()}
        if self.seen:
            out["train_acc"] = float(self.correct) / self.seen
        if self.skipped:
            out["skipped_batches"] = self.skipped
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-able sums (float32 values are exact as Python floats), for mid-epoch checkpoints."""
        return {
            "sums": {k: v.item() for k, v in self.sums.items()},
            "count": self.count,
            "skipped": self.skipped,
            "correct": float(self.correct),
            "seen": self.seen,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> RunningMetrics:
        metrics = cls()
        metrics.sums = {
            k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in state["sums"].items()
        }
        metrics.count, metrics.skipped = state["count"], state["skipped"]
        metrics.correct, metrics.seen = state["correct"], state["seen"]
        return metrics


class MetricsLog:
    """metrics.jsonl, and the same records as TensorBoard scalars (``scalar_log``)."""

    def __init__(self, path: Path, enabled: bool, scalars: ScalarLog | None = None) -> None:
        self.path = path
        self.enabled = enabled
        self.scalars = scalars

    def close(self) -> None:
        if self.scalars is not None:
            self.scalars.close()

    def write(self, record: dict[str, Any]) -> None:
        if self.scalars is not None:
            self.scalars.write(record)
        if self.enabled:
            try:
                with self.path.open("a") as f:
                    f.write(io.dumps(record) + "\n")
            except OSError as err:
                raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from err
