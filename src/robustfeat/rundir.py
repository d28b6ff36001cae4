"""The run directory: what a training run writes and the rules that keep it ours.

Layout: config.yaml, metrics.jsonl, state.json (points at the latest complete checkpoint
directory under checkpoints/), weights.safetensors (final), results.json (evaluation), and with
``select_best`` best.safetensors (the weights of the best epoch on the validation split).

Ownership (``RunDir.prepare``): a marker file whose ``flock`` is the run's lock, no symlinked
entry ever followed, a finished or checkpointed run only continued with ``--resume``.

Faults: a checkpoint is written into ``step-N.tmp/`` and renamed when complete, then state.json
is replaced atomically, so a kill -9 at any point leaves the previous checkpoint usable; a resume
drops what the killed process left (temp files, metrics logged past the checkpoint).

Neutral below the training loop: ``runs.py`` reads checkpoints through ``RunDir`` without
importing the loop (``train/``), and the loop imports this module, never the other way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

from . import io, reads
from .config import TrainConfig, read_yaml
from .errors import CheckpointError, ConfigError, OutputError
from .faults import fault_point

if TYPE_CHECKING:
    from .methods import Method

CHECKPOINTS = "checkpoints"
RUN_MARKER = ".robustfeat-run"  # marks a run directory as ours; its flock is the run's lock
RUN_MARKER_TEXT = b"robustfeat run directory: written and locked by robustfeat only\n"
# What a run directory holds (symlinks among these are refused: see RunDir.check_ours).
RUN_ENTRIES = (
    RUN_MARKER,
    "config.yaml",
    "provenance.json",
    "metrics.jsonl",
    "state.json",
    "weights.safetensors",
    "best.safetensors",
    "results.json",
    CHECKPOINTS,
)
MIN_FREE_BYTES = 50 * 2**20
MAX_STATE_BYTES = 2**20  # state.json: step, pointer, timing and the selection scores
# Keys that may change when a run is resumed (how it runs or is reported, not what it trains).
RESUMABLE_KEYS = frozenset(
    {"device", "loader", "compile", "progress", "log_every", "checkpoint_every", "nan_policy"}
    | {"eval_suite", "eval_n", "eval_n_aa", "deterministic"}
)


@dataclass
class RunDir:
    root: Path
    lock_fd: int | None = field(default=None, repr=False, compare=False)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def weights(self) -> Path:
        return self.root / "weights.safetensors"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def best_weights(self) -> Path:
        return self.root / "best.safetensors"

    def checkpoint(self, step: int) -> Path:
        return self.root / CHECKPOINTS / f"step-{step:09d}"

    def prepare(self, resume: bool = False) -> None:
        """Claim the directory for this process, before anything is written into it.

        The run directory is ours alone: an existing one must carry our marker file (or be
        empty), none of the names we write may be a symlink (nothing is ever followed out of
        the directory, or deleted through a link), a finished or checkpointed run is only
        continued (``resume``), never started over, and one process at a time holds the lock
        (an exclusive ``flock`` on the marker, released when the process ends). Then create
        it and fail early, clearly, if it cannot be written or is (nearly) full; on failure,
        directories this call created are removed again (no partial output)."""
        if self.root.is_dir():
            self.check_ours()
        missing = []  # the directory and the ancestors mkdir would create, deepest first
        existing = self.root
        while not existing.exists() and existing.parent != existing:
            missing.append(existing)
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        if free < MIN_FREE_BYTES:
            raise OutputError(
                f"output directory {self.root} has only {free / 2**20:.1f} MiB free; "
                f"need >= {MIN_FREE_BYTES // 2**20} MiB"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test.tmp"
            probe.write_bytes(b"0" * 4096)
            probe.unlink()
            self.lock()
        except OSError as err:
            for directory in missing:
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise OutputError(
                f"output directory {self.root} is not writable: {err.strerror or err}"
            ) from err
        if not resume:
            try:
                self.check_fresh()
            except OutputError:
                self.release()
                raise

    def check_ours(self) -> None:
        """An existing directory is a run of ours (marker) or empty, with no symlinked entry."""
        entries = [self.root / name for name in RUN_ENTRIES]
        if (self.root / CHECKPOINTS).is_dir() and not (self.root / CHECKPOINTS).is_symlink():
            entries += sorted((self.root / CHECKPOINTS).iterdir())
        links = [path for path in entries if path.is_symlink()]
        if links:
            raise OutputError(
                f"{links[0]} is a symlink; a run directory holds only its own files (nothing "
                "outside it is written or deleted through a link): remove the link"
            )
        marker = self.root / RUN_MARKER
        if not marker.is_file() and any(self.root.iterdir()):
            raise OutputError(
                f"{self.root} exists and is not a robustfeat run directory (no {RUN_MARKER} "
                f"file): train into a new or empty --out (to adopt a run made before markers "
                f"existed, create {marker})"
            )

    def check_fresh(self) -> None:
        """A new run must not start over a run that has checkpoints, weights or results."""
        found = [
            path.name
            for path in (self.state, self.weights, self.results, self.root / CHECKPOINTS)
            if path.exists()
        ]
        if found:
            raise OutputError(
                f"{self.root} already holds a run ({', '.join(found)}): continue it with "
                "--resume, or train into a new --out"
            )

    def lock(self, create: bool = True, instead: str = "train into another --out") -> None:
        """Hold an exclusive lock on the marker (never opened through a symlink), creating it
        unless ``create`` is false (then a directory without one is left unlocked: a run made
        before markers existed). ``instead``: what the error suggests when another process
        holds the lock."""
        flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | (os.O_CREAT if create else 0)
        marker = self.root / RUN_MARKER
        try:
            fd = os.open(marker, flags, 0o644)
        except (FileNotFoundError, NotADirectoryError):
            if create:
                raise
            return
        except OSError as err:  # e.g. a symlinked marker (O_NOFOLLOW)
            raise OutputError(f"cannot lock {marker}: {err.strerror or err}") from err
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"{self.root} is being written by another robustfeat process (it holds the "
                f"lock on {RUN_MARKER}); wait for it to finish or {instead}"
            ) from None
        if os.fstat(fd).st_size == 0:
            os.write(fd, RUN_MARKER_TEXT)
        self.lock_fd = fd

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def checkpoint_state(self) -> tuple[dict[str, Any], Path]:
        """state.json and the checkpoint directory it points at, both checked."""
        state = io.read_json(self.state)
        pointer = state.get("checkpoint") if isinstance(state, dict) else None
        if not (
            isinstance(pointer, str)
            and re.fullmatch(rf"{CHECKPOINTS}/step-\d+", pointer)
            and isinstance(state.get("step"), int)
        ):
            raise CheckpointError(
                f"{self.state} is not a robustfeat checkpoint pointer "
                f"(expected step and checkpoint: {CHECKPOINTS}/step-N), got {state!r}"
            )
        directory = self.root / pointer
        if not directory.is_dir():
            raise CheckpointError(
                f"{self.state} points at {directory}, which does not exist; to start this run "
                f"over, delete {self.state.name} and {CHECKPOINTS}/ (or train into a new --out)"
            )
        return state, directory

    def progress(self) -> tuple[int, int] | None:
        """(step, total steps) of a run's last checkpoint (step == total: trained, its final
        evaluation not yet written), or None: no checkpoint, or a state.json that is not a
        plain, small, valid record (a resume would then say what is wrong)."""
        state = self.state
        if state.is_symlink() or not state.is_file():
            return None
        try:
            record = io.read_json(state, MAX_STATE_BYTES)
        except CheckpointError:
            return None
        step = record.get("step") if isinstance(record, dict) else None
        total = record.get("total_steps") if isinstance(record, dict) else None
        if isinstance(step, int) and isinstance(total, int) and 0 < step <= total:
            return step, total
        return None

    def remove_stale(self, keep: Path) -> None:
        """Drop what a killed process leaves behind: temp files of atomic writes, unfinished
        (``step-N.tmp/``) and superseded checkpoints; only ``keep`` (state.json's) is read."""
        for tmp in self.root.glob(f".*{io.TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        for old in (self.root / CHECKPOINTS).iterdir():
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)

    def drop_checkpoints(self) -> None:
        """Delete this run's checkpoints (weights + optimizer state) once it is finished and
        evaluated; the final (and best-epoch) weights stay."""
        shutil.rmtree(self.root / CHECKPOINTS, ignore_errors=True)

    def reset(self) -> None:
        """A fresh run into this directory: forget a previous run's state, so that a later
        ``--resume`` can never continue a different run's checkpoint."""
        for path in (self.state, self.results, self.weights, self.metrics, self.best_weights):
            path.unlink(missing_ok=True)
        for tmp in self.root.glob(f".*{io.TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        shutil.rmtree(self.root / CHECKPOINTS, ignore_errors=True)

    def truncate_metrics(self, step: int) -> None:
        """Keep the complete records of steps <= ``step``: a killed process may have logged past
        its last checkpoint (the resumed run logs those steps again) or half a line."""
        if not self.metrics.is_file():
            return
        kept = []
        try:
            text = reads.read_text(self.metrics, reads.MAX_LOG_BYTES)
        except ValueError as err:
            raise CheckpointError(f"cannot resume from {self.root}: {err}") from err
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line + "\n")
        io.atomic_write_bytes(self.metrics, "".join(kept).encode())

    def check_resume_config(self, cfg: TrainConfig) -> None:
        """A resumed run must train what the checkpoint was trained with."""
        if not self.config.is_file():
            raise CheckpointError(
                f"cannot resume {self.root}: its {self.config.name} is missing, so what its "
                "checkpoint was trained with is unknown; train into a new --out"
            )
        saved = read_yaml(self.config)
        current = cfg.to_dict()
        changed = [
            f"{key} {saved[key]!r} -> {value!r}"
            for key, value in current.items()
            if key in saved and key not in RESUMABLE_KEYS and saved[key] != value
        ]
        if changed:
            raise ConfigError(
                f"cannot resume {self.root}: it was trained with other settings "
                f"({'; '.join(changed)}); resume with the same ones or train into a new --out"
            )


def save_checkpoint(
    run: RunDir, method: Method, optimizer: torch.optim.Optimizer, step: int, extra: dict[str, Any]
) -> None:
    """Write checkpoints/step-N/ completely, then point state.json at it, then drop older ones.

    A failed write (disk full) removes the unfinished directory; the previous checkpoint stays.
    """
    final = run.checkpoint(step)
    tmp = final.with_name(final.name + io.TMP_SUFFIX)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        io.save_tensors(tmp / "weights.safetensors", method.state_dict())
        fault_point("checkpoint_weights", step)
        opt_tensors, opt_rest = optimizer_state(optimizer)
        io.save_tensors(tmp / "optimizer.safetensors", opt_tensors, check_finite=False)
        io.write_json(tmp / "optimizer.json", opt_rest)
        fault_point("checkpoint_tmp", step)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fault_point("checkpoint_renamed", step)
        io.write_json(
            run.state, {"step": step, "checkpoint": final.relative_to(run.root).as_posix(), **extra}
        )
    except (OSError, OutputError, CheckpointError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise OutputError(
            f"cannot write checkpoint {final}: {reason}; earlier checkpoints are kept "
            f"({run.state.name} points at the last complete one; --resume continues from it)"
        ) from err
    fault_point("checkpoint_pointer", step)
    for old in (run.root / CHECKPOINTS).iterdir():
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def optimizer_state(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return io.optimizer_to_tensors(optimizer)


def load_checkpoint(
    run: RunDir, method: Method, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], Path]:
    """Load state.json's checkpoint into ``method`` and ``optimizer``: (state, its directory)."""
    state, ckpt = run.checkpoint_state()
    io.load_state_into(method, io.load_tensors(ckpt / "weights.safetensors"), ckpt)
    io.optimizer_from_tensors(
        optimizer,
        io.load_tensors(ckpt / "optimizer.safetensors", check_finite=False),
        io.read_json(ckpt / "optimizer.json"),
    )
    return state, ckpt
