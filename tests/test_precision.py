"""precision: auto (bf16 only where the device computes it natively) and the warning for a CPU
that would emulate bf16. The hardware checks are monkeypatched: the answers must follow them."""

import json

import pytest
import torch
import yaml

from robustfeat.config import make_config
from robustfeat.data import prepare_data
from robustfeat.provenance import machine
from robustfeat.runtime import native_cpu_bf16, resolve_precision
from robustfeat.train import loop, train
from robustfeat.train.numerics import (
    emulated_bf16_warning,
    precision_segments,
    recorded_precision,
)
from test_train import TINY as TRAIN_TINY

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TINY = {
    **TRAIN_TINY,
    "data_args": {"n_train": 64, "n_test": 32},
    "epochs": 1,
    "eval_suite": "clean",
}


def cpu_hardware(monkeypatch, avx512_bf16: bool, amx: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")],
)
def test_auto_on_a_cpu_is_bf16_only_with_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    cpu_hardware(monkeypatch, avx512_bf16, amx)
    assert native_cpu_bf16() == (expected == "bf16")
    assert resolve_precision("auto", CPU) == expected
    assert machine()["cpu_native_bf16"] == (expected == "bf16")


@pytest.mark.parametrize(("bf16_gpu", "expected"), [(True, "bf16"), (False, "amp")])
def test_auto_on_a_gpu_is_bf16_where_supported_else_fp16_amp(monkeypatch, bf16_gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    assert resolve_precision("auto", CUDA) == expected


def test_an_explicit_precision_stands_as_written(monkeypatch):
    cpu_hardware(monkeypatch, False)
    assert [resolve_precision(p, CPU) for p in ("fp32", "bf16", "amp")] == ["fp32", "bf16", "amp"]
    assert resolve_precision("auto", torch.device("meta")) == "fp32"


def test_the_emulated_bf16_warning_names_the_cpu_and_the_way_out(monkeypatch):
    cpu_hardware(monkeypatch, False)
    line = emulated_bf16_warning("bf16", CPU)
    assert torch.backends.cpu.get_cpu_capability() in line and "auto or fp32" in line
    assert emulated_bf16_warning("amp", CPU) is not None  # amp on a CPU is bf16 autocast
    assert emulated_bf16_warning("fp32", CPU) is None
    assert emulated_bf16_warning("bf16", CUDA) is None
    cpu_hardware(monkeypatch, True)
    assert emulated_bf16_warning("bf16", CPU) is None


@pytest.fixture(scope="module")
def tiny_data():
    return prepare_data("shapes", n_train=64, n_test=32)


@pytest.mark.parametrize(("native", "expected"), [(False, "fp32"), (True, "bf16")])
def test_training_computes_in_the_resolved_precision_and_records_it(
    tmp_path, monkeypatch, capsys, tiny_data, native, expected
):
    cpu_hardware(monkeypatch, native)
    seen = []
    autocast = loop.autocast_context
    monkeypatch.setattr(loop, "autocast_context", lambda p, d: seen.append(p) or autocast(p, d))
    run = tmp_path / "run"
    cfg = make_config(TINY, {"precision": "auto", "device": "cpu"})
    results = train(cfg, run, data=tiny_data)
    assert seen and set(seen) == {expected}
    assert results["run"]["precision"] == expected
    assert json.loads((run / "results.json").read_text())["run"]["precision"] == expected
    assert yaml.safe_load((run / "config.yaml").read_text())["precision"] == "auto"  # as asked
    assert "emulated bf16" not in capsys.readouterr().err


def test_asking_for_bf16_on_a_cpu_that_emulates_it_warns_but_obeys(
    tmp_path, monkeypatch, capsys, tiny_data
):
    cpu_hardware(monkeypatch, False)
    results = train(
        make_config(TINY, {"precision": "bf16", "device": "cpu"}), tmp_path / "run", data=tiny_data
    )
    assert results["run"]["precision"] == "bf16"
    err = " ".join(capsys.readouterr().err.split())  # rich wraps the line
    assert "runs emulated bf16" in err and "set precision auto or fp32" in err


def test_precision_segments_add_a_segment_only_where_the_precision_changes():
    assert precision_segments(None, 0, "bf16") == [{"from_step": 0, "precision": "bf16"}]
    bf16 = [{"from_step": 0, "precision": "bf16"}]
    assert precision_segments(bf16, 40, "bf16") == bf16  # resumed, same machine kind
    mixed = precision_segments(bf16, 40, "fp32")
    assert mixed == [*bf16, {"from_step": 40, "precision": "fp32"}] and len(bf16) == 1
    assert precision_segments(mixed, 90, "fp32") == mixed
    assert recorded_precision(bf16) == "bf16" and recorded_precision(mixed) == "mixed"
    # a checkpoint from before the record: taken to have computed in what it resumes in
    assert precision_segments(None, 40, "fp32") == [{"from_step": 0, "precision": "fp32"}]


class Interrupted(Exception):
    pass


def test_a_run_resumed_where_auto_resolves_otherwise_goes_on_in_it_and_records_both(
    tmp_path, monkeypatch, capsys, tiny_data
):
    """Started on a CPU with native bf16, cut after its first epoch, resumed on one without."""
    cfg = make_config(TINY, {"precision": "auto", "device": "cpu", "epochs": 2})
    run, seen = tmp_path / "run", []
    autocast = loop.autocast_context
    monkeypatch.setattr(loop, "autocast_context", lambda p, d: seen.append(p) or autocast(p, d))

    def cut_at_step_3(where, step=None, rank=0):
        if where == "step" and step == 3:
            raise Interrupted

    cpu_hardware(monkeypatch, True)
    monkeypatch.setattr(loop, "fault_point", cut_at_step_3)
    with pytest.raises(Interrupted):
        train(cfg, run, data=tiny_data)
    assert json.loads((run / "state.json").read_text())["step"] == 2  # one epoch of 2 steps
    cpu_hardware(monkeypatch, False)
    monkeypatch.setattr(loop, "fault_point", lambda *a, **k: None)
    capsys.readouterr()
    results = train(cfg, run, resume=True, data=tiny_data)
    assert seen == ["bf16"] * 3 + ["fp32"] * 2  # step 3 began in bf16 before the cut
    assert results["run"]["precision"] == "mixed"
    assert results["run"]["precision_segments"] == [
        {"from_step": 0, "precision": "bf16"},
        {"from_step": 2, "precision": "fp32"},
    ]
    assert json.loads((run / "results.json").read_text())["run"] == results["run"]
    err = " ".join(capsys.readouterr().err.split())
    assert "computed in bf16 up to step 2" in err and "goes on in fp32" in err
