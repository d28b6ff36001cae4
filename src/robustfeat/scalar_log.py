"""TensorBoard scalars beside a run's metrics.jsonl (optional extra ``[tensorboard]``).

``torch.utils.tensorboard.SummaryWriter`` writes the event files; this module only turns our
log records into scalars (every number of a record, nested ones as ``key/sub``, at the
record's step) and does nothing when tensorboard is not installed. A resumed run purges the
events after its checkpoint's step, as metrics.jsonl is truncated there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of a log record by tag (``eta/stage3.2``); ``step`` is the x-axis."""
    out: dict[str, float] = {}
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, f"{tag}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            out[tag] = float(value)
    return out


class ScalarLog:
    """Writes records to ``<run>/tensorboard`` when enabled and tensorboard is installed."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.writer = None
        if enabled and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(run_dir / TENSORBOARD_DIR), purge_step=resume_step, flush_secs=30
            )

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is None or "step" not in record:
            return
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, int(record["step"]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
