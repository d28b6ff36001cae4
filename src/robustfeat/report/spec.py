"""The paper tables and the cell -> row mapping as data (``paper_values.yaml``), and what a
column measures on one run.

See the YAML's header for the format. Everything about which paper row a cell fills, which
attack a column means and what the paper reported lives in the YAML; this module only reads
it (validating every field, so a typo is a clear ConfigError) and evaluates metrics.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import read_yaml_document
from ..errors import ConfigError
from .collect import CellGroup, Run
from .stats import parse_eps

DEFAULT_TABLES = Path(__file__).with_name("paper_values.yaml")
DEFAULT_PERF_GOALS = Path(__file__).with_name("perf_goals.yaml")
METRIC_KINDS = (
    "clean",
    "clean_error",
    "topk",
    "attack",
    "mce",
    "worst_case",
    "train_s_per_epoch",
    "cam",
    "shift",
    "train",  # accuracy on the un-augmented training images (results["train"])
    "train_gap",  # train - clean test accuracy
    "memorised",  # label noise: the share of mislabelled training images fitted to the wrong label
    "eta_last",  # L-ALFA: the learned η of its deepest site at the end of training
)
# results["cam"] fields (robustfeat.interpret.metrics.cam_quality) and which way is better:
# IoU and ERF distance up; L1 sparsity (Top-GAP Sec. 4.2) and negative-CAM peakiness (HNC) down
CAM_FIELDS = {
    "iou_best": True,
    "iou_fixed": True,
    "sparsity_l1": False,
    "neg_peakiness": False,
    "erf_distance": True,
}
# dataset families by the name in a run's data spec (``cifar10``, ``zip:.../cifar10-jpeg.zip``):
# the papers' tables take runs on these (a table may list its own); a user's own data fills none
DATASET_FAMILIES = (
    ("cifar100", re.compile(r"cifar[-_]?100(?!\d)")),
    ("cifar10", re.compile(r"cifar[-_]?10(?!\d)")),
)
PAPER_DATASETS = ("cifar10", "cifar100")
EPOCHS = ("last", "best")  # which weights of a run: the final ones, or the best epoch's
MATCH_KEYS = ("name", "eps", "steps", "restarts", "norm", "label", "loss", "kind")
EPS_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Metric:
    kind: str
    match: dict[str, Any] = field(default_factory=dict)
    error: bool = False  # show 1 - accuracy
    k: int = 1  # topk (clean or under the attack)
    ratio_to_reference: bool = False
    epoch: str = "last"
    field: str | None = None  # cam: a CAM_FIELDS key; shift: a shift set (None: the lowest)

    @property
    def higher_is_better(self) -> bool:
        if self.kind == "cam":
            return CAM_FIELDS[str(self.field)]
        return not (self.error or self.kind in ("clean_error", "mce", "train_s_per_epoch"))

    @property
    def descriptive(self) -> bool:
        """Describes the training (time, fit of the train set), not a better or worse model:
        shown without an improvement marker, unless its column is a ratio to the reference
        (``tables.common.compared``)."""
        return self.kind in ("train_s_per_epoch", "train", "train_gap", "memorised")

    @property
    def is_fraction(self) -> bool:
        """Accuracies and errors (shown in %), as opposed to seconds or plain CAM scores."""
        return self.kind not in ("train_s_per_epoch", "cam", "eta_last")


@dataclass(frozen=True)
class PaperValue:
    value: float
    std: float | None = None
    approx: bool = False
    src: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class SubColumn:
    key: str
    label: str


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    metric: Metric
    paper: tuple[SubColumn, ...]


@dataclass(frozen=True)
class Row:
    label: str
    cells: tuple[str, ...]
    reference: str | None
    paper: dict[str, PaperValue | None]

    def matches(self, group: CellGroup) -> bool:
        names = (group.cell,) if group.recipe else (group.cell, group.identity)
        return any(fnmatch.fnmatchcase(n, pat) for pat in self.cells for n in names)


@dataclass(frozen=True)
class PaperTable:
    id: str
    title: str
    source: str
    paper_setting: str
    paper_scale: float  # multiply the paper's numbers by this to get percent
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...]
    exclude_recipes: tuple[str, ...] = ()  # globs over bench recipes kept out of the rows
    datasets: tuple[str, ...] = PAPER_DATASETS  # dataset families whose runs may fill the rows

    def takes(self, group: CellGroup) -> bool:
        """Whether the group may fill this table: trained on one of its datasets, and from a
        recipe not excluded (runs outside a recipe always may)."""
        if dataset_family(group_data(group)) not in self.datasets:
            return False
        return group.recipe is None or not any(
            fnmatch.fnmatchcase(group.recipe, pat) for pat in self.exclude_recipes
        )

    def row(self, label: str) -> Row:
        for row in self.rows:
            if row.label == label:
                return row
        raise ConfigError(f"table {self.id!r} has no row {label!r}")


@dataclass(frozen=True)
class Sweep:
    """One method's settings side by side (a hyperparameter sweep or an ablation), ranked."""

    id: str
    title: str
    cells: tuple[str, ...]  # globs over cell names
    recipes: tuple[str, ...]  # globs over recipes whose cells count
    reference: str | None  # group key (``recipe/cell``) the markers compare against
    columns: tuple[Column, ...]
    accuracy: str  # column key the best-for-accuracy setting is ranked by
    # column keys the best-for-robustness setting is ranked by, ties broken by the next
    robustness: tuple[str, ...]
    claim: tuple[str, str] | None  # (paper table id, row label) whose values close the table
    notes: tuple[str, ...]
    protocol: str | None = None  # a suite some cells were re-evaluated with (<suite>.json)

    def takes(self, group: CellGroup) -> bool:
        return (
            group.recipe is not None
            and any(fnmatch.fnmatchcase(group.recipe, pat) for pat in self.recipes)
            and any(fnmatch.fnmatchcase(group.cell, pat) for pat in self.cells)
        )

    def column(self, key: str) -> Column:
        return next(c for c in self.columns if c.key == key)

    def members(self, groups: list[CellGroup]) -> list[CellGroup]:
        return [g for g in groups if self.takes(g)]


@dataclass(frozen=True)
class Spec:
    tables: tuple[PaperTable, ...]
    reference_cell: str
    sweeps: tuple[Sweep, ...] = ()

    def table(self, table_id: str) -> PaperTable:
        for table in self.tables:
            if table.id == table_id:
                return table
        raise ConfigError(f"no paper table {table_id!r}; tables: {[t.id for t in self.tables]}")


def dataset_family(data: str | None) -> str | None:
    """``cifar10`` / ``cifar100`` for a run's data spec (the dataset's name or its file's), else
    None (the user's own data, shapes, ...)."""
    name = Path(str(data or "")).name.lower()
    return next((family for family, pattern in DATASET_FAMILIES if pattern.search(name)), None)


def group_data(group: CellGroup) -> str | None:
    """The data spec the group's runs trained on (None if they differ or do not say)."""
    values = {str(r.info.get("data")) for r in group.runs}
    return values.pop() if len(values) == 1 else None


# ------------------------------------------------------------------ reading the YAML
def need(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ConfigError(f"{where}: missing `{key}`")
    return mapping[key]


def parse_metric(raw: Any, where: str) -> Metric:
    kind = need(raw, "kind", where)
    if kind not in METRIC_KINDS:
        raise ConfigError(
            f"{where}: unknown metric kind {kind!r}; valid: {', '.join(METRIC_KINDS)}"
        )
    match = dict(raw.get("match") or {})
    unknown = sorted(set(match) - set(MATCH_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown match key(s) {unknown}; valid: {list(MATCH_KEYS)}")
    if kind == "attack" and not match:
        raise ConfigError(f"{where}: an attack metric needs a `match`")
    if "eps" in match:
        match["eps"] = parse_eps(match["eps"])
    epoch = raw.get("epoch", "last")
    if epoch not in EPOCHS:
        raise ConfigError(f"{where}: epoch is {epoch!r}; valid: {', '.join(EPOCHS)}")
    field_name = raw.get("field")
    if kind == "cam" and field_name not in CAM_FIELDS:
        raise ConfigError(
            f"{where}: a cam metric needs `field`, one of {', '.join(CAM_FIELDS)}; "
            f"got {field_name!r}"
        )
    return Metric(
        kind=kind,
        match=match,
        error=bool(raw.get("error", False)),
        k=int(raw.get("k", 1)),
        ratio_to_reference=bool(raw.get("ratio_to_reference", False)),
        epoch=epoch,
        field=None if field_name is None else str(field_name),
    )


def _paper_value(raw: Any, where: str) -> PaperValue | None:
    if raw is None:
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return PaperValue(float(raw))
    if isinstance(raw, dict) and isinstance(raw.get("value"), (int, float)):
        std = raw.get("std")
        return PaperValue(
            float(raw["value"]),
            None if std is None else float(std),
            bool(raw.get("approx", False)),
            raw.get("src"),
            raw.get("note"),
        )
    raise ConfigError(f"{where}: a paper value is a number, null or {{value, std, src, note}}")


def _globs(raw: Any, where: str, key: str = "exclude_recipes") -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ConfigError(f"{where}: `{key}` must be a list of names or shell globs")
    return tuple(raw)


def _columns(raw: Any, where: str) -> tuple[Column, ...]:
    columns = []
    for j, col in enumerate(need(raw, "columns", where)):
        cw = f"{where} column {j}"
        key = need(col, "key", cw)
        subs = col.get("paper") or [{"key": key, "label": "paper"}]
        columns.append(
            Column(
                key=key,
                label=need(col, "label", cw),
                metric=parse_metric(need(col, "metric", cw), f"{cw} ({key})"),
                paper=tuple(SubColumn(need(s, "key", cw), need(s, "label", cw)) for s in subs),
            )
        )
    return tuple(columns)


def _table(raw: Any, i: int, exclude_recipes: tuple[str, ...]) -> PaperTable:
    """One table; ``exclude_recipes``: the file's default, unless the table sets its own."""
    where = f"table {i}"
    table_id = need(raw, "id", where)
    where = f"table {table_id!r}"
    columns = _columns(raw, where)
    paper_keys = {s.key for c in columns for s in c.paper}
    rows = []
    for j, row in enumerate(need(raw, "rows", where)):
        rw = f"{where} row {j}"
        label = need(row, "label", rw)
        paper = row.get("paper") or {}
        unknown = sorted(set(paper) - paper_keys)
        if unknown:
            raise ConfigError(
                f"{where} row {label!r}: paper values for unknown column(s) {unknown}; "
                f"columns: {sorted(paper_keys)}"
            )
        rows.append(
            Row(
                label=label,
                cells=tuple(str(c) for c in row.get("cells") or ()),
                reference=row.get("reference"),
                paper={k: _paper_value(v, f"{rw} {k}") for k, v in paper.items()},
            )
        )
    labels = [r.label for r in rows]
    for row in rows:
        if row.reference is not None and row.reference not in labels:
            raise ConfigError(
                f"{where} row {row.label!r}: reference {row.reference!r} is not a row; "
                f"rows: {labels}"
            )
    unit = raw.get("paper_unit", "percent")
    if unit not in ("percent", "fraction"):
        raise ConfigError(f"{where}: paper_unit must be percent or fraction, got {unit!r}")
    return PaperTable(
        id=table_id,
        title=need(raw, "title", where),
        source=str(raw.get("source", "")).strip(),
        paper_setting=str(raw.get("paper_setting", "")),
        paper_scale=100.0 if unit == "fraction" else 1.0,
        columns=tuple(columns),
        rows=tuple(rows),
        notes=tuple(raw.get("notes") or ()),
        exclude_recipes=(
            _globs(raw["exclude_recipes"], where) if "exclude_recipes" in raw else exclude_recipes
        ),
        datasets=_globs(raw["datasets"], where, "datasets")
        if "datasets" in raw
        else PAPER_DATASETS,
    )


def _sweep(raw: Any, i: int, tables: tuple[PaperTable, ...]) -> Sweep:
    where = f"sweep {i}"
    sweep_id = need(raw, "id", where)
    where = f"sweep {sweep_id!r}"
    columns = _columns(raw, where)
    keys = [c.key for c in columns]
    accuracy = need(raw, "accuracy", where)
    robustness = tuple(need(raw, "robustness", where))
    unknown = sorted({accuracy, *robustness} - set(keys))
    if unknown:
        raise ConfigError(f"{where}: ranks by unknown column(s) {unknown}; columns: {keys}")
    claim = raw.get("claim")
    if claim is not None:
        table_id, label = need(claim, "table", where), need(claim, "row", where)
        by_id = {t.id: t for t in tables}
        if table_id not in by_id:
            raise ConfigError(f"{where}: claim table {table_id!r} is not one of {sorted(by_id)}")
        by_id[table_id].row(label)  # a ConfigError naming the rows if absent
        claim = (table_id, label)
    protocol = raw.get("protocol")
    if protocol is not None and (not isinstance(protocol, str) or "/" in protocol):
        raise ConfigError(f"{where}: `protocol` is an evaluation suite's name, got {protocol!r}")
    return Sweep(
        id=sweep_id,
        title=need(raw, "title", where),
        cells=_globs(need(raw, "cells", where), where, "cells"),
        recipes=_globs(raw.get("recipes", ["*"]), where, "recipes"),
        reference=raw.get("reference"),
        columns=columns,
        accuracy=accuracy,
        robustness=robustness,
        claim=claim,
        notes=tuple(raw.get("notes") or ()),
        protocol=protocol,
    )


def read_yaml(path: str | Path) -> Any:
    """Any YAML document (safe loader); unreadable or invalid files are a ConfigError."""
    return read_yaml_document(Path(path))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping")
    return data


def load_spec(path: str | Path = DEFAULT_TABLES) -> Spec:
    data = load_yaml(path)
    excluded = _globs(data.get("exclude_recipes"), str(path))
    tables = tuple(_table(t, i, excluded) for i, t in enumerate(need(data, "tables", str(path))))
    sweeps = tuple(_sweep(s, i, tables) for i, s in enumerate(data.get("sweeps") or ()))
    return Spec(tables, str(data.get("reference_cell", "ce")), sweeps)


# ------------------------------------------------------------------ measuring one run
def attack_matches(entry: dict[str, Any], match: dict[str, Any]) -> bool:
    """Whether an attack entry of results.json has every property in ``match``."""
    for key, want in match.items():
        have = entry.get(key)
        if key == "restarts" and have is None:
            have = 1  # single-start attacks (FGSM, APGD, ...) do not record restarts
        if key == "eps":
            if not isinstance(have, (int, float)) or abs(have - want) > EPS_TOLERANCE:
                return False
        elif key == "label":
            if not isinstance(have, str) or not fnmatch.fnmatchcase(have, str(want)):
                return False
        elif have != want:
            return False
    return True


def matching_attacks(results: dict[str, Any], match: dict[str, Any]) -> list[dict[str, Any]]:
    attacks = results.get("attacks")
    if not isinstance(attacks, list):
        return []
    return [
        a
        for a in attacks
        if isinstance(a, dict)
        and isinstance(a.get("accuracy"), (int, float))
        and (a.get("n") or 0) > 0
        and attack_matches(a, match)
    ]


def epochs_trained(run: Run) -> int | None:
    if run.epochs:
        return len(run.epochs)
    epochs = run.info.get("epochs") or run.config.get("epochs")
    return epochs if isinstance(epochs, int) and epochs > 0 else None


def train_seconds(run: Run) -> float | None:
    """The run's training time: results.json's record, else its last metrics.jsonl epoch's
    (a run re-evaluated by an older version lost the former)."""
    seconds = _number(run.info.get("train_seconds"))
    if seconds is None and run.epochs:
        seconds = _number(run.epochs[-1].get("train_seconds"))
    return seconds


def train_seconds_per_epoch(run: Run) -> float | None:
    seconds, epochs = train_seconds(run), epochs_trained(run)
    if seconds is None or not epochs:
        return None
    return seconds / epochs


def _topk(entry: dict[str, Any], k: int) -> float | None:
    """An attack entry's top-k accuracy (top-1: its accuracy)."""
    if k == 1:
        return float(entry["accuracy"])
    topk = _mapping(entry, "topk")
    return _number(topk.get(str(k)))


def _mapping(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """``parent[key]`` when it is a mapping, else {} (results.json sections may be absent)."""
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def epoch_results(run: Run, epoch: str) -> dict[str, Any] | None:
    """The evaluation of the run's last epoch, or of its best one (``select_best`` runs only;
    a best epoch without its own evaluation is the last epoch)."""
    if epoch == "last":
        return run.results
    best = run.results.get("best_epoch")
    if not isinstance(best, dict):
        return None
    evaluation = best.get("evaluation")
    return evaluation if isinstance(evaluation, dict) else run.results


def eta_last(run: Run) -> float | None:
    """L-ALFA's learned η of its deepest site (the last one logged, sites in network order) in
    the run's final epoch record (``eta/<site>`` in metrics.jsonl)."""
    etas = [v for k, v in run.epochs[-1].items() if k.startswith("eta/")] if run.epochs else []
    return _number(etas[-1]) if etas else None


def measure(run: Run, metric: Metric) -> float | None:
    """The metric's value on one run (a fraction, or seconds), or None if not measured."""
    r = epoch_results(run, metric.epoch)
    if r is None:
        return None
    clean = _mapping(r, "clean")
    value: float | None
    if metric.kind == "clean":
        value = _number(clean.get("accuracy"))
    elif metric.kind == "clean_error":
        acc = _number(clean.get("accuracy"))
        value = None if acc is None else 1.0 - acc
    elif metric.kind == "topk":
        topk = _mapping(clean, "topk")
        value = _number(topk.get(str(metric.k)))
    elif metric.kind == "attack":
        found = [_topk(a, metric.k) for a in matching_attacks(r, metric.match)]
        found = [v for v in found if v is not None]
        value = min(found) if found else None
    elif metric.kind == "mce":
        corruptions = _mapping(r, "corruptions")
        value = _number(corruptions.get("mce"))
    elif metric.kind == "worst_case":
        worst = _mapping(r, "worst_case")
        # a "worst case" over no attack is just the clean accuracy: not a robustness number
        value = _number(worst.get("accuracy")) if worst.get("attack") != "clean" else None
    elif metric.kind == "cam":
        cam = _mapping(r, "cam")
        value = _number(cam.get(str(metric.field)))
    elif metric.kind == "shift":
        shift = _mapping(r, "shift")
        found = [
            _number(entry.get("accuracy"))
            for name, entry in shift.items()
            if isinstance(entry, dict) and metric.field in (None, name)
        ]
        found = [v for v in found if v is not None]
        value = min(found) if found else None
    elif metric.kind in ("train", "train_gap"):
        train = _number(_mapping(r, "train").get("accuracy"))
        test = _number(clean.get("accuracy"))
        gap = metric.kind == "train_gap" and train is not None and test is not None
        value = train - test if gap else train  # type: ignore[operator]
    elif metric.kind == "memorised":
        value = _number(_mapping(r, "train").get("memorised"))
    elif metric.kind == "eta_last":
        return eta_last(run)
    else:
        return train_seconds_per_epoch(run)
    if value is not None and metric.error and metric.kind == "attack":
        value = 1.0 - value
    return value
