"""`robustfeat eval RUN_DIR --suite ...`: results.json from a run directory, clear errors."""

from __future__ import annotations

import json

import torch
import yaml

from robustfeat import io
from robustfeat.cli import main
from robustfeat.config import make_config
from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.rundir import RUN_MARKER, RunDir


def make_run(tmp_path, **data_args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    options = {"n_train": 64, "n_test": 40, **data_args}
    cfg = make_config({"model": "test_cnn", "method": "ce", "data": "shapes", "data_args": options})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    torch.manual_seed(0)
    method = create_method("ce", create_model("test_cnn", 10))
    io.save_tensors(tmp_path / "weights.safetensors", method.state_dict())
    return tmp_path


def test_eval_writes_results(tmp_path, capsys):
    run = make_run(tmp_path)
    code = main(
        ["eval", str(run), "--suite", "quick", "--n", "12", "--no-progress", "--device", "cpu"]
    )
    assert code == 0
    results = json.loads((run / "results.json").read_text())
    assert results["schema"] == "robustfeat.results/1" and results["suite"] == "quick"
    assert results["run"]["method"] == "ce" and results["run"]["model"] == "test_cnn"
    assert results["run"]["run_dir"] == str(run) and results["run"]["git_sha"]
    assert results["clean"]["n"] == 40
    assert [a["label"] for a in results["attacks"]] == ["fgsm", "pgd10"]
    assert all(a["n"] == 12 for a in results["attacks"])
    assert "worst case" in capsys.readouterr().out


def test_eval_out_file_and_spurious_shift(tmp_path):
    run = make_run(tmp_path / "run", spurious_p=0.9)
    out = tmp_path / "elsewhere.json"
    code = main(
        [
            "eval",
            str(run),
            "--suite",
            "clean",
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and not (run / "results.json").exists()
    shift = json.loads(out.read_text())["shift"]
    assert (
        shift["spurious_train_distribution"]["n"] == 40
    )  # biased fresh images vs the unbiased test set


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--no-progress"]) == 2
    assert "not a robustfeat run directory" in capsys.readouterr().err
    run = make_run(tmp_path)
    assert main(["eval", str(run), "--suite", "nope", "--no-progress"]) == 2
    assert "unknown evaluation suite 'nope'" in capsys.readouterr().err
    assert main(["eval", str(run), "--shift", "bad", "--no-progress"]) == 2
    assert "NAME=SPEC" in capsys.readouterr().err


def test_re_evaluating_a_run_keeps_what_its_training_recorded(tmp_path):
    run = make_run(tmp_path)
    trained = {
        "schema": "robustfeat.results/1",
        "run": {"method": "ce", "train_seconds": 123.5, "eval_seconds": 9.0},
        "suite": "standard",
        "clean": {"accuracy": 0.99, "n": 40},
        "attacks": [{"label": "old", "accuracy": 0.5}],
        "train": {"accuracy": 0.97, "n": 64},
        "best_epoch": {"criterion": "pgd10", "epoch": 3},
    }
    io.write_json(run / "results.json", trained)
    args = ["eval", str(run), "--suite", "quick", "--n", "8", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    # the training facts stay ...
    assert results["run"]["train_seconds"] == 123.5
    assert results["train"] == trained["train"] and results["best_epoch"] == trained["best_epoch"]
    # ... the evaluation is replaced
    assert results["suite"] == "quick" and results["clean"]["accuracy"] != 0.99
    assert [a["label"] for a in results["attacks"]] == ["fgsm", "pgd10"]
    assert "eval_seconds" not in results["run"]


def test_eval_into_a_run_that_is_being_written_is_refused(tmp_path, capsys):
    """A training (or another eval) holds the run's lock: evaluating into the run's own
    results.json is refused before anything is written (its results would otherwise replace
    the finished training's with an older checkpoint's); --out elsewhere still evaluates."""
    run = make_run(tmp_path / "run")
    trainer = RunDir(run)
    trainer.lock()  # as `robustfeat train` holds it (another open file: flock conflicts)
    args = ["eval", str(run), "--suite", "clean", "--no-progress", "--device", "cpu"]
    try:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "being written by another robustfeat process" in err and "--out" in err
        assert len(err.strip().splitlines()) == 1 and not (run / "results.json").exists()
        elsewhere = tmp_path / "elsewhere.json"
        assert main([*args, "--out", str(elsewhere)]) == 0 and elsewhere.is_file()
    finally:
        trainer.release()
    assert main(args) == 0 and (run / "results.json").is_file()
    assert main(args) == 0  # the eval released its own lock


def test_eval_refuses_a_symlinked_marker_and_leaves_unmarked_runs_unmarked(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    args = ["eval", str(run), "--suite", "clean", "--no-progress", "--device", "cpu"]
    assert main(args) == 0 and not (run / RUN_MARKER).exists()  # nothing of ours added
    (run / "results.json").unlink()
    (tmp_path / "elsewhere").write_text("not ours\n")
    (run / RUN_MARKER).symlink_to(tmp_path / "elsewhere")
    assert main(args) == 2
    assert "cannot lock" in capsys.readouterr().err and not (run / "results.json").exists()
    assert (tmp_path / "elsewhere").read_text() == "not ours\n"
