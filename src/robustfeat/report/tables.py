"""The report's tables as plain data (title, header, rows of strings, notes), rendered to
Markdown and HTML by ``render``.

- ``paper_table``: one paper's headline table, our cells beside the paper's values;
- ``cells_table``: every cell (clean, each attack, worst case, mCE, train s/epoch, flags);
- ``cam_table``: CAM localisation / sparsity / peakiness / ERF of the cells evaluated with masks;
- ``sweep_table``: one method's settings side by side, the best for accuracy / robustness named;
- ``flags_table``: every gradient-masking flag with its detail, per cell and seed;
- ``perf_tables``: the overhead table and the rest of perf.json;
- ``provenance_table``: git SHAs, package versions and machines of the runs.

Improvement markers (``stats.compare``): ▲ better / ▼ worse than the reference beyond the seeds'
spread, ≈ within it, ? unknown (a side with one seed); ⚠ in place of ▲ on a standard attack that
the cell's own adaptive attacks beat (``masked_column``).
"""

from __future__ import annotations

import glob
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .collect import CellGroup, Run, protocol_group
from .spec import (
    Metric,
    PaperTable,
    PaperValue,
    Row,
    Spec,
    Sweep,
    matching_attacks,
    measure,
    train_seconds,
)
from .stats import MARKERS, MASKED, Stat, compare, format_stat, summarize

LEGEND = (
    "Ours: mean ± sample std over seeds (n = seeds). Markers compare a cell with its reference "
    "row: ▲ better / ▼ worse by more than the seeds' spread (|Δmean| > std₁ + std₂, both with "
    "≥ 2 seeds), ≈ within the spread, ? not decidable (one seed). Only ▲ is called an "
    "improvement. ⚠ replaces ▲ on a standard attack when the cell's own adaptive attacks beat "
    "every standard attack (flag adaptive_attack_stronger): that gain is gradient masking."
)


@dataclass
class Table:
    id: str
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    # HTML only: a spanning header row [(label, columns)] above ``short_header``
    groups: list[tuple[str, int]] | None = None
    short_header: list[str] | None = None


# ------------------------------------------------------------------ shared pieces
def count(n: int, word: str) -> str:
    """``1 run``, ``3 runs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cell_stat(group: CellGroup, metric: Metric) -> Stat | None:
    return summarize(measure(run, metric) for run in group.runs)


def format_measured(stat: Stat | None, metric: Metric) -> str:
    if stat is None:
        return "–"
    if metric.is_fraction:
        return format_stat(stat)
    if metric.kind in ("cam", "eta_last"):
        return format_stat(stat, digits=3, scale=1.0)
    return format_stat(stat, digits=1, scale=1.0) + " s"


def reference_group(candidates: list[CellGroup], group: CellGroup) -> CellGroup | None:
    """The reference cell for ``group``: the one candidate of the same recipe trained with the
    same AT scheme, else (a recipe without one, e.g. cpu-sweeps) the one whose training config is
    the same apart from the method (``training_setup``); other cells are never compared."""
    others = [g for g in candidates if g.at == group.at and g is not group]
    same = [g for g in others if g.recipe == group.recipe] or [
        g for g in others if training_setup(g) == training_setup(group)
    ]
    return same[0] if len(same) == 1 else None


def with_marker(
    text: str, stat: Stat | None, ref: Stat | None, metric: Metric, masked: bool = False
) -> str:
    """``text`` with its verdict against ``ref``; ``masked``: a "better" is shown as ⚠."""
    if stat is None or ref is None:
        return text
    verdict = compare(stat, ref, metric.higher_is_better)
    return f"{text} {MASKED if masked and verdict == 'better' else MARKERS[verdict]}"


def masked_column(group: CellGroup, metric: Metric) -> bool:
    """Whether ``metric`` takes only standard attacks on a cell whose adaptive attacks beat every
    standard one (flag ``adaptive_attack_stronger``): there the standard attacks overstate
    robustness, so a gain under them is no improvement. A column that takes the worst of the
    standard and the adaptive attacks (the papers' tables) is not masked."""
    if metric.kind != "attack":
        return False
    flagged = [
        r
        for r in group.runs
        if any(f.get("name") == "adaptive_attack_stronger" for f in run_flags(r))
    ]
    return bool(flagged) and all(
        a.get("kind") != "adaptive"
        for r in flagged
        for a in matching_attacks(r.results, metric.match)
    )


def seeds_text(group: CellGroup) -> str:
    seeds = [r.seed for r in group.runs if r.seed is not None]
    listed = ",".join(str(s) for s in seeds) if len(seeds) == len(group.runs) else "?"
    return f"{len(group.runs)} ({listed})"


def run_setting(run: Run) -> str:
    """``model on data, N epochs, suite S`` of one run (from its results)."""
    info = run.info
    data = str(info.get("data", "?"))
    data = Path(data.split(":", 1)[-1]).name if ":" in data else data
    text = f"{info.get('model', '?')} on {data}, {info.get('epochs', '?')} epochs"
    text += f", suite {run.results.get('suite', '?')}"
    if run.results.get("labels") == "predicted":
        text += ", robust = prediction unchanged"
    return text


def our_setting(groups: Iterable[CellGroup]) -> str:
    """What our runs were (model, data, epochs, evaluation suite), with run counts."""
    settings = Counter(run_setting(run) for group in groups for run in group.runs)
    return "; ".join(f"{s} ({count(n, 'run')})" for s, n in settings.most_common()) or "no runs"


# ------------------------------------------------------------------ paper tables
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
            ours = [_ours_cell(group, ref, col.metric) for col in table.columns]
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


def _ours_cell(group: CellGroup, ref: CellGroup | None, metric: Metric) -> str:
    stat = cell_stat(group, metric)
    text = format_measured(stat, metric)
    if stat is not None and stat.n < len(group.runs):
        text += f" (n={stat.n})"
    ref_stat = cell_stat(ref, metric) if ref is not None else None
    if metric.ratio_to_reference and stat is not None and ref_stat is not None and ref_stat.mean:
        text += f" (×{stat.mean / ref_stat.mean:.2f})"
    return with_marker(text, stat, ref_stat, metric, masked_column(group, metric))


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


# ------------------------------------------------------------------ all cells
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
    columns = [("Clean", Metric("clean")), ("Train", Metric("train")), ("Gap", Metric("train_gap"))]
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


def flag_summary(group: CellGroup) -> str:
    counts: Counter[str] = Counter()
    for run in group.runs:
        counts.update({f.get("name", "?") for f in run_flags(run)})
    if not any(run_checked(r) for r in group.runs):
        return "not checked"
    return ", ".join(f"{k} ({v}/{len(group.runs)})" for k, v in sorted(counts.items())) or "none"


def divergence_text(group: CellGroup) -> str:
    """Where each seed of a diverged cell went NaN/inf and which loss parts did
    (``seed 0: step 37, loss_l1 non-finite``)."""
    lines = []
    for run in group.runs:
        bad = run.results.get("nonfinite")
        bad = [str(k) for k in bad] if isinstance(bad, list) else []
        text = f"seed {run.seed}: step {run.results.get('step', '?')}"
        lines.append(f"{text}, {', '.join(bad)} non-finite" if bad else text)
    return "; ".join(lines)


def diverged_note(diverged: Iterable[CellGroup]) -> list[str]:
    """One note naming the cells whose training diverged (they have no results)."""
    cells = [f"`{g.key}` ({setting_text(g)}; {divergence_text(g)})" for g in diverged]
    if not cells:
        return []
    return [f"Training diverged (loss NaN/inf, so no results): {'; '.join(cells)}."]


def train_fit_note(metrics: list[tuple[str, Metric]]) -> str:
    if not any(metric.kind == "train" for _, metric in metrics):
        return ""
    return (
        "Train: accuracy on the un-augmented training images (eval mode, against the labels "
        "trained on), Gap: Train − Clean; "
    )


def cells_table(groups: list[CellGroup], spec: Spec, diverged: Sequence[CellGroup] = ()) -> Table:
    metrics = generic_metrics(groups)
    header = ["Cell", "Method", "AT", "Seeds", *[label for label, _ in metrics], "Flags"]
    rows = []
    for group in groups:
        ref = generic_reference(groups, group, spec.reference_cell)
        line = [group.key, group.method or "?", group.at or "–", seeds_text(group)]
        for _, metric in metrics:
            stat = cell_stat(group, metric)
            text = format_measured(stat, metric)
            if stat is not None and stat.n < len(group.runs):
                text += f" (n={stat.n})"
            if not metric.descriptive and ref is not None:
                ref_stat = cell_stat(ref, metric)
                text = with_marker(text, stat, ref_stat, metric, masked_column(group, metric))
            line.append(text)
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


# ------------------------------------------------------------------ CAM quality
CAM_COLUMNS = (
    ("Clean", Metric("clean")),
    ("IoU (best thr.)", Metric("cam", field="iou_best")),
    ("IoU @ 0.5", Metric("cam", field="iou_fixed")),
    ("L1 sparsity", Metric("cam", field="sparsity_l1")),
    ("Neg. peakiness", Metric("cam", field="neg_peakiness")),
    ("ERF distance", Metric("cam", field="erf_distance")),
    ("Biased-distribution acc.", Metric("shift")),
)
SIZE_KEYS = ("n_train", "n_test")  # data_args that change the amount of data, not the task


def run_config(run: Run) -> dict[str, Any]:
    """The training config recorded in results.json (else the run's config.yaml)."""
    config = run.info.get("config")
    return config if isinstance(config, dict) else run.config


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


def cam_table(groups: list[CellGroup], spec: Spec) -> Table | None:
    """CAM localisation and shape metrics of every cell evaluated with masks (the ``shapes``
    suite), each compared with the CE cell trained on the same data; None without such cells."""
    with_cam = [g for g in groups if any(isinstance(r.results.get("cam"), dict) for r in g.runs)]
    if not with_cam:
        return None
    columns = [(label, m) for label, m in CAM_COLUMNS if any(cell_stat(g, m) for g in with_cam)]
    rows = []
    for group in with_cam:
        ref = same_data_reference(with_cam, group, spec.reference_cell)
        line = [group.key, group.method or "?", data_variant(group), seeds_text(group)]
        line += [_ours_cell(group, ref, metric) for _, metric in columns]
        rows.append(line)
    notes = [
        f"Our runs: {our_setting(with_cam)}.",
        "CAM: the class map of the ground-truth class (the classifier as a 1x1 convolution; "
        "Top-GAP: its own class maps), upsampled and min-max normalised, on the first 1000 "
        "test images. IoU against the objects' masks at the best threshold of 0.05-0.95 and at "
        "0.5 (higher is better); L1 sparsity = mean of that map (Top-GAP Sec. 4.2, lower = "
        "sparser); negative peakiness = max - mean of the 4 highest-scoring negative classes' "
        "raw maps (HNC's flat negatives: lower; raw units, so compare within a method family); "
        "ERF distance = centre minus corner mean |gradient| of the class map w.r.t. the input, "
        "z-normalised (Top-GAP Def. 4.1, higher = the centre matters more).",
        "Top-GAP's paper (COCO / Oxford / CUB, other networks): ERF distance 0.01-0.27 standard "
        "vs 0.24-0.53 Top-GAP (Table 2), L1 0.11-0.39 vs 0.03-0.19 (Table A3), IoU 0.10-0.37 vs "
        "0.35-0.44 (Table A4) -- direction only, not comparable numbers.",
        "Clean = accuracy on the test split; cells trained with spurious backgrounds "
        "(spurious_p) are tested on random backgrounds, so Clean is their shifted accuracy and "
        "'Biased-distribution acc.' their accuracy on fresh images of the biased training "
        "distribution.",
        "Markers compare each cell with the CE cell of the same recipe and data options.",
        LEGEND,
    ]
    header = ["Cell", "Method", "Data options", "Seeds", *[label for label, _ in columns]]
    return Table("cam", "CAM quality (shapes)", header, rows, notes)


# ------------------------------------------------------------------ sweeps
def setting_text(group: CellGroup) -> str:
    """The method options a cell sets (``k 16, lam 0.1``); the rest are the method's defaults."""
    args = run_config(group.runs[0]).get("method_args")
    if not isinstance(args, dict) or not args:
        return "defaults"
    return ", ".join(f"{k} {v if isinstance(v, str) else json.dumps(v)}" for k, v in args.items())


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
    line += [_ours_cell(group, ref, c.metric) for c in sweep.columns]
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


# ------------------------------------------------------------------ flags
def run_flags(run: Run) -> list[dict[str, Any]]:
    flags = run.results.get("flags")
    return [f for f in flags if isinstance(f, dict)] if isinstance(flags, list) else []


def run_checked(run: Run) -> bool:
    """Whether the run's suite ran gradient-masking checks at all (else no flag means nothing)."""
    checks = run.results.get("checks")
    return bool(checks) or bool(run_flags(run))


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


# ------------------------------------------------------------------ performance
def _ratio(value: Any) -> float | None:
    """A ratio from perf.json: a number, or a dict holding one (median / ratio / value / mean)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        for key in ("median", "ratio", "value", "mean"):
            if isinstance(value.get(key), (int, float)):
                return float(value[key])
    return None


def goal_text(goal: dict[str, Any]) -> str:
    parts = []
    if "max" in goal:
        parts.append(f"≤ {goal['max']:.2f}×")
    if "min" in goal:
        parts.append(f"≥ {goal['min']:.2f}")
    if goal.get("note"):
        parts.append(str(goal["note"]))
    return "; ".join(parts) or "–"


def _spread(value: Any) -> tuple[float, float] | None:
    """[q1, q3] of a ratio over the benchmark's rounds, if perf.json gives one."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = (_ratio(v) for v in value)
        if low is not None and high is not None:
            return low, high
    return None


def meets(
    value: float | None,
    goal: dict[str, Any],
    flop: float | None,
    slack: float,
    spread: tuple[float, float] | None = None,
) -> str:
    """Verdict "yes" / "no" at the median, "(within spread)" added when the verdict differs at the
    two ends of the ratio's interquartile range over rounds (every check is monotone in the
    ratio), i.e. a bound that decides it (the goal's or the FLOP slack's) lies inside the
    noise."""
    verdict = _verdict(value, goal, flop, slack)
    if spread and verdict != "–":
        low, high = (_verdict(end, goal, flop, slack) for end in spread)
        if low != high:
            verdict += " (within spread)"
    return verdict


def _verdict(value: float | None, goal: dict[str, Any], flop: float | None, slack: float) -> str:
    checks = []
    if value is not None and "max" in goal:
        checks.append(value <= goal["max"])
    if value is not None and "min" in goal:
        checks.append(value >= goal["min"])
    if value is not None and flop:
        checks.append(value / flop <= slack)
    if not checks:
        return "–"
    return "yes" if all(checks) else "no"


def _fmt(value: float | None, suffix: str = "×") -> str:
    return "–" if value is None else f"{value:.2f}{suffix}"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def overhead_row(
    label: str,
    value: float | None,
    flop: float | None,
    goal: dict[str, Any],
    slack: float,
    spread: tuple[float, float] | None = None,
) -> list[str]:
    """Measured ratio and its spread, FLOP-implied ratio, their quotient, the goal and whether
    it is met."""
    return [
        label,
        _fmt(value),
        "–" if spread is None else f"{spread[0]:.2f}-{spread[1]:.2f}",
        _fmt(flop),
        _fmt(value / flop if value is not None and flop else None, ""),
        goal_text(goal) + (f"; within {100 * (slack - 1):.0f}% of FLOPs" if flop else ""),
        meets(value, goal, flop, slack, spread),
    ]


def overhead_table(perf: dict[str, Any], goals: dict[str, Any]) -> Table:
    vs_ce = _mapping(perf.get("step_time_ratio_vs_ce"))
    flops = _mapping(perf.get("flop_ratio_vs_ce"))
    vs_at = _mapping(perf.get("step_time_ratio_vs_at"))
    spreads = _mapping(perf.get("step_time_ratio_spread_vs_ce"))
    slack = float(goals.get("flop_slack", 1.10))
    ce_goals = goals.get("step_time_ratio_vs_ce") or {}
    at_goals = goals.get("step_time_ratio_vs_at") or {}
    methods = list(dict.fromkeys([*ce_goals, *vs_ce, *flops]))
    header = [
        "Method",
        "Step time ÷ CE",
        "Spread (IQR)",
        "FLOP-implied ratio",
        "Measured ÷ FLOPs",
        "Goal",
        "Meets goal",
    ]
    rows = []
    for name in methods:
        value, flop = _ratio(vs_ce.get(name)), _ratio(flops.get(name))
        if value is None and flop is None:
            continue
        goal = ce_goals.get(name) or {}
        rows.append(overhead_row(name, value, flop, goal, slack, _spread(spreads.get(name))))
    for name, raw in vs_at.items():
        # a plain ratio keyed by method ("cifs"), or {"step", "spread", "flops"} keyed by cell
        # ("cifs+fgsm_rs", as benchmarks/perf.py writes it)
        parts = raw if isinstance(raw, dict) else {"step": raw}
        value, flop = _ratio(parts.get("step")), _ratio(parts.get("flops"))
        method, _, scheme = name.partition("+")
        label = f"{name} (÷ ce+{scheme})" if scheme else f"{name} + AT (÷ AT)"
        goal = at_goals.get(name) or at_goals.get(method) or {}
        rows.append(overhead_row(label, value, flop, goal, slack, _spread(parts.get("spread"))))
    notes = [
        "Training-step time of each method relative to CE on the same model and batch "
        "(interleaved; the median over rounds of each round's own ratio, and its interquartile "
        "range), beside the ratio its extra FLOPs imply: a ratio far above its FLOP ratio is a "
        'slow implementation, not an expensive method. "Within spread": a goal bound lies '
        "inside the interquartile range, so the verdict could flip with the machine's noise."
    ]
    machine = perf.get("machine")
    if isinstance(machine, dict) and machine:
        notes.append("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".")
    return Table("overhead", "Training overhead vs CE", header, rows, notes)


PERF_HANDLED = (
    "schema",
    "machine",
    "step_time_ratio_vs_ce",
    "step_time_ratio_spread_vs_ce",
    "flop_ratio_vs_ce",
    "step_time_ratio_vs_at",
    "peak_rss_mb",
)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Dotted key -> text for any JSON value (lists of scalars kept as compact JSON)."""
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, float):
        return [(prefix, f"{value:.4g}")]
    if isinstance(value, (list, tuple)):
        return [(prefix, json.dumps(value, separators=(",", ":"))[:200])]
    return [(prefix, str(value))]


def perf_tables(perf: dict[str, Any], goals: dict[str, Any]) -> list[Table]:
    tables = [overhead_table(perf, goals)]
    other = {
        k: v
        for k, v in perf.items()
        if k not in PERF_HANDLED or (k not in ("schema", "machine") and not isinstance(v, dict))
    }
    goal_rows = []
    for key in list(other):
        if key in goals and _ratio(other[key]) is not None:
            value = _ratio(other.pop(key))
            goal_rows.append(
                [key, _fmt(value, ""), goal_text(goals[key]), meets(value, goals[key], None, 1.0)]
            )
    if goal_rows:
        tables.append(
            Table(
                "throughput",
                "Evaluation throughput and framework overhead",
                ["Quantity", "Measured", "Goal", "Meets goal"],
                goal_rows,
            )
        )
    rss = perf.get("peak_rss_mb")
    if isinstance(rss, dict) and rss:
        tables.append(
            Table(
                "memory",
                "Peak memory",
                ["Method", "Peak RSS (MB)"],
                [[k, _fmt(_ratio(v), "")] for k, v in rss.items()],
            )
        )
    if other:
        tables.append(
            Table(
                "perf_other",
                "Other perf.json entries",
                ["Key", "Value"],
                [list(kv) for kv in flatten(other)],
            )
        )
    return tables


STEP_CLASSES = {
    "conv_fwd": "Conv fwd",
    "conv_bwd": "Conv bwd",
    "batchnorm": "BN",
    "other_ops": "Other ops",
    "optimizer": "Optim.",
    "data": "Data",
    "framework": "Framework",
}


def step_setting_label(setting: dict[str, Any]) -> str:
    """ "cpu recipe, 1 thread, compile False": the overrides of the cpu recipe a row ran with."""
    threads = setting.get("threads", 2)
    parts = [f"{threads} thread{'' if threads == 1 else 's'}"]
    parts += [f"{k} {v}" for k, v in setting.items() if k != "threads"]
    return "cpu recipe, " + ", ".join(parts)


def _ratio_with_spread(value: Any) -> str:
    ratio = _ratio(value)
    if ratio is None:
        return "–"
    if isinstance(value, dict) and isinstance(value.get("q1"), (int, float)):
        return f"{ratio:.2f}× ({value['q1']:.2f}-{value.get('q3', ratio):.2f})"
    return _fmt(ratio)


def step_profile_table(profile: dict[str, Any]) -> Table:
    """benchmarks/step_profile.py: the ResNet-20 step's speed ratios and where its time goes."""
    header = [
        "Setting",
        "img/s ÷ baseline",
        "Per-core img/s ÷ 1 thread",
        "Per-core img/s ÷ CE",
        "ms/step",
        *STEP_CLASSES.values(),
    ]
    rows = []
    for cell in profile.get("in_process") or []:
        prof = _mapping(cell.get("profile"))
        shares = _mapping(prof.get("share"))
        wall = _ratio(prof.get("profiled_wall_ms_per_step"))
        rows.append(
            [
                step_setting_label(_mapping(cell.get("setting"))),
                _ratio_with_spread(cell.get("ratio_vs_baseline")),
                _ratio_with_spread(cell.get("cpu_ratio_vs_one_thread_baseline")),
                _ratio_with_spread(cell.get("cpu_ratio_vs_ce")),
                "–" if wall is None else f"{wall:.0f}",
                *(
                    "–" if _ratio(shares.get(k)) is None else f"{100 * shares[k]:.0f}%"
                    for k in STEP_CLASSES
                ),
            ]
        )
    side = _mapping(profile.get("side_by_side"))
    if side:
        rows.append(
            [
                "2 one-thread processes at once (total)",
                _ratio_with_spread(side.get("ratio")),
                *["–"] * (len(header) - 2),
            ]
        )
    loads = [_ratio(v) for v in (profile.get("load_average_at_start") or [])[:1]]
    loads += [_ratio(v) for v in (profile.get("load_average_at_end") or [])[:1]]
    notes = [
        "ResNet-20 CE, the trainer's step with its loader (benchmarks/step_profile.py, "
        f"{profile.get('mode', '?')} grid). Baseline: the cpu recipe as its results were trained "
        "(batch 128, bf16, channels_last, compile) on 2 threads. img/s ÷ baseline: wall time, "
        "interleaved in one process (median of the rounds' own ratios, IQR); per core: one-thread "
        "rows by the thread's CPU time, which other processes' load does not inflate, vs the cpu "
        "recipe on one thread or vs CE with the same settings (above 1: faster); the class "
        "columns: shares of the profiled step (self time of each class's outermost operators; "
        "BN includes the ReLU / add inductor fuses into it). "
        "Last row: two one-thread processes vs one two-thread process, total img/s, alternating.",
        "throughput_ratio_vs_baseline "
        f"{_fmt(_ratio(profile.get('throughput_ratio_vs_baseline')))}; 1-minute load average "
        + " → ".join("?" if v is None else f"{v:.1f}" for v in loads)
        + " (a shared machine: a two-thread process loses most to preemption).",
    ]
    return Table("step_profile", "Training step profile (ResNet-20 CE)", header, rows, notes)


# ------------------------------------------------------------------ provenance
def _distinct(runs: list[Run], get: Callable[[Run], Any]) -> Counter[str]:
    return Counter(str(get(r)) for r in runs)


def provenance_table(groups: list[CellGroup], perf: dict[str, Any] | None) -> Table:
    runs = [r for g in groups for r in g.runs]
    shas = _distinct(runs, lambda r: r.info.get("git_sha", "unknown"))
    rows = [
        [
            "git SHA",
            sha,
            f"{count(n, 'run')}: "
            + ", ".join(
                sorted(
                    {
                        g.key
                        for g in groups
                        for r in g.runs
                        if str(r.info.get("git_sha", "unknown")) == sha
                    }
                )
            ),
        ]
        for sha, n in shas.most_common()
    ]
    packages: dict[str, Counter[str]] = {}
    for run in runs:
        versions = run.info.get("versions")
        for name, version in versions.items() if isinstance(versions, dict) else ():
            packages.setdefault(name, Counter())[str(version)] += 1
    for name, counts in packages.items():
        rows.append(
            ["package", name, ", ".join(f"{v} ({count(n, 'run')})" for v, n in counts.items())]
        )
    machines = _distinct(runs, lambda r: _machine_text(r.info.get("machine")))
    rows += [["machine", text, count(n, "run")] for text, n in machines.most_common()]
    if perf is not None:
        rows.append(["machine (perf.json)", _machine_text(perf.get("machine")), "perf benchmark"])
    train = sum(train_seconds(r) or 0.0 for r in runs)
    evaluate = sum(float(r.info.get("eval_seconds") or 0) for r in runs)
    rows.append(
        [
            "wall time",
            f"train {train / 3600:.2f} h, eval {evaluate / 3600:.2f} h",
            count(len(runs), "run"),
        ]
    )
    notes = []
    if len(shas) > 1:
        notes.append(
            f"⚠ The runs come from {len(shas)} different git SHAs: code changed "
            "between cells; compare with care."
        )
    if any(sha.endswith("+dirty") for sha in shas):
        notes.append("⚠ Some runs were made from a working tree with uncommitted changes (+dirty).")
    mixed = [name for name, counts in packages.items() if len(counts) > 1]
    if mixed:
        notes.append(f"⚠ Package versions differ between runs: {', '.join(mixed)}.")
    return Table("provenance", "Provenance", ["What", "Value", "Runs"], rows, notes)


def _machine_text(machine: Any) -> str:
    if not isinstance(machine, dict):
        return "unknown"
    keys = ("cpu", "cpu_count", "torch_threads", "gpu", "host")
    parts = [f"{k} {machine[k]}" for k in keys if machine.get(k) not in (None, "")]
    return ", ".join(parts) or "unknown"
