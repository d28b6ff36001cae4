"""Faults during training: kill -9 in every window of a step, a checkpoint write and the final
evaluation; NaN/inf losses; full or unwritable output; stale files of a killed process.

Killed runs are real subprocesses that SIGKILL themselves at a deterministic point
(``ROBUSTFEAT_FAULT``, see ``robustfeat.train.fault_point``). Every resumed run must end
bit-identical (weights and logged losses) to an uninterrupted one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustfeat import io
from robustfeat.cli import main
from robustfeat.io import load_tensors
from robustfeat.methods import METHODS, Method
from robustfeat.train import step_seed

SRC = Path(__file__).resolve().parents[1] / "src"
# 64 images / batch 16 = 4 steps per epoch, 2 epochs = 8 steps; checkpoints at 3, 4, 6, 8.
TRAIN = [
    "train",
    "--model",
    "test_cnn",
    "--model-arg",
    "width=4",
    "--data",
    "shapes",
    "--data-arg",
    "n_train=64",
    "--data-arg",
    "n_test=32",
    "--data-arg",
    "image_size=16",
    "--batch-size",
    "16",
    "--epochs",
    "2",
    "--lr",
    "0.05",
    "--device",
    "cpu",
    "--no-progress",
    "--set",
    "checkpoint_every=3",
    "--set",
    "log_every=1",
]
TIMING_KEYS = {"img_per_s", "train_seconds"}


def run_cli(args: list[str], fault: str | None = None, timeout: float = 300) -> tuple[int, str]:
    """``python -m robustfeat ARGS`` in a fresh single-threaded process: (exit code, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop("ROBUSTFEAT_FAULT", None)
    if fault:
        env["ROBUSTFEAT_FAULT"] = fault
    proc = subprocess.run(
        [sys.executable, "-m", "robustfeat", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stderr.decode()


def error_line(stderr: str) -> str:
    """The one ``robustfeat: error:`` line a failed command ends with (no traceback)."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines, stderr
    assert lines[-1].startswith("robustfeat: error: "), stderr
    assert sum(line.startswith("robustfeat: ") for line in lines) == 1, stderr
    return lines[-1]


def checkpoint_step(run: Path) -> int | None:
    """The step state.json points at, after checking that checkpoint is complete and loadable
    (``None``: no checkpoint yet). This is what "never seen half-written" means."""
    if not (run / "state.json").exists():
        return None
    state = json.loads((run / "state.json").read_text())
    ckpt = run / state["checkpoint"]
    assert ckpt.is_dir() and not ckpt.name.endswith(".tmp"), state
    load_tensors(ckpt / "weights.safetensors")
    load_tensors(ckpt / "optimizer.safetensors", check_finite=False)
    json.loads((ckpt / "optimizer.json").read_text())
    return state["step"]


def metric_records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def epoch_records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "img_per_s" in r]


def checkpoint_dirs(run: Path) -> list[str]:
    directory = run / "checkpoints"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def tmp_leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.rglob("*") if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of TRAIN (in this process: same code, same single thread)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main([*TRAIN, "-o", str(out)]) == 0
    return out


# (fault, checkpoint step state.json points at after the kill, checkpoint dirs on disk)
KILL_CHAIN = [
    ("step:2", None, []),  # before the first checkpoint
    ("checkpoint_weights:3", None, ["step-000000003.tmp"]),  # half a checkpoint
    ("checkpoint_tmp:4", 3, ["step-000000003", "step-000000004.tmp"]),  # complete, not renamed
    ("checkpoint_renamed:6", 4, ["step-000000004", "step-000000006"]),  # renamed, not pointed at
    ("checkpoint_pointer:6", 6, ["step-000000004", "step-000000006"]),  # old one not yet deleted
    ("step:7", 6, ["step-000000006"]),  # mid-epoch: running averages come from the checkpoint
    ("final_weights", 8, ["step-000000008"]),  # trained, weights written, not evaluated
    ("eval", 8, ["step-000000008"]),  # evaluated, results not written
]


def test_kill9_in_every_window_then_resume_is_bit_identical(tmp_path, reference):
    run = tmp_path / "run"
    for fault, step, ckpt_dirs in KILL_CHAIN:
        code, err = run_cli([*TRAIN, "-o", str(run), "--resume"], fault=fault)
        assert code == -signal.SIGKILL, f"{fault}: exit {code}\n{err}"
        assert checkpoint_step(run) == step, fault
        assert checkpoint_dirs(run) == ckpt_dirs, fault
        assert not (run / "results.json").exists(), fault
        assert (run / "weights.safetensors").exists() == (fault in ("final_weights", "eval"))
    metrics_before_eval = (run / "metrics.jsonl").read_text()

    code, err = run_cli([*TRAIN, "-o", str(run), "--resume"])
    assert code == 0, err
    assert "at step 8/8" in err  # the interrupted evaluation re-ran without training
    assert (run / "metrics.jsonl").read_text() == metrics_before_eval

    ref, got = (
        load_tensors(reference / "weights.safetensors"),
        load_tensors(run / "weights.safetensors"),
    )
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # the loss curve too: records logged past a checkpoint by a killed process were dropped and
    # the mid-epoch running averages continued from the checkpoint
    assert metric_records(run) == metric_records(reference)
    assert checkpoint_dirs(run) == ["step-000000008"]
    assert tmp_leftovers(run) == []
    ref_results = json.loads((reference / "results.json").read_text())
    got_results = json.loads((run / "results.json").read_text())
    assert got_results["clean"]["accuracy"] == ref_results["clean"]["accuracy"]


# ------------------------------------------------------------------ NaN / inf losses
class InjectNonFinite(Method):
    """Test-only method: CE plus an auxiliary loss part that becomes ``value`` at the given
    (1-based) training steps on rank ``rank``; ``where="input"`` poisons the batch instead, so
    the forward also feeds NaN into the BN running statistics. The step is recognised from the
    trainer's per-step seed, so a resumed run meets the same bad steps."""

    name = "test_nonfinite"

    def __init__(
        self,
        model,
        at: list[int] = (),
        value: float = float("nan"),
        where: str = "aux",
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(model)
        self.bad_seeds = {step_seed(seed, s - 1, rank) for s in at}
        self.value, self.where = value, where

    def forward(self, x, y):
        bad = torch.initial_seed() in self.bad_seeds
        if bad and self.where == "input":
            x = x * self.value
        logits = self.model(x)
        ce = F.cross_entropy(logits, y)
        aux = logits.sum() * 0 + (self.value if bad and self.where == "aux" else 0.0)
        return {"loss": ce + aux, "logits": logits, "loss_ce": ce, "loss_aux": aux}


@pytest.fixture
def nonfinite_method(monkeypatch):
    monkeypatch.setitem(METHODS._entries, InjectNonFinite.name, InjectNonFinite)
    return InjectNonFinite.name


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_nonfinite_loss_stops_naming_step_and_part_and_keeps_last_checkpoint(
    tmp_path, capsys, nonfinite_method, value
):
    run = tmp_path / "run"
    args = [*TRAIN, "--method", nonfinite_method, "--arg", "at=[6]", "--arg", f"value={value}"]
    assert main([*args, "-o", str(run)]) == 2
    err = error_line(capsys.readouterr().err)
    assert "non-finite loss at step 6: loss_aux=" in err and str(run) in err
    assert checkpoint_step(run) == 4  # the last good one (checkpoints at 3 and 4; 6 never came)
    assert not (run / "weights.safetensors").exists() and not (run / "results.json").exists()
    # resuming with a different method_args is refused; switching to nan_policy=skip is not,
    # and skips the same bad step 6
    assert main([*args[:-4], "-o", str(run), "--resume"]) == 2
    assert "other settings (method_args" in capsys.readouterr().err
    assert main([*args, "-o", str(run), "--resume", "--set", "nan_policy=skip"]) == 0
    assert "skipping batch" in capsys.readouterr().err
    assert checkpoint_step(run) == 8
    assert [r.get("skipped_batches", 0) for r in epoch_records(run)] == [0, 1]


@pytest.mark.parametrize("where", ["aux", "input"])
def test_nan_policy_skip_counts_logs_and_undoes_bad_batches(
    tmp_path, capsys, nonfinite_method, where
):
    run = tmp_path / "run"
    args = [
        *TRAIN,
        "--method",
        nonfinite_method,
        "--arg",
        "at=[2, 3, 7]",
        "--arg",
        f"where={where}",
    ]
    assert main([*args, "--set", "nan_policy=skip", "-o", str(run)]) == 0
    err = capsys.readouterr().err
    assert [f"non-finite loss at step {s}" in err for s in (2, 3, 7)] == [True] * 3
    assert [r.get("skipped_batches", 0) for r in epoch_records(run)] == [2, 1]
    # every saved tensor is finite, BN running statistics included (load_tensors checks)
    weights = load_tensors(run / "weights.safetensors")
    assert any("running_mean" in k for k in weights)
