"""Which cell a cell is compared with (the reference of its markers), by table: the paper tables
(``reference_group``), the all-cells table (``generic_reference``, names from
``reference_names``) and the CAM table (``same_data_reference``); and what decides that two cells
are comparable: the data they were trained on (``trained_on``) and the rest of their training
config (``training_setup``)."""

from __future__ import annotations

import json
from typing import Any

from ..collect import CellGroup
from .common import run_config

SIZE_KEYS = ("n_train", "n_test")  # data_args that change the amount of data, not the task


def data_variant(group: CellGroup) -> str:
    """The run's data options beyond its size (e.g. object sizes, spurious backgrounds)."""
    config = run_config(group.runs[0])
    args = config.get("data_args") if isinstance(config.get("data_args"), dict) else {}
    rest = {k: v for k, v in sorted(args.items()) if k not in SIZE_KEYS}
    return ", ".join(f"{k} {v}" for k, v in rest.items()) or "default"


#: training-config keys beyond the dataset that change what a cell learns from
TRAINING_DATA_KEYS = ("label_noise", "label_noise_type", "samples_per_class")


def trained_on(group: CellGroup) -> tuple[Any, ...]:
    """What ``group`` was trained on: dataset, its options (``data_variant``), label noise and
    samples per class; two cells are compared only when these agree."""
    config = run_config(group.runs[0])
    return (config.get("data"), data_variant(group), *(config.get(k) for k in TRAINING_DATA_KEYS))


#: run-config keys that do not change how the training went (or are the method under test)
SETUP_IGNORED = (
    "method",
    "method_args",
    "seed",
    "data_seed",
    "eval_suite",
    "eval_n",
    "eval_n_aa",
    "progress",
    "device",
    "log_every",
    "checkpoint_every",
    "compile",
)


def training_setup(group: CellGroup) -> str:
    """The cell's training config apart from the method, seed and evaluation settings (an
    empty option equals an absent one: older runs record ``None`` where newer ones say ``{}``)."""
    config = run_config(group.runs[0])
    kept = {k: v for k, v in config.items() if k not in SETUP_IGNORED and v not in (None, {}, [])}
    return json.dumps(kept, sort_keys=True, default=str)


def reference_group(candidates: list[CellGroup], group: CellGroup) -> CellGroup | None:
    """The reference cell for ``group``: the one candidate of the same recipe trained with the
    same AT scheme, else (a recipe without one, e.g. cpu-sweeps) the one whose training config is
    the same apart from the method (``training_setup``); other cells are never compared."""
    others = [g for g in candidates if g.at == group.at and g is not group]
    same = [g for g in others if g.recipe == group.recipe] or [
        g for g in others if training_setup(g) == training_setup(group)
    ]
    return same[0] if len(same) == 1 else None


def reference_names(cell: str, at: str | None, name: str) -> list[str]:
    """Names the reference of ``cell`` may have, most specific first: the recipes name a cell
    on other data by an affix (``hnc_mse_sym0.6`` -> ``ce_sym0.6``, ``cutout_spc10`` ->
    ``ce_spc10``, ``spurious_hnc_kd`` -> ``spurious_ce``), else the reference itself."""
    base = cell.removesuffix(f"+{at}") if at else cell
    parts = base.split("_")
    affixed = [f"{name}_{'_'.join(parts[i:])}" for i in range(1, len(parts))]
    affixed += [f"{'_'.join(parts[:i])}_{name}" for i in range(len(parts) - 1, 0, -1)]
    suffix = f"+{at}" if at else ""
    return [n + suffix for n in [*affixed, name]]


def generic_reference(groups: list[CellGroup], group: CellGroup, name: str) -> CellGroup | None:
    """The reference cell of ``group`` in the all-cells table: same recipe and AT scheme, trained
    on the same data (``trained_on``), named as ``reference_names`` lists."""
    data = trained_on(group)
    by_cell = {
        g.cell: g
        for g in groups
        if g.recipe == group.recipe and g is not group and trained_on(g) == data
    }
    for want in reference_names(group.cell, group.at, name):
        if want in by_cell:
            return by_cell[want]
    # a recipe without its own reference (cpu-sweeps extends cpu): another recipe's, trained alike
    want = f"{name}+{group.at}" if group.at else name
    setup = training_setup(group)
    alike = [g for g in groups if g.cell == want and g is not group and training_setup(g) == setup]
    return alike[0] if len(alike) == 1 else None


def same_data_reference(groups: list[CellGroup], group: CellGroup, method: str) -> CellGroup | None:
    """The one cell of ``method`` without AT trained on the same data in the same recipe."""
    data = trained_on(group)
    same = [
        g
        for g in groups
        if g is not group
        and g.recipe == group.recipe
        and g.method == method
        and g.at is None
        and trained_on(g) == data
    ]
    return same[0] if len(same) == 1 else None
