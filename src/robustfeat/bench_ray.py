"""``robustfeat bench --executor ray``: the benchmark matrix on a Ray cluster, one task per run.

Every (cell, seed) that is not finished becomes one Ray task with ``--cpus-per-run`` CPUs (also
its torch threads) and ``--gpus-per-run`` GPUs; Ray places the tasks on the cluster's nodes,
retries those whose worker died and cancels them. The semantics are ``bench.run_bench``'s: the
same run directories and published results, a finished (or diverged) run is skipped, an
interrupted one resumes from its last checkpoint, a diverged one is published as diverged.json.

Faults, and which Ray mechanism handles each:

- a worker killed mid-run (kill -9, the OOM killer, a lost node) is a system failure, which Ray
  retries up to ``MAX_RETRIES`` times; the new attempt resumes from the run's last checkpoint
  (``train(..., resume=True)``), so it ends with the weights of an uninterrupted run;
- an exception raised by the run (a config that fails at run time, a missing data set) is an
  application error, which Ray does not retry (``retry_exceptions=False``): it would fail the
  same way again. The run is reported failed and the others go on;
- a diverged run is a result, not a failure (``bench.run_one`` publishes it);
- Ctrl-C on the driver cancels every pending task (``force``: its worker is killed), which leaves
  each run at its last checkpoint: the same command resumes them.

The driver learns of retries through a ``ray.util.queue.Queue`` to which every attempt reports
its start: a second start of the same run is a retry.

Files: the tasks write the run directories (``--runs-dir``) and publish the results
(``--results-dir``) themselves, so on several machines both must be on a filesystem that every
node mounts at the same path; relative paths in the recipe resolve against the driver's working
directory, which the tasks enter when it exists on their node.

Without ``--address`` Ray starts a local cluster on this machine (no dashboard, a small object
store: the tasks exchange only small records) and the driver submits only the runs that fit at
once, so that each worker, torch imported, takes the next run; with an address the driver joins
a running cluster and submits every run at once (an autoscaler sizes the cluster to that queue).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from .bench import plan, run_one
from .errors import ConfigError

if TYPE_CHECKING:
    from types import ModuleType

    from .config import TrainConfig

MAX_RETRIES = 3  # attempts after a worker died; each resumes from the last checkpoint
OBJECT_STORE_BYTES = 100 * 2**20  # a local cluster's object store (Ray's minimum is ~75 MiB)
INSTALL_HINT = "--executor ray needs Ray, an optional dependency: pip install 'robustfeat[ray]'"


def require_ray() -> ModuleType:
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError(INSTALL_HINT) from err
    return ray


def connect(ray: ModuleType, address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at ``address`` or start a local one; False when Ray was already
    initialised by the caller (then the caller owns it and shuts it down)."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as err:
            raise ConfigError(
                f"cannot join the Ray cluster at --address {address!r} ({err}); start one with "
                "`ray start --head`, or leave --address out to start one here"
            ) from err
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            **quiet,
        )
    return True


def run_attempt(
    cfg: TrainConfig, run: str, target: str, key: str, threads: int, cwd: str, events: Any
) -> dict[str, Any]:
    """One attempt at one run, inside a Ray worker: report the start, train, publish."""
    import torch

    events.put(key)
    torch.set_num_threads(threads)
    if os.path.isdir(cwd):  # relative data paths of the recipe mean the driver's directory
        os.chdir(cwd)
    start = time.perf_counter()
    outcome = run_one(cfg, Path(run), Path(target))
    return {**outcome, "seconds": time.perf_counter() - start}


def failure_message(ray: ModuleType, err: Exception) -> str:
    """One line for a run that failed: the run's own error, or why its worker was lost."""
    if isinstance(err, ray.exceptions.RayTaskError):
        cause = err.cause if err.cause is not None else err
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        return f"{type(cause).__name__}: {'; '.join(lines)}"
    first = str(err).strip().splitlines()
    return f"{type(err).__name__}: {first[0] if first else ''} (after {MAX_RETRIES} retries)"


def run_bench_ray(
    recipe: str,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    dry_run: bool = False,
    runs_dir: Path = Path("runs/bench"),
    results_dir: Path = Path("benchmarks/results"),
    address: str | None = None,
    cpus_per_run: int = 1,
    gpus_per_run: float = 0.0,
    num_cpus: int | None = None,
) -> list[dict[str, Any]]:
    """``bench.run_bench`` with every run a Ray task; rows gain ``attempts`` and ``seconds``,
    and a run that failed has status ``failed`` and its ``message``. ``num_cpus`` caps a local
    cluster (default: every core)."""
    ray = require_ray()
    if cpus_per_run < 1 or gpus_per_run < 0:
        raise ConfigError(
            f"--cpus-per-run must be >= 1 and --gpus-per-run >= 0, got {cpus_per_run}, "
            f"{gpus_per_run}"
        )
    console = Console()
    rows = plan(recipe, only, seeds, results_dir, runs_dir)
    summary: list[dict[str, Any]] = []
    jobs = []  # (name, summary row, arguments of run_attempt but the events queue)
    for planned in rows:
        if planned.done or dry_run:
            console.print(f"[bold]{planned.key}[/]: {planned.announce(dry_run)}")
            summary.append(planned.row(planned.done or "would run"))
            continue
        run, target = planned.run.absolute(), planned.target.absolute()  # links not followed
        args = (planned.cfg, str(run), str(target), planned.key, cpus_per_run, os.getcwd())
        jobs.append((planned.key, {"cell": planned.cell.name, "seed": planned.seed}, args))
    if not jobs:
        return summary
    started = time.perf_counter()
    owned = connect(ray, address, num_cpus)
    per_run = {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run}
    try:
        # Ray starts a fresh worker for every queued task, and a queued run then lands on one
        # that imports torch anew (5 s of CPU here) while the warm worker idles out. A cluster
        # the driver started cannot grow, so it gets only the runs that fit; a joined cluster
        # gets them all at once, so that an autoscaler sees the demand.
        window = concurrent_runs(ray.cluster_resources(), per_run) if owned else len(jobs)
        summary += _run_tasks(ray, console, jobs, per_run, window)
    finally:
        if owned:
            ray.shutdown()
    order = {(planned.cell.name, planned.seed): i for i, planned in enumerate(rows)}
    summary.sort(key=lambda row: order[row["cell"], row["seed"]])  # the recipe's order
    print_summary(console, summary, time.perf_counter() - started)
    return summary


def concurrent_runs(resources: dict[str, float], per_run: dict[str, float]) -> int:
    """How many runs needing ``per_run`` (num_cpus, num_gpus) fit in ``resources`` at once (at
    least one: a run that fits nowhere waits, as Ray reports)."""
    needs = (("CPU", per_run["num_cpus"]), ("GPU", per_run["num_gpus"]))
    fits = [resources.get(name, 0.0) // need for name, need in needs if need > 0]
    return max(1, int(min(fits)))


def _run_tasks(
    ray: ModuleType,
    console: Console,
    jobs: list[tuple[str, dict[str, Any], tuple[Any, ...]]],
    per_run: dict[str, float],
    window: int,
) -> list[dict[str, Any]]:
    """Run ``jobs`` as tasks, at most ``window`` submitted at a time; the finished rows."""
    from ray.util.queue import Queue

    events = Queue(actor_options={"num_cpus": 0})
    options = {**per_run, "max_retries": MAX_RETRIES, "retry_exceptions": False}
    task = ray.remote(run_attempt).options(**options)
    queued, pending = list(jobs), {}

    def submit() -> None:
        while queued and len(pending) < window:
            key, row, args = queued.pop(0)
            pending[task.remote(*args, events)] = (key, row)

    submit()
    resources = ray.cluster_resources()
    console.print(
        f"{len(jobs)} runs on Ray ({resources.get('CPU', 0):g} CPUs, "
        f"{resources.get('GPU', 0):g} GPUs; per run {per_run['num_cpus']} CPU, "
        f"{per_run['num_gpus']:g} GPU; {min(window, len(jobs))} submitted at a time)"
    )
    attempts: dict[str, int] = {}
    finished: list[dict[str, Any]] = []
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for key in events.get_nowait_batch(events.qsize()):
                attempts[key] = attempts.get(key, 0) + 1
                if attempts[key] > 1:
                    console.print(
                        f"[yellow]{key}: retried[/] (attempt {attempts[key]}: its worker died; "
                        "resuming from the last checkpoint)"
                    )
            for ref in ready:
                key, row = pending.pop(ref)
                try:
                    row.update(ray.get(ref))
                except ray.exceptions.RayError as err:
                    row.update(status="failed", message=failure_message(ray, err))
                row["attempts"] = attempts.get(key, 0)
                console.print(_finished_line(key, row))
                finished.append(row)
            submit()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        console.print(
            f"[red]interrupted[/]: cancelled {len(pending)} runs, {len(queued)} not started; "
            "each resumes from its last checkpoint when the same command runs again"
        )
        raise
    return finished


def _finished_line(key: str, row: dict[str, Any]) -> str:
    if row["status"] == "failed":
        return f"[red]{key}: failed[/] ({row['message']})"
    if row["status"] == "diverged":
        return f"[yellow]{key}: diverged[/] ({row['message']})"
    return f"[green]{key}: ran[/] in {row['seconds']:.1f} s, clean accuracy {row['clean']:.4f}"


def print_summary(console: Console, summary: list[dict[str, Any]], wall: float) -> None:
    """A table of the runs and a line of totals: done, failed, wall time, time per run."""
    table = Table(title="bench on Ray")
    for column in ("cell", "seed", "status", "attempts", "s (last attempt)", "clean"):
        table.add_column(column)
    for row in summary:
        table.add_row(
            row["cell"],
            str(row["seed"]),
            row["status"],
            str(row.get("attempts", "")),
            f"{row['seconds']:.1f}" if "seconds" in row else "",
            f"{row['clean']:.4f}" if "clean" in row else "",
        )
    console.print(table)
    timed = [row["seconds"] for row in summary if "seconds" in row]
    counts = {s: sum(row["status"] == s for row in summary) for s in ("ran", "diverged", "failed")}
    per_run = f"{sum(timed) / len(timed):.1f} s per run's last attempt" if timed else "none ran"
    console.print(
        f"{counts['ran']} ran, {counts['diverged']} diverged, {counts['failed']} failed, "
        f"{len(summary) - sum(counts.values())} skipped; wall time {wall:.1f} s, {per_run}"
    )
