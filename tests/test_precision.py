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
from robustfeat.train.numerics import emulated_bf16_warning
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
