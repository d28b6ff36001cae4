"""Faults during training: kill -9 in every window of a step, a checkpoint write and the final
evaluation; NaN/inf losses; full or unwritable output; stale files of a killed process.

Killed runs are real subprocesses that SIGKILL themselves at a deterministic point
(``ROBUSTFEAT_FAULT``, see ``robustfeat.faults.fault_point``). Every resumed run must end
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


def run_python(
    args: list[str], fault: str | None = None, path: list[Path] = (), timeout: float = 300
) -> tuple[int, str]:
    """``python ARGS`` with our sources (and ``path``, then the caller's PYTHONPATH: packages
    installed beside, as on the GPU machine) importable, one thread, unwrapped log lines and the
    fault ``ROBUSTFEAT_FAULT`` (or none): (exit code, stderr)."""
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [SRC, *path, *inherited]))}
    env.update(OMP_NUM_THREADS="1", COLUMNS="250")
    env.pop("ROBUSTFEAT_FAULT", None)
    if fault:
        env["ROBUSTFEAT_FAULT"] = fault
    proc = subprocess.run(
        [sys.executable, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stderr.decode()


def run_cli(args: list[str], fault: str | None = None) -> tuple[int, str]:
    """``python -m robustfeat ARGS`` in a fresh process (see ``run_python``)."""
    return run_python(["-m", "robustfeat", *args], fault)


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
        resume = ["--resume"] if run.exists() else []  # --resume needs a run to continue
        code, err = run_cli([*TRAIN, "-o", str(run), *resume], fault=fault)
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
    # resuming with a different method_args is refused (flags omitted on --resume come from the
    # run's config.yaml; one given must repeat it); switching to nan_policy=skip is not, and
    # skips the same bad step 6
    assert main([*args, "--arg", "at=[7]", "-o", str(run), "--resume"]) == 2
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


# ------------------------------------------------------------------ full or unwritable output
def test_full_disk_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 * 2**20))
    out = tmp_path / "new" / "run"
    assert main([*TRAIN, "-o", str(out)]) == 2
    assert "has only 10.0 MiB free; need >= 50 MiB" in error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_output_under_a_file_is_refused_and_nothing_is_created(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    assert main([*TRAIN, "-o", str(tmp_path / "a-file" / "run")]) == 2
    assert "is not writable: Not a directory" in error_line(capsys.readouterr().err)
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_refused_and_nothing_is_created(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert main([*TRAIN, "-o", str(locked / "new" / "run")]) == 2
    assert "is not writable" in error_line(capsys.readouterr().err)
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name an fd")
def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_resumes(
    tmp_path, capsys, monkeypatch, reference
):
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the disk fills up while checkpoint 6 writes its optimizer
        if "step-000000006.tmp/.optimizer.safetensors" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "run"
    assert main([*TRAIN, "-o", str(run)]) == 2
    err = error_line(capsys.readouterr().err)
    assert "cannot write checkpoint" in err and "No space left on device" in err
    assert checkpoint_step(run) == 4 and checkpoint_dirs(run) == ["step-000000004"]
    assert tmp_leftovers(run) == []
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: resume and finish
    assert main([*TRAIN, "-o", str(run), "--resume"]) == 0
    ref, got = (
        load_tensors(reference / "weights.safetensors"),
        load_tensors(run / "weights.safetensors"),
    )
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_bad_batch_size_fails_before_the_run_directory_exists(tmp_path, capsys):
    assert main([*TRAIN, "--batch-size", "128", "-o", str(tmp_path / "run")]) == 2
    assert "fewer than one batch of 128" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ what a killed run leaves
def finished_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "-o", str(run)]) == 0
    return run


def test_resume_cleans_leftovers_of_a_killed_process(tmp_path, capsys):
    run = finished_run(tmp_path)
    records = (run / "metrics.jsonl").read_text()
    (run / ".state.json.x1y2.tmp").write_text("{")  # an atomic write cut before its rename
    (run / "checkpoints" / "step-000000009.tmp").mkdir()  # a checkpoint cut before its rename
    (run / "checkpoints" / "step-000000001").mkdir()  # one superseded but not yet deleted
    with (run / "metrics.jsonl").open("a") as f:  # a record logged past the checkpoint ...
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')  # ... and half a line
    assert main([*TRAIN, "--epochs", "1", "-o", str(run), "--resume"]) == 0
    assert (run / "metrics.jsonl").read_text() == records
    assert checkpoint_dirs(run) == ["step-000000004"] and tmp_leftovers(run) == []


@pytest.mark.parametrize(
    ("state", "needle"),
    [
        ({"step": 4, "checkpoint": "checkpoints/step-000000099"}, "which does not exist; to start"),
        ({"step": 4, "checkpoint": "../../elsewhere"}, "is not a robustfeat checkpoint pointer"),
        ({"step": "4", "checkpoint": "checkpoints/step-000000004"}, "not a robustfeat checkpoint"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_bad_state_json_is_one_clear_error(tmp_path, capsys, state, needle):
    run = finished_run(tmp_path)
    text = state if isinstance(state, str) else json.dumps(state)
    (run / "state.json").write_text(text)
    before = sorted(p.name for p in run.rglob("*"))
    capsys.readouterr()
    assert main([*TRAIN, "--epochs", "1", "-o", str(run), "--resume"]) == 2
    assert needle in error_line(capsys.readouterr().err)
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing touched


def test_resume_with_other_settings_is_refused_naming_them(tmp_path, capsys):
    run = finished_run(tmp_path)
    capsys.readouterr()
    assert main([*TRAIN, "--epochs", "1", "--lr", "0.1", "-o", str(run), "--resume"]) == 2
    assert "other settings (lr 0.05 -> 0.1)" in error_line(capsys.readouterr().err)
    # how a run is reported or checkpointed may change
    args = ["--set", "log_every=2", "--set", "checkpoint_every=1", "--set", "eval_suite=null"]
    assert main([*TRAIN, "--epochs", "1", *args, "-o", str(run), "--resume"]) == 0


def test_resume_with_a_corrupt_config_yaml_is_one_clear_error(tmp_path, capsys):
    run = finished_run(tmp_path)
    (run / "config.yaml").write_text("epochs: [1\n")
    capsys.readouterr()
    assert main([*TRAIN, "--epochs", "1", "-o", str(run), "--resume"]) == 2
    assert "config.yaml is not valid YAML: line 2" in error_line(capsys.readouterr().err)
