"""Bounded file reads: every file the package reads goes through ``read_bytes`` or ``read_text``
(tests/test_security.py scans for the rest). Kept apart from ``robustfeat.io`` because that module
imports torch, and a config or a kernel file must be readable without it."""

from __future__ import annotations

from pathlib import Path

MAX_JSON_BYTES = 64 * 2**20  # one JSON record: results, state, optimizer state, a cache sidecar
MAX_LOG_BYTES = 256 * 2**20  # a run's metrics.jsonl (a few MiB for a long run)


def read_bytes(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path``, refused (``ValueError``) over ``max_bytes``: the size is checked
    before reading and the read itself takes no more (a file that grows meanwhile, or one whose
    size the kernel reports as 0, such as /proc files)."""
    path = Path(path)
    size = path.stat().st_size
    if size <= max_bytes:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
        size = len(data)
    if size > max_bytes:
        raise ValueError(f"{path} is {size} bytes, over the {max_bytes}-byte limit; refused")
    return data


def read_text(path: Path, max_bytes: int) -> str:
    """``read_bytes`` as UTF-8 text (not UTF-8: ``UnicodeDecodeError``, a ``ValueError``)."""
    return read_bytes(path, max_bytes).decode()
