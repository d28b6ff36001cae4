"""Channel-wise feature selection layers with an auxiliary probe head (no training logic).

Both layers take a feature map ``z`` (N, C, H, W) and an optional label vector and return
``(z * mask, probe_logits)`` with a per-sample, per-channel mask; the probe logits feed the
method's auxiliary loss. Labels are used only in training mode.

- ``ChannelSelect``: CIFS (Yan et al. 2021, Sec. 3.2). A probe A^l makes a raw prediction from
  the features, the channels' relevances g^l to its top-k logits (Eq. 1) go through an importance-
  mask generating function (IMGF) and the mask multiplies the channels (Eq. 2).
- ``ActivationSuppress``: CAS (Bai et al. 2021). A linear head on GAP features; the mask is the
  head's weight row of the true label (training) or of the predicted label (evaluation).

Facts taken from the official CIFS code (HanshuYAN/CIFS), where the paper is silent:
the probe starts with global average pooling (linear: GAP -> Linear; MLP: GAP -> Linear(C, 128)
-> Softplus(beta=5) -> Linear(128, K)); the relevance is computed on a detached copy of the
features with ``create_graph=True``, so the probe also learns through the mask while the
backbone gets gradient only through z and through the probe's own prediction (we compute that
gradient in closed form, ``probe_input_gradient``: the same values and the same graph through
the probe's weights, without a double backward inside the forward, so the network compiles);
the softmax mask is used as is (it sums to 1 over channels; an earlier version multiplied it by
2, exposed here as ``mask_scale``). The probe and the mask run in float32 (tiny tensors; the
softmax over relevances and the top-k choice are precision-sensitive under bf16 autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check
from .topk_pool import global_avg_pool2d

PROBES = ("linear", "mlp")
IMGFS = ("softmax", "sigmoid", "softplus")
#: the paper's IMGF slopes (Sec. 3.3): sigmoid alpha=10, softplus alpha=5
DEFAULT_ALPHA = {"sigmoid": 10.0, "softplus": 5.0}
#: Softplus sharpness inside the MLP probe (official code)
PROBE_SOFTPLUS_BETA = 5.0


def make_probe(kind: str, channels: int, num_classes: int, hidden: int = 128) -> nn.Module:
    """Probe network A^l acting on GAP features (N, C) -> logits (N, K): ``"linear"`` or
    ``"mlp"`` (Linear(C, hidden) -> Softplus(beta=5) -> Linear(hidden, K))."""
    check(kind in PROBES, f"probe must be one of {PROBES}, got {kind!r}")
    if kind == "linear":
        return nn.Linear(channels, num_classes)
    return nn.Sequential(
        nn.Linear(channels, hidden),
        nn.Softplus(beta=PROBE_SOFTPLUS_BETA),
        nn.Linear(hidden, num_classes),
    )


def relevance_classes(
    logits: torch.Tensor, k: int, target: torch.Tensor | None = None
) -> torch.Tensor:
    """y^{l,k} of Eq. (1): indices (N, k) of the k largest logits; given ``target`` (training)
    the top-1 is replaced by the true label and the others kept (Sec. 3.2). As in the official
    code, a label that is also the 2nd..k-th prediction is then counted twice."""
    index = logits.topk(k, dim=1).indices
    if target is None:
        return index
    return torch.cat([target.view(-1, 1), index[:, 1:]], dim=1)


def probe_input_gradient(
    probe: nn.Module, pooled: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """``d/d pooled  sum_j probe(pooled)[n, index[n, j]]`` (N, C) in closed form for the two
    probes of ``make_probe``: linear ``sum_j W[i_j]``; MLP ``(sum_j W2[i_j] * softplus'(h)) W1``
    with ``h = W1 pooled + b1`` and ``softplus_beta'(h) = sigmoid(beta h)``. Differentiable in
    the probe's weights (as autograd's ``create_graph=True``) and in ``pooled`` if it is live."""
    if isinstance(probe, nn.Linear):
        return probe.weight[index].sum(1)
    first, softplus, last = probe
    slope = torch.sigmoid(softplus.beta * first(pooled))
    return (last.weight[index].sum(1) * slope) @ first.weight


def channel_relevance(
    probe: nn.Module,
    pooled: torch.Tensor,
    k: int,
    target: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Channel relevances g^l (N, C), Eq. (1) of Yan et al. 2021:
    ``g = d/d delta  sum_{i in y^{l,k}} A(z + delta 1^T)_i  at delta = 0``.

    The probe starts with global average pooling, so a channel-wise shift delta_c shifts the
    pooled feature by delta_c and g equals the gradient with respect to the pooled features
    ``pooled`` (= the spatial sum of dA/dz). Whether ``pooled`` is a detached copy (official)
    or the live features is the caller's choice. ``logits``: ``probe(pooled)`` if the caller
    has it already (they only choose the classes y^{l,k}; not run twice, ~2 ms of a CIFS step).
    """
    with torch.no_grad():
        index = relevance_classes(probe(pooled) if logits is None else logits, k, target)
    return probe_input_gradient(probe, pooled, index)


def importance_mask(
    relevance: torch.Tensor, imgf: str, alpha: float | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """Importance mask m^l >= 0 from relevances (Sec. 3.2, the three IMGFs):
    sigmoid ``1 / (1 + exp(-alpha g))``, softplus ``log(1 + exp(alpha g)) / alpha``,
    softmax ``exp(g / T) / sum_j exp(g_j / T)`` over channels."""
    check(imgf in IMGFS, f"imgf must be one of {IMGFS}, got {imgf!r}")
    if imgf == "softmax":
        return F.softmax(relevance / temperature, dim=1)
    a = DEFAULT_ALPHA[imgf] if alpha is None else alpha
    if imgf == "sigmoid":
        return torch.sigmoid(a * relevance)
    return F.softplus(relevance, beta=a)


def _pooled(z: torch.Tensor) -> torch.Tensor:
    # averaged in z's dtype, then float32: under bf16 autocast this is faster than a float32
    # reduction of the whole map (fwd + bwd), and the pooled value is what a bf16 probe would
    # have seen anyway
    return global_avg_pool2d(z).float()


def _apply(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. (2): every channel of z times its mask value."""
    # the mask is spread to z's shape and memory format first: times the (N, C, 1, 1) view,
    # autograd returns z's gradient NCHW-contiguous (both factors of the backward product are
    # layout-ambiguous), and on a channels_last net the BN and ReLU backward before the layer
    # then run on mixed layouts, about 2x slower
    full = torch.empty_like(z).copy_(mask[:, :, None, None])  # copy_ casts to z's dtype
    return z * full


class ChannelSelect(nn.Module):
    """CIFS layer (Yan et al. 2021, Sec. 3.2): ``forward(z, target) -> (z * m, probe logits)``.

    ``exact_gradient``: compute the relevance on the live features instead of a detached copy,
    so that gradients (an attacker's) also flow through the mask into z. Off in training (the
    official code); an adaptive attack may switch it on.

    ``label_mask``: in training the top-1 relevance class is the true label (Sec. 3.2, the
    default); False builds the training mask from the probe's own top-k, as at inference (an
    ablation: the final head can learn to read the label off the training mask, so that at
    inference it echoes the probe's top-1, ``benchmarks/cifs_label_mask.py``).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        probe: str = "linear",
        hidden: int = 128,
        imgf: str = "softmax",
        alpha: float | None = None,
        temperature: float = 1.0,
        top_k: int = 2,
        mask_scale: float = 1.0,
        label_mask: bool = True,
    ) -> None:
        super().__init__()
        check(imgf in IMGFS, f"imgf must be one of {IMGFS}, got {imgf!r}")
        check(
            isinstance(top_k, int) and 1 <= top_k <= num_classes,
            f"top_k must be an integer in [1, {num_classes}] (the classes), got {top_k!r}",
        )
        check(alpha is None or alpha > 0, f"alpha must be > 0, got {alpha}")
        check(temperature > 0, f"temperature must be > 0, got {temperature}")
        check(mask_scale > 0, f"mask_scale must be > 0, got {mask_scale}")
        check(hidden >= 1, f"probe hidden width must be >= 1, got {hidden}")
        self.probe = make_probe(probe, channels, num_classes, hidden)
        self.imgf, self.alpha, self.temperature = imgf, alpha, temperature
        self.top_k, self.mask_scale = top_k, mask_scale
        self.label_mask = bool(label_mask)
        self.exact_gradient = False

    def mask(
        self,
        pooled: torch.Tensor,
        target: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Importance mask (N, C) from GAP features (and the probe's logits on them, if at
        hand); labels only count in training mode (and with ``label_mask``)."""
        source = pooled if self.exact_gradient else pooled.detach()
        use_labels = self.training and self.label_mask
        relevance = channel_relevance(
            self.probe, source, self.top_k, target if use_labels else None, logits
        )
        m = importance_mask(relevance, self.imgf, self.alpha, self.temperature)
        return m * self.mask_scale

    def forward(
        self, z: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(z.device.type, enabled=False):
            pooled = _pooled(z)
            logits = self.probe(pooled)
            mask = self.mask(pooled, target, logits.detach())
        return _apply(z, mask), logits


class ActivationSuppress(nn.Module):
    """CAS layer (Bai et al. 2021): ``forward(z, target) -> (z * w_c, head logits)`` with w_c the
    linear head's weight row for class c = the true label (training) or the head's prediction
    (evaluation, or no labels). The mask is signed and not detached, as in the official code."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(channels, num_classes)

    def forward(
        self, z: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(z.device.type, enabled=False):
            logits = self.head(_pooled(z))
            label = target if self.training and target is not None else logits.argmax(1)
            mask = self.head.weight[label]
        return _apply(z, mask), logits
