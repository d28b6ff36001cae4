"""MoEx: PONO moment exchange against a hand computation, label interpolation, probability p."""

import pytest
import torch
import torch.nn.functional as F

from robustfeat.errors import ConfigError
from robustfeat.methods import create_method
from robustfeat.methods.moex import moex_loss, pono_moment_exchange
from robustfeat.models import create_model


def test_moment_exchange_hand_computed():
    # two samples, 3 channels, one pixel: per-pixel moments across channels
    h = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 16.0]]).view(2, 3, 1, 1)
    # sample 0: mean 2, unbiased var 1; sample 1: mean 12, unbiased var 12
    perm = torch.tensor([1, 0])
    got = pono_moment_exchange(h, perm, eps=0.0).view(2, 3)
    normalized0 = torch.tensor([-1.0, 0.0, 1.0])  # (h0 - 2) / 1
    normalized1 = torch.tensor([-2.0, -2.0, 4.0]) / 12**0.5
    assert torch.allclose(got[0], normalized0 * 12**0.5 + 12)
    assert torch.allclose(got[1], normalized1 * 1.0 + 2)


def test_moments_are_exchanged_and_the_normalized_feature_kept():
    h = torch.randn(4, 8, 5, 5) * 3 + 1
    perm = torch.tensor([2, 3, 0, 1])
    out = pono_moment_exchange(h, perm)
    assert torch.allclose(out.mean(1), h.mean(1)[perm], atol=1e-5)
    assert torch.allclose(out.std(1), h.std(1)[perm], atol=1e-3)
    normalize = lambda t: (t - t.mean(1, keepdim=True)) / t.std(1, keepdim=True)  # noqa: E731
    assert torch.allclose(normalize(out), normalize(h), atol=1e-3)
    assert torch.allclose(pono_moment_exchange(h, torch.arange(4)), h, atol=1e-4)


def test_labels_are_interpolated_with_lam():
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    perm = torch.tensor([1, 2, 3, 0])
    want = 0.7 * F.cross_entropy(logits, y) + 0.3 * F.cross_entropy(logits, y[perm])
    assert moex_loss(logits, y, perm, 0.7).item() == pytest.approx(want.item())


def test_moex_method_applies_with_probability_p_at_the_chosen_node():
    model = create_model("test_cnn", num_classes=5)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 5, (8,))
    always = create_method("moex", model, p=1.0, lam=0.5)
    assert always.node == "stem"
    torch.manual_seed(3)
    out = always.train()(x, y)
    torch.manual_seed(3)
    torch.rand(())  # the coin flip
    perm = torch.randperm(8)
    h = model.forward_features(x, nodes=["stem"])["stem"]
    logits = model.run_from("stem", pono_moment_exchange(h, perm))
    assert torch.allclose(out["logits"], logits, atol=1e-5)
    assert out["loss"].item() == pytest.approx(moex_loss(logits, y, perm, 0.5).item(), rel=1e-5)
    assert out["moex_applied"].item() == 1.0
    never = create_method("moex", model, p=0.0)
    out = never(x, y)
    assert out["moex_applied"].item() == 0.0
    assert torch.allclose(out["logits"], model(x), atol=1e-5)
    torch.manual_seed(0)
    half = create_method("moex", model, p=0.5)
    applied = [half(x, y)["moex_applied"].item() for _ in range(40)]
    assert 8 <= sum(applied) <= 32
    assert create_method("moex", model, node="stage2").node == "stage2.0"


def test_moex_option_errors():
    model = create_model("test_cnn", num_classes=5)
    with pytest.raises(ConfigError, match="p must be"):
        create_method("moex", model, p=1.5)
    with pytest.raises(ConfigError, match="unknown feature node"):
        create_method("moex", model, node="stage7")
