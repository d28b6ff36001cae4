"""What every table of the report shares: the ``Table`` record (title, header, rows of strings,
notes) that ``render`` turns into Markdown and HTML, the legend, and the facts of a cell that
several tables show: its seeds, setting, flags and divergence, and one measured cell of ours
(mean ± std with its marker against a reference: ``ours_cell``).

Improvement markers (``stats.compare``): ▲ better / ▼ worse than the reference beyond the seeds'
spread, ≈ within it, ? unknown (a side with one seed); ⚠ in place of ▲ on a standard attack that
the cell's own adaptive attacks beat (``masked_column``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..collect import CellGroup, Run
from ..spec import Metric, matching_attacks, measure
from ..stats import MARKERS, MASKED, Stat, compare, format_stat, summarize

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


def compared(metric: Metric) -> bool:
    """Whether a cell's ``metric`` is set against its reference: every metric that makes a model
    better or worse, and a descriptive one (train time / fit) only where its column asks for the
    ratio to the reference (the papers' s/epoch: ``(×1.32) ≈``)."""
    return not metric.descriptive or metric.ratio_to_reference


def ours_cell(group: CellGroup, ref: CellGroup | None, metric: Metric) -> str:
    """The one format of a measured cell of ours in every table: mean ± std over the seeds
    (``format_measured``), ``(n=k)`` where only k of them measured it, then, where ``compared``
    and ``ref`` is given, ``(×r)`` of the reference's mean on a ``ratio_to_reference`` column and
    the marker against the reference (``with_marker``, ⚠ on a masked gain)."""
    stat = cell_stat(group, metric)
    text = format_measured(stat, metric)
    if stat is not None and stat.n < len(group.runs):
        text += f" (n={stat.n})"
    if ref is None or not compared(metric):
        return text
    ref_stat = cell_stat(ref, metric)
    if metric.ratio_to_reference and stat is not None and ref_stat is not None and ref_stat.mean:
        text += f" (×{stat.mean / ref_stat.mean:.2f})"
    return with_marker(text, stat, ref_stat, metric, masked_column(group, metric))


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


def run_flags(run: Run) -> list[dict[str, Any]]:
    flags = run.results.get("flags")
    return [f for f in flags if isinstance(f, dict)] if isinstance(flags, list) else []


def run_checked(run: Run) -> bool:
    """Whether the run's suite ran gradient-masking checks at all (else no flag means nothing)."""
    checks = run.results.get("checks")
    return bool(checks) or bool(run_flags(run))


def flag_summary(group: CellGroup) -> str:
    counts: Counter[str] = Counter()
    for run in group.runs:
        counts.update({f.get("name", "?") for f in run_flags(run)})
    if not any(run_checked(r) for r in group.runs):
        return "not checked"
    return ", ".join(f"{k} ({v}/{len(group.runs)})" for k, v in sorted(counts.items())) or "none"


def run_config(run: Run) -> dict[str, Any]:
    """The training config recorded in results.json (else the run's config.yaml)."""
    config = run.info.get("config")
    return config if isinstance(config, dict) else run.config


def setting_text(group: CellGroup) -> str:
    """The method options a cell sets (``k 16, lam 0.1``); the rest are the method's defaults."""
    args = run_config(group.runs[0]).get("method_args")
    if not isinstance(args, dict) or not args:
        return "defaults"
    return ", ".join(f"{k} {v if isinstance(v, str) else json.dumps(v)}" for k, v in args.items())


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
