"""ALFA: feature-space PGD (Eq. 3-4), sites, prefix reuse, BN mode, loss composition."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from robustfeat.errors import ConfigError
from robustfeat.methods import create_method
from robustfeat.methods.alfa import alfa_loss, feature_pgd_step, granularity_sites
from robustfeat.models import create_model
from robustfeat.nn import FeatureSlot


def tiny(name: str = "test_cnn", **kw):
    return create_model(name, num_classes=5, **kw)


def batch(n: int = 8):
    return torch.rand(n, 3, 32, 32), torch.randint(0, 5, (n,))


def test_feature_pgd_step_is_a_sign_step_projected_when_eps_is_set():
    delta = torch.tensor([0.0, 0.01, -0.02, 0.005])
    grad = torch.tensor([3.0, -0.5, 0.0, 2.0])
    alpha = 0.01
    unbounded = feature_pgd_step(delta, grad, alpha, None)
    assert torch.allclose(unbounded, torch.tensor([0.01, 0.0, -0.02, 0.015]))
    bounded = feature_pgd_step(delta, grad, alpha, eps=0.012)
    assert torch.allclose(bounded, torch.tensor([0.01, 0.0, -0.012, 0.012]))


def hand_crafted_delta(model, h, y, alpha, steps):
    """Sign ascent on CE(fc(GAP(h + delta))) with the gradient written out: d CE / d h[c, i, j]
    = ((softmax - onehot) @ W)_c / (H W), so its sign is that of (softmax - onehot) @ W."""
    fc = model.get_classifier()
    delta = torch.zeros_like(h)
    for _ in range(steps):
        pooled = (h + delta).mean(dim=(2, 3))
        probs = torch.softmax(pooled @ fc.weight.T + fc.bias, dim=1)
        g = (probs - F.one_hot(y, probs.shape[1]).float()) @ fc.weight
        delta = delta + alpha * g.sign()[:, :, None, None].expand_as(h)
    return delta


def test_alfa_at_the_last_block_matches_hand_computed_sign_ascent():
    model = tiny()
    method = create_method("alfa", model, steps=3, alpha=0.02)
    assert method.site_names == ["stage3.0"]
    x, y = batch()
    h = model.forward_features(x, nodes=["stage3.0"])["stage3.0"].detach()
    site = method.sites[0]
    got = method._perturbation(site, h, h, y)
    want = hand_crafted_delta(model, h, y, alpha=0.02, steps=3)
    assert torch.allclose(got, want)
    assert got.abs().max().item() == pytest.approx(0.06)  # unbounded: 3 steps of 0.02


def test_eps_bounds_the_perturbation_and_random_init_starts_inside():
    model = tiny()
    x, y = batch()
    method = create_method("alfa", model, steps=4, alpha=0.02, eps=0.03)
    h = model.forward_features(x)["stage3"].detach()
    delta = method._perturbation(method.sites[0], h, h, y)
    assert delta.abs().max().item() == pytest.approx(0.03)
    method = create_method("alfa", model, steps=1, alpha=1e-6, eps=0.05, random_init=True)
    delta = method._perturbation(method.sites[0], h, h, y)
    assert delta.abs().max() <= 0.05 + 1e-6 and delta.abs().max() > 0.04
    assert delta.std() > 0.01  # a spread of starts, not a constant


def count_calls(model):
    calls = Counter()
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: calls.update([name]))
        for name, module in [*model._nodes, ("fc", model.fc)]
    ]
    return calls, handles


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_prefix_runs_once_and_suffix_once_per_step(bn_mode):
    model = tiny()
    method = create_method("alfa", model, nodes="stage2.0", steps=3, bn_mode=bn_mode).train()
    calls, handles = count_calls(model)
    method(*batch())
    for handle in handles:
        handle.remove()
    # prefix once (clean forward); suffix: clean + 3 crafting steps + the adversarial forward
    assert calls == Counter({"stem": 1, "stage1.0": 1, "stage2.0": 1, "stage3.0": 5, "fc": 5})


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_bn_mode_while_crafting_is_as_configured_and_restored(bn_mode):
    model = tiny()
    method = create_method("alfa", model, nodes="stage2.0", steps=2, bn_mode=bn_mode).train()
    bn = model.stages["stage3"][0].conv1[1]
    seen = []
    handle = bn.register_forward_hook(lambda m, i, o: seen.append(m.training))
    stats_before = bn.running_mean.clone()
    method(*batch())
    handle.remove()
    # clean forward (train), 2 crafting forwards (bn_mode), adversarial forward (train)
    assert seen == [True, bn_mode == "train", bn_mode == "train", True]
    assert all(m.training for m in model.modules())
    assert not torch.equal(bn.running_mean, stats_before)


def test_loss_composition_hand_computed():
    loss_std, losses_at = torch.tensor(1.0), torch.tensor([2.0, 4.0])
    assert alfa_loss(loss_std, losses_at, 1.0, normalize=True).item() == pytest.approx(2.0)
    assert alfa_loss(loss_std, losses_at, 0.5, normalize=True).item() == pytest.approx(2.5 / 1.5)
    assert alfa_loss(loss_std, losses_at, 0.5, normalize=False).item() == pytest.approx(4.0)


def test_method_loss_is_the_mean_of_clean_and_adversarial_ce():
    model = tiny()
    method = create_method("alfa", model, alpha=0.05).train()
    x, y = batch()
    out = method(x, y)
    assert out["loss"].item() == pytest.approx((out["loss_ce"] + out["loss_at"]).item() / 2)
    assert out["loss_at"] > out["loss_ce"]  # the perturbation raises the loss
    with torch.no_grad():
        assert torch.allclose(out["logits"], model(x), atol=1e-5)  # logits are the clean ones
    summed = create_method("alfa", tiny(), nodes=["stage2.0", "stage3.0"], normalize=False, lam=2)
    out = summed.train()(x, y)
    assert out["loss"].item() == pytest.approx((out["loss_ce"] + 2 * 2 * out["loss_at"]).item())


def test_detach_prefix_decides_whether_the_adversarial_loss_trains_the_prefix():
    x, y = batch()
    for detach, expect_grad in [(True, False), (False, True)]:
        model = tiny()
        method = create_method("alfa", model, nodes="stage2.0", detach_prefix=detach).train()
        method(x, y)["loss_at"].backward()
        stem_grad = model.stem[0][0].weight.grad
        assert (stem_grad is not None and stem_grad.abs().sum() > 0) == expect_grad
        assert model.stages["stage3"][0].conv1[0].weight.grad.abs().sum() > 0


def test_granularity_maps_onto_the_stage_contract():
    resnet18 = create_model("resnet18", num_classes=10, width=8)
    dims = [len(granularity_sites(resnet18, g)) for g in ("stage", "block", "layer")]
    assert dims == [4, 9, 20]  # Table 9 of the paper: dim(eta) = 4, 9, 20 on ResNet-18
    assert granularity_sites(resnet18, "stage") == ["stage1.1", "stage2.1", "stage3.1", "stage4.1"]
    layers = granularity_sites(resnet18, "layer")
    assert layers[:3] == ["stem.0.1", "stage1.0.conv1.1", "stage1.0.conv2.1"]
    assert "stage2.0.shortcut.1" in layers
    resnet20 = create_model("resnet20", num_classes=10, width=4)
    assert [len(granularity_sites(resnet20, g)) for g in ("stage", "block", "layer")] == [3, 10, 19]


def test_layer_sites_are_slots_that_change_nothing_until_a_perturbation_is_set():
    model = tiny().eval()
    x, _ = batch()
    with torch.no_grad():
        before = model(x)
    method = create_method("alfa", model, granularity="layer", steps=1)
    slots = [m for m in model.modules() if isinstance(m, FeatureSlot)]
    assert len(slots) == len(method.sites) == 7  # stem + 2 per block (option-A shortcuts: no BN)
    assert [s.resume for s in method.sites][:2] == [None, "stem"]
    with torch.no_grad():
        assert torch.equal(model(x), before)
        site = method.sites[2]  # stage1.0.conv2.1, resumed from the stem's output
        start = model.forward_features(x, nodes=["stem"])["stem"]
        assert not torch.allclose(method._perturbed_logits(site, start, torch.tensor(0.5)), before)
        assert site.slot.delta is None  # reset after use
    again = create_method("alfa", model, granularity="layer")  # the slots are reused, not nested
    assert len([m for m in model.modules() if isinstance(m, FeatureSlot)]) == 7
    assert again.site_names == method.site_names


def test_layer_site_in_the_stem_trains():
    model = tiny()
    method = create_method("alfa", model, nodes=["stem.0.1", "stage3.0.conv1.1"], steps=2).train()
    out = method(*batch())
    out["loss"].backward()
    assert out["delta_l2"] > 0 and torch.isfinite(out["loss"])
    assert model.stem[0][0].weight.grad.abs().sum() > 0


def test_bad_options_are_config_errors_that_say_what_is_valid():
    model = tiny()
    with pytest.raises(ConfigError, match="valid: stages"):
        create_method("alfa", model, nodes=["stage9"])
    with pytest.raises(ConfigError, match="either nodes or granularity"):
        create_method("alfa", model, nodes="stage3", granularity="block")
    with pytest.raises(ConfigError, match="granularity"):
        create_method("alfa", model, granularity="channel")
    with pytest.raises(ConfigError, match="random_init needs eps"):
        create_method("alfa", model, random_init=True)
    with pytest.raises(ConfigError, match="bn_mode"):
        create_method("alfa", model, bn_mode="keep-ish")
    with pytest.raises(ConfigError, match="more than once"):
        create_method("alfa", model, nodes=["stage3", "stage3.0"])
    with pytest.raises(ConfigError, match="unknown option"):
        create_method("alfa", model, sigma=0.1)


def test_alfa_under_bf16_autocast_keeps_a_float32_perturbation():
    model = tiny().train()
    method = create_method("alfa", model, nodes="stage2.0")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(*batch())
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["delta_l2"] > 0
