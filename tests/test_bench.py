import json

import pytest

from robustfeat import bench
from robustfeat.errors import ConfigError

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
