"""TopKPool2d (Top-GAP Def. 3.5), global average pooling and FPNHead (Sec. 3.1, Fig. 2)."""

import pytest
import torch

from robustfeat.errors import ConfigError
from robustfeat.nn import FPNHead, TopKPool2d, global_avg_pool2d, topk_pool2d
from robustfeat.nn.topk_pool import resolve_k


def test_topk_pool_hand_computed():
    x = torch.tensor([1.0, 5.0, 3.0, 2.0]).view(1, 1, 2, 2)
    assert topk_pool2d(x, 2).item() == pytest.approx(4.0)  # (5 + 3) / 2
    assert topk_pool2d(x, 3).item() == pytest.approx(10 / 3)
    assert topk_pool2d(x, 0.5).item() == pytest.approx(4.0)  # half of 4 positions


def test_topk_pool_k1_is_max_and_khw_is_gap():
    x = torch.randn(3, 5, 6, 7)
    assert torch.allclose(TopKPool2d(1)(x), x.amax((2, 3)))
    assert torch.allclose(TopKPool2d(42)(x), x.mean((2, 3)), atol=1e-6)
    assert torch.allclose(TopKPool2d(1.0)(x), x.mean((2, 3)), atol=1e-6)
    assert torch.allclose(TopKPool2d(10_000)(x), x.mean((2, 3)), atol=1e-6)  # clipped to h*w


def test_topk_pool_gradient_reaches_only_the_top_k():
    x = torch.tensor([1.0, 5.0, 3.0, 2.0]).view(1, 1, 2, 2).requires_grad_(True)
    topk_pool2d(x, 2).sum().backward()
    assert x.grad.flatten().tolist() == [0.0, 0.5, 0.5, 0.0]


def test_global_avg_pool_matches_mean_and_its_gradient():
    x = torch.tensor([1.0, 5.0, 3.0, 2.0, 0.0, 1.0]).view(1, 1, 2, 3).requires_grad_(True)
    pooled = global_avg_pool2d(x)
    assert pooled.shape == (1, 1) and pooled.item() == pytest.approx(2.0)
    pooled.sum().backward()
    assert x.grad.flatten().tolist() == pytest.approx([1 / 6] * 6)
    # the bf16 channels_last maps of the cpu recipe: bit-identical to mean at H W = 8 x 8
    z = torch.randn(4, 16, 8, 8).bfloat16().contiguous(memory_format=torch.channels_last)
    assert global_avg_pool2d(z).dtype == torch.bfloat16
    assert torch.equal(global_avg_pool2d(z), z.mean((2, 3)))


def test_resolve_k_fraction_rounds_up_and_stays_in_range():
    assert resolve_k(0.01, 1024) == 11
    assert resolve_k(1e-9, 1024) == 1
    assert resolve_k(64, 16) == 16


@pytest.mark.parametrize("k", [0, -1, 1.5, 0.0, True, "8"])
def test_topk_pool_rejects_bad_k(k):
    with pytest.raises(ConfigError, match="k must be"):
        TopKPool2d(k)


def _identity_head(channels: list[int], upsample: str = "nearest") -> FPNHead:
    """One-channel maps; lateral convs pass the centre pixel; classifier sums (weight 1)."""
    head = FPNHead(channels, num_classes=1, width=1, upsample=upsample)
    with torch.no_grad():
        for conv in head.lateral:
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias.zero_()
        head.classifier.weight.fill_(1.0)
        head.classifier.bias.zero_()
    return head


def test_fpn_head_adds_upsampled_maps_at_the_largest_size():
    large = torch.arange(16.0).view(1, 1, 4, 4)
    small = torch.tensor([[10.0, 20.0], [30.0, 40.0]]).view(1, 1, 2, 2)
    out = _identity_head([1, 1])([large, small])
    expected = large + small.repeat_interleave(2, 2).repeat_interleave(2, 3)  # nearest x2
    assert out.shape == (1, 1, 4, 4)
    assert torch.equal(out, expected)


def test_fpn_head_shapes_and_ablation_without_fpn():
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    head = FPNHead([8, 16, 32], num_classes=10, width=24, dropout=0.1)
    assert head(feats).shape == (2, 10, 16, 16)
    assert head.classifier.in_channels == 24 and len(head.lateral) == 3
    plain = FPNHead([8, 16, 32], num_classes=10, fpn=False)
    assert len(plain.lateral) == 0
    out = plain(feats)
    assert out.shape == (2, 10, 4, 4)  # the 1x1 conv on the last map only
    expected = torch.nn.functional.conv2d(feats[-1], plain.classifier.weight, plain.classifier.bias)
    assert torch.allclose(out, expected)


def test_fpn_head_bilinear_upsampling_differs_from_nearest():
    large, small = torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 4.0], [0.0, 4.0]]).view(1, 1, 2, 2)
    near = _identity_head([1, 1], "nearest")([large, small])
    bilinear = _identity_head([1, 1], "bilinear")([large, small])
    assert near[0, 0, 0].tolist() == [0.0, 0.0, 4.0, 4.0]
    assert bilinear[0, 0, 0].tolist() == [0.0, 1.0, 3.0, 4.0]


def test_fpn_head_rejects_bad_options():
    with pytest.raises(ConfigError, match="width"):
        FPNHead([8], 10, width=0)
    with pytest.raises(ConfigError, match="upsample"):
        FPNHead([8], 10, upsample="cubic")


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_fused_head_is_the_same_function_with_the_same_gradients(upsample):
    torch.manual_seed(1)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    fused = FPNHead([8, 16, 32], num_classes=5, width=12, upsample=upsample)
    plain = FPNHead([8, 16, 32], num_classes=5, width=12, upsample=upsample, fused=False)
    plain.load_state_dict(fused.state_dict())
    out_fused, out_plain = fused(feats), plain(feats)
    assert torch.allclose(out_fused, out_plain, atol=1e-5)
    weights = torch.randn_like(out_fused)
    (out_fused * weights).sum().backward()
    (out_plain * weights).sum().backward()
    for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-4), name


def test_dropout_in_training_takes_the_plain_path():
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)]
    head = FPNHead([4, 4], num_classes=3, width=6, dropout=0.5).train()
    torch.manual_seed(0)
    a = head(feats)
    torch.manual_seed(0)
    b = head.classifier(head.dropout(head.merge(feats)))
    assert torch.equal(a, b)
    head.eval()  # dropout off: the fused path, same as the plain one
    assert torch.allclose(head(feats), head.classifier(head.merge(feats)), atol=1e-5)
