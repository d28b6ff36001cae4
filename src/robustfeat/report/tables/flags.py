"""The gradient-masking flags table: every flag with its detail, per cell and seed, and the cells
whose suite ran no masking checks (``flags_table``)."""

from __future__ import annotations

from ..collect import CellGroup
from .common import Table, run_checked, run_flags


def flags_table(groups: list[CellGroup]) -> Table:
    rows = [
        [
            group.key,
            str(run.seed if run.seed is not None else "?"),
            f.get("name", "?"),
            str(f.get("detail", "")),
        ]
        for group in groups
        for run in group.runs
        for f in run_flags(run)
    ]
    unchecked = [g.key for g in groups if not any(run_checked(r) for r in g.runs)]
    notes = []
    if not rows:
        notes.append("No gradient-masking flag was raised in any checked run.")
    if unchecked:
        notes.append(
            "No masking checks ran for (their suite has none; absence of flags means nothing): "
            + ", ".join(unchecked)
            + "."
        )
    return Table("flags", "Gradient-masking flags", ["Cell", "Seed", "Flag", "Detail"], rows, notes)
