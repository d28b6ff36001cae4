"""The all-cells table: every cell with its clean accuracy, train fit, each attack, worst case,
mCE, train s/epoch and flags (``cells_table``), the columns being those some cell measured."""

from __future__ import annotations

import glob
from collections.abc import Sequence

from ..collect import CellGroup
from ..spec import Metric, Spec
from .common import (
    LEGEND,
    Table,
    cell_stat,
    diverged_note,
    flag_summary,
    our_setting,
    ours_cell,
    seeds_text,
)
from .references import generic_reference


def _attack_labels(groups: list[CellGroup]) -> list[str]:
    labels: dict[str, None] = {}
    for group in groups:
        for run in group.runs:
            for entry in run.results.get("attacks") or []:
                if isinstance(entry, dict) and entry.get("kind") != "adaptive":
                    labels.setdefault(str(entry.get("label")), None)
    return list(labels)


def generic_metrics(groups: list[CellGroup]) -> list[tuple[str, Metric]]:
    """(column label, metric) of the all-cells table, without columns nobody measured."""
    columns = [
        ("Clean", Metric("clean")),
        ("Train", Metric("train")),
        ("Gap", Metric("train_gap")),
        ("Memorised", Metric("memorised")),
    ]
    columns += [
        (label, Metric("attack", {"label": glob.escape(label), "kind": "standard"}))
        for label in _attack_labels(groups)
    ]
    columns += [
        ("Adaptive (worst)", Metric("attack", {"kind": "adaptive"})),
        ("Worst case", Metric("worst_case")),
        ("mCE", Metric("mce")),
        ("Train s/epoch", Metric("train_s_per_epoch")),
    ]
    return [(label, m) for label, m in columns if any(cell_stat(g, m) for g in groups)]


def train_fit_note(metrics: list[tuple[str, Metric]]) -> str:
    kinds = {metric.kind for _, metric in metrics}
    note = ""
    if "train" in kinds:
        note += (
            "Train: accuracy on the un-augmented training images (eval mode, against the labels "
            "trained on), Gap: Train − Clean; "
        )
    if "memorised" in kinds:
        note += (
            "Memorised (label-noise cells): of the mislabelled training images, the share "
            "predicted as their wrong label (memorising the noise puts Train above the share of "
            "correct labels); "
        )
    return note


def cells_table(groups: list[CellGroup], spec: Spec, diverged: Sequence[CellGroup] = ()) -> Table:
    metrics = generic_metrics(groups)
    header = ["Cell", "Method", "AT", "Seeds", *[label for label, _ in metrics], "Flags"]
    rows = []
    for group in groups:
        ref = generic_reference(groups, group, spec.reference_cell)
        line = [group.key, group.method or "?", group.at or "–", seeds_text(group)]
        line += [ours_cell(group, ref, metric) for _, metric in metrics]
        line.append(flag_summary(group))
        rows.append(line)
    notes = [
        f"Our runs: {our_setting(groups)}.",
        "Accuracies in % (mCE: mean corruption error in %); "
        + train_fit_note(metrics)
        + "attack columns are the evaluation "
        "suite's attack labels; worst case = per-sample minimum over the suite's main threat "
        "model. Markers compare each cell with "
        f"`{spec.reference_cell}` (or `{spec.reference_cell}+<AT>` for an AT cell) trained on the "
        f"same data; a cell on other data with the one named alike (`{spec.reference_cell}_sym0.6` "
        f"for `hnc_mse_sym0.6`, `spurious_{spec.reference_cell}` for `spurious_hnc_kd`); in a "
        f"recipe without one (cpu-sweeps), the `{spec.reference_cell}` of another recipe whose "
        "training config is the same apart from the method.",
        *diverged_note(diverged),
        LEGEND,
    ]
    return Table("cells", "All cells", header, rows, notes)
