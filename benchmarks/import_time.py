"""Start-up cost: ``import robustfeat``, ``robustfeat --help`` and ``robustfeat list`` against
``import torch`` alone, each in a fresh interpreter.

    PYTHONPATH=src python benchmarks/import_time.py [--rounds 7] [--baseline-src ../main/src]

Every case is a subprocess (``python -c ...`` or ``python -m robustfeat ...``) timed by wall clock;
the cases run interleaved, one of each per round in a rotating order, so load from other jobs on
a shared machine hits them alike, and the load average is recorded with every round. Reported
per case: min and median seconds, and the median of the per-round ratios to ``import torch``
(the floor anything that builds a model pays). ``--baseline-src`` times the same cases on another
source tree too (e.g. a checkout of the commit before the lazy imports), interleaved with ours.
Writes benchmarks/results/import_time.json with the settings, the machine and the git SHA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from robustfeat import io
from robustfeat.provenance import provenance

SRC = Path(__file__).resolve().parents[1] / "src"
CASES = {
    "python": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "import robustfeat": ["-c", "import robustfeat"],
    "import robustfeat + registries": [
        "-c",
        "import robustfeat.methods, robustfeat.models, robustfeat.attacks, robustfeat.data",
    ],
    "robustfeat --help": ["-m", "robustfeat", "--help"],
    "robustfeat list methods": ["-m", "robustfeat", "list", "methods"],
    "robustfeat list methods -v": ["-m", "robustfeat", "list", "methods", "-v"],
}


def time_once(args: list[str], src: Path) -> float | None:
    """Wall seconds of one run; None when it fails (a case the baseline tree does not have)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True)
    return time.perf_counter() - start if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline-src", type=Path, help="another source tree to time alike")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "import_time.json")
    )
    args = parser.parse_args()

    trees = {"this": SRC, **({"baseline": args.baseline_src} if args.baseline_src else {})}
    # warm-up (file caches, .pyc files), which also drops the cases a tree does not have
    runs = [(tree, case) for tree in trees for case in CASES]
    missing = [run for run in runs if time_once(CASES[run[1]], trees[run[0]]) is None]
    runs = [run for run in runs if run not in missing]
    times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    loads = []
    for r in range(args.rounds):
        loads.append(os.getloadavg())
        for tree, case in runs[r % len(runs) :] + runs[: r % len(runs)]:
            elapsed = time_once(CASES[case], trees[tree])
            if elapsed is None:
                raise SystemExit(f"{tree}: {case!r} failed in round {r}")
            times[tree, case].append(elapsed)
    results: dict[str, dict[str, dict[str, float]]] = {tree: {} for tree in trees}
    for (tree, case), values in times.items():
        torch_times = times[tree, "import torch"]
        results[tree][case] = {
            "min_s": min(values),
            "median_s": statistics.median(values),
            "median_ratio_to_import_torch": statistics.median(
                v / t for v, t in zip(values, torch_times, strict=True)
            ),
        }
        row = results[tree][case]
        print(
            f"{tree:8s} {case:32s} min {row['min_s']:6.2f} s  median {row['median_s']:6.2f} s  "
            f"x torch {row['median_ratio_to_import_torch']:.2f}"
        )
    io.write_json(
        Path(args.out),
        {
            "benchmark": "import_time",
            "rounds": args.rounds,
            "cases": {name: " ".join(argv) for name, argv in CASES.items()},
            "trees": {tree: str(path) for tree, path in trees.items()},
            "results": results,
            "not_run": [f"{tree}: {case} (fails there)" for tree, case in missing],
            "load_average_per_round": loads,
            "provenance": provenance(),
        },
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
