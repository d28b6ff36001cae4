"""The claims table (issue 30): each seed paper's headline claim, the paper's figure, ours at
each training budget (the 10-epoch cpu recipes, the converged protocol), and a verdict.

The claims and where each is measured live in ``claims.yaml`` (data, not code). A claim compares
a cell with a reference cell of the same recipe by the tables' improvement rule
(``stats.compare``: ▲ / ≈ / ▼ / ?), or, for a claim about a value (``threshold``), asks whether
the value lies above the threshold beyond the seeds' spread. The verdict reads the last budget.
A ▲ reproduces the claim only when our change is at least ``REPRODUCED_SHARE`` of the paper's
(``paper_change``, in points): a gain of half a point beyond a tight seed spread does not
reproduce a paper's twelve, and the table says so ("in direction only").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .collect import CellGroup
from .spec import Metric, load_yaml, need, parse_metric
from .stats import MARKERS, Stat, compare
from .tables.common import Table, cell_stat, format_measured

DEFAULT_CLAIMS = Path(__file__).with_name("claims.yaml")
# what each outcome of the improvement rule says of a claim that a method improves a metric
VERDICTS = {
    "better": "reproduces",
    "worse": "does not (worse)",
    "within_spread": "does not (within the seeds' spread)",
    "unknown": "inconclusive (one seed)",
}
NOT_RUN = "not run yet"
REPRODUCED_SHARE = 0.5  # of the paper's change that ours must reach to reproduce it


@dataclass(frozen=True)
class Place:
    """Where a claim is measured at one budget."""

    recipe: str
    cell: str
    reference: str | None


@dataclass(frozen=True)
class Claim:
    paper: str
    claim: str
    figure: str
    metric: Metric
    at: dict[str, Place]  # budget -> place
    threshold: float | None = None
    paper_change: tuple[float, float] | None = None  # the paper's (reference, method), in %


@dataclass(frozen=True)
class Claims:
    budgets: tuple[str, ...]
    claims: tuple[Claim, ...]


def _place(raw: Any, where: str, value_claim: bool) -> Place:
    reference = raw.get("reference") if isinstance(raw, dict) else None
    if value_claim == (reference is not None):
        want = "no `reference` (it has a threshold)" if value_claim else "a `reference`"
        raise ConfigError(f"{where}: needs {want}")
    return Place(str(need(raw, "recipe", where)), str(need(raw, "cell", where)), reference)


def _claim(raw: Any, index: int, budgets: tuple[str, ...]) -> Claim:
    where = f"claim {index}"
    threshold = raw.get("threshold") if isinstance(raw, dict) else None
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise ConfigError(f"{where}: threshold must be a number, got {threshold!r}")
    change = raw.get("paper_change") if isinstance(raw, dict) else None
    if change is not None and not (
        isinstance(change, list)
        and len(change) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in change)
    ):
        raise ConfigError(f"{where}: paper_change must be [reference, method] numbers (in %)")
    at = need(raw, "at", where)
    if not isinstance(at, dict) or not set(at) <= set(budgets):
        raise ConfigError(f"{where}: `at` maps budgets ({', '.join(budgets)}) to places")
    claim = Claim(
        paper=str(need(raw, "paper", where)),
        claim=str(need(raw, "claim", where)),
        figure=str(need(raw, "figure", where)),
        metric=parse_metric(need(raw, "metric", where), where),
        at={b: _place(p, f"{where} at {b!r}", threshold is not None) for b, p in at.items()},
        threshold=None if threshold is None else float(threshold),
        paper_change=None if change is None else (float(change[0]), float(change[1])),
    )
    if claim.paper_change is not None and paper_gain(claim.paper_change, claim.metric) <= 0:
        raise ConfigError(
            f"{where}: paper_change {list(claim.paper_change)} is no improvement of its metric "
            f"({'higher' if claim.metric.higher_is_better else 'lower'} is better)"
        )
    return claim


def paper_gain(change: tuple[float, float], metric: Metric) -> float:
    """The paper's change (reference, method) in points, positive when it improves ``metric``."""
    before, after = change
    return after - before if metric.higher_is_better else before - after


def comparison_verdict(claim: Claim, stat: Stat, ref: Stat) -> tuple[str, str]:
    """(marker, verdict) of a cell against its reference: the tables' rule, and a ▲ reproduces
    when our gain (points) reaches ``REPRODUCED_SHARE`` of the paper's, else in direction only
    (without a paper_change, any ▲ reproduces)."""
    outcome = compare(stat, ref, claim.metric.higher_is_better)
    marker = MARKERS[outcome]
    if outcome != "better" or claim.paper_change is None:
        return marker, VERDICTS[outcome]
    scale = 100.0 if claim.metric.is_fraction else 1.0
    ours = paper_gain((ref.mean * scale, stat.mean * scale), claim.metric)
    paper = paper_gain(claim.paper_change, claim.metric)
    if ours >= REPRODUCED_SHARE * paper:
        return marker, VERDICTS[outcome]
    return marker, f"in direction only (better by {ours:.1f} points; the paper: by {paper:.1f})"


def load_claims(path: str | Path = DEFAULT_CLAIMS) -> Claims:
    data = load_yaml(path)
    budgets = need(data, "budgets", str(path))
    if not isinstance(budgets, list) or not budgets or not all(isinstance(b, str) for b in budgets):
        raise ConfigError(f"{path}: `budgets` must be a non-empty list of names")
    raw = need(data, "claims", str(path))
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: `claims` must be a list")
    return Claims(tuple(budgets), tuple(_claim(c, i, tuple(budgets)) for i, c in enumerate(raw)))


def threshold_verdict(stat: Stat, threshold: float) -> str:
    """Above ``threshold`` beyond the seeds' spread (mean − std > threshold)?"""
    if stat.std is None:
        return VERDICTS["unknown"]
    if stat.mean - stat.std > threshold:
        return VERDICTS["better"]
    if stat.mean + stat.std < threshold:
        return "does not (below)"
    return VERDICTS["within_spread"]


def measured(
    claim: Claim, place: Place | None, groups: dict[tuple[str, str], CellGroup]
) -> tuple[str, str]:
    """(text for the table, verdict) of one claim at one budget."""
    group = groups.get((place.recipe, place.cell)) if place else None
    stat = cell_stat(group, claim.metric) if group else None
    if place is None or stat is None:
        return NOT_RUN, NOT_RUN
    text = f"{format_measured(stat, claim.metric)} (n={stat.n})"
    if claim.threshold is not None:
        return f"{text}; above {claim.threshold:g}?", threshold_verdict(stat, claim.threshold)
    ref_group = groups.get((place.recipe, str(place.reference)))
    ref = cell_stat(ref_group, claim.metric) if ref_group else None
    if ref is None:
        return f"{text}; {place.reference} not run", NOT_RUN
    marker, verdict = comparison_verdict(claim, stat, ref)
    ref_text = f"{format_measured(ref, claim.metric)} (n={ref.n})"
    return f"{ref_text} → {text} {marker}", verdict


def claims_table(claims: Claims, groups: list[CellGroup]) -> Table | None:
    """The claims table, or None when no claim has been measured at any budget."""
    by_place = {(g.recipe or "", g.cell): g for g in groups}
    header = ["Paper", "Claim", "Paper's figure", *[f"Ours, {b}" for b in claims.budgets]]
    header.append(f"Verdict ({claims.budgets[-1]})")
    rows = []
    for claim in claims.claims:
        found = [measured(claim, claim.at.get(b), by_place) for b in claims.budgets]
        rows.append(
            [claim.paper, claim.claim, claim.figure, *[text for text, _ in found], found[-1][1]]
        )
    if all(text == NOT_RUN for row in rows for text in row[3 : 3 + len(claims.budgets)]):
        return None
    notes = [
        "Ours: reference → cell, mean ± sample std over seeds in % (η: a fraction), n = seeds; "
        "the marker is the tables' rule (▲ better / ▼ worse beyond the seeds' spread, ≈ within "
        "it, ? one seed). The verdict reads the last budget: reproduces only on ▲ with at least "
        f"{REPRODUCED_SHARE:.0%} of the paper's change in points (a smaller ▲: in direction "
        "only; the settings differ, so the share is a floor, not a match). An attack claim "
        "reads, per seed, the lowest accuracy of every attack run with its settings, adaptive "
        "variants included, so it can sit below the tables' column of the standard attack.",
        "Places: "
        + "; ".join(
            f"{b}: " + ", ".join(sorted({c.at[b].recipe for c in claims.claims if b in c.at}))
            for b in claims.budgets
        )
        + " (robustfeat/report/claims.yaml).",
    ]
    return Table("claims", "The papers' claims, rerun", header, rows, notes)
