"""The provenance table: the git SHAs, package versions, machines and wall time of the runs, with
warnings where they differ between runs (``provenance_table``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from ..collect import CellGroup, Run
from ..spec import train_seconds
from .common import Table, count


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
