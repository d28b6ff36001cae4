"""TENET (Liu et al. 2021): each equation against a hand-computed case, the batched grouping
against the per-sample reference loop, the schedule, the variants and the step contract."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustfeat.errors import ConfigError
from robustfeat.methods import create_method
from robustfeat.methods.tenet import (
    Tenet,
    channel_grouping,
    channel_weights,
    expand_group_masks,
    group_importance,
    group_maps,
    nearest_centre,
    orthogonal_loss,
    random_centres,
    reversed_maps,
    snap_centres,
)
from robustfeat.models import create_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "tenet_grouping.py"


def reference_grouping():
    spec = importlib.util.spec_from_file_location("tenet_grouping", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_grouping


def channels_1d(values: list[float]) -> torch.Tensor:
    """One sample whose channels are 1-value maps: (1, C, 1)."""
    return torch.tensor(values, dtype=torch.float64)[None, :, None]


def tiny(**opts) -> Tenet:
    model = create_model("test_cnn", num_classes=5)
    return create_method("tenet", model, **{"start_step": 0, "every": 1, **opts})


# ----------------------------------------------------------------------------- CFG
def test_nearest_centre_hand_case() -> None:
    x = channels_1d([0.0, 1.0, 4.0, 9.0, 10.0])
    sq = x.square().sum(2)
    # centres at channels 0 (0.) and 3 (9.): 4. is nearer 0. (16 < 25)
    assert nearest_centre(x, sq, torch.tensor([[0, 3]])).tolist() == [[0, 0, 0, 1, 1]]
    # 2. is equidistant from 0. and 4.: the tie goes to the lower centre index
    x = channels_1d([0.0, 2.0, 4.0])
    assert nearest_centre(x, x.square().sum(2), torch.tensor([[2, 0]])).tolist() == [[1, 0, 0]]


def test_snap_centres_mean_ties_distinctness_and_empty_groups() -> None:
    x = channels_1d([0.0, 1.0, 2.0, 10.0, 11.0, 30.0])
    sq = x.square().sum(2)
    # means 1, 10.5 (10 and 11 tie: lower index), 30
    snapped = snap_centres(x, sq, torch.tensor([[0, 3, 5]]), torch.tensor([[0, 0, 0, 1, 1, 2]]))
    assert snapped.tolist() == [[1, 3, 5]]
    # group 0 = {3.} takes channel 1; group 1's mean 5. is nearest channel 1 too: taken, so the
    # next nearest, 0. and 10. tie at distance 5 -> channel 0
    x = channels_1d([0.0, 3.0, 10.0])
    snapped = snap_centres(x, x.square().sum(2), torch.tensor([[1, 0]]), torch.tensor([[1, 0, 1]]))
    assert snapped.tolist() == [[1, 0]]


def test_an_empty_group_moves_to_the_lowest_free_channel_as_official() -> None:
    """Issue 27, item 3: the official mean of an empty group is NaN and NumPy's argmin of the
    all-NaN distances returns the first channel not taken by a lower-numbered group."""
    x = channels_1d([0.0, 1.0, 2.0, 9.0])
    sq = x.square().sum(2)
    # everything in group 0 (mean 3. -> channel 2 = 2.); group 1 is empty -> channel 0 (it was
    # at channel 3, free: keeping it would give [2, 3])
    snapped = snap_centres(x, sq, torch.tensor([[0, 3]]), torch.zeros(1, 4).long())
    assert snapped.tolist() == [[2, 0]]
    # group 0 = {0., 1., 2.} (mean 1. -> channel 1), group 1 = {9.} (channel 3), group 2 empty:
    # channel 0, the lowest one free (keeping its centre 3, taken, would give the nearest, 2)
    snapped = snap_centres(x, sq, torch.tensor([[0, 1, 3]]), torch.tensor([[0, 0, 0, 1]]))
    assert snapped.tolist() == [[1, 3, 0]]


def test_grouping_returns_the_last_assignment_step_as_official() -> None:
    """Issue 27, item 4: stopped by max_iter, the official code returns the groups of the centres
    before the last update. Centres 0. and 1.: groups {0.} and {1., 2., 10., 11., 12.}, whose
    mean 7.2 snaps to 10.; the groups of the new centres would be {0., 1., 2.}, {10., 11., 12.}."""
    x = channels_1d([0.0, 1.0, 2.0, 10.0, 11.0, 12.0])
    assign, centres = channel_grouping(x, torch.tensor([[0, 1]]), max_iter=1)
    assert centres.tolist() == [[0, 3]]
    assert assign.tolist() == [[0, 1, 1, 1, 1, 1]]


def test_cfg_recovers_an_obvious_grouping() -> None:
    torch.manual_seed(1)
    truth = torch.arange(6).repeat_interleave(4)[torch.randperm(24)]  # 6 groups of 4 channels
    centres = 10.0 * torch.eye(6, 16)
    maps = (centres[truth] + 0.1 * torch.randn(24, 16))[None]
    init = torch.stack([(truth == g).nonzero()[0, 0] for g in range(6)])[None]
    assign, final = channel_grouping(maps, init)
    assert assign[0].tolist() == truth.tolist()
    assert sorted(truth[final[0]].tolist()) == list(range(6))  # one medoid in each group


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_grouping_equals_the_per_sample_reference_loop(seed: int) -> None:
    torch.manual_seed(seed)
    maps = torch.randn(12, 20, 16, dtype=torch.float64)
    maps[:, 5] = maps[:, 11]  # duplicate channels
    maps[:, 7:10] = 0.0  # dead (all-zero) channels
    maps[3] = maps[3, :1]  # a sample whose channels are all equal
    maps[4] = maps[4].relu()
    init = random_centres(12, 20, 6)
    reference = reference_grouping()
    for max_iter in (1, 3, 50):
        ours, our_centres = channel_grouping(maps, init, max_iter=max_iter)
        ref, ref_centres = reference(maps, init, max_iter=max_iter)
        assert torch.equal(ours, ref)
        assert torch.equal(our_centres, ref_centres)
    assert all(len(set(row)) == 6 for row in our_centres.tolist())  # distinct centres


def test_random_centres_are_distinct_channels_from_the_global_rng() -> None:
    torch.manual_seed(3)
    first = random_centres(64, 10, 6)
    torch.manual_seed(3)
    assert torch.equal(first, random_centres(64, 10, 6))
    assert all(len(set(row)) == 6 and max(row) < 10 for row in first.tolist())


# ----------------------------------------------------------------------------- GMW
def test_channel_weights_of_a_linear_classifier() -> None:
    """D = GAP + fc: d logit_c / d a_j(h, w) = W[c, j] / (h w), so w_j = sigma'(z_c) W[c, j] / (h w)
    averaged over space, i.e. sigma'(z_c) W[c, j] / (h w)."""
    method = tiny(stage="stage3")  # D is just the head
    method.eval()
    a = torch.rand(3, 32, 8, 8)
    target = torch.tensor([0, 2, 4])
    fc = method.model.get_classifier()
    with torch.no_grad():
        z = fc(a.mean(dim=(2, 3))).gather(1, target[:, None])
    sigma_prime = torch.sigmoid(z) * (1 - torch.sigmoid(z))
    expected = sigma_prime * fc.weight[target] / 64
    weights = channel_weights(method.saliency_gradient(a, target))
    torch.testing.assert_close(weights, expected.detach(), rtol=1e-5, atol=1e-9)
    method.score = "logit"
    weights = channel_weights(method.saliency_gradient(a, target))
    torch.testing.assert_close(weights, fc.weight[target].detach() / 64, rtol=1e-5, atol=1e-9)


def test_group_importance_and_group_maps_hand_case() -> None:
    weights = torch.tensor([[1.0, 2.0, -4.0]])
    assign = torch.tensor([[0, 0, 1]])
    maps = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]]])
    # sums over the group (official), an empty third group gives 0
    torch.testing.assert_close(
        group_importance(weights, assign, 3), torch.tensor([[3.0, -4.0, 0.0]])
    )
    # m_0 = 1·[1, 0] + 2·[0, 1], m_1 = -4·[2, 3]
    expected = torch.tensor([[[1.0, 2.0], [-8.0, -12.0]]])
    torch.testing.assert_close(group_maps(maps, weights, assign, 2), expected)


def test_masks_of_tiny_gradients_stay_away_from_half_as_official() -> None:
    """Issue 27, item 1: m_l is the *sum* of w_j·a_j over the group (official), z-scored with a
    fixed 1e-8. One group of 85 channels, each a_j = [0, 1, 2, 3] and w_j = 1e-8: m = 85e-8 ·
    [0, 1, 2, 3], std = 85e-8 · sqrt(1.25), so z_0 = -1.5 · 85e-8 / (85e-8 · sqrt(1.25) + 1e-8)
    = -1.3277 and the first mask is 1 / (1 + e^z_0) = 0.7905 (the group mean would give
    z_0 = -0.7082, mask 0.6700)."""
    method = tiny(inhibition="group")
    channels = 85
    maps = torch.tensor([0.0, 1.0, 2.0, 3.0]).expand(1, channels, 4)
    grad = torch.full((1, channels, 2, 2), 1e-8)
    assign = torch.zeros(1, channels, dtype=torch.long)
    masks = method.inhibition_masks(maps, grad, assign, 2)
    scale = channels * 1e-8
    z = (torch.tensor([0.0, 1.0, 2.0, 3.0]) - 1.5) * scale / (scale * math.sqrt(1.25) + 1e-8)
    expected = 1 / (1 + torch.exp(z))
    assert expected[0].item() == pytest.approx(0.7905, abs=1e-4)
    torch.testing.assert_close(masks[0], expected.expand(channels, 4), rtol=1e-5, atol=1e-6)
    # mean distance from 0.5: 0.1997 (the group mean: 0.1144)
    assert (masks - 0.5).abs().mean() > 0.19


# ----------------------------------------------------------------------------- RRF
def test_reversed_maps_hand_values_and_the_negative_importance_rule() -> None:
    maps = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]]])
    z = (torch.tensor([0.0, 1.0, 2.0, 3.0]) - 1.5) / (math.sqrt(1.25) + 1e-8)
    smooth = 1 / (1 + torch.exp(z))
    rm = reversed_maps(maps, torch.tensor([[0.3, -0.1]]))
    torch.testing.assert_close(rm[0, 0], smooth)
    torch.testing.assert_close(rm[0, 1], torch.ones(4))  # I <= 0: not inhibited (official)
    rm = reversed_maps(maps, torch.tensor([[0.3, 0.0]]), negative_mask=0.0)  # literal Eq. (6)
    torch.testing.assert_close(rm[0, 1], torch.zeros(4))
    rm = reversed_maps(maps, torch.tensor([[0.3, 0.3]]), binary=True)
    assert rm[0, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    rm = reversed_maps(maps, torch.tensor([[0.3, 0.3]]), standardize=False)
    torch.testing.assert_close(rm[0, 0], 1 / (1 + torch.exp(maps[0, 0])))


def test_reversed_maps_are_in_unit_interval_and_expand_to_group_channels() -> None:
    rm = reversed_maps(100 * torch.randn(4, 6, 25), torch.randn(4, 6))
    assert rm.min() >= 0 and rm.max() <= 1
    masks = torch.tensor([[[0.25, 0.5], [0.75, 1.0]]])
    expanded = expand_group_masks(masks, torch.tensor([[1, 0, 1]]))
    assert expanded.tolist() == [[[0.75, 1.0], [0.25, 0.5], [0.75, 1.0]]]


# ----------------------------------------------------------------------------- L_o
def test_orthogonal_loss_hand_case() -> None:
    # group means [1, 0], [0, 2], [1, 1]: |inner products| 0, 1, 2 over 3 pairs -> 1
    maps = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])
    assign = torch.tensor([[0, 0, 1, 2]])
    torch.testing.assert_close(orthogonal_loss(maps, assign, 3), torch.tensor(1.0))
    # an empty fourth group changes nothing; a second sample with one pair |<[1,2],[3,0]>| = 3
    two = torch.cat([maps, torch.tensor([[[1.0, 2.0], [3.0, 0.0], [3.0, 0.0], [3.0, 0.0]]])])
    assign2 = torch.tensor([[0, 0, 1, 2], [0, 3, 3, 3]])
    torch.testing.assert_close(orthogonal_loss(two, assign2, 4), torch.tensor(2.0))
    # a single group has no pairs
    assert orthogonal_loss(maps, torch.zeros(1, 4).long(), 3).item() == 0.0


# ----------------------------------------------------------------------------- the method
def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, 3, 32, 32), torch.randint(0, 5, (n,))


def test_default_stage_is_the_second_to_last_stage() -> None:
    assert tiny().stage == "stage2"
    model = create_model("resnet18", num_classes=5, width=4)
    assert create_method("tenet", model).stage == "stage3"


def test_the_whole_backbone_is_the_compile_target() -> None:
    method = tiny()
    assert method.compile_targets() == [method.model]  # F and D calls stay eager


def test_options_are_validated() -> None:
    model = create_model("test_cnn", num_classes=5)
    for bad in (
        {"stage": "nope"},
        {"groups": 1},
        {"groups": 17},  # more groups than stage2 has channels (16)
        {"inhibition": "pixel"},
        {"mask": "hard"},
        {"every": 0},
        {"negative_mask": 2.0},
        {"features": "both"},
    ):
        with pytest.raises(ConfigError):
            create_method("tenet", model, **bad)


def test_loss_is_the_sum_of_its_parts_and_the_mask_has_no_gradient() -> None:
    method = tiny(correct_only=False, mu=0.1).train()
    x, y = batch()
    out = method(x, y)
    assert out["tenet_active"] == 1 and out["tenet_used"] == 1
    expected = out["loss_ce"] + 0.1 * out["loss_inhibit"] + 0.1 * out["loss_orth"]
    torch.testing.assert_close(out["loss"], expected)
    assert out["loss_inhibit"] > 0 and out["loss_orth"] > 0
    assert 0 < out["tenet_mask_std"] < 0.5
    feats = method.model.forward_features(x, nodes=["stage2"])["stage2"]
    grad = method.saliency_gradient(feats, y)
    maps = feats.detach().flatten(2)
    assign, groups = method.grouping(maps)
    masks = method.inhibition_masks(maps, grad, assign, groups)
    assert feats.requires_grad and not masks.requires_grad
    assert masks.shape == maps.shape and masks.min() >= 0 and masks.max() <= 1
    out["loss"].backward()
    assert all(p.grad is not None for p in method.parameters())


def test_instance_wise_inhibited_loss_matches_a_hand_built_grad_cam_mask() -> None:
    method = tiny(inhibition="instance", correct_only=False, features="train").train()
    x, y = batch()
    out = method(x, y)
    model = method.model
    with torch.no_grad():
        feats = model.forward_features(x, nodes=["stage2"])["stage2"]
    # Grad-CAM by hand, eval mode: ReLU(sum_j w_j a_j), z-scored, 1 / (1 + e^z), on all channels
    model.eval()
    a = feats.clone().requires_grad_(True)
    logits = model.run_from("stage2", a)
    pred = out["logits"].argmax(1)
    torch.sigmoid(logits.gather(1, pred[:, None])).sum().backward()
    model.train()
    cam = F.relu((a.grad.mean(dim=(2, 3))[:, :, None, None] * feats).sum(1)).flatten(1)
    z = (cam - cam.mean(1, keepdim=True)) / (cam.std(1, unbiased=False, keepdim=True) + 1e-8)
    mask = (1 / (1 + torch.exp(z))).view(-1, 1, *feats.shape[2:])
    with torch.no_grad():
        inhibited = F.cross_entropy(model.run_from("stage2", feats * mask), y)
    torch.testing.assert_close(out["loss_inhibit"], inhibited, rtol=1e-4, atol=1e-5)


def test_variants_give_their_mask_shapes() -> None:
    x, y = batch()
    for opts, check in (
        (
            {"inhibition": "channel"},  # each channel its own group, masks differ by channel
            lambda m, a: (
                torch.equal(a, torch.arange(a.shape[1]).expand_as(a))
                and not torch.equal(m, m[:, :1].expand_as(m))
            ),
        ),
        ({"inhibition": "instance"}, lambda m, a: torch.equal(m[:, :1].expand_as(m), m)),
        ({"mask": "binary"}, lambda m, a: set(m.unique().tolist()) <= {0.0, 1.0}),
        (
            {"inhibition": "group"},
            lambda m, a: all(
                torch.equal(m[i, j], m[i, k])
                for i in range(len(a))
                for j in range(a.shape[1])
                for k in range(a.shape[1])
                if a[i, j] == a[i, k]
            ),
        ),
    ):
        method = tiny(**opts).train()
        feats = method.model.forward_features(x, nodes=["stage2"])["stage2"]
        grad = method.saliency_gradient(feats, y)
        maps = feats.detach().flatten(2)
        assign, groups = method.grouping(maps)
        masks = method.inhibition_masks(maps, grad, assign, groups)
        assert masks.min() >= 0 and masks.max() <= 1
        assert check(masks, assign), opts


def test_channel_wise_inhibition_masks_each_channel_by_itself() -> None:
    method = tiny(inhibition="channel").train()
    x, y = batch(4)
    feats = method.model.forward_features(x, nodes=["stage2"])["stage2"]
    grad = method.saliency_gradient(feats, y)
    maps = feats.detach().flatten(2)
    assign, groups = method.grouping(maps)
    masks = method.inhibition_masks(maps, grad, assign, groups)
    w = channel_weights(grad)
    m = (w[:, :, None] * feats.detach().flatten(2)).double()
    z = (m - m.mean(2, keepdim=True)) / (m.std(2, unbiased=False, keepdim=True) + 1e-8)
    expected = torch.where(w[:, :, None] > 0, torch.sigmoid(-z), torch.ones_like(z))
    torch.testing.assert_close(masks.double(), expected, rtol=1e-4, atol=1e-5)


def test_schedule_start_every_and_steps_survive_a_state_dict_round_trip() -> None:
    method = tiny(start_step=2, every=2, correct_only=False).train()
    x, y = batch()
    active = []
    for _ in range(7):
        active.append(int(method(x, y)["tenet_active"]))
        method.after_step()
    assert active == [0, 1, 0, 1, 0, 1, 0]  # 1-based steps 2, 4, 6
    fresh = tiny(start_step=2, every=2, correct_only=False)
    fresh.load_state_dict(method.state_dict())
    assert int(fresh.steps_done) == 7
    method.eval()
    assert method(x, y)["tenet_active"] == 0  # never in eval mode


def test_correct_only_uses_the_correctly_classified_samples() -> None:
    method = tiny().train()
    x, _ = batch()
    with torch.no_grad():
        pred = method.model(x).argmax(1)
    wrong = (pred + 1) % 5
    out = method(x, wrong)  # nothing correct: CE only
    assert out["tenet_active"] == 1 and out["tenet_used"] == 0
    torch.testing.assert_close(out["loss"], out["loss_ce"])
    mixed = torch.where(torch.arange(8) < 3, pred, wrong)
    out = method(x, mixed)
    assert out["tenet_used"].item() == pytest.approx(3 / 8)


def test_default_schedule_is_the_official_steps_501_504() -> None:
    """Issue 27, item 5: official TENET steps are the 1-based iterations >= 500 divisible by 3."""
    method = create_method("tenet", create_model("test_cnn", num_classes=5)).train()
    fired = []
    for done in range(495, 508):  # steps done before the step: it is step done + 1
        method.steps_done.fill_(done)
        if method.active():
            fired.append(done + 1)
    assert fired == [501, 504, 507]


def test_default_masks_come_from_eval_mode_features_as_official() -> None:
    """Issue 27, item 2: by default A for the grouping, the gradient and the masks is recomputed
    in eval mode (official) after the training forward; the masks multiply the training A."""
    method = tiny(inhibition="channel", correct_only=False).train()
    assert method.features == "eval"
    reference = copy.deepcopy(method.model)
    x, y = batch()
    out = method(x, y)

    def inhibited_loss(feats: torch.Tensor, source: torch.Tensor, pred: torch.Tensor):
        reference.eval()
        a = source.detach().requires_grad_(True)
        torch.sigmoid(reference.run_from("stage2", a).gather(1, pred[:, None])).sum().backward()
        reference.train()
        w = a.grad.mean(dim=(2, 3))
        m = (w[:, :, None, None] * source).flatten(2)  # channel-wise: one channel a group
        z = (m - m.mean(2, keepdim=True)) / (m.std(2, unbiased=False, keepdim=True) + 1e-8)
        mask = torch.where(w[:, :, None] > 0, 1 / (1 + torch.exp(z)), torch.ones_like(z))
        with torch.no_grad():
            return F.cross_entropy(reference.run_from("stage2", feats * mask.view_as(feats)), y)

    feats = reference.forward_features(x, nodes=["stage2"])["stage2"]  # the training forward
    pred = reference.run_from("stage2", feats).argmax(1)
    feats = feats.detach()
    with torch.no_grad():
        reference.eval()
        eval_feats = reference.forward_features(x, nodes=["stage2"])["stage2"]
        reference.train()
    torch.testing.assert_close(out["loss_inhibit"], inhibited_loss(feats, eval_feats, pred))
    # the train-mode A (features="train") gives another loss: the check can tell them apart
    other = inhibited_loss(feats, feats, pred)
    assert (out["loss_inhibit"] - other).abs() > 1e-3


@pytest.mark.parametrize("features", ["train", "eval"])
def test_saliency_pass_does_not_touch_batch_norm_statistics(features: str) -> None:
    """F's BNs see one training forward, D's see two (plain and inhibited); the gradient pass
    (and the official extra feature pass) run in eval mode."""
    method = tiny(features=features, correct_only=False).train()
    model = method.model
    method(*batch())
    stage_bn = {
        name: module.num_batches_tracked.item()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.BatchNorm2d)
    }
    assert all(v == 1 for k, v in stage_bn.items() if not k.startswith("stages.stage3"))
    assert all(v == 2 for k, v in stage_bn.items() if k.startswith("stages.stage3"))
    assert model.training


def test_gradient_reaches_the_input_for_adversarial_training() -> None:
    method = tiny(correct_only=False).train()
    x, y = batch()
    x.requires_grad_(True)
    method(x, y)["loss"].backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_trains_in_the_trainer_with_tenet_active(tmp_path) -> None:
    from robustfeat.config import make_config
    from robustfeat.data import prepare_data
    from robustfeat.train import train

    data = prepare_data("shapes", n_train=128, n_test=64)
    cfg = make_config(
        {
            "model": "test_cnn",
            "data": "shapes",
            "method": "tenet",
            "method_args": {"start_step": 1, "every": 2, "correct_only": False},
            "batch_size": 32,
            "epochs": 2,
            "progress": False,
            "log_every": 1,
        }
    )
    train(cfg, tmp_path / "run", data=data)
    import json

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [r for r in records if "img_per_s" not in r]  # running means within each epoch
    assert [r["step"] for r in steps] == list(range(1, 9))
    # each step's own tenet_active, from the running means: steps 2, 4, 6, 8 (t % 2 == 0)
    active = []
    for r in steps:
        k = (r["step"] - 1) % 4 + 1  # the step's index within its epoch of 4
        before = active[-(k - 1) :] if k > 1 else []
        active.append(round(k * r["tenet_active"] - sum(before)))
    assert active == [0, 1, 0, 1, 0, 1, 0, 1]
    for r in steps:  # Eq. 9 with the defaults α = 0.1, μ = 1e-3, in every logged mean
        assert r["loss"] == pytest.approx(
            r["loss_ce"] + 0.1 * r["loss_inhibit"] + 1e-3 * r["loss_orth"], rel=1e-5
        )
        assert (r["loss_inhibit"] > 0) == (r["tenet_active"] > 0)
