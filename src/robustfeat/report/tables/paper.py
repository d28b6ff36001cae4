"""The papers' tables: one paper's headline table in its own layout (its rows and columns), our
cells beside the paper's values (``paper_table``), and a paper's number as printed
(``format_paper``)."""

from __future__ import annotations

from ..collect import CellGroup
from ..spec import Metric, PaperTable, PaperValue, Row, matching_attacks
from .common import Table, our_setting, ours_cell, seeds_text
from .references import reference_group


def format_paper(value: PaperValue | None, metric: Metric, scale: float, notes: list[str]) -> str:
    """A paper's number as printed (in % for accuracies, s for times), with its std, source
    and a footnote number for its note."""
    if value is None:
        return "–"
    if metric.is_fraction:
        digits, unit = 2, ""
    else:
        digits, scale, unit = (3, 1.0, "") if metric.kind == "cam" else (0, 1.0, " s")
    text = f"{'≈' if value.approx else ''}{value.value * scale:.{digits}f}{unit}"
    if value.std is not None:
        text += f" ± {value.std * scale:.{digits}f}{unit}"
    if value.src:
        text += f" [{value.src}]"
    if value.note:
        notes.append(value.note)
        text += f" ({len(notes)})"
    return text


def paper_ratio(table: PaperTable, row: Row, key: str) -> float | None:
    """The paper's value of ``row`` over its reference row's (None without both)."""
    if row.reference is None:
        return None
    ref = table.row(row.reference).paper.get(key)
    own = row.paper.get(key)
    if own is None or ref is None or ref.value == 0:
        return None
    return own.value / ref.value


def assign_rows(table: PaperTable, groups: list[CellGroup]) -> dict[str, list[CellGroup]]:
    return {
        row.label: [g for g in groups if table.takes(g) and row.matches(g)] for row in table.rows
    }


def paper_table(table: PaperTable, groups: list[CellGroup]) -> Table:
    """The paper's table layout: its rows and columns, our cells beside its values."""
    by_row = assign_rows(table, groups)
    lead = ["Paper row", "Our cell", "Seeds"]
    header, short, spans = list(lead), list(lead), [("", len(lead))]
    for col in table.columns:
        header.append(f"{col.label}: ours")
        header += [f"{col.label}: {sub.label}" for sub in col.paper]
        short += ["ours", *[sub.label for sub in col.paper]]
        spans.append((col.label, 1 + len(col.paper)))
    value_notes: list[str] = []
    rows = []
    for row in table.rows:
        references = by_row[row.reference] if row.reference else []
        paper_cells = []
        for col in table.columns:
            for sub in col.paper:
                value = row.paper.get(sub.key)
                text = format_paper(value, col.metric, table.paper_scale, value_notes)
                ratio = paper_ratio(table, row, sub.key) if col.metric.ratio_to_reference else None
                paper_cells.append(text if ratio is None else f"{text} (×{ratio:.2f})")
        for group in by_row[row.label] or [None]:
            if group is None:
                ours = ["–"] * len(table.columns)
                rows.append(_line(table, [row.label, "not run", "–"], ours, paper_cells))
                continue
            ref = reference_group(references, group)
            ours = [ours_cell(group, ref, col.metric) for col in table.columns]
            rows.append(_line(table, [row.label, group.key, seeds_text(group)], ours, paper_cells))
    notes = [
        f"Paper: {table.source}",
        f"Paper setting: {table.paper_setting}. Ours: {our_setting(_flatten(by_row))}. "
        "Different networks, data and budgets: the columns sit side by side for direction, "
        "not as a reproduction; never read them as equal.",
        *table.notes,
        *_attack_notes(table, _flatten(by_row)),
        *[f"({i}) {note}" for i, note in enumerate(value_notes, 1)],
    ]
    return Table(table.id, table.title, header, rows, notes, spans, short)


def _flatten(by_row: dict[str, list[CellGroup]]) -> list[CellGroup]:
    seen: dict[str, CellGroup] = {}
    for groups in by_row.values():
        for g in groups:
            seen.setdefault(g.key, g)
    return list(seen.values())


def _line(table: PaperTable, lead: list[str], ours: list[str], paper_cells: list[str]) -> list[str]:
    """One table line in the header's order: each column's ours, then its paper values."""
    line = list(lead)
    it = iter(paper_cells)
    for col, our in zip(table.columns, ours, strict=True):
        line.append(our)
        line += [next(it) for _ in col.paper]
    return line


def _attack_notes(table: PaperTable, groups: list[CellGroup]) -> list[str]:
    """Which of our attack entries each attack column combined (labels and step sizes)."""
    notes = []
    for col in table.columns:
        if col.metric.kind != "attack":
            continue
        seen: dict[str, str] = {}
        for group in groups:
            for run in group.runs:
                for entry in matching_attacks(run.results, col.metric.match):
                    step = entry.get("step_size")
                    kind = " adaptive" if entry.get("kind") == "adaptive" else ""
                    detail = f"step {step * 255:.3g}/255" if isinstance(step, float) else ""
                    seen.setdefault(str(entry.get("label")), f"{detail}{kind}".strip())
        if seen:
            listed = ", ".join(f"{k} ({v})" if v else k for k, v in seen.items())
            notes.append(f"{col.label} ← worst of: {listed}.")
        elif groups:
            notes.append(f"{col.label}: not in our runs' evaluation suites.")
    return notes
