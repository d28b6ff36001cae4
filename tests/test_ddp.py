"""DDP on CPU: 2 gloo processes under torchrun.

- Correctness: ``batch_size`` is the global batch and each rank trains on its half, so with a
  model without batch statistics (BN replaced by identity: BN normalises per rank) the 2-rank run
  follows the single-process run up to float summation order, and both ranks hold identical
  weights after every all-reduce.
- A NaN loss on one rank: every rank skips (or stops) together instead of waiting forever in the
  gradient all-reduce for the rank that skipped.
- A rank killed mid-step: torchrun stops the job (no hang), the last checkpoint is intact, and a
  resumed 2-rank run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from robustfeat.cli import main
from robustfeat.io import load_tensors
from robustfeat.models import MODELS
from test_reliability_faults import TRAIN, checkpoint_step, epoch_records, run_python

TESTS = Path(__file__).resolve().parent
TIMEOUT = 240  # seconds; a hung collective would wait for the 300 s process-group timeout

WORKER = """
import sys

import torch.distributed as dist

from robustfeat import io
from robustfeat.cli import main
from robustfeat.methods import METHODS
from robustfeat.models import MODELS
from robustfeat.train import Trainer
from test_ddp import cnn_nobn
from test_reliability_faults import InjectNonFinite

MODELS._entries["test_cnn_nobn"] = cnn_nobn
METHODS._entries[InjectNonFinite.name] = InjectNonFinite
finish = Trainer.finish


def finish_and_dump(self, *args, **kwargs):  # every rank's parameters, to compare them
    params = dict(self.method.named_parameters())
    io.save_tensors(self.run.root / f"rank{self.dist.rank}.safetensors", params)
    backend = dist.get_backend() if dist.is_initialized() else "none"
    (self.run.root / f"backend{self.dist.rank}.txt").write_text(backend)
    return finish(self, *args, **kwargs)


Trainer.finish = finish_and_dump
sys.exit(main(sys.argv[1:]))
"""


def cnn_nobn(num_classes: int = 10, width: int = 4) -> nn.Module:
    """test_cnn with every BatchNorm replaced by identity (no per-rank batch statistics)."""
    model = MODELS.get("test_cnn")(num_classes=num_classes, width=width)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())
    return model


NOBN = ["--model", "test_cnn_nobn"]


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "worker.py"
    path.write_text(WORKER)
    return path


def torchrun(
    worker: Path, args: list[str], fault: str | None = None, nproc: int = 2
) -> tuple[int, str]:
    """``torchrun --nproc_per_node 2 worker.py ARGS`` (one thread per rank): (exit code, stderr)."""
    command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return run_python([*command, str(worker), *args], fault, [TESTS], TIMEOUT)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def ddp_run(worker, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp_run") / "run"
    code, err = torchrun(worker, [*TRAIN, *NOBN, "-o", str(run)])
    assert code == 0, err
    return run


@pytest.fixture
def nobn_registered(monkeypatch) -> None:
    monkeypatch.setitem(MODELS._entries, "test_cnn_nobn", cnn_nobn)


def test_two_ranks_train_what_one_process_trains(ddp_run, tmp_path, nobn_registered):
    rank0 = load_tensors(ddp_run / "rank0.safetensors")
    assert same(rank0, load_tensors(ddp_run / "rank1.safetensors"))  # all-reduced identically
    ddp = load_tensors(ddp_run / "weights.safetensors")
    assert main([*TRAIN, *NOBN, "-o", str(tmp_path / "single")]) == 0
    assert main([*TRAIN, *NOBN, "--batch-size", "8", "-o", str(tmp_path / "half")]) == 0
    single, half = (load_tensors(tmp_path / n / "weights.safetensors") for n in ("single", "half"))
    torch.manual_seed(0)  # the trainer's initialisation: seed, then build the model
    init = {f"model.{k}": v for k, v in cnn_nobn().state_dict().items()}
    moved = max((single[k] - init[k]).abs().max().item() for k in init)
    gap = max((ddp[k] - single[k]).abs().max().item() for k in single)
    wrong = max((half[k] - single[k]).abs().max().item() for k in single)
    assert moved > 1e-2  # training changed the weights ...
    assert gap < 1e-5 * max(moved, 1.0)  # ... and 2 ranks x 8 images = 1 process x 16 images
    assert wrong > 100 * gap  # while 1 process x 8 images (a per-rank batch) is far off


def test_one_process_under_torchrun_joins_the_process_group_and_trains_the_same(
    worker, tmp_path, nobn_registered, device
):
    """DDP with one process (the multi-GPU code path on one GPU: NCCL on CUDA, gloo on CPU):
    it joins the process group and trains exactly what a plain process trains."""
    args = [*TRAIN, "--device", device.type, "--set", "deterministic=true"]
    code, err = torchrun(worker, [*args, "-o", str(tmp_path / "ddp")], nproc=1)
    assert code == 0, err
    backend = (tmp_path / "ddp" / "backend0.txt").read_text()
    assert backend == ("nccl" if device.type == "cuda" else "gloo")
    assert main([*args, "-o", str(tmp_path / "single")]) == 0
    ddp, single = (load_tensors(tmp_path / n / "weights.safetensors") for n in ("ddp", "single"))
    assert same(ddp, single)


def test_nan_on_one_rank_is_skipped_by_every_rank(worker, tmp_path):
    run = tmp_path / "run"
    args = ["--method", "test_nonfinite", "--arg", "at=[3]", "--arg", "rank=1"]
    code, err = torchrun(worker, [*TRAIN, *args, "--set", "nan_policy=skip", "-o", str(run)])
    assert code == 0, err
    assert "skipping batch: non-finite loss at step 3 on another rank" in err  # rank 0's log
    assert [r.get("skipped_batches", 0) for r in epoch_records(run)] == [1, 0]
    assert same(load_tensors(run / "rank0.safetensors"), load_tensors(run / "rank1.safetensors"))


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank(worker, tmp_path):
    args = ["--method", "test_nonfinite", "--arg", "at=[3]", "--arg", "rank=1"]
    code, err = torchrun(worker, [*TRAIN, *args, "-o", str(tmp_path / "run")])
    assert code != 0 and "robustfeat: error: non-finite loss at step 3: loss_aux=nan" in err
    assert checkpoint_step(tmp_path / "run") is None


@pytest.mark.slow
def test_a_killed_rank_stops_the_job_and_the_run_resumes_bit_identically(worker, ddp_run, tmp_path):
    run = tmp_path / "run"
    code, err = torchrun(worker, [*TRAIN, *NOBN, "-o", str(run)], fault="step:6@1")
    assert code != 0
    assert "Signal 9 (SIGKILL) received" in err and "rank      : 1" in err
    assert checkpoint_step(run) == 4 and not (run / "weights.safetensors").exists()
    code, err = torchrun(worker, [*TRAIN, *NOBN, "-o", str(run), "--resume"])
    assert code == 0, err
    assert same(
        load_tensors(run / "weights.safetensors"), load_tensors(ddp_run / "weights.safetensors")
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "img_per_s" in r] == [4, 8]
