"""``robustfeat bench``: a benchmark matrix of methods x adversarial-training schemes x seeds.

A recipe's ``bench:`` section lists the cells::

    bench:
      seeds: [0, 1, 2]          # default seeds of every cell
      cells:
        - method: ce
        - {name: hnc_mse, method: hnc, args: {variant: mse}}
        - {method: cifs, at: fgsm_rs, seeds: [0], set: {lr: 0.1}}

Each (cell, seed) trains into ``<runs>/<recipe>/<cell>/seed<k>`` (weights stay there) and its
results are copied to ``<results>/<recipe>/<cell>/seed<k>/`` (results.json, config.yaml,
metrics.jsonl; no weights) — the committed record. A cell whose results exist is skipped; an
interrupted one resumes from its last checkpoint.

A cell whose loss goes NaN/inf (``TrainingDiverged``) is a result too: ``diverged.json`` (schema
``robustfeat.diverged/1``: the step, the loss parts and which were non-finite, the message,
provenance) is published with its config.yaml and metrics.jsonl in place of results.json, the
matrix goes on with the next cell, and the report lists it (a sweep says which setting diverged,
and where). Such a cell is skipped like a finished one; delete its diverged.json to train it
again.
"""

from __future__ import annotations

import fnmatch
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from . import io
from .config import load_recipe, make_config, read_yaml, recipe_path, type_name, value_fits
from .errors import ConfigError
from .io import safe_name
from .methods import check_method_options
from .provenance import provenance
from .rundir import RunDir

if TYPE_CHECKING:
    from .config import TrainConfig
    from .train import TrainingDiverged

RESULT_FILES = ("config.yaml", "metrics.jsonl", "results.json")  # results.json last: marks done
DIVERGED_FILE = "diverged.json"
DIVERGED_SCHEMA = "robustfeat.diverged/1"
# bench cell keys and the types their values must have
CELL_KEYS: dict[str, Any] = {
    "name": str,
    "method": str,
    "at": str | None,
    "args": dict | None,
    "at_args": dict | None,
    "set": dict | None,
    "seeds": list[int],
}


@dataclass
class Cell:
    name: str
    method: str
    args: dict[str, Any] = field(default_factory=dict)
    at: str | None = None
    at_args: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: dict[str, Any] = field(default_factory=dict)

    def config_layer(self, seed: int) -> dict[str, Any]:
        return {
            **self.overrides,
            "method": self.method,
            "method_args": self.args,
            "at": self.at,
            "at_args": self.at_args,
            "seed": seed,
        }


def cell_name(method: str, at: str | None) -> str:
    return f"{method}+{at}" if at else method


def parse_cells(bench: dict[str, Any], recipe: str) -> list[Cell]:
    if not isinstance(bench, dict) or not isinstance(bench.get("cells"), list):
        raise ConfigError(f"recipe {recipe!r} has no `bench: {{cells: [...]}}` section to run")
    default_seeds = bench.get("seeds", [0])
    if not value_fits(default_seeds, list[int]):
        raise ConfigError(
            f"bench seeds of {recipe!r} must be a list of integers, got {default_seeds!r}"
        )
    cells: list[Cell] = []
    for i, raw in enumerate(bench["cells"]):
        if not isinstance(raw, dict) or "method" not in raw:
            raise ConfigError(f"bench cell {i} of {recipe!r} must be a mapping with a `method`")
        unknown = set(raw) - set(CELL_KEYS)
        if unknown:
            raise ConfigError(
                f"bench cell {i} of {recipe!r}: unknown key(s) {sorted(unknown)}; "
                f"valid: {sorted(CELL_KEYS)}"
            )
        for key, hint in CELL_KEYS.items():
            if key in raw and not value_fits(raw[key], hint):
                raise ConfigError(
                    f"bench cell {i} of {recipe!r}: {key} must be {type_name(hint)}, "
                    f"got {raw[key]!r}"
                )
        cell = Cell(
            name=raw.get("name") or cell_name(raw["method"], raw.get("at")),
            method=raw["method"],
            args=raw.get("args") or {},
            at=raw.get("at"),
            at_args=raw.get("at_args") or {},
            seeds=list(raw.get("seeds", default_seeds)),
            overrides=raw.get("set") or {},
        )
        safe_name(cell.name, f"bench cell name (cell {i} of {recipe!r})")
        cells.append(cell)
    names = [c.name for c in cells]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"bench cells of {recipe!r} share names {duplicates}; give each a `name`")
    return cells


def recipe_cells(recipe: str) -> list[Cell]:
    """The cells of a recipe's ``bench:`` section."""
    return parse_cells(read_yaml(recipe_path(recipe)).get("bench"), recipe)


def select(cells: list[Cell], only: list[str] | None, flag: str = "--only") -> list[Cell]:
    """Cells whose name matches any of the ``only`` patterns (shell globs), in recipe order."""
    if not only:
        return cells
    chosen = [c for c in cells if any(fnmatch.fnmatchcase(c.name, pat) for pat in only)]
    if not chosen:
        raise ConfigError(
            f"{flag} {only} matches no cell; cells: {', '.join(c.name for c in cells)}"
        )
    return chosen


def finished(target: Path) -> str | None:
    """How the run published at ``target`` finished: ``"done"`` (results.json), ``"diverged"``
    (diverged.json) or None."""
    if (target / "results.json").exists():
        return "done"
    return "diverged" if (target / DIVERGED_FILE).exists() else None


@dataclass(frozen=True)
class PlannedRun:
    """One (cell, seed) of a recipe: its config, where it trains (``run``, weights stay there),
    where its record is published (``target``) and how it finished if it did (``done``)."""

    cell: Cell
    seed: int
    key: str
    cfg: TrainConfig
    run: Path
    target: Path
    done: str | None

    def row(self, status: str) -> dict[str, Any]:
        """The bench summary's row of this run."""
        return {"cell": self.cell.name, "seed": self.seed, "status": status}

    def announce(self, dry_run: bool) -> str:
        """What the bench prints of this run before it runs (or would): finished, or where it
        starts (an interrupted run resumes from its last checkpoint)."""
        if self.done:
            return self.done
        progress = RunDir(self.run).progress()
        if progress is None:
            return "would run" if dry_run else "running"
        step, total = progress
        if step == total:  # cut during its final evaluation
            return "trained, would evaluate" if dry_run else "trained, evaluating"
        where = f"at step {step} of {total} ({step / total:.0%})"
        return f"would resume {where}" if dry_run else f"resuming {where}"


def plan(
    recipe: str,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    results_dir: Path = Path("benchmarks/results"),
    runs_dir: Path = Path("runs/bench"),
) -> list[PlannedRun]:
    """Every selected run of a recipe, in recipe order, each config validated up front (a bad
    cell fails before anything runs)."""
    base, label = load_recipe(recipe), recipe_label(recipe)
    rows = []
    for cell in select(recipe_cells(recipe), only):
        for seed in seeds if seeds is not None else cell.seeds:
            cfg = make_config(base, cell.config_layer(seed), {"progress": False})
            check_method_options(cfg.method, cfg.method_args)
            part = Path(label) / cell.name / f"seed{seed}"
            target = results_dir / part
            key = run_key(label, cell, seed)
            rows.append(PlannedRun(cell, seed, key, cfg, runs_dir / part, target, finished(target)))
    return rows


def recipe_label(recipe: str) -> str:
    return safe_name(Path(recipe).stem, "recipe name")


def run_bench(
    recipe: str,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    dry_run: bool = False,
    runs_dir: Path = Path("runs/bench"),
    results_dir: Path = Path("benchmarks/results"),
) -> list[dict[str, Any]]:
    console = Console()
    summary = []
    for planned in plan(recipe, only, seeds, results_dir, runs_dir):
        console.print(f"[bold]{planned.key}[/]: {planned.announce(dry_run)}")
        if planned.done or dry_run:
            summary.append(planned.row(planned.done or "would run"))
            continue
        outcome = run_one(planned.cfg, planned.run, planned.target)
        if outcome["status"] == "diverged":
            console.print(f"[yellow]{planned.key}: diverged[/] ({outcome['message']})")
        summary.append({**planned.row(outcome["status"]), **outcome})
    return summary


def run_key(label: str, cell: Cell, seed: int) -> str:
    """How a run is named in the bench's output: ``<recipe>/<cell>/seed<k>``."""
    return f"{label}/{cell.name}/seed{seed}"


def run_one(cfg: TrainConfig, run: Path, target: Path) -> dict[str, Any]:
    """Train one (cell, seed) into ``run`` (resuming from its last checkpoint) and publish it to
    ``target``: ``{"status": "ran", "clean": ...}`` or ``{"status": "diverged", "step": ...,
    "message": ...}``."""
    from .train import TrainingDiverged, train

    try:
        results = train(cfg, run, resume=True)
    except TrainingDiverged as err:
        publish_divergence(run, target, err)
        return {"status": "diverged", "step": err.step, "message": str(err)}
    publish(run, target)
    return {"status": "ran", "clean": results["clean"]["accuracy"]}


def _copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


def publish(run: Path, target: Path) -> None:
    """Copy a finished run's committed record (no weights) next to the other results."""
    target.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        _copy(run / name, target / name)


def publish_divergence(run: Path, target: Path, err: TrainingDiverged) -> None:
    """Publish a diverged run: its config.yaml and metrics.jsonl (up to the last logged step)
    and ``diverged.json`` (written last: it marks the cell finished)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES[:-1]:
        if (run / name).is_file():
            _copy(run / name, target / name)
    record = {
        "schema": DIVERGED_SCHEMA,
        "step": err.step,
        "parts": {k: v if math.isfinite(v) else str(v) for k, v in err.parts.items()},
        "nonfinite": err.nonfinite,
        "message": str(err),
        "provenance": provenance(),
    }
    io.write_json(target / DIVERGED_FILE, record)
