import json
import os
import signal
import subprocess
import sys

import pytest

from robustfeat import bench
from robustfeat.errors import ConfigError
from robustfeat.rundir import MAX_STATE_BYTES, RunDir

RECIPE = """
model: resnet20
model_args: {width: 4}
data: shapes
data_args: {n_train: 128, n_test: 64}
batch_size: 32
epochs: 1
progress: false
bench:
  seeds: [0, 1]
  cells:
    - method: ce
    - {name: ce_smooth, method: ce, args: {label_smoothing: 0.1}, seeds: [3]}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return str(path)


def test_matrix_runs_each_cell_seed_once_and_publishes_without_weights(
    tmp_path, recipe, monkeypatch
):
    runs, results = tmp_path / "runs", tmp_path / "results"
    summary = bench.run_bench(recipe, runs_dir=runs, results_dir=results)
    assert [(r["cell"], r["seed"], r["status"]) for r in summary] == [
        ("ce", 0, "ran"),
        ("ce", 1, "ran"),
        ("ce_smooth", 3, "ran"),
    ]
    for cell, seed in (("ce", 0), ("ce", 1), ("ce_smooth", 3)):
        published = results / "tiny" / cell / f"seed{seed}"
        assert sorted(p.name for p in published.iterdir()) == [
            "config.yaml",
            "metrics.jsonl",
            "results.json",
        ]
        saved = json.loads((published / "results.json").read_text())
        assert saved["run"]["seed"] == seed and saved["run"]["config"]["batch_size"] == 32
        assert (runs / "tiny" / cell / f"seed{seed}" / "weights.safetensors").exists()
    smooth = json.loads((results / "tiny" / "ce_smooth" / "seed3" / "results.json").read_text())
    assert smooth["run"]["config"]["method_args"] == {"label_smoothing": 0.1}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell must not be trained again")

    monkeypatch.setattr("robustfeat.train.train", no_training)
    again = bench.run_bench(recipe, runs_dir=runs, results_dir=results)
    assert {r["status"] for r in again} == {"done"}


def test_only_seeds_and_dry_run(tmp_path, recipe):
    rows = bench.run_bench(
        recipe,
        only=["ce_*"],
        seeds=[5, 6],
        dry_run=True,
        runs_dir=tmp_path / "r",
        results_dir=tmp_path / "res",
    )
    assert [(r["cell"], r["seed"], r["status"]) for r in rows] == [
        ("ce_smooth", 5, "would run"),
        ("ce_smooth", 6, "would run"),
    ]
    assert not (tmp_path / "r").exists() and not (tmp_path / "res").exists()


def test_bad_cells_fail_before_anything_runs(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "bench:\n  cells:\n    - {method: ce}\n    - {method: ce, args: {nope: 1}, name: x}\n"
    )
    with pytest.raises(ConfigError, match="nope"):
        bench.plan(str(path), results_dir=tmp_path)
    path.write_text("bench:\n  cells:\n    - {method: ce}\n    - {method: ce}\n")
    with pytest.raises(ConfigError, match="share names"):
        bench.plan(str(path), results_dir=tmp_path)
    path.write_text("bench:\n  cells:\n    - {method: ce, colour: red}\n")
    with pytest.raises(ConfigError, match="colour"):
        bench.plan(str(path), results_dir=tmp_path)
    with pytest.raises(ConfigError, match="matches no cell"):
        bench.select(bench.parse_cells({"cells": [{"method": "ce"}]}, "r"), ["tenet"])


def test_a_diverged_cell_is_published_as_such_and_the_matrix_goes_on(tmp_path, monkeypatch):
    from robustfeat.methods import METHODS
    from test_reliability_faults import InjectNonFinite

    monkeypatch.setitem(METHODS._entries, InjectNonFinite.name, InjectNonFinite)
    path = tmp_path / "tiny.yaml"
    path.write_text(
        RECIPE.split("bench:")[0]
        + "bench:\n  cells:\n"
        + f"    - {{name: boom, method: {InjectNonFinite.name}, args: {{at: [2]}}}}\n"
        + "    - method: ce\n"
    )
    runs, results = tmp_path / "runs", tmp_path / "results"
    summary = bench.run_bench(str(path), runs_dir=runs, results_dir=results)
    assert [(r["cell"], r["status"]) for r in summary] == [("boom", "diverged"), ("ce", "ran")]
    assert summary[0]["step"] == 2
    published = results / "tiny" / "boom" / "seed0"
    assert not (published / "results.json").exists()
    record = json.loads((published / "diverged.json").read_text())
    assert record["schema"] == bench.DIVERGED_SCHEMA and record["step"] == 2
    assert record["parts"]["loss_aux"] == "nan" and record["parts"]["loss_ce"] > 0
    assert "non-finite loss at step 2" in record["message"]
    assert {"git_sha", "versions", "machine"} <= set(record["provenance"])
    assert "method: test_nonfinite" in (published / "config.yaml").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a diverged cell is finished: it must not be trained again")

    monkeypatch.setattr("robustfeat.train.train", no_training)
    again = bench.run_bench(str(path), runs_dir=runs, results_dir=results)
    assert [r["status"] for r in again] == ["diverged", "done"]


def test_dry_run_says_where_an_interrupted_run_resumes(tmp_path, recipe, capsys):
    """A run killed after its step-3 checkpoint (a real SIGKILL, in a subprocess) is announced
    as resuming there; a trained run whose evaluation was cut, as one left to evaluate."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    env = {**os.environ, "ROBUSTFEAT_FAULT": "step:4"}
    command = [sys.executable, "-m", "robustfeat", "bench", "--recipe", recipe, "--only", "ce"]
    options = ["--seeds", "0", "--runs-dir", str(runs), "--results-dir", str(results)]
    with open(recipe, "a") as f:
        f.write("checkpoint_every: 3\n")
    proc = subprocess.run([*command, *options], env=env, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    rows = bench.run_bench(recipe, dry_run=True, runs_dir=runs, results_dir=results)
    out = capsys.readouterr().out
    assert "tiny/ce/seed0: would resume at step 3 of 4 (75%)" in out
    assert "tiny/ce/seed1: would run" in out
    assert [row["status"] for row in rows] == ["would run"] * 3  # the summary's status as before
    state = runs / "tiny" / "ce" / "seed0" / "state.json"
    record = json.loads(state.read_text())
    state.write_text(json.dumps({**record, "step": 4, "finished": True}))
    bench.run_bench(recipe, dry_run=True, runs_dir=runs, results_dir=results)
    assert "tiny/ce/seed0: trained, would evaluate" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["symlink", "huge", "not json", "no total"])
def test_a_state_file_that_is_not_ours_to_read_is_not_read(tmp_path, bad):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    record = {"step": 3, "total_steps": 8, "checkpoint": "checkpoints/step-000000003"}
    assert run.progress() is None  # no checkpoint yet
    if bad == "symlink":
        (tmp_path / "elsewhere.json").write_text(json.dumps(record))
        run.state.symlink_to(tmp_path / "elsewhere.json")
    elif bad == "huge":
        run.state.write_text(json.dumps({**record, "pad": "x" * MAX_STATE_BYTES}))
    elif bad == "not json":
        run.state.write_text('{"step": 3, "total_ste')
    else:
        run.state.write_text(json.dumps({"step": 3}))
    assert run.progress() is None
    run.state.unlink()
    run.state.write_text(json.dumps(record))
    assert run.progress() == (3, 8)
