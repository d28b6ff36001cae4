"""The Top-GAP method: head on the stage contract, Eq. (1), ablation switches, CAM mode."""

import warnings

import pytest
import torch

from robustfeat import io
from robustfeat.bench import plan
from robustfeat.config import load_recipe, make_config
from robustfeat.errors import ConfigError
from robustfeat.methods import create_method
from robustfeat.methods.topgap import TopGapNet, l1_penalty
from robustfeat.models import create_model


def _method(model_name: str = "resnet20", **opts):
    kwargs = {"width": 4} if model_name == "resnet20" else {}
    model = create_model(model_name, num_classes=10, **kwargs)
    return create_method("topgap", model, width=8, **opts)


def test_head_reads_all_three_resnet20_stages_at_32x32():
    method = _method()
    net = method.eval_model()
    assert isinstance(net, TopGapNet)
    assert net.stages == ["stage1", "stage2", "stage3"]  # only 3 stages: all of them
    maps = net.class_maps(torch.rand(2, 3, 32, 32))
    assert maps.shape == (2, 10, 32, 32)


def test_logits_are_topk_pooled_class_maps_and_loss_is_eq1():
    method = _method(k=16, lam=0.5)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = method(x, y)
    maps = method.model.class_maps(x)
    expected = maps.flatten(2).topk(16, dim=-1).values.mean(-1)
    assert torch.allclose(out["logits"], expected, atol=1e-6)
    assert torch.allclose(method.eval_model()(x), expected, atol=1e-6)
    ce = torch.nn.functional.cross_entropy(expected, y)
    assert out["loss_ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out["loss_l1"].item() == pytest.approx(maps.abs().mean().item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((out["loss_ce"] + 0.5 * out["loss_l1"]).item())


def test_l1_penalty_normalisations():
    maps = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]]], [[[0.0, 0.0], [0.0, 2.0]]]])  # (2, 1, 2, 2)
    assert l1_penalty(maps, "mean").item() == pytest.approx(8 / 8)
    assert l1_penalty(maps, "sum").item() == pytest.approx((6 + 2) / 2)
    assert l1_penalty(maps.bfloat16(), "sum").dtype == torch.float32


def test_ablation_switches_of_table7():
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 10, (2,))
    no_pool = _method(topgap=False)
    assert torch.allclose(
        no_pool(x, y)["logits"], no_pool.model.class_maps(x).mean((2, 3)), atol=1e-6
    )
    no_l1 = _method(l1=False)
    out = no_l1(x, y)
    assert out["loss"].item() == pytest.approx(out["loss_ce"].item())
    assert out["loss_l1"].item() > 0  # still logged
    no_fpn = _method(fpn=False, k=4)
    assert no_fpn.model.stages == ["stage3"]
    assert no_fpn.model.class_maps(x).shape == (2, 10, 8, 8)


def test_lambda_warmup_ramps_over_optimizer_steps():
    method = _method(lam=2.0, lam_warmup=4)
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 10, (2,))
    seen = []
    for _ in range(6):
        seen.append(method(x, y)["lam_l1"].item())
        method.after_step()
    assert seen == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert "steps_done" in method.state_dict()  # a resumed run continues the ramp


def test_cam_mode_is_upsampled_and_minmax_normalised():
    net = _method(num_maps=1).eval_model()  # only stage3: 8x8 maps
    cams = net.cam(torch.rand(3, 3, 32, 32))
    assert cams.shape == (3, 10, 32, 32)
    assert torch.allclose(cams.amin((2, 3)), torch.zeros(3, 10))
    assert torch.allclose(cams.amax((2, 3)), torch.ones(3, 10))


def test_backbone_classifier_is_replaced_and_state_dict_saves(tmp_path):
    method = _method()
    names = list(method.state_dict())
    assert not any(n.startswith("model.backbone.fc") for n in names)
    assert any(n.startswith("model.head.lateral.2") for n in names)
    io.save_tensors(tmp_path / "w.safetensors", method.state_dict())  # no shared tensors
    with pytest.raises(ConfigError, match="GAP \\+ linear"):
        method.model.backbone.get_classifier()


def test_works_on_a_timm_backbone():
    model = create_model("timm/resnet18", num_classes=10, default_input_size=32)
    method = create_method("topgap", model, width=8, k=0.25)
    assert method.model.stages == ["stage1", "stage2", "stage3", "stage4"]
    out = method(torch.rand(2, 3, 32, 32), torch.tensor([1, 2]))
    out["loss"].backward()
    assert out["logits"].shape == (2, 10)
    assert method.model.head.lateral[0].weight.grad is not None


def test_multi_hot_targets_use_sigmoid_cross_entropy():
    method = _method()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([[1.0] + [0.0] * 9, [0.0, 1.0] + [0.0] * 8])
    out = method(x, y)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], y)
    assert out["loss_ce"].item() == pytest.approx(bce.item(), rel=1e-5)


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"k": 0}, "k must be"),
        ({"lam": -1.0}, "lam"),
        ({"l1_norm": "l2"}, "l1_norm"),
        ({"lam_warmup": -1}, "lam_warmup"),
        ({"num_maps": 0}, "num_maps"),
    ],
)
def test_rejects_bad_options(opts, match):
    with pytest.raises(ConfigError, match=match):
        _method(**opts)


def test_overweighted_sum_penalty_warns_and_mean_does_not():
    with pytest.warns(UserWarning, match="diverged"):
        _method(l1_norm="sum", lam=0.05)  # 0.05 x 10 classes x 32 x 32 = 512x the mean
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _method(l1_norm="mean", lam=1.0)
        _method(l1_norm="sum", lam=1e-4)


def test_paper_recipe_builds_and_plans_the_k_sweep(tmp_path):
    cfg = make_config(load_recipe("paper-topgap"))
    assert cfg.method == "topgap" and cfg.epochs == 200 and cfg.eval_suite == "paper-topgap"
    model = create_model(cfg.model, num_classes=10)
    method = create_method(cfg.method, model, **cfg.method_args)
    assert method.model.stages == ["stage1", "stage2", "stage3", "stage4"]
    assert method.model.head.lateral[0].out_channels == 256
    rows = plan("paper-topgap", results_dir=tmp_path)
    names = sorted({row.cell.name for row in rows})
    assert names == sorted(["ce"] + [f"topgap_k{k}" for k in (8, 16, 32, 64, 128, 256)])
    assert len(rows) == 7 * 5


def test_adaptive_attack_loss_is_ce_of_the_gap_of_the_class_maps():
    method = _method(k=4)
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 5, 9])
    losses = method.attack_losses()
    assert set(losses) == {"gap_ce"}
    value = losses["gap_ce"](x, y)
    expected = torch.nn.functional.cross_entropy(
        method.model.class_maps(x).mean((2, 3)), y, reduction="none"
    )
    assert value.shape == (3,) and torch.allclose(value, expected, atol=1e-6)


def test_head_learning_rate_group():
    method = _method()
    groups = method.param_groups({"lr": 0.2, "weight_decay": 5e-4})
    assert [g["lr"] for g in groups] == [0.2, pytest.approx(0.02)]  # default head_lr 0.1
    head = {id(p) for p in method.model.head.parameters()}
    assert {id(p) for p in groups[1]["params"]} == head
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in method.parameters())  # each exactly once
    assert _method(head_lr=1.0).param_groups({"lr": 0.2})[1]["lr"] == 0.2
    with pytest.raises(ConfigError, match="head_lr"):
        _method(head_lr=0.0)


def test_cpu_recipes_plan_the_topgap_cells(tmp_path):
    cells = {row.cell.name: row.cell for row in plan("cpu-sweeps", results_dir=tmp_path)}
    cells.update({row.cell.name: row.cell for row in plan("cpu", results_dir=tmp_path)})
    assert {f"topgap_k{k}" for k in (8, 16, 32, 64, 128, 256)} <= set(cells)
    assert cells["topgap_k1_no_fpn"].args == {"k": 1, "fpn": False}
    assert cells["topgap_k16_w64"].args == {"k": 16, "width": 64}
    cfg = make_config(load_recipe("cpu-sweeps"))
    assert cfg.model == "resnet20" and cfg.epochs == 10
