"""HNC (Sun et al. 2020): each equation against a hand-computed case, the gradient shapes of
Eq. (11) / (12), and the method's single forward pass."""

import math

import pytest
import torch

from robustfeat.bench import plan
from robustfeat.config import load_recipe, make_config
from robustfeat.errors import ConfigError
from robustfeat.interpret.cam import class_activation_maps
from robustfeat.methods import create_method
from robustfeat.methods.hnc import (
    default_k,
    hnc_kd,
    hnc_mse,
    negative_set,
    sce_weights,
    weighted_sigmoid_ce,
)
from robustfeat.models import create_model


def _cams() -> torch.Tensor:
    """One sample, 3 classes, 2x2 maps: class 0 (true), 1 (one peak), 2 (flat)."""
    return torch.tensor(
        [[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]]]
    )


def _onehot(label: int, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor([label]), classes).bool()


def test_negative_set_excludes_the_true_class_and_keeps_the_top_k():
    scores = torch.tensor([[5.0, 3.0, 4.0, 1.0]])
    positives = _onehot(0, 4)
    assert negative_set(scores, positives, 1).tolist() == [[False, False, True, False]]
    assert negative_set(scores, positives, 2).tolist() == [[False, True, True, False]]
    assert negative_set(scores, positives, 3).tolist() == [[False, True, True, True]]


def test_negative_set_includes_ties_at_t_k():
    scores = torch.tensor([[5.0, 2.0, 2.0, 1.0]])
    assert negative_set(scores, _onehot(0, 4), 1).tolist() == [[False, True, True, False]]


def test_negative_set_multilabel_and_fewer_negatives_than_k():
    scores = torch.tensor([[5.0, 3.0, 4.0, 1.0, 0.0]])
    positives = torch.tensor([[True, False, True, False, False]])
    assert negative_set(scores, positives, 2).tolist() == [[False, True, False, True, False]]
    many = torch.tensor([[True, True, True, False, False]])
    assert negative_set(scores, many, 4).tolist() == [[False, False, False, True, True]]


def test_hnc_mse_eq2_hand_computed():
    negatives = torch.tensor([[False, True, True]])
    # (1/4)(0 + 0 + 0 + 4) + (1/4)(1 + 1 + 1 + 1) = 1 + 1
    assert hnc_mse(_cams(), negatives).tolist() == [2.0]
    assert hnc_mse(_cams(), torch.tensor([[False, False, True]])).tolist() == [1.0]


def test_hnc_kd_eq5_hand_computed():
    negatives = torch.tensor([[False, True, True]])
    # flat map: -mean log(1/4) = log 4; peak map [0, 0, 0, 2]: log(3 + e^2) - 2/4
    expected = math.log(4) + math.log(3 + math.e**2) - 0.5
    assert hnc_kd(_cams(), negatives).item() == pytest.approx(expected, rel=1e-6)


def test_hnc_gradients_match_eq11_and_eq12_and_peaks_get_more():
    cam = _cams()[:, 1:2].clone().requires_grad_(True)  # the peaked negative map
    selected = torch.tensor([[True]])
    beta = 1 / 4
    (grad_mse,) = torch.autograd.grad(hnc_mse(cam, selected).sum(), cam)
    assert torch.allclose(grad_mse, 2 * beta * cam.detach())  # Eq. (11), alpha = 0
    (grad_kd,) = torch.autograd.grad(hnc_kd(cam, selected).sum(), cam)
    softmax = cam.detach().flatten(2).softmax(-1).view_as(cam)
    assert torch.allclose(grad_kd, softmax - beta)  # Eq. (12)
    for grad in (grad_mse, grad_kd):
        flat = grad.flatten()
        assert flat[3] > flat[:3].max()  # the peak is pushed down hardest
    # CE's gradient on a CAM is the same at every position (Eq. 10): HNC's is not
    assert grad_kd.flatten().unique().numel() == 2


def test_sce_weights_and_loss_eq8_hand_computed():
    pos_rate = torch.tensor([0.2, 0.5])
    targets = torch.tensor([[1.0, 0.0]])
    u = sce_weights(targets, pos_rate)
    assert torch.allclose(u, torch.tensor([[math.exp(0.8), math.exp(0.5)]]))
    value = weighted_sigmoid_ce(torch.zeros(1, 2), targets, pos_rate)
    expected = (math.exp(0.8) + math.exp(0.5)) * math.log(2) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)
    logits = torch.tensor([[2.0, -1.0]])
    manual = (
        -(
            math.exp(0.8) * math.log(1 / (1 + math.exp(-2.0)))
            + math.exp(0.5) * math.log(1 - 1 / (1 + math.exp(1.0)))
        )
        / 2
    )
    assert weighted_sigmoid_ce(logits, targets, pos_rate).item() == pytest.approx(manual, rel=1e-6)


def test_default_k_follows_official_fraction_with_a_floor():
    assert default_k(1000) == 100
    assert default_k(100) == 10
    assert default_k(10) == 3
    assert default_k(2) == 1


def _method(**opts):
    model = create_model("resnet20", num_classes=10, width=4)
    return create_method("hnc", model, **opts), model


@pytest.mark.parametrize("variant", ["mse", "kd"])
def test_method_logits_equal_model_and_loss_is_eq7(variant):
    method, model = _method(variant=variant, lam=0.5)
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    out = method(x, y)
    assert torch.allclose(out["logits"], model(x), atol=1e-5)
    ce = torch.nn.functional.cross_entropy(model(x), y)
    assert out["loss_ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((out["loss_ce"] + 0.5 * out["loss_hnc"]).item())
    out["loss"].backward()
    assert model.get_classifier().weight.grad.abs().sum() > 0


def test_method_hnc_matches_the_equations_on_its_own_cams():
    method, model = _method(variant="mse", k=2)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = method(x, y)
    cams = class_activation_maps(model, x)
    positives = torch.nn.functional.one_hot(y, 10).bool()
    negatives = negative_set(cams.mean((2, 3)), positives, 2)
    # official normalisation: MSE over the selected (sample, class) maps
    expected = hnc_mse(cams, negatives).sum() / negatives.sum()
    assert out["loss_hnc"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert negatives.sum() == 8


def test_method_defaults_are_the_official_lambdas():
    assert _method()[0].lam == 0.07
    assert _method(variant="kd")[0].lam == 0.0065
    assert _method()[0].k == 3


def test_method_multilabel_uses_sce_and_running_label_rates():
    method, _ = _method(variant="kd")
    x = torch.rand(4, 3, 32, 32)
    y = torch.zeros(4, 10)
    y[:, 0], y[:2, 1] = 1.0, 1.0
    out = method(x, y)
    assert "loss_sce" in out and "loss_ce" not in out
    rates = method.label_count / method.label_seen
    assert rates[0].item() == 1.0 and rates[1].item() == 0.5 and rates[2].item() == 0.0
    fixed, _ = _method(pos_rate=[0.1] * 10)
    fixed(x, y)
    assert fixed.label_seen.item() == 0  # given rates: nothing estimated


def test_method_rejects_bad_options_and_models_without_linear_head():
    with pytest.raises(ConfigError, match="variant"):
        _method(variant="l2")
    with pytest.raises(ConfigError, match="k"):
        _method(k=10)
    with pytest.raises(ConfigError, match="pos_rate"):
        _method(pos_rate=[0.5])
    model = create_model("resnet20", num_classes=10, width=4)
    model.fc = torch.nn.Sequential(model.fc)
    with pytest.raises(ConfigError, match="GAP \\+ linear"):
        create_method("hnc", model)


def test_paper_recipe_is_the_cifar100_protocol(tmp_path):
    cfg = make_config(load_recipe("paper-hnc"))
    assert (cfg.model, cfg.data, cfg.epochs, cfg.lr) == ("resnet110", "cifar100", 164, 0.1)
    assert [round(m * 164) for m in cfg.milestones] == [84, 122]
    method = create_method(cfg.method, create_model(cfg.model, num_classes=100), **cfg.method_args)
    assert method.k == 10 == default_k(100) and method.lam == 0.07
    rows = plan("paper-hnc", results_dir=tmp_path)
    assert (
        sorted({c.name for c in (r.cell for r in rows)}) == ["ce", "hnc_kd", "hnc_mse"]
        and len(rows) == 15
    )
