"""Training: ``train(cfg, out)`` trains a config into a run directory and evaluates it.

One job per module: ``loop.py`` (the ``Trainer``: steps, checkpoints, resume, NaN policy, final
evaluation), ``schedule.py`` (optimizer and learning-rate schedule), ``metrics.py`` (running
metrics and metrics.jsonl), ``selection.py`` (best-epoch selection on the validation split),
``distributed.py`` (torchrun process group), ``numerics.py`` (autocast precision, deterministic
kernels). The run directory and its checkpoint files are ``robustfeat.rundir`` and fault
injection is ``robustfeat.faults``: neutral modules that ``robustfeat.runs`` and evaluation use
without importing the loop. The names below are those the CLI, bench, benchmarks and tests import
from ``robustfeat.train``.
"""

from ..faults import FAULT_ENV
from ..rundir import RunDir
from .loop import Trainer, TrainingDiverged, step_seed, train, validate_names
from .metrics import RunningMetrics
from .numerics import autocast_context
from .schedule import build_optimizer, lr_factor, set_learning_rates
from .selection import BestEpoch

__all__ = [
    "FAULT_ENV",
    "BestEpoch",
    "RunDir",
    "RunningMetrics",
    "Trainer",
    "TrainingDiverged",
    "autocast_context",
    "build_optimizer",
    "lr_factor",
    "set_learning_rates",
    "step_seed",
    "train",
    "validate_names",
]
