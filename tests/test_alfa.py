"""ALFA: feature-space PGD (Eq. 3-4), sites, prefix reuse, BN mode, loss composition."""

import copy
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
@pytest.mark.parametrize("bn_order", ["official", "clean_first"])
def test_prefix_and_suffix_calls_per_step(bn_mode, bn_order):
    model = tiny()
    method = create_method(
        "alfa", model, nodes="stage2.0", steps=3, bn_mode=bn_mode, bn_order=bn_order
    ).train()
    calls, handles = count_calls(model)
    method(*batch())
    for handle in handles:
        handle.remove()
    # suffix: 3 crafting steps + the adversarial forward + the clean forward; the prefix: the
    # clean forward, and in the official order the site's own clean prefix forward before it
    prefix = 2 if bn_order == "official" else 1
    assert calls == Counter(
        {"stem": prefix, "stage1.0": prefix, "stage2.0": prefix, "stage3.0": 5, "fc": 5}
    )


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
@pytest.mark.parametrize("bn_order", ["official", "clean_first"])
def test_bn_mode_while_crafting_is_as_configured_and_restored(bn_mode, bn_order):
    model = tiny()
    method = create_method(
        "alfa", model, nodes="stage2.0", steps=2, bn_mode=bn_mode, bn_order=bn_order
    ).train()
    bn = model.stages["stage3"][0].conv1[1]
    seen = []
    handle = bn.register_forward_hook(lambda m, i, o: seen.append(m.training))
    stats_before = bn.running_mean.clone()
    method(*batch())
    handle.remove()
    crafting = [bn_mode == "train"] * 2
    if bn_order == "official":  # 2 crafting forwards (bn_mode), adversarial, clean (train)
        assert seen == [*crafting, True, True]
    else:  # clean forward (train), 2 crafting forwards (bn_mode), adversarial forward (train)
        assert seen == [True, *crafting, True]
    assert all(m.training for m in model.modules())
    assert not torch.equal(bn.running_mean, stats_before)


def official_step_statistics(model, x, y, sites, steps, alpha, etas):
    """BN running statistics after one step of the official loop (main_perturb.py and
    main_learnable.py), the model in train mode throughout: per site a clean forward up to the
    site (detached) and PGD from it; then the adversarial forwards (clean + eta·delta); then the
    clean forward. The weights are not stepped: only the buffers are compared."""
    model.train()
    crafted = []
    for site in sites:
        with torch.no_grad():
            h = model.forward_features(x, nodes=[site])[site]
        adv = h.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model.run_from(site, adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
            adv = (adv + alpha * grad.sign()).detach()
        crafted.append((site, h, adv))
    with torch.no_grad():
        for (site, h, adv), eta in zip(crafted, etas, strict=True):
            model.run_from(site, h + eta * (adv - h))
        model(x)
    return {k: v for k, v in model.state_dict().items() if "running" in k}


@pytest.mark.parametrize(
    ("method_name", "opts", "etas"),
    [
        ("alfa", {"nodes": "stage2.0", "steps": 2, "alpha": 0.5}, [1.0]),
        (
            "lalfa",
            {"nodes": ["stage1.0", "stage2.0"], "steps": 2, "alpha": 0.5, "eta_init": 0.5},
            [0.5, 0.5],
        ),
    ],
)
def test_bn_running_statistics_end_the_step_as_the_official_loop(method_name, opts, etas):
    """Issue 27, item 6: the official code ends each step on the clean batch; the old order
    (``bn_order="clean_first"``) ends it on the perturbed features and is told apart."""
    x, y = batch()
    model = tiny()
    reference = copy.deepcopy(model)
    old = copy.deepcopy(model)
    create_method(method_name, model, **opts).train()(x, y)
    sites = [opts["nodes"]] if isinstance(opts["nodes"], str) else opts["nodes"]
    want = official_step_statistics(reference, x, y, sites, opts["steps"], opts["alpha"], etas)
    got = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    create_method(method_name, old, bn_order="clean_first", **opts).train()(x, y)
    gap = max((old.state_dict()[key] - want[key]).abs().max().item() for key in want)
    assert gap > 1e-2


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


def test_official_sites_are_the_official_l_alfa_list_on_resnet56():
    """Issue 27, item 8: main_learnable.py perturbs the outputs of its flat layers [0:k] for k in
    4, 8, 11, 14, 18, 21, 24, 28, 31 (4 = normalize, conv, BN, ReLU: the stem; then 27 blocks),
    i.e. the stem and blocks 3, 6 | 9, 13, 16 | 19, 23, 26 counted from 0 over the three stages."""
    resnet56 = create_model("resnet56", num_classes=10, width=4)
    official = ["stem", "stage1.3", "stage1.6", "stage2.0", "stage2.4", "stage2.7"]
    official += ["stage3.1", "stage3.5", "stage3.8"]
    assert granularity_sites(resnet56, "official") == official
    assert create_method("lalfa", resnet56).site_names == official  # the L-ALFA default
    # the same relative depths elsewhere: round(d · 9 / 27) on ResNet-20's 10 nodes drops
    # stage2.0 (node 4); ResNet-18 (9 nodes) gets them all
    resnet20 = create_model("resnet20", num_classes=10, width=4)
    assert granularity_sites(resnet20, "official") == [
        n for n in resnet20.node_names if n != "stage2.0"
    ]
    resnet18 = create_model("resnet18", num_classes=10, width=8)
    assert granularity_sites(resnet18, "official") == granularity_sites(resnet18, "block")


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
    with pytest.raises(ConfigError, match="bn_order must be one of"):
        create_method("alfa", model, bn_order="last")
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
