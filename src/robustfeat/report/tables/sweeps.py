"""The sweep tables: one method's settings side by side, diverged ones too, the best setting for
accuracy and for robustness named, and the paper's claimed values as the last row
(``sweep_table``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..collect import CellGroup, protocol_group
from ..spec import Metric, PaperTable, PaperValue, Row, Spec, Sweep
from .common import (
    LEGEND,
    Table,
    cell_stat,
    diverged_note,
    flag_summary,
    format_measured,
    our_setting,
    ours_cell,
    seeds_text,
    setting_text,
)
from .paper import format_paper


def _mean(group: CellGroup, metric: Metric) -> float:
    stat = cell_stat(group, metric)
    return float("-inf") if stat is None else stat.mean


def best_cell(groups: list[CellGroup], metrics: list[Metric]) -> CellGroup | None:
    """The cell with the highest mean of ``metrics[0]``, ties broken by the next metrics
    (first in ``groups`` order on a full tie); None if none measured the first metric."""
    measured = [g for g in groups if cell_stat(g, metrics[0]) is not None]
    if not measured:
        return None
    return max(measured, key=lambda g: tuple(_mean(g, m) for m in metrics))


def _best_text(group: CellGroup, sweep: Sweep, keys: Iterable[str]) -> str:
    values = []
    for key in keys:
        column = sweep.column(key)
        values.append(
            f"{column.label} {format_measured(cell_stat(group, column.metric), column.metric)}"
        )
    return f"`{group.key}` ({setting_text(group)}): {', '.join(values)}"


def _claim_text(sweep: Sweep, members: list[CellGroup], row: Row, table: PaperTable) -> str:
    """Each column the paper reports beside the highest value any setting reached here."""
    parts = []
    for column in sweep.columns:
        value = row.paper.get(column.paper[0].key)
        best = best_cell(members, [column.metric])
        if value is None or best is None:
            continue
        ours = format_measured(cell_stat(best, column.metric), column.metric)
        paper = format_paper(
            PaperValue(value.value, approx=value.approx), column.metric, table.paper_scale, []
        )
        parts.append(f"{column.label} {paper} vs {ours} (`{best.key}`)")
    return "The paper vs the highest here: " + "; ".join(parts) + "." if parts else ""


def _sweep_row(
    sweep: Sweep, group: CellGroup, label: str, setting: str, ref: CellGroup | None
) -> list[str]:
    """One sweep line; markers against ``ref`` (None: plain values)."""
    line = [label, setting, seeds_text(group)]
    line += [ours_cell(group, ref, c.metric) for c in sweep.columns]
    return [*line, flag_summary(group)]


def sweep_table(
    sweep: Sweep, spec: Spec, groups: list[CellGroup], diverged: Sequence[CellGroup] = ()
) -> Table | None:
    """The sweep's cells side by side with their settings (diverged settings too, unranked),
    the best setting for accuracy and for robustness named, and the paper's claimed values as
    the last row; None with fewer than two cells with results."""
    members = sweep.members(groups)
    measured = {g.key for g in members}
    failed = [g for g in sweep.members(list(diverged)) if g.key not in measured]
    if len(members) < 2:
        return None
    ref = next((g for g in groups if g.key == sweep.reference), None)
    header = ["Cell", "Setting", "Seeds", *[c.label for c in sweep.columns], "Flags"]
    rows = []
    protocol_runs: list[CellGroup] = []  # cells re-evaluated under sweep.protocol
    if ref is not None:
        rows.append(_sweep_row(sweep, ref, f"{ref.key} (reference)", ref.method or "?", None))
    for group in members:
        rows.append(_sweep_row(sweep, group, group.key, setting_text(group), ref))
        again = protocol_group(group, sweep.protocol) if sweep.protocol else None
        if again is not None:
            protocol_runs.append(again)
            rows.append(_sweep_row(sweep, again, again.key, setting_text(again), None))
    for group in failed:
        blank = ["–"] * (len(sweep.columns) - 1)
        rows.append([group.key, setting_text(group), "–", "diverged", *blank, "–"])
    notes = [f"Our runs: {our_setting(members)}. Other options at the method's defaults."]
    notes += diverged_note(failed)
    value_notes: list[str] = []
    if sweep.claim is not None:
        table = spec.table(sweep.claim[0])
        row = table.row(sweep.claim[1])
        paper = [
            format_paper(row.paper.get(c.paper[0].key), c.metric, table.paper_scale, value_notes)
            for c in sweep.columns
        ]
        rows.append([f"Paper: {row.label}", "the paper's", "–", *paper, "–"])
        claim = _claim_text(sweep, members + protocol_runs, row, table)
        notes.append(f"Paper row: {table.paper_setting}. {claim}")
    accuracy = best_cell(members, [sweep.column(sweep.accuracy).metric])
    robust = best_cell(members, [sweep.column(k).metric for k in sweep.robustness])
    notes.append(
        "Best = highest mean over seeds, one-seed cells included: a difference within the "
        "seeds' spread (markers) is no winner."
    )
    if accuracy is not None:
        notes.append(f"Best for accuracy: {_best_text(accuracy, sweep, [sweep.accuracy])}.")
    if robust is not None:
        order = ", then ".join(sweep.column(k).label for k in sweep.robustness)
        notes.append(
            f"Best for robustness (by {order}): {_best_text(robust, sweep, sweep.robustness)}."
        )
    if ref is not None:
        notes.append(f"Markers compare each cell with `{ref.key}`.")
    notes += [*sweep.notes, *[f"({i}) {n}" for i, n in enumerate(value_notes, 1)], LEGEND]
    return Table(f"sweep-{sweep.id}", sweep.title, header, rows, notes)
