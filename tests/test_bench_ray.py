"""``robustfeat bench --executor ray`` on a real local Ray cluster (no mocks).

Workers are killed for real: ``ROBUSTFEAT_FAULT`` (see ``robustfeat.faults.fault_point``) is
inherited by the Ray workers from the driver's environment, and a worker that reaches the fault
point SIGKILLs itself. ``checkpoint_pointer:3`` fires once per run: the retried attempt resumes
from checkpoint 3 and never writes that checkpoint again.

Runs are compared with the local executor at the same torch thread count (1): with equal
threads, training on CPU is bit-identical.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustfeat import bench, io
from robustfeat.train import FAULT_ENV

ray = pytest.importorskip("ray")
from robustfeat.bench_ray import INSTALL_HINT, concurrent_runs, run_bench_ray  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
# 64 images / batch 16 = 4 steps per epoch; checkpoints at steps 3 and 4 (epoch end), 6, 8.
RECIPE = """
model: test_cnn
model_args: {width: 4}
data: shapes
data_args: {n_train: 64, n_test: 32, image_size: 16}
batch_size: 16
epochs: 2
lr: 0.05
device: cpu
checkpoint_every: 3
eval_suite: clean
bench:
  seeds: [0]
  cells:
    - method: ce
    - {name: ce_smooth, method: ce, args: {label_smoothing: 0.1}}
"""
# A loss that turns NaN at step 2, and a setting only the trainer rejects (at run time).
FAILING_CELLS = """
    - {name: huge_lr, method: ce, set: {lr: 1.0e+30}}
    - {name: bad_suite, method: ce, set: {eval_suite: nope}}
"""
TIMING_KEYS = {"seconds", "train_seconds", "eval_seconds", "img_per_s"}
PROVENANCE_KEYS = {"git_sha", "versions", "machine"}


def write_recipe(tmp_path: Path, text: str, name: str = "tiny") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def run_local_one_thread(recipe: str, **kwargs) -> list[dict]:
    """The local executor at the thread count of a Ray run with --cpus-per-run 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return bench.run_bench(recipe, **kwargs)
    finally:
        torch.set_num_threads(threads)


def without(value, keys: set[str]):
    """``value`` with the named keys dropped at every depth (timings, provenance)."""
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def assert_same_weights(a_path: Path, b_path: Path) -> None:
    """Tensors bit for bit and the same header (safetensors orders metadata keys by a hash
    seeded per process, so two files' bytes may differ in the header's key order alone)."""
    a, b = io.load_tensors(a_path), io.load_tensors(b_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert io.read_safetensors_header(a_path) == io.read_safetensors_header(b_path)


def assert_same_run(local: Path, other: Path) -> None:
    """Same weights (bit for bit), results.json numbers and logged losses."""
    assert (other / "config.yaml").read_bytes() == (local / "config.yaml").read_bytes()
    assert_same_weights(local / "weights.safetensors", other / "weights.safetensors")
    results = [json.loads((d / "results.json").read_text()) for d in (local, other)]
    a, b = (without(r, TIMING_KEYS | PROVENANCE_KEYS) for r in results)
    assert a == b and a["clean"]["n"] == 32
    logs = [
        [without(json.loads(line), TIMING_KEYS) for line in (d / "metrics.jsonl").open()]
        for d in (local, other)
    ]
    assert logs[0] == logs[1] and logs[0]


def test_without_ray_the_ray_executor_says_how_to_install_it_and_exits_2(tmp_path):
    recipe = write_recipe(tmp_path, RECIPE)
    code = (
        "import sys; sys.modules['ray'] = None  # what `import ray` sees when it is absent\n"
        "from robustfeat.cli import main\n"
        f"raise SystemExit(main(['bench', '--recipe', {recipe!r}, '--executor', 'ray',"
        f" '--runs-dir', {str(tmp_path / 'runs')!r}, '--results-dir', {str(tmp_path / 'res')!r}]))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"robustfeat: error: {INSTALL_HINT}"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "res").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--address", "auto"], "--address needs --executor ray"),
        (["--gpus-per-run", "1"], "--gpus-per-run needs --executor ray"),
        (["--executor", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be >= 1"),
    ],
)
def test_bad_executor_options_fail_before_anything_runs(tmp_path, capsys, extra, message):
    from robustfeat.cli import main

    recipe = write_recipe(tmp_path, RECIPE)
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")]
    assert main(["bench", "--recipe", recipe, *dirs, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()


def test_a_cluster_the_driver_started_gets_only_the_runs_that_fit():
    cluster = {"CPU": 16.0, "GPU": 3.0, "memory": 1e9}
    assert concurrent_runs(cluster, {"num_cpus": 1, "num_gpus": 0}) == 16
    assert concurrent_runs(cluster, {"num_cpus": 3, "num_gpus": 0}) == 5  # 16 // 3
    assert concurrent_runs(cluster, {"num_cpus": 2, "num_gpus": 1}) == 3  # GPUs bound it
    assert concurrent_runs(cluster, {"num_cpus": 2, "num_gpus": 0.5}) == 6
    assert concurrent_runs({"CPU": 2.0}, {"num_cpus": 1, "num_gpus": 1}) == 1  # waits, as Ray says


def test_killed_workers_retry_and_resume_bad_cells_fail_alone(tmp_path, monkeypatch, capsys):
    recipe = write_recipe(tmp_path, RECIPE + FAILING_CELLS)
    local_runs = tmp_path / "local_runs"
    run_local_one_thread(
        recipe, only=["ce", "ce_smooth"], runs_dir=local_runs, results_dir=tmp_path / "local_res"
    )
    capsys.readouterr()

    monkeypatch.setenv(FAULT_ENV, "checkpoint_pointer:3")  # every run's worker dies once
    runs, results = tmp_path / "runs", tmp_path / "res"
    summary = run_bench_ray(recipe, runs_dir=runs, results_dir=results, cpus_per_run=1, num_cpus=2)
    out = capsys.readouterr().out
    by_cell = {row["cell"]: row for row in summary}
    assert [(row["cell"], row["status"], row["attempts"]) for row in summary] == [
        ("ce", "ran", 2),  # killed at checkpoint 3, retried, resumed
        ("ce_smooth", "ran", 2),
        ("huge_lr", "diverged", 1),  # diverged at step 2, before the fault point
        ("bad_suite", "failed", 1),  # not retried: it would fail the same way
    ]  # in the recipe's order, whatever order they finished in
    assert "unknown evaluation suite 'nope'" in by_cell["bad_suite"]["message"]
    assert by_cell["huge_lr"]["step"] == 2
    for cell in ("ce", "ce_smooth"):
        assert f"tiny/{cell}/seed0: retried" in out
        assert_same_run(local_runs / "tiny" / cell / "seed0", runs / "tiny" / cell / "seed0")
        published = results / "tiny" / cell / "seed0"
        assert sorted(p.name for p in published.iterdir()) == [
            "config.yaml",
            "metrics.jsonl",
            "results.json",
        ]
        run_results = (runs / "tiny" / cell / "seed0" / "results.json").read_bytes()
        assert (published / "results.json").read_bytes() == run_results
    assert "tiny/bad_suite/seed0: failed" in out and "2 ran, 1 diverged, 1 failed" in out
    diverged = json.loads((results / "tiny" / "huge_lr" / "seed0" / "diverged.json").read_text())
    assert diverged["schema"] == bench.DIVERGED_SCHEMA and diverged["step"] == 2
    assert not (results / "tiny" / "bad_suite").exists()
    assert not ray.is_initialized()  # the cluster it started is shut down

    # Finished and diverged runs are skipped without starting Ray at all.
    again = run_bench_ray(recipe, only=["ce*", "huge_lr"], runs_dir=runs, results_dir=results)
    assert [r["status"] for r in again] == ["done", "done", "diverged"]
    assert not ray.is_initialized()


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [sys.executable, "-m", "robustfeat", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_demo_scale_matrix_through_the_cli_matches_the_local_executor(tmp_path):
    cells = "\n".join(
        [
            "    - method: ce",
            "    - {name: ce_smooth, method: ce, args: {label_smoothing: 0.1}}",
            "    - method: hnc",
            "    - {method: topgap, args: {k: 4, width: 8}}",
        ]
    )
    text = RECIPE.split("bench:")[0].replace("epochs: 2", "epochs: 1")
    recipe = write_recipe(tmp_path, text + f"bench:\n  seeds: [0, 1]\n  cells:\n{cells}\n")
    local_runs = tmp_path / "local_runs"
    run_local_one_thread(recipe, runs_dir=local_runs, results_dir=tmp_path / "local_res")
    runs, results = tmp_path / "runs", tmp_path / "res"
    dirs = ["--runs-dir", str(runs), "--results-dir", str(results)]
    proc = cli("bench", "--recipe", recipe, *dirs, "--executor", "ray", "--cpus-per-run", "1")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "8 ran, 0 diverged, 0 failed, 0 skipped" in out
    for cell in ("ce", "ce_smooth", "hnc", "topgap"):
        for seed in (0, 1):
            name = f"tiny/{cell}/seed{seed}"
            assert f"{name}: ran" in out
            local = json.loads((tmp_path / "local_res" / name / "results.json").read_text())
            remote = json.loads((results / name / "results.json").read_text())
            keys = TIMING_KEYS | PROVENANCE_KEYS
            assert without(remote, keys) == without(local, keys)
            assert_same_weights(
                runs / name / "weights.safetensors", local_runs / name / "weights.safetensors"
            )


@pytest.mark.slow
def test_ctrl_c_on_the_driver_cancels_and_leaves_runs_resumable(tmp_path):
    # 512 images / 16 = 32 steps an epoch, 4 epochs: long enough to interrupt mid-run.
    text = RECIPE.replace("n_train: 64", "n_train: 512").replace("epochs: 2", "epochs: 4")
    recipe = write_recipe(tmp_path, text)
    runs, results = tmp_path / "runs", tmp_path / "res"
    dirs = ["--runs-dir", str(runs), "--results-dir", str(results)]
    args = ("bench", "--recipe", recipe, *dirs, "--executor", "ray", "--cpus-per-run", "1")
    proc = cli(*args)
    deadline = time.monotonic() + 300
    while not list(runs.glob("tiny/*/seed0/state.json")):  # a checkpoint exists: mid-run
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted: cancelled" in out
    assert not list(results.glob("tiny/*/seed0/results.json"))  # nothing finished

    proc = cli(*args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    local_runs = tmp_path / "local_runs"
    run_local_one_thread(recipe, runs_dir=local_runs, results_dir=tmp_path / "local_res")
    for cell in ("ce", "ce_smooth"):
        assert_same_run(local_runs / "tiny" / cell / "seed0", runs / "tiny" / cell / "seed0")
