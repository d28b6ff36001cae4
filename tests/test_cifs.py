import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustfeat.data import load_dataset
from robustfeat.errors import ConfigError
from robustfeat.losses import cw_loss
from robustfeat.methods import create_method
from robustfeat.methods.cifs import (
    ProbedNode,
    combine_losses,
    joint_loss,
    resolve_positions,
)
from robustfeat.models import create_model
from robustfeat.nn import ChannelSelect
from robustfeat.nn.channel_select import (
    channel_relevance,
    importance_mask,
    make_probe,
    relevance_classes,
)


def small_cifs(**options):
    torch.manual_seed(0)
    return create_method("cifs", create_model("resnet20", num_classes=10, width=4), **options)


# ------------------------------------------------------------------ Eq. (1)
def test_relevance_of_a_linear_probe_is_the_sum_of_the_topk_weight_rows():
    probe = nn.Linear(4, 3)
    with torch.no_grad():
        probe.weight.copy_(torch.tensor([[1.0, -2, 0, 3], [0.5, 1, -1, 0], [-1, 0, 2, 1]]))
        probe.bias.copy_(torch.tensor([0.0, 0.1, -0.1]))
    pooled = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]], requires_grad=True)
    # logits: sample 0 -> [1, 0.6, -1.1] (top-2: 0, 1); sample 1 -> [0, -0.9, 1.9] (top-2: 2, 0)
    g = channel_relevance(probe, pooled, k=2)
    w = probe.weight.detach()
    torch.testing.assert_close(g, torch.stack([w[0] + w[1], w[2] + w[0]]))
    # training: the top-1 is replaced by the label, the 2nd prediction kept
    g = channel_relevance(probe, pooled, k=2, target=torch.tensor([2, 1]))
    torch.testing.assert_close(g, torch.stack([w[2] + w[1], w[1] + w[0]]))
    g = channel_relevance(probe, pooled, k=1, target=torch.tensor([2, 1]))
    torch.testing.assert_close(g, torch.stack([w[2], w[1]]))
    # logits handed in (the layer's own forward) choose the classes instead of a second pass
    given = torch.tensor([[0.0, 1, 2], [2, 1, 0]])
    g = channel_relevance(probe, pooled, k=2, logits=given)
    torch.testing.assert_close(g, torch.stack([w[2] + w[1], w[0] + w[1]]))


def test_relevance_classes_replace_the_top1_by_the_label():
    logits = torch.tensor([[1.0, 5, 3, 0], [4, 0, 1, 2]])
    assert relevance_classes(logits, 2).tolist() == [[1, 2], [0, 3]]
    assert relevance_classes(logits, 3, torch.tensor([0, 1])).tolist() == [[0, 2, 0], [1, 3, 2]]


def test_relevance_is_the_channelwise_shift_derivative_of_the_probe_on_the_feature_map():
    torch.manual_seed(0)
    probe = make_probe("mlp", 5, 4, hidden=7).double()
    z = torch.randn(3, 5, 2, 3, dtype=torch.float64)
    pooled = z.mean((2, 3)).requires_grad_(True)
    g = channel_relevance(probe, pooled, k=2)
    index = probe(z.mean((2, 3))).topk(2, dim=1).indices

    def topk_sum(feature_map):
        return probe(feature_map.mean((2, 3))).gather(1, index).sum(1)

    # Eq. (1) literally: spatial sum of d/dz, and a central difference in delta per channel
    zz = z.clone().requires_grad_(True)
    grad = torch.autograd.grad(topk_sum(zz).sum(), zz)[0].sum((2, 3))
    torch.testing.assert_close(g, grad)
    h = 1e-3
    for c in range(5):
        shift = torch.zeros(1, 5, 1, 1, dtype=torch.float64)
        shift[0, c] = h
        fd = (topk_sum(z + shift) - topk_sum(z - shift)) / (2 * h)
        torch.testing.assert_close(g[:, c], fd, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ IMGFs and Eq. (2)
def test_each_imgf_matches_its_formula_and_is_nonnegative():
    g = torch.tensor([[-3.0, -0.2, 0.0, 0.4, 2.0], [-50.0, 1.0, 0.5, -1.0, 60.0]])
    torch.testing.assert_close(importance_mask(g, "sigmoid"), 1 / (1 + torch.exp(-10 * g)))
    torch.testing.assert_close(
        importance_mask(g, "softplus"), torch.log1p(torch.exp(5 * g.double())).float() / 5
    )
    torch.testing.assert_close(importance_mask(g, "sigmoid", alpha=2.0), torch.sigmoid(2 * g))
    soft = importance_mask(g, "softmax", temperature=2.0)
    torch.testing.assert_close(soft, torch.exp(g / 2) / torch.exp(g / 2).sum(1, keepdim=True))
    torch.testing.assert_close(soft.sum(1), torch.ones(2))
    for imgf in ("sigmoid", "softplus", "softmax"):
        m = importance_mask(torch.randn(64, 32) * 30, imgf)
        assert (m >= 0).all() and torch.isfinite(m).all()
    with pytest.raises(ConfigError, match="imgf"):
        importance_mask(g, "relu")


def test_channel_select_multiplies_each_channel_by_its_mask_using_labels_only_in_training():
    torch.manual_seed(0)
    layer = ChannelSelect(4, 3, probe="linear", imgf="softmax", mask_scale=2.0)
    z = torch.rand(2, 4, 3, 3)
    y = torch.tensor([2, 0])
    w, b = layer.probe.weight.detach(), layer.probe.bias.detach()
    logits = z.mean((2, 3)) @ w.T + b
    top = logits.topk(2, dim=1).indices
    assert not torch.equal(top[:, 0], y)  # so the label-driven mask differs
    # label_mask off: the training mask comes from the probe's own top-2, as at inference
    cases = ((True, True, y), (False, True, top[:, 0]), (True, False, top[:, 0]))
    for training, label_mask, first in cases:
        layer.train(training)
        layer.label_mask = label_mask
        out, probe_logits = layer(z, y)
        mask = 2.0 * F.softmax(w[first] + w[top[:, 1]], dim=1)
        torch.testing.assert_close(out, z * mask[:, :, None, None])
        torch.testing.assert_close(probe_logits, logits)


def test_probe_learns_through_the_mask_and_backbone_gets_no_relevance_gradient():
    torch.manual_seed(0)
    layer = ChannelSelect(6, 4, probe="mlp", hidden=5)
    z = torch.rand(3, 6, 2, 2, requires_grad=True)
    r = torch.randn(3, 6, 2, 2)
    out, _ = layer(z, torch.tensor([0, 1, 2]))
    (out * r).sum().backward()
    # the loss ignores the probe logits: probe gradients can only come through the mask (the
    # output bias does not change the relevance, so it gets none)
    first, _, last = layer.probe
    for p in (first.weight, first.bias, last.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert last.bias.grad is None or not last.bias.grad.any()
    with torch.no_grad():
        mask = layer.mask(z.mean((2, 3)), torch.tensor([0, 1, 2]))
    torch.testing.assert_close(z.grad, r * mask[:, :, None, None])  # no d(mask)/dz term
    # exact_gradient: the attacker's gradient also flows through the mask into z
    z.grad = None
    layer.exact_gradient = True
    out, _ = layer(z, torch.tensor([0, 1, 2]))
    (out * r).sum().backward()
    assert (z.grad - r * mask[:, :, None, None]).abs().max() > 1e-6


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_feature_gradient_keeps_the_layout_of_the_features(memory_format):
    # the gradient from global pooling is a broadcast (stride-0) tensor; times the mask it must
    # come back in z's layout, or the BN / ReLU backward before the layer run on mixed layouts
    # (autograd.grad: ``backward`` would restride a leaf's .grad and hide the layout)
    torch.manual_seed(0)
    layer = ChannelSelect(6, 4).eval()
    z = torch.rand(3, 6, 4, 4).contiguous(memory_format=memory_format).requires_grad_(True)
    out, _ = layer(z)
    (grad,) = torch.autograd.grad(out.sum(dim=(2, 3)).sum(), z)
    assert grad.is_contiguous(memory_format=memory_format)
    with torch.no_grad():
        mask = layer.mask(z.mean((2, 3)))
    torch.testing.assert_close(grad, mask[:, :, None, None].expand_as(z))


def test_no_grad_forward_matches_and_bf16_keeps_the_probe_in_float32():
    method = small_cifs().eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        a = method.eval_model()(x)
    b = method.eval_model()(x)
    torch.testing.assert_close(a, b.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, probes = method.forward_with_probes(x)
    assert torch.isfinite(logits).all()
    assert all(p.dtype == torch.float32 for p in probes)


# ------------------------------------------------------------------ Eq. (3) and the method
def test_joint_loss_matches_a_hand_computation():
    final = torch.tensor([[2.0, 0.0]])
    probes = [torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0]])]
    y = torch.tensor([0])
    ce_f, ce_1, ce_2 = math.log(1 + math.exp(-2)), math.log(1 + math.exp(1)), math.log(2)
    expected = ce_f / 3 + 2 / (3 * 2) * (ce_1 + ce_2)
    assert joint_loss(final, probes, y, beta=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert joint_loss(final, probes, y, beta=0.0).item() == pytest.approx(ce_f, rel=1e-6)
    inf = joint_loss(final, probes, y, beta=float("inf")).item()
    assert inf == pytest.approx((ce_1 + ce_2) / 2, rel=1e-6)
    parts = combine_losses(torch.tensor([1.0]), [torch.tensor([4.0]), torch.tensor([7.0])], 10.0)
    assert parts.item() == pytest.approx((1 + 10 * 5.5) / 11)


def test_training_loss_is_the_scaled_joint_loss_and_logs_every_part():
    method = small_cifs(beta=1.0, loss_scale=3.0).train()
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    out = method(x, y)
    with torch.no_grad():
        logits, probes = method.forward_with_probes(x, y)  # train-mode BN: same batch stats
    ce = [F.cross_entropy(p, y).item() for p in [logits, *probes]]
    assert out["loss"].item() == pytest.approx(3.0 * (ce[0] + (ce[1] + ce[2]) / 2) / 2, rel=1e-5)
    assert out["loss_ce"].item() == pytest.approx(ce[0], rel=1e-5)
    assert out["loss_probe1"].item() == pytest.approx(ce[1], rel=1e-5)
    assert out["loss_probe2"].item() == pytest.approx(ce[2], rel=1e-5)
    assert 0 <= out["acc_probe1"].item() <= 1


def test_attack_losses_cover_the_beta_sweep_per_probe_cw_and_exact_variants():
    method = small_cifs().eval()
    losses = method.attack_losses()
    betas = ["0.1", "1", "2", "10", "100", "inf"]
    expected = {f"{k}_beta{b}" for k in ("ce", "cw") for b in betas}
    expected |= {f"{k}_probe{i}" for k in ("ce", "cw") for i in (1, 2)}
    expected |= {f"exact_ce_beta{b}" for b in ("0", "2", "inf")}
    assert set(losses) == expected
    x, y = torch.rand(5, 3, 32, 32), torch.randint(0, 10, (5,))
    with torch.no_grad():
        final, (p1, p2) = method.forward_with_probes(x)
    ce = [F.cross_entropy(t, y, reduction="none") for t in (final, p1, p2)]
    cw = [cw_loss(t, y, 50.0) for t in (final, p1, p2)]
    close = torch.testing.assert_close
    close(losses["ce_betainf"](x, y), (ce[1] + ce[2]) / 2)
    close(losses["ce_probe1"](x, y), ce[1])
    close(losses["cw_probe2"](x, y), cw[2])
    close(losses["ce_beta2"](x, y), (ce[0] + ce[1] + ce[2]) / 3)
    close(losses["cw_beta10"](x, y), (cw[0] + 10 * (cw[1] + cw[2]) / 2) / 11)
    close(losses["exact_ce_beta0"](x, y), ce[0])  # same value; its gradient differs
    one = small_cifs(positions="P1", attack_betas=[2, "inf"], attack_cw=False, attack_exact=False)
    assert set(one.attack_losses()) == {"ce_beta2", "ce_betainf"}


def test_exact_attack_gradient_differs_from_the_official_one():
    method = small_cifs().eval()
    x, y = torch.rand(4, 3, 32, 32, requires_grad=True), torch.randint(0, 10, (4,))
    losses = method.attack_losses()
    official = torch.autograd.grad(losses["ce_beta2"](x, y).sum(), x)[0]
    exact = torch.autograd.grad(losses["exact_ce_beta2"](x, y).sum(), x)[0]
    assert (official - exact).abs().max() > 1e-6 * official.abs().max()
    assert all(node.record is None and node.target is None for node in method.probed)
    assert not any(node.layer.exact_gradient for node in method.probed)


def test_adversarial_objective_is_the_per_sample_training_loss():
    method = small_cifs().eval()
    x, y = torch.rand(3, 3, 32, 32), torch.randint(0, 10, (3,))
    with torch.no_grad():
        final, probes = method.forward_with_probes(x)
        expected = 3.0 * joint_loss(final, probes, y, 2.0)
        torch.testing.assert_close(method.adversarial_objective(x, y), expected)


# ------------------------------------------------------------------ positions and options
def test_default_positions_are_the_last_two_blocks_with_mlp_then_linear_probes():
    method = create_method("cifs", create_model("resnet20", num_classes=7, width=4))
    assert method.positions == ["stage3.1", "stage3.2"]
    p2, p1 = (node.layer.probe for node in method.probed)
    assert isinstance(p2, nn.Sequential) and p2[0].out_features == 128
    assert isinstance(p2[1], nn.Softplus) and p2[1].beta == 5
    assert isinstance(p1, nn.Linear) and p1.out_features == 7 and p1.in_features == 16
    assert isinstance(method.model.stages["stage3"][1], ProbedNode)
    preact = create_model("preact_resnet18", num_classes=10, width=4)
    assert resolve_positions(preact, "P1-P2") == ["stage4.0", "stage4.1"]  # not the BN-ReLU
    official_wrn_like = create_method("cifs", preact, positions=["stage4.2", "stage4.0"])
    assert official_wrn_like.positions == ["stage4.0", "stage4.2"]
    kinds = [type(node.layer.probe) for node in official_wrn_like.probed]
    assert kinds == [nn.Sequential, nn.Linear]  # linear at the last layer, MLP before
    model = create_model("resnet20", num_classes=10, width=4)
    assert resolve_positions(model, "P1") == ["stage3.2"]
    assert resolve_positions(model, "P2") == ["stage3.1"]
    assert resolve_positions(model, ["stage3.0", "stage2"]) == ["stage2.2", "stage3.0"]
    linear = create_method("cifs", model, positions="P2", probe="linear")
    assert isinstance(linear.probed[0].layer.probe, nn.Linear)


def test_cifs_on_a_timm_backbone():
    torch.manual_seed(0)
    method = create_method("cifs", create_model("timm/resnet18", num_classes=10))
    assert method.positions == ["stage4.0", "stage4.1"]
    out = method(torch.rand(2, 3, 32, 32), torch.tensor([1, 2]))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_bad_options_are_config_errors():
    bad = [
        ({"imgf": "relu"}, "imgf"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 11}, "top_k"),
        ({"probe": "cnn"}, "probe"),
        ({"beta": -1.0}, "beta"),
        ({"positions": "P3"}, "P3"),
        ({"positions": ["stage3.2", "stage3"]}, "twice"),
        ({"attack_betas": ["x"]}, "attack_betas"),
        ({"temperature": 0.0}, "temperature"),
        ({"smoothing": 0.1}, "smoothing"),
    ]
    for options, word in bad:
        with pytest.raises(ConfigError, match=word):
            small_cifs(**options)


def test_nothing_is_compiled_and_weights_round_trip():
    method = small_cifs()
    assert method.compile_targets() == []  # eager until compile pays off (see the docstring)
    other = small_cifs(imgf="softmax")
    torch.manual_seed(1)
    for p in other.parameters():
        p.data.normal_()
    other.load_state_dict(method.state_dict())
    x = torch.rand(2, 3, 32, 32)
    method.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(method.eval_model()(x), other.eval_model()(x))


# ------------------------------------------------------------------ label-mask diagnostic
@pytest.mark.parametrize("name", ["cifs", "cas"])
def test_label_mask_diagnostic_scores_the_inference_and_the_true_label_masks(
    name, benchmark_script
):
    bench = benchmark_script("cifs_label_mask")
    torch.manual_seed(0)
    method = create_method(name, create_model("resnet20", num_classes=10, width=4)).eval()
    data = load_dataset("shapes", "test", n_test=30, image_size=16)
    scores = bench.accuracies(method, data, batch=8)  # uneven batches: 8 + 8 + 8 + 6
    x = data.images.float() / 255
    with torch.no_grad():
        logits, probes = method.forward_with_probes(x)
        for node in method.probed:
            node.layer.train()
        label_logits, _ = method.forward_with_probes(x, data.labels)
        for node in method.probed:
            node.layer.eval()
    assert not torch.allclose(logits, label_logits)  # the label changes the mask
    assert scores["inference"] == pytest.approx((logits.argmax(1) == data.labels).float().mean())
    assert scores["true_label"] == pytest.approx(
        (label_logits.argmax(1) == data.labels).float().mean()
    )
    assert scores["probe2"] == pytest.approx((probes[1].argmax(1) == data.labels).float().mean())
    echo = (probes[0].argmax(1) == logits.argmax(1)).float().mean()
    assert scores["final_equals_probe1"] == pytest.approx(echo)
    assert not any(module.training for module in method.modules())  # eval mode restored
    with bench.label_masks(method):
        layers = {id(m) for node in method.probed for m in node.layer.modules()}
        assert all(m.training == (id(m) in layers) for m in method.modules())  # BN stays eval
