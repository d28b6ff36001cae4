"""timm CNNs adapted to the stage contract: same function as timm on the same weights, the contract
(gradients, feature_info, run_from, CAM), local-only weights, and clear errors."""

from __future__ import annotations

import copy
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from robustfeat.errors import CheckpointError, ConfigError, UnknownNameError
from robustfeat.models import create_model, list_models
from robustfeat.models.timm_adapter import _adapt

# Small real families: ResNet (resnet10t), EfficientNet and ConvNeXt (timm's test_* variants of the
# same classes), MobileNetV3 (its head has layers after pooling).
LINEAR_HEAD = ["resnet10t", "test_efficientnet", "test_convnext"]
ALL = [*LINEAR_HEAD, "mobilenetv3_small_050"]
NUM_CLASSES = 7


def timm_and_adapted(
    name: str, tmp_path: Path, **kw
) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A timm model and the adapted model with the same weights (through ``pretrained_file``),
    normalized with timm's mean/std; eval mode."""
    reference = timm.create_model(name, num_classes=NUM_CLASSES).eval()
    weights = tmp_path / f"{name}.safetensors"
    save_file(reference.state_dict(), str(weights))
    mean = torch.tensor(reference.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(reference.pretrained_cfg["std"]).view(1, 3, 1, 1)
    adapted = create_model(
        f"timm/{name}",
        NUM_CLASSES,
        mean=mean.flatten().tolist(),
        std=std.flatten().tolist(),
        pretrained_file=weights,
        **kw,
    ).eval()
    return reference, adapted, mean, std


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64)


@pytest.mark.parametrize("name", ["resnet10t", "test_efficientnet", "mobilenetv3_small_050"])
def test_adapted_forward_equals_timm_forward(name: str, x: torch.Tensor, tmp_path: Path) -> None:
    reference, adapted, mean, std = timm_and_adapted(name, tmp_path)
    assert adapted.matches_timm_forward
    with torch.no_grad():
        expected = reference((x - mean) / std)
        torch.testing.assert_close(adapted(x), expected, rtol=1e-5, atol=1e-5)
        last = adapted.forward_features(x)[adapted.stage_names[-1]]
        torch.testing.assert_close(last, reference.forward_features((x - mean) / std))


def test_convnext_head_norm_is_exact_with_cam_head_off(x: torch.Tensor, tmp_path: Path) -> None:
    reference, adapted, mean, std = timm_and_adapted("test_convnext", tmp_path, cam_head=False)
    assert adapted.matches_timm_forward
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), reference((x - mean) / std), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="no GAP \\+ linear head"):
        adapted.get_classifier()
    assert adapted.num_classes == NUM_CLASSES


def test_convnext_head_norm_moves_before_pooling(x: torch.Tensor, tmp_path: Path) -> None:
    """cam_head=True: logits = fc(GAP(LayerNorm2d(features))) instead of fc(LN(GAP(features)))."""
    reference, adapted, mean, std = timm_and_adapted("test_convnext", tmp_path)
    assert not adapted.matches_timm_forward
    head = reference.head
    with torch.no_grad():
        features = reference.forward_features((x - mean) / std)
        expected = head.fc(head.norm(features).mean(dim=(2, 3)))
        torch.testing.assert_close(adapted(x), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(adapted(x), reference((x - mean) / std), atol=1e-3)


def test_mobilenetv3_keeps_its_post_pooling_head(x: torch.Tensor) -> None:
    model = create_model("timm/mobilenetv3_small_050", NUM_CLASSES)
    assert model.num_classes == NUM_CLASSES
    with pytest.raises(ConfigError, match="CAM-based methods need one"):
        model.get_classifier()
    assert model(x).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", ALL)
def test_stages_match_timm_feature_info(name: str) -> None:
    reference = timm.create_model(name, num_classes=NUM_CLASSES)
    model = create_model(f"timm/{name}", NUM_CLASSES, default_input_size=64)
    stage_info = [f for f in reference.feature_info if f["reduction"] > 2]
    info = model.feature_info
    assert len(model.stages) == len(stage_info)
    for stage, f in zip(model.stages, stage_info, strict=True):
        assert info[stage].reduction == f["reduction"], stage
        assert info[stage].size == (64 // f["reduction"],) * 2, stage
    for stage, f in zip(list(model.stages)[:-1], stage_info[:-1], strict=True):
        assert info[stage].channels == f["num_chs"], stage
    # The last stage ends with the pre-pooling layers: its channels are what the head pools.
    assert info[model.stage_names[-1]].channels == reference.num_features
    assert info["stem"].reduction <= stage_info[0]["reduction"]


@pytest.mark.parametrize("name", ALL)
def test_contract_gradients_and_run_from(name: str, x: torch.Tensor) -> None:
    model = create_model(f"timm/{name}", NUM_CLASSES).train()
    F.cross_entropy(model(x), torch.tensor([0, 6])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x, nodes=model.node_names + model.stage_names)
        for node, h in feats.items():
            torch.testing.assert_close(model.run_from(node, h), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", LINEAR_HEAD)
def test_cam_of_the_last_stage_averages_to_the_logits(name: str, x: torch.Tensor) -> None:
    model = create_model(f"timm/{name}", NUM_CLASSES).eval()
    fc = model.get_classifier()
    with torch.no_grad():
        h = model.forward_features(x)[model.stage_names[-1]]
        cams = torch.einsum("kc,bchw->bkhw", fc.weight, h)
        torch.testing.assert_close(cams.mean(dim=(2, 3)) + fc.bias, model(x), rtol=1e-5, atol=1e-5)


def test_normalization_is_the_first_module(x: torch.Tensor) -> None:
    model = create_model("timm/test_efficientnet", NUM_CLASSES, mean=(0.5,) * 3, std=(0.25,) * 3)
    plain = copy.deepcopy(model)
    plain.set_normalization((0.0,) * 3, (1.0,) * 3)
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain((x - 0.5) / 0.25), rtol=1e-5, atol=1e-5)


def test_pretrained_file_with_other_classes_keeps_the_backbone(tmp_path: Path) -> None:
    source = timm.create_model("test_resnet", num_classes=NUM_CLASSES)
    weights = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(weights))
    model = create_model("timm/test_resnet", 3, pretrained_file=str(weights))
    assert model.fc.weight.shape == (3, source.num_features)
    backbone = source.state_dict()["layer4.0.conv2.weight"]
    assert any(torch.equal(p, backbone) for p in model.parameters())


def test_pretrained_uses_safetensors_from_the_local_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = timm.create_model("test_resnet")  # 1000 classes, as the hub weights
    weights = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(weights))
    asked = []

    def cache_lookup(repo_id: str, filename: str, **_: object) -> str:
        asked.append((repo_id, filename))
        return str(weights)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache_lookup)
    model = create_model("timm/test_resnet", 1000, pretrained=True)
    assert asked == [("timm/test_resnet.r160_in1k", "model.safetensors")]
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_pretrained_without_local_weights_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match=r"not available offline.*pretrained_file"):
        create_model("timm/test_resnet", pretrained=True)


@pytest.mark.parametrize(
    ("make_file", "match"),
    [
        (lambda d: d / "w.pth", "must be a .safetensors file"),
        (lambda d: d / "missing.safetensors", "does not exist"),
    ],
)
def test_bad_pretrained_file_is_a_checkpoint_error(make_file, match: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=match):
        create_model("timm/test_resnet", pretrained_file=make_file(tmp_path))


def test_weights_of_another_model_are_a_checkpoint_error(tmp_path: Path) -> None:
    weights = tmp_path / "effnet.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), str(weights))
    with pytest.raises(CheckpointError, match="could not load weights"):
        create_model("timm/test_resnet", pretrained_file=weights)


def test_vit_is_not_a_cnn_with_stages() -> None:
    with pytest.raises(ConfigError, match="not a CNN with stages"):
        create_model("timm/test_vit")


def test_model_that_is_not_a_chain_of_its_modules_is_refused() -> None:
    model = timm.create_model("test_resnet", num_classes=NUM_CLASSES)
    chain_forward = model.forward
    model.forward = lambda x: chain_forward(x.flip(-1))  # something the chain cannot reproduce
    with pytest.raises(ConfigError, match="not the chain of its modules"):
        _adapt(model, "test_resnet", NUM_CLASSES, cam_head=True, default_input_size=64)


def test_unknown_timm_name_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean timm/resnet18"):
        create_model("timm/resnet181")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"drop_rate": 0.2}, "drop_rate=0"),
        ({"global_pool": "max"}, "global_pool='avg'"),
        ({"no_such_option": 1}, "bad options"),
        ({"default_input_size": 4}, "default_input_size"),
    ],
)
def test_unsupported_options_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_model("timm/test_resnet", **kwargs)


def test_timm_models_are_not_registered_one_by_one() -> None:
    assert not any(name.startswith("timm/") for name in list_models())
