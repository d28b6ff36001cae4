"""Wall time of one benchmark matrix: the local executor vs Ray at 1 and 2 concurrent runs.

The matrix: 8 runs at the demo scale (the ``demo`` recipe's model, data and optimizer; its first
four cells x seeds 0 and 1; one epoch, clean evaluation). Each executor runs the whole matrix in
a fresh process into empty directories, and the wall time of that process is measured as a user
sees it (interpreter, imports, Ray's start and stop included). Executors:

- ``local``: ``robustfeat bench`` as today, one run after another, torch's default threads
  (one per core);
- ``local_1thread``: the same with one torch thread (``OMP_NUM_THREADS=1``);
- ``ray_1x1``: ``--executor ray --cpus-per-run 1`` on a local cluster of 1 CPU (one run at a
  time, single-threaded);
- ``ray_2x1``: the same on a local cluster of 2 CPUs (two single-thread runs at once).

Executors alternate ``--repeats`` times in a rotating order; the load average is recorded around
every measurement (the machine is shared). The single-thread executors must agree on every run's
clean accuracy (training on CPU is bit-identical at equal thread counts); the script checks it.

    PYTHONPATH=src python benchmarks/bench_executors.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from robustfeat.config import recipe_path
from robustfeat.io import write_json
from robustfeat.provenance import provenance

CELLS = 4
SEEDS = [0, 1]
LOCAL = [sys.executable, "-m", "robustfeat", "bench"]
RAY = (
    "import sys; from pathlib import Path; from robustfeat.bench_ray import run_bench_ray; "
    "run_bench_ray(sys.argv[1], runs_dir=Path(sys.argv[2]), results_dir=Path(sys.argv[3]), "
    "cpus_per_run=1, num_cpus=int(sys.argv[4]))"
)
EXECUTORS = ("local", "local_1thread", "ray_1x1", "ray_2x1")
SINGLE_THREAD = ("local_1thread", "ray_1x1", "ray_2x1")


def write_matrix(path: Path) -> None:
    """The demo recipe cut to 8 runs of one epoch each."""
    recipe = yaml.safe_load(recipe_path("demo").read_text())
    recipe.update(epochs=1, eval_suite="clean")
    recipe["bench"] = {"seeds": SEEDS, "cells": recipe["bench"]["cells"][:CELLS]}
    path.write_text(yaml.safe_dump(recipe))


def command(executor: str, recipe: Path, runs: Path, results: Path) -> list[str]:
    if executor.startswith("local"):
        return [
            *LOCAL,
            "--recipe",
            str(recipe),
            "--runs-dir",
            str(runs),
            "--results-dir",
            str(results),
        ]
    concurrent = executor.split("_")[1].split("x")[0]
    return [sys.executable, "-c", RAY, str(recipe), str(runs), str(results), concurrent]


def measure(executor: str, recipe: Path, work: Path) -> dict:
    runs, results = work / "runs", work / "results"
    env = dict(os.environ)
    if executor == "local_1thread":
        env["OMP_NUM_THREADS"] = "1"
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(
        command(executor, recipe, runs, results), env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{executor} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    clean = {
        str(p.parent.relative_to(results)): json.loads(p.read_text())["clean"]["accuracy"]
        for p in sorted(results.glob("*/*/*/results.json"))
    }
    if len(clean) != CELLS * len(SEEDS):
        raise SystemExit(f"{executor}: {len(clean)} runs published, expected {CELLS * len(SEEDS)}")
    return {
        "wall_seconds": wall,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "clean": clean,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/bench_executors.json")
    args = parser.parse_args()
    samples: dict[str, list[dict]] = {name: [] for name in EXECUTORS}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "matrix.yaml"
        write_matrix(recipe)
        for repeat in range(args.repeats):
            order = EXECUTORS[repeat % len(EXECUTORS) :] + EXECUTORS[: repeat % len(EXECUTORS)]
            for name in order:
                sample = measure(name, recipe, Path(tmp) / f"{name}-{repeat}")
                samples[name].append(sample)
                print(f"{name}: {sample['wall_seconds']:.1f} s (load {sample['loadavg_before']})")
    reference = samples[SINGLE_THREAD[0]][0]["clean"]
    agree = all(s["clean"] == reference for name in SINGLE_THREAD for s in samples[name])
    if not agree:
        raise SystemExit("single-thread executors disagree on clean accuracy")
    median = {
        name: statistics.median(s["wall_seconds"] for s in samples[name]) for name in EXECUTORS
    }
    result = {
        "benchmark": "bench_executors",
        "command": f"PYTHONPATH=src python benchmarks/bench_executors.py --repeats {args.repeats}",
        "matrix": f"demo recipe, first {CELLS} cells x seeds {SEEDS}, 1 epoch, clean eval",
        "median_wall_seconds": median,
        "ratio_to_local": {name: median[name] / median["local"] for name in EXECUTORS},
        "single_thread_results_agree": agree,
        "samples": samples,
        "note": "wall time of the whole matrix in a fresh process (Ray start/stop included); the "
        "2-core machine is shared with other jobs during the measurement: see the load averages",
        "provenance": provenance(),
    }
    write_json(Path(args.out), result)
    print(json.dumps({"median_wall_seconds": median, "ratio": result["ratio_to_local"]}, indent=1))


if __name__ == "__main__":
    main()
