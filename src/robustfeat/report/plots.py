"""The report's figures (matplotlib, Agg; no pyplot state), each from the runs' results.json and
metrics.jsonl, as PNG bytes. A figure without data is skipped (None), never drawn empty.

Every curve is the mean over a cell's seeds with a ±1 std band where there are >= 2 seeds.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..config import SELECTION_CRITERIA
from .collect import CellGroup, Run
from .spec import Sweep, train_seconds
from .stats import Stat, summarize
from .tables.common import cell_stat

Series = dict[float, list[float]]  # x -> the seeds' y values
EPS_TICKS = (0.5, 1, 2, 4, 8, 16, 32, 64, 127.5)  # 127.5: the sweep's LARGE_EPS = 0.5


@dataclass
class Plot:
    id: str
    title: str
    caption: str
    png: bytes


def colors(groups: list[CellGroup]) -> dict[str, Any]:
    """One colour per cell, the same in every figure."""
    cmap = colormaps["tab10" if len(groups) <= 10 else "tab20"]
    return {g.key: cmap(i % cmap.N) for i, g in enumerate(groups)}


def to_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def draw_series(ax: Axes, series: Series, label: str, color: Any, marker: str = "o") -> None:
    xs = sorted(series)
    stats = [summarize(series[x]) for x in xs]
    points = [(x, s) for x, s in zip(xs, stats, strict=True) if s is not None]
    if not points:
        return
    x = [p[0] for p in points]
    mean = [p[1].mean for p in points]
    ax.plot(x, mean, marker=marker, markersize=3, label=label, color=color)
    if all(p[1].std is not None for p in points):
        low = [p[1].mean - p[1].std for p in points]
        high = [p[1].mean + p[1].std for p in points]
        ax.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)


def add_point(series: Series, x: Any, y: Any) -> None:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        series.setdefault(float(x), []).append(float(y))


def new_figure(
    n_axes: int, height: float = 3.2, width: float | None = None
) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width or min(4.6 * n_axes, 14), height))
    axes = [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]
    return fig, axes


def finish(fig: Figure, axes: list[Axes]) -> bytes:
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)


# ------------------------------------------------------------------ robust accuracy vs eps
def _sweep_series(run: Run, series: Series) -> None:
    sweep = (run.results.get("checks") or {}).get("eps_sweep") or {}
    for point in sweep.get("points") or []:
        if isinstance(point, dict):
            add_point(series, (point.get("eps") or 0) * 255, point.get("accuracy"))


def _attack_families(run: Run) -> dict[tuple[str, Any], Series]:
    """Standard attacks of one (name, steps) at several eps (e.g. HNC's FGSM sweep)."""
    families: dict[tuple[str, Any], Series] = {}
    for entry in run.results.get("attacks") or []:
        if isinstance(entry, dict) and entry.get("kind") != "adaptive":
            key = (str(entry.get("name")), entry.get("steps"))
            add_point(
                families.setdefault(key, {}), (entry.get("eps") or 0) * 255, entry.get("accuracy")
            )
    return {k: v for k, v in families.items() if len(v) >= 2}


def eps_plot(groups: list[CellGroup], palette: dict[str, Any]) -> bytes | None:
    panels: dict[str, dict[str, Series]] = {}  # panel title -> cell -> series
    for group in groups:
        for run in group.runs:
            sweep: Series = {}
            _sweep_series(run, sweep)
            if sweep:
                _merge(panels.setdefault("PGD ε-sweep (masking check)", {}), group.key, sweep)
            for (name, steps), series in _attack_families(run).items():
                title = f"{name.upper()}" + (f"-{steps}" if steps and steps > 1 else "")
                _merge(panels.setdefault(title, {}), group.key, series)
    if not panels:
        return None
    xs = {t: [x for series in by_cell.values() for x in series] for t, by_cell in panels.items()}
    fig, axes = new_figure(len(panels))
    for ax, (title, by_cell) in zip(axes, panels.items(), strict=True):
        for key, series in by_cell.items():
            draw_series(ax, series, key, palette[key])
        ax.set_xscale("log")
        ticks = [t for t in EPS_TICKS if min(xs[title]) <= t <= max(xs[title])]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("ε (×1/255)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=9)
    return finish(fig, axes)


def _merge(target: dict[str, Series], key: str, series: Series) -> None:
    mine = target.setdefault(key, {})
    for x, ys in series.items():
        mine.setdefault(x, []).extend(ys)


# ------------------------------------------------------------------ corruption severity
def severity_plot(groups: list[CellGroup], palette: dict[str, Any]) -> bytes | None:
    fig, axes = new_figure(1)
    drawn = False
    for group in groups:
        series: Series = {}
        for run in group.runs:
            corruptions = run.results.get("corruptions") or {}
            clean_error = corruptions.get("clean_error")
            if isinstance(clean_error, (int, float)):
                add_point(series, 0, 1 - clean_error)
            for severity, error in enumerate(corruptions.get("per_severity") or [], 1):
                if isinstance(error, (int, float)):
                    add_point(series, severity, 1 - error)
        if series:
            draw_series(axes[0], series, group.key, palette[group.key])
            drawn = True
    if not drawn:
        return None
    axes[0].set_xlabel("corruption severity (0 = clean)")
    axes[0].set_ylabel("accuracy (mean over corruptions)")
    return finish(fig, axes)


# ------------------------------------------------------------------ training curves
def epoch_series(group: CellGroup, key: str) -> Series:
    series: Series = {}
    for run in group.runs:
        for record in run.epochs:
            add_point(series, record.get("epoch"), record.get(key))
    return series


def training_plot(groups: list[CellGroup], palette: dict[str, Any]) -> bytes | None:
    keys = [("loss", "training loss"), ("train_acc", "training accuracy")]
    if not any(epoch_series(g, k) for g in groups for k, _ in keys):
        return None
    fig, axes = new_figure(2)
    for ax, (key, label) in zip(axes, keys, strict=True):
        for group in groups:
            draw_series(ax, epoch_series(group, key), group.key, palette[group.key])
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    return finish(fig, axes)


def selection_plot(groups: list[CellGroup], palette: dict[str, Any]) -> bytes | None:
    """The per-epoch validation score of ``select_best`` runs (one panel per criterion)."""
    criteria = [f"val_{c}" for c in reversed(SELECTION_CRITERIA)]
    keys = [k for k in criteria if any(epoch_series(g, k) for g in groups)]
    if not keys:
        return None
    fig, axes = new_figure(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        for group in groups:
            series = epoch_series(group, key)
            if series:
                draw_series(ax, series, group.key, palette[group.key])
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {key.removeprefix('val_')} accuracy")
    return finish(fig, axes)


# ------------------------------------------------------------------ cost of robustness
def _stat_of(group: CellGroup, get: Callable[[Run], Any]) -> Stat | None:
    return summarize(v for v in map(get, group.runs) if isinstance(v, (int, float)))


def cost_plot(groups: list[CellGroup], palette: dict[str, Any]) -> bytes | None:
    fig, axes = new_figure(1, height=3.8)
    ax = axes[0]
    drawn = False
    for group in groups:
        minutes = _stat_of(group, _train_minutes)
        if minutes is None:
            continue
        for get, marker in ((_clean, "o"), (_worst_case, "^")):
            acc = _stat_of(group, get)
            if acc is None:
                continue
            ax.errorbar(
                minutes.mean,
                acc.mean,
                xerr=minutes.std or 0,
                yerr=acc.std or 0,
                marker=marker,
                color=palette[group.key],
                capsize=2,
                linestyle="none",
            )
            if marker == "o":
                ax.annotate(
                    group.key,
                    (minutes.mean, acc.mean),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("training time (minutes, this machine)")
    ax.set_ylabel("accuracy (● clean, ▲ worst case)")
    ax.set_ylim(-0.02, 1.02)
    return finish(fig, axes)


def _train_minutes(run: Run) -> float | None:
    seconds = train_seconds(run)
    return None if seconds is None else seconds / 60


def _clean(run: Run) -> Any:
    return (run.results.get("clean") or {}).get("accuracy")


def _worst_case(run: Run) -> Any:
    worst = run.results.get("worst_case") or {}
    return worst.get("accuracy") if worst.get("attack") not in (None, "clean") else None


# ------------------------------------------------------------------ L-ALFA eta
def eta_keys(group: CellGroup) -> list[str]:
    keys: dict[str, None] = {}
    for run in group.runs:
        for record in run.epochs:
            for k, v in record.items():
                if k.startswith("eta") and isinstance(v, (int, float)):
                    keys.setdefault(k, None)
    return list(keys)


def eta_plot(groups: list[CellGroup], palette: dict[str, Any]) -> bytes | None:
    with_eta = [(g, eta_keys(g)) for g in groups]
    with_eta = [(g, keys) for g, keys in with_eta if keys]
    if not with_eta:
        return None
    fig, axes = new_figure(len(with_eta))
    cmap = colormaps["viridis"]
    for ax, (group, keys) in zip(axes, with_eta, strict=True):
        for i, key in enumerate(keys):
            draw_series(ax, epoch_series(group, key), key, cmap(i / max(len(keys) - 1, 1)))
        ax.set_title(group.key, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("η (perturbation magnitude)")
    return finish(fig, axes)


# ------------------------------------------------------------------ per-class robustness
def _per_class(run: Run, label: str) -> dict[str, float]:
    for entry in run.results.get("attacks") or []:
        if isinstance(entry, dict) and entry.get("label") == label:
            per_class = entry.get("per_class")
            if isinstance(per_class, dict):
                return {k: v for k, v in per_class.items() if isinstance(v, (int, float))}
    return {}


def per_class_plot(groups: list[CellGroup], palette: dict[str, Any]) -> bytes | None:
    """Per-class robust accuracy under PGD-20 (else the first attack with per-class numbers)."""
    labels: dict[str, None] = {}
    for group in groups:
        for run in group.runs:
            for entry in run.results.get("attacks") or []:
                if (
                    isinstance(entry, dict)
                    and entry.get("kind") != "adaptive"
                    and isinstance(entry.get("per_class"), dict)
                ):
                    labels.setdefault(str(entry.get("label")), None)
    if not labels:
        return None
    label = "pgd20" if "pgd20" in labels else next(iter(labels))
    by_cell: dict[str, dict[str, list[float]]] = {}
    for group in groups:
        for run in group.runs:
            for cls, acc in _per_class(run, label).items():
                by_cell.setdefault(group.key, {}).setdefault(cls, []).append(acc)
    classes = list(dict.fromkeys(c for per in by_cell.values() for c in per))
    bars = {key: [summarize(per.get(c, [])) for c in classes] for key, per in by_cell.items()}
    return grouped_bars(classes, bars, palette, f"robust accuracy ({label})")


def grouped_bars(
    categories: list[str],
    bars: dict[str, list[Stat | None]],
    palette: dict[str, Any],
    ylabel: str,
) -> bytes:
    """One group of bars per category, one bar (mean ± std) per series in each, on [0, 1]."""
    fig, axes = new_figure(1, height=3.4, width=min(3 + 0.5 * len(categories) * len(bars), 14))
    ax = axes[0]
    width = 0.8 / len(bars)
    for i, (key, stats) in enumerate(bars.items()):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(categories))]
        ax.bar(
            xs,
            [s.mean if s else 0 for s in stats],
            width,
            yerr=[s.std or 0 if s else 0 for s in stats],
            color=palette[key],
            label=key,
            capsize=1.5,
        )
    ax.set_xticks(range(len(categories)), categories, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    return finish(fig, axes)


def sweep_plot(sweep: Sweep, groups: list[CellGroup]) -> Plot | None:
    """The sweep's cells side by side: its accuracy and robustness columns (as its table)."""
    members = sweep.members(groups)
    if len(members) < 2:
        return None
    keys = list(dict.fromkeys([sweep.accuracy, *sweep.robustness]))
    columns = [sweep.column(k) for k in keys]
    bars = {c.label: [cell_stat(g, c.metric) for g in members] for c in columns}
    cmap = colormaps["tab10"]
    palette = {c.label: cmap(i % cmap.N) for i, c in enumerate(columns)}
    png = grouped_bars([g.key for g in members], bars, palette, "accuracy")
    caption = (
        f"{sweep.title}: each cell's {', '.join(c.label for c in columns)} "
        "(mean ± std over seeds), as in the sweep's table."
    )
    return Plot(f"sweep-{sweep.id}", sweep.title, caption, png)


FIGURES: tuple[tuple[str, str, str, Callable[..., bytes | None]], ...] = (
    (
        "eps",
        "Robust accuracy vs ε",
        "Per cell: the PGD ε-sweep of the gradient-masking check and any attack run at several ε "
        "(mean ± std over seeds). A sound model falls to ~0 at large ε.",
        eps_plot,
    ),
    (
        "severity",
        "Accuracy vs corruption severity",
        "Mean accuracy over the 15 CIFAR-10-C corruptions per severity (0 = the same images "
        "uncorrupted).",
        severity_plot,
    ),
    (
        "training",
        "Training curves",
        "Per-epoch training loss and accuracy from metrics.jsonl (on the training "
        "distribution, augmented / adversarial as the method trains).",
        training_plot,
    ),
    (
        "selection",
        "Validation accuracy per epoch (best-epoch selection)",
        "Runs trained with select_best: the validation split's score after every epoch "
        "(PGD-10 at 8/255 for the adversarial-training cells); the best epoch is evaluated "
        "beside the last (CIFS Fig. 4: robust overfitting shows as a peak before the end).",
        selection_plot,
    ),
    (
        "cost",
        "Accuracy vs training time (the cost of robustness)",
        "Clean and worst-case accuracy against total training time on this (shared) machine.",
        cost_plot,
    ),
    (
        "per_class",
        "Per-class robust accuracy",
        "Robust accuracy of each class under the suite's PGD-20, else its first attack with "
        "per-class numbers (CIFS, Fig. A.1: adversarial training leaves some classes, e.g. cat, "
        "far less robust).",
        per_class_plot,
    ),
    (
        "eta",
        "L-ALFA η over epochs",
        "The learned perturbation magnitude η of each perturbed site per epoch (metrics.jsonl "
        "``eta``; ALFA Fig. 4: the last block's η should dominate).",
        eta_plot,
    ),
)


def make_plots(groups: list[CellGroup]) -> list[Plot]:
    palette = colors(groups)
    plots = []
    for plot_id, title, caption, fn in FIGURES:
        png = fn(groups, palette)
        if png is not None:
            plots.append(Plot(plot_id, title, caption, png))
    return plots
