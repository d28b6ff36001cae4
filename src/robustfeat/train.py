"""The training loop: device, bf16/AMP, channels_last, torch.compile, checkpoints, resume, DDP.

One step is ``for out in scheme.steps(method, x, y): out["loss"].backward(); optimizer.step()``;
everything the method returns besides ``loss``/``logits`` is logged. Reproducibility: the batch
order of epoch e and the augmentation of batch i derive from (seed, e, i), and the global RNG is
re-seeded from (seed, step, rank) before each step, so a run resumed from any checkpoint takes
exactly the steps an uninterrupted run takes (bit-identical weights on CPU).

Run directory: config.yaml, metrics.jsonl, state.json (points at the latest complete checkpoint
directory under checkpoints/), weights.safetensors (final), results.json (evaluation), and with
``select_best`` best.safetensors (the weights of the best epoch on the validation split).

Best epoch (``select_best``): after every epoch the validation split is scored (clean accuracy, or
PGD-10 robust accuracy at 8/255 -- the early-stopping rule of Rice et al. 2020 that AT papers,
CIFS among them, report as "best" -- alone or with the method's adaptive attacks); a validation
split rather than the test set, so that picking the epoch does not peek at the numbers it
reports. The scores go to metrics.jsonl; when the best epoch is not the last, its weights are
evaluated with the same suite, without AutoAttack (the slowest part; CIFS's best-epoch Table B.2
has none), into ``results["best_epoch"]["evaluation"]``.

Faults: a checkpoint is written into ``step-N.tmp/`` and renamed when complete, then state.json
is replaced atomically, so a kill -9 at any point leaves the previous checkpoint usable; a resume
drops what the killed process left (temp files, metrics logged past the checkpoint) and takes
the running epoch averages from the checkpoint, so even metrics.jsonl matches an uninterrupted
run. ``fault_point`` lets the tests kill the process at each of these windows.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

from . import io
from .adversarial.schemes import Scheme, create_scheme
from .attacks.adaptive import adaptive_attacks
from .attacks.base import create_attack
from .config import TrainConfig, read_yaml
from .data import DataSplits, prepare_data
from .data.augment import create_augment
from .data.base import ImageDataset
from .data.loader import BatchLoader
from .data.transforms import Augment, default_train_augment
from .errors import CheckpointError, ConfigError, OutputError, RobustfeatError
from .evaluate import (
    Progress,
    as_eval_model,
    clean_accuracy,
    evaluate,
    fraction,
    run_attack,
    train_fit,
)
from .evaluate.multilabel import evaluate_multilabel
from .methods import Method, create_method
from .models import create_model
from .progress import progress_task
from .provenance import provenance
from .runs import data_metadata, default_shift_sets, run_info
from .runtime import resolve_device
from .scalar_log import ScalarLog

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
FAULT_ENV = "ROBUSTFEAT_FAULT"
# Keys that may change when a run is resumed (how it runs or is reported, not what it trains).
RESUMABLE_KEYS = frozenset(
    {"device", "loader", "compile", "progress", "log_every", "checkpoint_every", "nan_policy"}
    | {"eval_suite", "eval_n", "eval_n_aa", "deterministic"}
)


class TrainingDiverged(RobustfeatError):
    """A loss became NaN/inf; the last good checkpoint is kept. ``step`` (1-based), the loss
    parts at that step (``parts``) and the names of the non-finite ones (``nonfinite``) say
    where and which."""

    def __init__(
        self, message: str, step: int, parts: dict[str, float], nonfinite: list[str]
    ) -> None:
        super().__init__(message)
        self.step, self.parts, self.nonfinite = step, parts, nonfinite


def fault_point(where: str, step: int | None = None, rank: int = 0) -> None:
    """Fault injection for the reliability tests.

    With ``ROBUSTFEAT_FAULT=<where>[:<step>][@<rank>]`` set, the process kills itself
    (SIGKILL: no cleanup, no finally) on reaching ``where`` (at ``step`` when given; on rank 0
    unless ``@rank``). Unset, this is one environment lookup.

    Points: ``step`` (forward of step N done, before its backward and optimizer step),
    ``checkpoint_weights`` (weights of checkpoint N written into step-N.tmp/, optimizer not),
    ``checkpoint_tmp`` (step-N.tmp/ complete, not renamed), ``checkpoint_renamed`` (renamed,
    state.json not updated), ``checkpoint_pointer`` (state.json updated, older checkpoints not
    yet deleted), ``final_weights`` (weights.safetensors written, evaluation not started),
    ``eval`` (evaluation done, results.json not written).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, on_rank = spec.partition("@")
    name, _, at_step = target.partition(":")
    if name == where and at_step in ("", str(step)) and (on_rank or "0") == str(rank):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


# ------------------------------------------------------------------ small pure pieces
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


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63)


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" or device.type == "cpu" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(method: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = method.param_groups({"lr": cfg.lr, "weight_decay": cfg.weight_decay})
    for group in groups:
        group["base_lr"] = group["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=cfg.lr)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    joined: bool = False  # in a process group (launched by torchrun, one process or more)

    @property
    def main(self) -> bool:
        return self.rank == 0


TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def setup_distributed(device: torch.device, timeout_s: float = 300.0) -> Distributed:
    """Join the process group when launched by torchrun (its env:// variables are set), with one
    process too: DDP over NCCL on a single GPU runs the multi-GPU code path."""
    if not all(name in os.environ for name in TORCHRUN_ENV):
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), True
    )


def validate_names(cfg: TrainConfig) -> None:
    """Fail fast on an unknown model, method, scheme, dataset, augmentation or evaluation-suite
    name (the suite runs after training: a typo there must not cost the whole training run)."""
    from .adversarial.schemes import SCHEMES
    from .attacks.suites import get_suite
    from .data import check_dataset_spec
    from .methods import METHODS
    from .models import MODELS

    if not cfg.model.startswith("timm/"):
        MODELS.get(cfg.model)
    METHODS.get(cfg.method)
    if cfg.at not in (None, "none"):
        SCHEMES.get(cfg.at)
    check_dataset_spec(cfg.data)
    if cfg.augment:
        create_augment(cfg.augment, **cfg.augment_args)  # name and options
    if cfg.eval_suite is not None:
        get_suite(cfg.eval_suite)


# ------------------------------------------------------------------ run directory
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

    def lock(self) -> None:
        """Create the marker (never through a symlink) and hold an exclusive lock on it."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.root / RUN_MARKER, flags, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"{self.root} is being written by another robustfeat process (it holds the "
                f"lock on {RUN_MARKER}); wait for it to finish or train into another --out"
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
        for line in self.metrics.read_text().splitlines():
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


# ------------------------------------------------------------------ metrics
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


# ------------------------------------------------------------------ best-epoch selection
SELECTION_PGD = {"eps": 8 / 255, "steps": 10, "step_size": 2 / 255, "seed": 0}


def selection_score(method: Method, val: ImageDataset, criterion: str) -> float:
    """The validation score of ``select_best``: clean accuracy; ``pgd10``, PGD-10 robust accuracy
    (L-inf 8/255, step 2/255, random start, fixed seed: every epoch faces the same attack) on the
    final logits; or ``pgd10_adaptive``, the per-sample worst case of that attack and the same
    PGD-10 on each of the method's ``attack_losses()`` (1 + len(attack_losses) times the cost).
    The adaptive score is the honest one for defences that mask the final-logit gradient: CAS's
    validation PGD-10 climbed .34 -> .67 over the cpu FGSM-RS run while the last epoch's test
    accuracy under adaptive PGD-20 was .31, so ``pgd10`` picks the most masked epoch."""
    model = method.eval_model()
    # eager: the eval-mode shapes would otherwise recompile the training graph
    with torch.compiler.set_stance("force_eager"):
        if criterion == "clean":
            return clean_accuracy(model, val)
        attacks: dict[str, Any] = {"pgd": create_attack("pgd", **SELECTION_PGD)}
        if criterion == "pgd10_adaptive":
            attacks.update(adaptive_attacks(method, {"attack": "pgd", **SELECTION_PGD}))
        survives = torch.ones(len(val), dtype=torch.bool)
        for label, attack in attacks.items():
            record = run_attack(model, attack, val, 250, (1,), Progress(False), label)
            survives &= record.correct["1"]
    return fraction(survives)


@dataclass
class BestEpoch:
    """The running best of ``select_best`` (kept in state.json, so a resume continues it)."""

    epoch: int = 0
    score: float = -1.0
    scores: list[float] = field(default_factory=list)  # one per finished epoch

    def update(self, score: float) -> bool:
        """Record the score of the epoch just finished; whether it is the new best."""
        self.scores.append(score)
        if score > self.score:  # ties keep the earlier epoch
            self.epoch, self.score = len(self.scores), score
            return True
        return False


# ------------------------------------------------------------------ the trainer
@dataclass
class Trainer:
    cfg: TrainConfig
    run: RunDir
    data: DataSplits
    method: Method
    scheme: Scheme
    device: torch.device
    dist: Distributed
    best: BestEpoch = field(default_factory=BestEpoch)

    @classmethod
    def create(
        cls,
        cfg: TrainConfig,
        out: str | Path,
        data: DataSplits | None = None,
        resume: bool = False,
    ) -> Trainer:
        device = resolve_device(cfg.device)
        distributed = setup_distributed(device)
        if device.type == "cuda":
            device = torch.device("cuda", distributed.local_rank)
            torch.cuda.set_device(device)
        validate_names(cfg)  # before any data is loaded or output written
        run = RunDir(Path(out))
        if data is None:
            data = prepare_data(
                cfg.data,
                samples_per_class=cfg.samples_per_class,
                label_noise=cfg.label_noise,
                label_noise_type=cfg.label_noise_type,
                val_fraction=cfg.val_fraction,
                test_fraction=cfg.test_fraction,
                seed=cfg.data_seed,
                **cfg.data_args,
            )
        torch.manual_seed(cfg.seed)  # model initialisation
        model = create_model(
            cfg.model, data.num_classes, mean=data.mean, std=data.std, **cfg.model_args
        )
        method = create_method(cfg.method, model, **cfg.method_args)
        scheme = create_scheme(cfg.at, **cfg.at_args)
        trainer = cls(cfg, run, data, method, scheme, device, distributed)
        # batch size vs data and world size, and the augmentation on one image: checked before
        # any output is written
        loader = trainer.loader()
        if loader.augment is not None:
            loader.augment(data.train.float_images(slice(0, 1)), torch.Generator())
        if distributed.main:
            run.prepare(resume)
        method.to(device)
        if cfg.channels_last:
            method.to(memory_format=torch.channels_last)
        return trainer

    # -------------------------------------------------------------- helpers
    def loader(self) -> BatchLoader:
        return BatchLoader(
            self.data.train,
            self.cfg.batch_size,
            shuffle=True,
            drop_last=True,
            augment=self.train_augment(),
            seed=self.cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            device=self.device,
            resident=self.cfg.loader == "device",
        )

    def train_augment(self) -> Augment:
        """Crop/flip, then the config's image-level augmentation (filled with the data mean)."""
        cfg = self.cfg
        steps = default_train_augment(cfg.crop_padding, cfg.padding_mode, cfg.flip).steps
        if cfg.augment:
            steps.append(create_augment(cfg.augment, mean=self.data.mean, **cfg.augment_args))
        return Augment(*steps)

    def total_steps(self, steps_per_epoch: int) -> int:
        budget = self.cfg.steps if self.cfg.steps is not None else self.cfg.epochs * steps_per_epoch
        return max(1, budget // self.scheme.replays)

    def _forward_module(self) -> nn.Module:
        if self.dist.joined:
            return nn.parallel.DistributedDataParallel(
                self.method,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        return self.method

    def _check_finite(self, out: dict[str, torch.Tensor], step: int) -> bool:
        """Whether the loss is finite (on every rank: ranks skip or stop together, since a rank
        that skipped the backward would leave the others waiting in the gradient all-reduce)."""
        finite = torch.isfinite(out["loss"]).all()
        if self.dist.joined:
            flag = finite.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag.bool()
        if finite:
            return True
        parts = {
            k: v.item()
            for k, v in out.items()
            if k != "logits" and isinstance(v, torch.Tensor) and v.numel() == 1
        }
        bad = [k for k, v in parts.items() if not math.isfinite(v) and k != "loss"] or ["loss"]
        if math.isfinite(parts["loss"]):  # the all-reduce says another rank saw it
            message = f"non-finite loss at step {step + 1} on another rank (here: {parts})"
        else:
            message = (
                f"non-finite loss at step {step + 1}: "
                f"{', '.join(f'{k}={parts[k]}' for k in bad)} (all parts: {parts})"
            )
        if self.cfg.nan_policy == "skip":
            self.console_log(f"[yellow]skipping batch[/]: {message}")
            return False
        kept = (
            f"the last good checkpoint is kept in {self.run.root}"
            if self.run.state.exists()
            else f"it diverged before the first checkpoint, so {self.run.root} has none"
        )
        raise TrainingDiverged(
            f"{message}; {kept}",
            step + 1,
            parts,
            bad,
        )

    def _finite_gradients(self, step: int) -> bool:
        """With ``nan_policy=skip``: whether every gradient is finite. A finite loss can still
        have NaN gradients (sqrt at 0); stepping on them makes every later loss NaN and every
        later batch skipped, and the weights written at the end NaN."""
        grads = [p.grad for p in self.method.parameters() if p.grad is not None]
        if not grads or torch.stack([torch.isfinite(g).all() for g in grads]).all():
            return True
        self.console_log(f"[yellow]skipping batch[/]: non-finite gradients at step {step + 1}")
        return False

    def console_log(self, message: str) -> None:
        if self.dist.main:
            from rich.console import Console

            Console(stderr=True).log(message)

    # -------------------------------------------------------------- main loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg, run = self.cfg, self.run
        loader = self.loader()
        steps_per_epoch = len(loader)
        total = self.total_steps(steps_per_epoch)
        optimizer = build_optimizer(self.method, cfg)
        step = 0
        state: dict[str, Any] = {}
        if resume and run.state.exists():
            run.check_resume_config(cfg)
            state, ckpt = load_checkpoint(run, self.method, optimizer)
            step = state["step"]
            self.best = BestEpoch(**state.get("best", {}))
            if self.dist.main:
                run.remove_stale(keep=ckpt)
                run.truncate_metrics(step)
            self.console_log(f"resumed {run.root} at step {step}/{total}")
        elif self.dist.main:
            run.reset()
            config_text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            io.atomic_write_bytes(run.config, config_text.encode())
            io.write_json(run.root / "provenance.json", provenance())
        if self.dist.main:
            for line in self.method.startup_warnings(total, self.data.train.image_shape):
                self.console_log(f"warning: {line}")
        if cfg.compile:
            for module in self.method.compile_targets():
                module.compile()
        tensorboard = ScalarLog(run.root, self.dist.main and cfg.tensorboard, step or None)
        log = MetricsLog(run.metrics, self.dist.main, tensorboard)
        forward = self._forward_module()
        scaler = (
            torch.amp.GradScaler("cuda")
            if cfg.precision == "amp" and self.device.type == "cuda"
            else None
        )
        if scaler is not None and isinstance(state.get("grad_scaler"), dict):
            scaler.load_state_dict(state["grad_scaler"])  # the loss scale goes on where it was
        train_seconds = float(state.get("train_seconds", 0.0))
        epoch_metrics = state.get("epoch_metrics")  # running averages of a mid-epoch checkpoint
        self.method.train()

        with self._progress(total, step) as advance:
            while step < total:
                epoch, index = divmod(step, steps_per_epoch)
                batches = loader.batches(epoch, start=index)
                metrics = (
                    RunningMetrics.from_state(epoch_metrics, self.device)
                    if epoch_metrics and index > 0
                    else RunningMetrics()
                )
                epoch_metrics = None
                epoch_start, epoch_images = time.perf_counter(), 0
                for x, y in batches:
                    if step >= total:
                        break
                    self._train_step(forward, optimizer, scaler, x, y, step, total, metrics)
                    epoch_images += x.shape[0] * self.dist.world_size
                    step += 1
                    advance(metrics)
                    if step % cfg.log_every == 0:
                        log.write(
                            {
                                "step": step,
                                "epoch": epoch,
                                **metrics.summary(),
                                "lr": optimizer.param_groups[0]["lr"],
                            }
                        )
                    at_epoch_end = step % steps_per_epoch == 0 or step == total
                    if at_epoch_end or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                        if self.device.type == "cuda":  # time the work, not its queueing
                            torch.cuda.synchronize(self.device)
                        seconds = time.perf_counter() - epoch_start
                        train_seconds += seconds
                        if at_epoch_end:
                            record = {
                                "epoch": epoch + 1,
                                "step": step,
                                **metrics.summary(),
                                "lr": optimizer.param_groups[0]["lr"],
                                "img_per_s": epoch_images / max(seconds, 1e-9),
                                "train_seconds": train_seconds,
                                **self.method.epoch_log(),
                                **self.select_epoch(),
                            }
                            log.write(record)
                            self.console_log(_epoch_line(record))
                        if self.dist.main:
                            save_checkpoint(
                                run,
                                self.method,
                                optimizer,
                                step,
                                {
                                    "total_steps": total,
                                    "train_seconds": train_seconds,
                                    "finished": step >= total,
                                    "epoch_metrics": None if at_epoch_end else metrics.state_dict(),
                                    "best": asdict(self.best),
                                    **(
                                        {}
                                        if scaler is None
                                        else {"grad_scaler": scaler.state_dict()}
                                    ),
                                },
                            )
                        if self.dist.joined:
                            dist.barrier()
                        epoch_start, epoch_images = time.perf_counter(), 0
        log.close()
        return self.finish(train_seconds)

    def _train_step(
        self,
        forward: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        step: int,
        total: int,
        metrics: RunningMetrics,
    ) -> None:
        torch.manual_seed(step_seed(self.cfg.seed, step, self.dist.rank))
        set_learning_rates(optimizer, lr_factor(step, total, self.cfg))
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Skipping a batch also undoes what its forward did to buffers (BN running statistics).
        skipping = self.cfg.nan_policy == "skip"
        buffers = list(self.method.buffers()) if skipping else []
        good = [b.detach().clone() for b in buffers]
        with autocast_context(self.cfg.precision, self.device):
            for out in self.scheme.steps(self.method, x, y, forward=forward):
                optimizer.zero_grad(set_to_none=True)
                skip = not self._check_finite(out, step)
                if not skip:
                    fault_point("step", step + 1, self.dist.rank)
                    if scaler is not None:
                        scaler.scale(out["loss"]).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        out["loss"].backward()
                        skip = skipping and not self._finite_gradients(step)
                        if not skip:
                            optimizer.step()
                if skip:
                    metrics.skipped += 1
                    with torch.no_grad():
                        for buffer, value in zip(buffers, good, strict=True):
                            buffer.copy_(value)
                    continue
                self.method.after_step()
                metrics.add(out, y)
                good = [b.detach().clone() for b in buffers]

    def select_epoch(self) -> dict[str, float]:
        """Score the epoch just finished for ``select_best`` (main rank) and keep its weights
        when it is the best so far; the score for the epoch's log record."""
        criterion = self.cfg.select_best
        if criterion is None or not self.dist.main:
            return {}
        assert self.data.val is not None  # config validation requires val_fraction > 0
        score = selection_score(self.method, self.data.val, criterion)
        self.method.train()
        if self.best.update(score):
            io.save_tensors(self.run.best_weights, self.method.state_dict())
        return {f"val_{criterion}": score}

    @contextlib.contextmanager
    def _progress(self, total: int, start: int) -> Iterator[Any]:
        with progress_task("train", total, start, self.cfg.progress and self.dist.main) as step:

            def advance(metrics: RunningMetrics) -> None:
                if metrics.count % 10 == 0:
                    summary = metrics.summary()
                    loss, acc = summary.get("loss", float("nan")), summary.get("train_acc", 0.0)
                    step(info=f"loss {loss:.3f} acc {acc:.3f}")
                else:
                    step()

            yield advance

    def finish(self, train_seconds: float) -> dict[str, Any]:
        """Save the final weights and evaluate the test split into results.json."""
        run, cfg = self.run, self.cfg
        if not self.dist.main:
            return {}
        io.save_tensors(run.weights, self.method.state_dict(), metadata=data_metadata(self.data))
        fault_point("final_weights")
        start = time.perf_counter()
        results = self.evaluate_test(shift=True)
        if not self.data.train.multilabel:
            with torch.compiler.set_stance("force_eager"):
                results["train"] = train_fit(as_eval_model(self.method), self.data.train)
        if cfg.select_best is not None:
            results["best_epoch"] = self.evaluate_best()
        results["run"]["train_seconds"] = train_seconds
        results["run"]["eval_seconds"] = time.perf_counter() - start
        fault_point("eval")
        io.write_json(run.results, results)
        if not cfg.keep_checkpoint:  # a lean run directory: the final weights only
            run.drop_checkpoints()
        self.console_log(f"clean test accuracy {results['clean']['accuracy']:.4f} -> {run.results}")
        return results

    def evaluate_test(self, shift: bool, n_aa: int | None = None) -> dict[str, Any]:
        """The config's evaluation of the current weights on the test split (+ shift sets;
        ``n_aa`` overrides the config's AutoAttack subset, 0: none)."""
        cfg = self.cfg
        # Evaluate eager and in fp32 (no autocast is active here): attacks see exact gradients,
        # and the many eval shapes/modes do not trigger a recompilation of every node.
        with torch.compiler.set_stance("force_eager"):
            if self.data.test.multilabel:  # the attack suite assumes single labels
                return evaluate_multilabel(self.method, self.data.test, run=run_info(cfg))
            return evaluate(
                self.method,
                self.data.test,
                suite=cfg.eval_suite or "clean",
                n=cfg.eval_n,
                n_aa=cfg.eval_n_aa if n_aa is None else n_aa,
                shift=(default_shift_sets(cfg, len(self.data.test)) if shift else None) or None,
                run=run_info(cfg),
            )

    def evaluate_best(self) -> dict[str, Any]:
        """``results["best_epoch"]``: the selection record, and the test evaluation of the best
        epoch's weights when that is not the last epoch (``None``: the last is the best)."""
        assert self.data.val is not None
        best, path = self.best, self.run.best_weights
        entry: dict[str, Any] = {
            "criterion": self.cfg.select_best,
            "n_val": len(self.data.val),
            **asdict(best),
            "last_epoch": len(best.scores),
            "evaluation": None,
        }
        if best.epoch != len(best.scores):
            io.load_state_into(self.method, io.load_tensors(path), path)
            best_results = self.evaluate_test(shift=False, n_aa=0)
            entry["evaluation"] = {k: v for k, v in best_results.items() if k not in ("run",)}
            io.load_state_into(self.method, io.load_tensors(self.run.weights), self.run.weights)
        return entry


def _epoch_line(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}"]
    parts += [
        f"{k} {v:.4f}"
        for k, v in record.items()
        if k.startswith(("loss", "val_")) or k == "train_acc"
    ]
    parts.append(f"{record['img_per_s']:.0f} img/s")
    return "  ".join(parts)


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


def train(
    cfg: TrainConfig, out: str | Path, resume: bool = False, data: DataSplits | None = None
) -> dict[str, Any]:
    """Train ``cfg`` into run directory ``out`` (resuming from its last checkpoint if asked)."""
    with deterministic_algorithms(cfg.deterministic):
        trainer = Trainer.create(cfg, out, data, resume)
        try:
            return trainer.fit(resume=resume)
        finally:
            trainer.run.release()
            if trainer.dist.joined and dist.is_initialized():
                dist.destroy_process_group()
