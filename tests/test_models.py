"""Built-in backbones: the stage contract (shapes, gradients, feature_info, run_from, normalization,
CAM exactness) for every registered model, and the papers' parameter counts and layouts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from robustfeat.errors import ConfigError, UnknownNameError
from robustfeat.models import TIMM_MODELS_HINT, StagedModel, create_model, list_models
from robustfeat.models.preact_resnet import PreActBlock

# Small widths/depths so that every model runs in milliseconds; the structure is unchanged.
SMALL_KWARGS: dict[str, dict] = {
    "resnet20": {"width": 4},
    "resnet32": {"width": 4},
    "resnet56": {"width": 4},
    "resnet110": {"width": 4},
    "resnet18": {"width": 4},
    "preact_resnet18": {"width": 4},
    "wrn28_10": {"depth": 10, "widen_factor": 1},
    "wrn34_10": {"depth": 10, "widen_factor": 1, "dropout": 0.3},
    "resnext29": {"width": 8, "cardinality": 2, "base_width": 16, "widen_factor": 2},
    "test_cnn": {},
}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
ALL_MODELS = list_models()


def small(name: str, num_classes: int = 7, **kw) -> StagedModel:
    return create_model(name, num_classes, MEAN, STD, **SMALL_KWARGS[name], **kw)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32)


def test_every_registered_model_has_small_test_options() -> None:
    assert set(ALL_MODELS) == set(SMALL_KWARGS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_shape_and_num_classes(name: str, x: torch.Tensor) -> None:
    model = small(name, num_classes=7)
    assert model(x).shape == (2, 7)
    assert model.num_classes == 7
    assert model.get_classifier().out_features == 7
    assert model.model_name == name


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_parameter_gets_a_finite_gradient(name: str, x: torch.Tensor) -> None:
    model = small(name).train()
    F.cross_entropy(model(x), torch.tensor([1, 4])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert model.get_classifier().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL_MODELS)
def test_feature_info_matches_the_features(name: str, x: torch.Tensor) -> None:
    model = small(name).eval()
    wanted = model.node_names + model.stage_names
    feats = model.forward_features(x, nodes=wanted)
    info = model.feature_info
    assert set(info) == set(wanted)
    for node, f in feats.items():
        assert info[node].channels == f.shape[1], node
        assert info[node].reduction == 32 // f.shape[-1], node
        assert info[node].size == tuple(f.shape[-2:]), node
    reductions = [info[n].reduction for n in model.node_names]
    assert reductions == sorted(reductions)  # resolution never grows along the forward
    assert info[model.stage_names[-1]].channels == model.get_classifier().in_features
    assert model.stage_names[0] == "stem" and model.node_names[0] == "stem"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_run_from_every_stage_and_node_equals_the_forward(name: str, x: torch.Tensor) -> None:
    model = small(name).eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x, nodes=model.node_names + model.stage_names)
        for node, h in feats.items():
            torch.testing.assert_close(model.run_from(node, h), logits, rtol=1e-5, atol=1e-5)
        last = model.stage_names[-1]
        middle = model.run_from("stem", feats["stem"], until=last)
        torch.testing.assert_close(middle, feats[last], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_head(feats[last]), logits)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_normalization_is_the_first_module(name: str, x: torch.Tensor) -> None:
    model = small(name).eval()
    plain = copy.deepcopy(model)
    plain.set_normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain((x - mean) / std), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(x), plain(x), atol=1e-3)  # normalization does act
    assert next(iter(model.children())) is model.normalize


@pytest.mark.parametrize("name", ALL_MODELS)
def test_cam_of_the_last_stage_averages_to_the_logits(name: str, x: torch.Tensor) -> None:
    """CAM = fc as a 1x1 conv on the last stage's output; its spatial mean is the logit."""
    model = small(name).eval()
    fc = model.get_classifier()
    with torch.no_grad():
        h = model.forward_features(x)[model.stage_names[-1]]
        cams = torch.einsum("kc,bchw->bkhw", fc.weight, h)
        logits = cams.mean(dim=(2, 3)) + fc.bias
        torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ layouts and counts
def _stage_layout(model: StagedModel) -> list[tuple[int, int]]:
    return [(model.feature_info[s].channels, model.feature_info[s].reduction) for s in model.stages]


def test_resnet20_layout_is_he_et_al() -> None:
    model = create_model("resnet20")
    assert _stage_layout(model) == [(16, 1), (32, 2), (64, 4)]
    assert model.feature_info["stem"].channels == 16
    assert model.node_names == ["stem"] + [f"stage{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    # Option-A shortcuts have no parameters: only the 19 convs, 19 BNs and the linear layer.
    assert sum(1 for _ in model.parameters()) == 19 + 19 * 2 + 2


@pytest.mark.parametrize(
    ("name", "kwargs", "layout"),
    [
        ("resnet18", {}, [(64, 1), (128, 2), (256, 4), (512, 8)]),
        ("preact_resnet18", {}, [(64, 1), (128, 2), (256, 4), (512, 8)]),
        ("wrn28_10", {}, [(160, 1), (320, 2), (640, 4)]),
        ("wrn34_10", {}, [(160, 1), (320, 2), (640, 4)]),
        ("resnext29", {}, [(256, 1), (512, 2), (1024, 4)]),
    ],
)
def test_full_size_stage_layouts(name: str, kwargs: dict, layout: list) -> None:
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = create_model(name, **kwargs)
    assert _stage_layout(model) == layout


# Published counts (10 classes): He et al. 2016 Table 6 (ResNet-20 0.27M, ResNet-110 1.7M);
# CIFAR ResNet-18 / PreAct ResNet-18 11.17M; Zagoruyko & Komodakis 2016 (WRN-28-10 36.5M);
# WRN-34-10 46.2M (TRADES); Xie et al. 2017 Table 7 (ResNeXt-29 8x64d 34.4M, 16x64d 68.1M).
# ResNeXt-29 4x32d (AugMix/TENET) has no published count: 6,807,882 by hand, stem 1,856 +
# stages 302,592 + 1,301,504 + 5,191,680 + fc 10,250 (see resnext.py for the block layout).
@pytest.mark.parametrize(
    ("name", "kwargs", "expected", "rel_tol"),
    [
        ("resnet20", {}, 0.27e6, 0.01),
        ("resnet110", {}, 1.7e6, 0.03),
        ("resnet18", {}, 11.17e6, 0.001),
        ("preact_resnet18", {}, 11.17e6, 0.001),
        ("wrn28_10", {}, 36.5e6, 0.002),
        ("wrn34_10", {}, 46.2e6, 0.002),
        ("resnext29", {}, 6_807_882, 0.0),
        ("resnext29", {"cardinality": 8, "base_width": 64}, 34.4e6, 0.002),
        ("resnext29", {"cardinality": 16, "base_width": 64}, 68.1e6, 0.002),
        ("test_cnn", {}, 19_218, 0.0),
    ],
)
def test_parameter_counts(name: str, kwargs: dict, expected: float, rel_tol: float) -> None:
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) <= rel_tol * expected, count


def test_test_cnn_is_tiny() -> None:
    model = create_model("test_cnn")
    assert sum(p.numel() for p in model.parameters()) < 20_000
    assert model(torch.rand(16, 3, 32, 32)).shape == (16, 10)


def test_preact_nets_end_their_last_stage_with_bn_relu(x: torch.Tensor) -> None:
    """The last stage's output is BN-ReLU of the last block's sum (pre-activation nets)."""
    for name in ("preact_resnet18", "wrn28_10"):
        model = small(name).eval()
        last_stage = model.stage_names[-1]
        bn = model.stages[last_stage][-1][0]
        with torch.no_grad():
            for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias):
                t.uniform_(0.5, 1.5)
            block_out, out = model.forward_features(
                x, nodes=[model.node_names[-2], last_stage]
            ).values()
        expected = F.relu(
            (block_out - bn.running_mean[:, None, None])
            / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
            * bn.weight[:, None, None]
            + bn.bias[:, None, None]
        )
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert model.node_of_stage(last_stage) == model.node_names[-1]


@pytest.mark.parametrize(("c_in", "c_out", "stride"), [(4, 4, 1), (4, 8, 2)])
def test_preact_block_is_he_et_al_identity_mapping(c_in: int, c_out: int, stride: int) -> None:
    """out = conv2(relu(bn2(conv1(relu(bn1(x)))))) + skip, skip = x or proj(relu(bn1(x)))."""
    block = PreActBlock(c_in, c_out, stride).eval()
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
    x = torch.randn(2, c_in, 8, 8)

    def bn(m: torch.nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, eps=m.eps)

    pre = F.relu(bn(block.bn1, x))
    inner = F.conv2d(pre, block.conv1.weight, stride=stride, padding=1)
    out = F.conv2d(F.relu(bn(block.bn2, inner)), block.conv2.weight, padding=1)
    skip = x if block.shortcut is None else F.conv2d(pre, block.shortcut.weight, stride=stride)
    with torch.no_grad():
        torch.testing.assert_close(block(x), out + skip)
    assert (block.shortcut is None) == (stride == 1 and c_in == c_out)


def test_wrn_depth_sets_blocks_per_stage() -> None:
    model = create_model("wrn28_10", depth=16, widen_factor=1)
    # (16 - 4) / 6 = 2 blocks per stage, + the final BN-ReLU node in the last stage
    assert [len(model.stages[s]) for s in model.stages] == [2, 2, 3]


def test_wrn_dropout_acts_only_in_training(x: torch.Tensor) -> None:
    model = small("wrn34_10")  # dropout 0.3
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_resnext_grouped_conv_widths() -> None:
    model = create_model("resnext29")
    widths = [block.grouped[0] for stage in model.stages.values() for block in stage]
    assert [(c.in_channels, c.groups) for c in widths[::3]] == [(128, 4), (256, 4), (512, 4)]
    assert [c.stride for c in widths[::3]] == [(1, 1), (2, 2), (2, 2)]


# --------------------------------------------------------------------------------- errors
def test_unknown_name_suggests_close_names_and_timm() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'wrn28_10'") as err:
        create_model("wrn28-10")
    assert "timm/" in str(err.value) and "resnext29" in str(err.value)
    assert "timm/" in TIMM_MODELS_HINT


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("wrn28_10", {"depth": 27}, "6n\\+4"),
        ("wrn28_10", {"widen_factor": 0}, "widen_factor"),
        ("wrn28_10", {"dropout": 1.5}, "dropout"),
        ("resnext29", {"depth": 30}, "9n\\+2"),
        ("resnext29", {"width": 4, "base_width": 4}, "below 1 channel"),
        ("resnet20", {"depth": 20}, "bad options"),
        ("resnet20", {"width": 0}, "positive"),
    ],
)
def test_bad_options_are_config_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_model(name, **kwargs)


def test_bad_num_classes_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("test_cnn", num_classes=1)
