"""The performance tables from ``perf.json`` and ``step_profile.json``: training overhead vs CE
beside the FLOP-implied ratio and the goals of ``perf_goals.yaml`` (``overhead_table``), the
other measured quantities, peak memory and the rest of perf.json (``perf_tables``), and the
ResNet-20 step profile (``step_profile_table``)."""

from __future__ import annotations

import json
from typing import Any

from .common import Table


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
