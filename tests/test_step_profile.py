"""benchmarks/step_profile.py: the operator classes its profile table is built from."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.profiler import record_function


@pytest.fixture
def bench(benchmark_script):
    return benchmark_script("step_profile")


@pytest.mark.parametrize(
    ("chain", "expected"),
    [
        # eager: the class of the outermost operator, whatever runs inside it
        (["aten::empty", "aten::mkldnn_convolution", "aten::convolution"], "conv_fwd"),
        (["aten::convolution", "aten::conv2d"], "conv_fwd"),
        (
            ["aten::empty", "aten::convolution_backward", "autograd::engine::evaluate_function"],
            "conv_bwd",
        ),
        (["aten::native_batch_norm", "aten::batch_norm"], "batchnorm"),
        (["aten::relu_", "aten::cross_entropy_loss"], "other_ops"),
        # compiled: inductor kernels are named by the operators fused into them
        (
            ["graph_0_cpp_fused__native_batch_norm_legit_functional_relu_1", "## Call Compiled"],
            "batchnorm",
        ),
        (["graph_0_cpp_fused__to_copy_div_sub_0", "## Call CompiledFxGraph x"], "other_ops"),
        (["aten::convolution", "## Call CompiledFxGraph x", "Torch-Compiled Region"], "conv_fwd"),
        # the step's phases win over the operator inside them
        (["aten::mul_", "aten::_foreach_mul_", "Optimizer.step#SGD.step"], "optimizer"),
        (["aten::gather", "step_profile::data"], "data"),
        (["## Call CompiledFxGraph x", "Torch-Compiled Region"], "framework"),
    ],
)
def test_op_class_of_an_event_name_chain(bench, chain, expected):
    assert bench.op_class(chain) == expected


def test_profile_of_a_real_step_splits_its_time_into_the_classes(bench):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step() -> int:
        with record_function(bench.DATA_MARK):
            x = torch.rand(4, 3, 16, 16).flip(3)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return 4

    result = bench.profile_step(step, steps=2)
    ms = result["ms_per_step"]
    for name in ("conv_fwd", "conv_bwd", "batchnorm", "other_ops", "optimizer", "data"):
        assert ms[name] > 0, name
    assert sum(result["share"].values()) == pytest.approx(1.0)
    assert result["images_per_step"] == 4
    assert "aten::conv2d" in result["top_ops_ms_per_step"]  # eager: the outermost op


@pytest.mark.parametrize("mode", ["quick", "default", "full"])
def test_every_grid_starts_with_the_baseline_and_holds_the_new_settings(bench, mode):
    settings = bench.grid(mode)
    assert settings[0] == bench.BASELINE and bench.NEW in settings
    assert len({json.dumps(s, sort_keys=True) for s in settings}) == len(settings)  # distinct
    for setting in settings:  # each method cell has its CE reference in the grid
        if "method" in setting:
            assert {k: v for k, v in setting.items() if k != "method"} in settings


def test_full_grid_is_every_mode_precision_batch_and_thread_count(bench):
    cells = bench.grid("full")
    assert len(cells) == 2 * 2 * 3 * 2
    assert {"threads": 1, "compile": False, "precision": "fp32", "batch_size": 512} in cells
