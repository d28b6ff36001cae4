"""Find evaluated runs and group them into cells.

A run is a directory holding ``results.json`` (schema ``robustfeat.results/1``), with optional
siblings ``metrics.jsonl`` and ``config.yaml``. In the committed benchmark layout
``<recipe>/<cell>/seed<k>/results.json`` the cell and recipe come from the path; any other run
directory is its own cell (named after the directory), in no recipe. A bench cell whose training
diverged has ``diverged.json`` (schema ``robustfeat.diverged/1``) instead of results.json: it is
collected apart (``Collection.diverged``), so the tables can say which setting diverged, and where.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import io, reads
from ..config import read_yaml_document
from ..errors import CheckpointError, ConfigError

RESULTS_SCHEMA = "robustfeat.results/1"
PERF_SCHEMA = "robustfeat.perf/1"
STEP_PROFILE_SCHEMA = "robustfeat.step_profile/1"  # benchmarks/step_profile.py, beside perf.json
DIVERGED_SCHEMA = "robustfeat.diverged/1"
DIVERGED_FILE = "diverged.json"
SEED_DIR = re.compile(r"seed(\d+)$")


@dataclass
class Run:
    path: Path  # the results.json file
    recipe: str | None
    cell: str
    seed: int | None
    results: dict[str, Any]
    epochs: list[dict[str, Any]] = field(default_factory=list)  # epoch-end metrics.jsonl records
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> dict[str, Any]:
        """The results' ``run`` block (method, at, model, data, epochs, provenance, times)."""
        run = self.results.get("run")
        return run if isinstance(run, dict) else {}


@dataclass
class CellGroup:
    """Every seed of one (recipe, cell)."""

    recipe: str | None
    cell: str
    runs: list[Run]

    @property
    def key(self) -> str:
        return f"{self.recipe}/{self.cell}" if self.recipe else self.cell

    @property
    def at(self) -> str | None:
        values = {r.info.get("at") for r in self.runs}
        return values.pop() if len(values) == 1 else None

    @property
    def method(self) -> str | None:
        values = {r.info.get("method") for r in self.runs}
        return values.pop() if len(values) == 1 else None

    @property
    def identity(self) -> str:
        """``method[+at]`` as the bench would name the cell, for runs outside the bench layout."""
        method = self.method or self.cell
        return f"{method}+{self.at}" if self.at else method


@dataclass
class Collection:
    runs: list[Run]
    perf: dict[str, Any] | None = None
    perf_path: Path | None = None
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    diverged: list[Run] = field(default_factory=list)  # results = the diverged.json record
    step_profile: dict[str, Any] | None = None


def read_json(path: Path) -> Any:
    try:
        return io.read_json(path)
    except (OSError, CheckpointError) as err:
        raise ConfigError(f"cannot read {path} as JSON: {err}") from err


def read_epoch_records(path: Path) -> list[dict[str, Any]]:
    """Epoch-end records of a metrics.jsonl (the ones with ``img_per_s`` / ``train_seconds``);
    unreadable lines (a run killed mid-write) are skipped."""
    if not path.is_file():
        return []
    records = []
    try:
        text = reads.read_text(path, reads.MAX_LOG_BYTES)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "epoch" in record and "train_seconds" in record:
            records.append(flatten_record(record))
    return records


def flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    """Nested per-epoch values one level deep as ``key/sub`` (L-ALFA logs
    ``"eta": {site: value}``)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update({f"{key}/{sub}": v for sub, v in value.items()})
        else:
            out[key] = value
    return out


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = read_yaml_document(path)
    except ConfigError:
        return {}
    return data if isinstance(data, dict) else {}


def locate(results_path: Path, results: dict[str, Any]) -> tuple[str | None, str, int | None]:
    """(recipe, cell, seed) of a results.json from its place in the tree."""
    run_dir = results_path.parent.resolve()
    match = SEED_DIR.fullmatch(run_dir.name)
    if match:
        return run_dir.parent.parent.name, run_dir.parent.name, int(match.group(1))
    seed = (results.get("run") or {}).get("seed")
    return None, run_dir.name, seed if isinstance(seed, int) else None


def find_json(paths: Iterable[str | Path]) -> list[Path]:
    """Every results.json under the given directories, plus JSON files named directly."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(path.rglob("results.json"))
        else:
            raise ConfigError(f"{path} does not exist (expected a results directory or file)")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def find_diverged(paths: Iterable[str | Path]) -> list[Run]:
    """The diverged bench cells (``diverged.json``) under the given directories."""
    runs = []
    for raw in paths:
        path = Path(raw)
        for found in sorted(path.rglob(DIVERGED_FILE)) if path.is_dir() else []:
            data = read_json(found)
            if not isinstance(data, dict) or data.get("schema") != DIVERGED_SCHEMA:
                raise ConfigError(f"{found} is not a {DIVERGED_SCHEMA} record")
            recipe, cell, seed = locate(found, data)
            runs.append(
                Run(
                    found, recipe, cell, seed, data, [], read_config(found.with_name("config.yaml"))
                )
            )
    return runs


def find_perf(paths: Iterable[str | Path]) -> Path | None:
    """perf.json in a given directory or its parent (benchmarks/results/cpu ->
    benchmarks/results/perf.json)."""
    for raw in paths:
        path = Path(raw).resolve()
        base = path if path.is_dir() else path.parent
        for candidate in (base / "perf.json", base.parent / "perf.json"):
            if candidate.is_file():
                return candidate
    return None


def read_step_profile(perf_path: Path | None) -> dict[str, Any] | None:
    """step_profile.json beside perf.json, when there is one of that schema."""
    path = perf_path.parent / "step_profile.json" if perf_path else None
    if path is None or not path.is_file():
        return None
    data = read_json(path)
    return data if isinstance(data, dict) and data.get("schema") == STEP_PROFILE_SCHEMA else None


def collect(paths: Iterable[str | Path], perf: str | Path | None = None) -> Collection:
    """Load every run (and the perf benchmark) found under ``paths``."""
    paths = list(paths)
    runs: list[Run] = []
    skipped: list[str] = []
    perf_data, perf_path = None, None
    for path in find_json(paths):
        data = read_json(path)
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema == PERF_SCHEMA:
            perf_data, perf_path = data, path
            continue
        if schema == STEP_PROFILE_SCHEMA:  # read beside perf.json
            continue
        if schema != RESULTS_SCHEMA:
            skipped.append(f"{path}: schema {schema!r}, expected {RESULTS_SCHEMA!r}")
            continue
        recipe, cell, seed = locate(path, data)
        runs.append(
            Run(
                path=path,
                recipe=recipe,
                cell=cell,
                seed=seed,
                results=data,
                epochs=read_epoch_records(path.parent / "metrics.jsonl"),
                config=read_config(path.parent / "config.yaml"),
            )
        )
    if perf is not None:
        perf_path = Path(perf)
        if not perf_path.is_file():
            raise ConfigError(f"--perf {perf_path} does not exist")
        perf_data = read_json(perf_path)
    elif perf_data is None:
        perf_path = find_perf(paths)
        perf_data = read_json(perf_path) if perf_path else None
    if perf_data is not None and (
        not isinstance(perf_data, dict) or perf_data.get("schema") != PERF_SCHEMA
    ):
        skipped.append(f"{perf_path}: not a {PERF_SCHEMA!r} file")
        perf_data, perf_path = None, None
    if not runs:
        raise ConfigError(
            f"no results.json ({RESULTS_SCHEMA}) found under {', '.join(map(str, paths))}"
        )
    for line in skipped:
        print(f"robustfeat report: skipped {line}", file=sys.stderr)
    return Collection(
        runs, perf_data, perf_path, skipped, find_diverged(paths), read_step_profile(perf_path)
    )


def protocol_group(group: CellGroup, suite: str) -> CellGroup | None:
    """The cell's weights evaluated again under another ``suite``: ``<suite>.json`` beside each
    results.json (``robustfeat eval RUN --suite SUITE --out .../SUITE.json``); None if no seed
    has one."""
    runs = []
    for run in group.runs:
        path = run.path.with_name(f"{suite}.json")
        if not path.is_file():
            continue
        data = read_json(path)
        if not isinstance(data, dict) or (data.get("schema"), data.get("suite")) != (
            RESULTS_SCHEMA,
            suite,
        ):
            raise ConfigError(f"{path} is not a {RESULTS_SCHEMA} evaluation with suite {suite!r}")
        runs.append(Run(path, run.recipe, run.cell, run.seed, data, run.epochs, run.config))
    return CellGroup(group.recipe, f"{group.cell} [{suite}]", runs) if runs else None


def group(runs: list[Run]) -> list[CellGroup]:
    """Runs grouped by (recipe, cell), seeds in order; groups sorted by recipe, then cell."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.recipe or "", run.cell), []).append(run)
    return [
        CellGroup(recipe or None, cell, sorted(rs, key=lambda r: (r.seed is None, r.seed or 0)))
        for (recipe, cell), rs in sorted(groups.items())
    ]
