"""TENET training: group-wise inhibition of the most discriminative features (Liu et al. 2021).

The backbone is split at one node ``stage`` into a feature extractor F (up to and including the
node) and a classifier D (the rest, ``model.run_from(stage, h)``). On an active step, for the
samples it uses:

1. CFG (Eqs. 1-2): the C channel maps of each sample (h·w vectors) are clustered into N_G groups
   by k-means whose centres snap to the nearest real channel after each update (k-medoids);
2. GMW (Eqs. 3-5): channel weights w_j (spatial mean of dL_d/da_j, L_d the predicted class's
   score), group importance I_l (Σ w_j over the group) and group map m_l (Σ w_j·a_j);
3. RRF (Eq. 6): a reversed map rm_l = 1 / (1 + e^{m_l}) per group, applied to every channel of the
   group (Eq. 7, group-wise Hadamard product), without gradient through the mask;
4. loss (Eq. 9): L_c(y, D(A)) + α L_c(y, D(RM ⊗ A)) + μ L_o(A).

Facts taken from the official code (github.com/LinusWu/TENET_Training) where the paper is vague
or differs, all defaults here:

- the node: the output of the middle of three stages for the CIFAR ResNeXt-29 (``feature_id=3``
  of stem + 3 stages). Our default is the second-to-last stage, which is that node for 3-stage
  CIFAR nets and the third residual stage of 4-stage nets (the paper's Fig. 5 for ResNet-50);
- features (``features="eval"``): the grouping, the saliency gradient and the masks use A
  recomputed with the whole model in eval mode (BN running statistics; one extra forward of F on
  the used samples, without gradient); the masks then multiply the training forward's A;
- CFG: initial centres are a random subset of the channels; after each k-means update a centre
  snaps to the nearest channel not already taken by a lower-numbered centre in the same update
  (distinct centres); a group left empty moves to the lowest-index channel not so taken; stop
  when (Σ_l ||c_l - c_l'||)² < 1e-4 or after 50 iterations; the groups returned are those of the
  last assignment step (to the centres before the last update). Squared Euclidean distances are
  not divided by h·w (Eq. 1's mean): the argmins are the same and the stopping threshold is the
  official one on unnormalised vectors;
- GMW: L_d is the *sigmoid* of the class logit, taken with the model in eval mode —
  ``score="logit"`` is the paper's literal D(A)·One-Hot(D(A)). I_l and m_l are *sums* over the
  group's channels (Eqs. 4-5 print means; the sign of I_l is the same, and RRF's z-score below
  removes m_l's scale except against its 1e-8, so the sum keeps masks away from 0.5 N_l times
  longer as gradients shrink). With the z-score the sigmoid gives the same mask as the logit up
  to that 1e-8 (it only scales a sample's gradients by a positive factor), except that for very
  confident samples its gradient underflows the 1e-8 and the mask flattens towards 0.5;
- RRF: m_l is z-scored over space first ((m - mean) / (std + 1e-8), population std), and groups
  with I_l <= 0 get mask 1 (no inhibition; Sec. 4.2: "we only regularize the groups with higher
  importance scores"). The literal Eq. 6, sgn(I_l > 0) · ..., would give them mask 0 (remove the
  group): ``negative_mask=0.0``;
- L_o (Eq. 8 as printed is a product, not a usable loss): for each sample the mean map of each
  non-empty group, the absolute inner products of all pairs of them, summed and divided by the
  number of pairs; averaged over the samples. Raw (unnormalised) inner products, hence the
  official CIFAR weight μ = 1e-3 (the paper's 0.1 is the VOC/ResNet-18 setting): our default;
- schedule: TENET runs on the training steps t = 1, 2, ... with t >= 500 and t divisible by 3
  (501, 504, ...), and only on the samples the network classifies correctly (CIFAR config:
  TENET_Switch_Number=500, thinking_alpha=3); on those, L_d's class is both the label (official)
  and the prediction (paper).

Every remaining deliberate difference from the official code:

- one step, not two: the official CIFAR loop takes a separate optimizer step for
  α L_c(ŷ) + μ L_o after the plain CE step (with the CE step's momentum, and the masks computed
  after it); we take the joint loss of Eq. 9 in one step (the Method contract: one loss per
  step), reusing the training forward's A for the inhibited pass, so D's BN statistics see both
  training-mode passes (plain and inhibited) and F's see one (official: two);
- ``features="train"`` (not official, the default before issue 27) groups and weighs the
  training forward's A (train-mode BN) instead, with D still in eval mode for the gradient,
  saving the extra forward;
- the per-sample grouping of the official code is a Python loop over samples and groups; ours is
  batched over samples on the device (``channel_grouping``; the per-sample reference loop is in
  benchmarks/tenet_grouping.py and the tests check they agree exactly). Near-ties (distances
  within a relative 1e-5) go to the lowest index where the official argmin follows float
  rounding;
- the initial centres are drawn from torch's RNG (re-seeded by the trainer every step), not
  NumPy's; the optimizer and schedule are the trainer's (the recipe's);
- the channel- and instance-wise variants (Tables 2-3) and the binary mask are not in the
  official code: they follow the paper's description with the same z-score. The instance-wise
  map is Grad-CAM (ReLU(Σ_j w_j a_j)) computed from the same w_j: pytorch-grad-cam would redo
  the forward/backward per call and returns upsampled numpy maps, not a batched tensor on the
  device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..adversarial.pgd import model_mode
from ..errors import check
from ..models.base import StagedModel
from ..nn.topk_pool import global_avg_pool2d
from ._base import Method
from ._registry import register_method

INHIBITIONS = ("group", "channel", "instance")
MASKS = ("smooth", "binary")
SCORES = ("sigmoid", "logit")
FEATURES = ("train", "eval")
STD_EPS = 1e-8  # official z-score denominator
TIE_RTOL = 1e-5  # CFG: relative distance difference below which channels tie


# ----------------------------------------------------------------------------- CFG, Eqs. (1)-(2)
def random_centres(
    batch: int, channels: int, groups: int, device: torch.device | None = None
) -> torch.Tensor:
    """Initial CFG centres: per sample, ``groups`` distinct random channel indices (B, N_G).

    Draws from the global RNG (the trainer re-seeds it every step)."""
    return torch.rand(batch, channels, device=device).argsort(dim=1)[:, :groups]


def _gather_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, C, P), index (B, K) -> the indexed channel vectors (B, K, P)."""
    batch, channels, size = x.shape
    rows = index + channels * torch.arange(batch, device=x.device)[:, None]
    # row selection of the flattened maps: much faster than gather with an expanded index
    return (
        x.reshape(batch * channels, size).index_select(0, rows.flatten()).view(*index.shape, size)
    )


def first_near_min(dist: torch.Tensor, scale: torch.Tensor, dim: int) -> torch.Tensor:
    """Index of the smallest distance along ``dim``, ties to the lowest index.

    Distances within ``TIE_RTOL · scale`` (scale = the two squared norms) of the smallest are
    ties: the two members of a two-channel group are exactly equidistant from its mean, and float
    rounding (different in a batched matrix product and a per-sample loop) must not decide."""
    near = dist <= dist.amin(dim=dim, keepdim=True) + TIE_RTOL * scale
    return near.to(torch.uint8).argmax(dim=dim)  # argmax returns the first maximal index


def nearest_centre(x: torch.Tensor, sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Eq. (1): each channel's nearest centre (squared Euclidean distance).

    x (B, C, P) channel maps, sq (B, C) their squared norms, centres (B, K) channel indices."""
    cross = torch.bmm(x, _gather_channels(x, centres).transpose(1, 2))  # (B, C, K)
    norms = sq[:, :, None] + sq.gather(1, centres)[:, None, :]
    return first_near_min(norms - 2 * cross, norms, dim=2)


def snap_centres(
    x: torch.Tensor, sq: torch.Tensor, centres: torch.Tensor, assign: torch.Tensor
) -> torch.Tensor:
    """Eq. (2), CF(IDS): each group's mean, snapped to the nearest channel (B, K).

    Distinct centres: group l takes the nearest channel not taken by groups 0..l-1 in this update
    (the official order). An empty group has no mean: it moves to the lowest-index channel not
    taken by groups 0..l-1, as the official code does (its mean of no channels is NaN, and
    NumPy's argmin of an all-NaN distance returns the first index not yet excluded)."""
    batch, channels, _ = x.shape
    groups = centres.shape[1]
    onehot = F.one_hot(assign, groups).to(x.dtype)  # (B, C, K)
    counts = onehot.sum(dim=1)  # (B, K)
    means = torch.bmm(onehot.transpose(1, 2), x) / counts.clamp_min(1)[:, :, None]
    norms = sq[:, :, None] + means.square().sum(dim=2)[:, None, :]  # (B, C, K)
    dist = norms - 2 * torch.bmm(x, means.transpose(1, 2))
    # an empty group: every channel ties, so the first free one wins
    dist = dist.masked_fill((counts == 0)[:, None, :], 0.0)
    taken = torch.zeros(batch, channels, dtype=torch.bool, device=x.device)
    rows = torch.arange(batch, device=x.device)
    snapped = torch.empty_like(centres)
    for group in range(groups):  # sequential by definition (distinctness); batched over samples
        free = dist[:, :, group].masked_fill(taken, float("inf"))
        pick = first_near_min(free, norms[:, :, group], dim=1)
        snapped[:, group] = pick
        taken[rows, pick] = True
    return snapped


def channel_grouping(
    maps: torch.Tensor, init: torch.Tensor, max_iter: int = 50, tol: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """CFG module, Eqs. (1)-(2) of Liu et al. 2021: group each sample's channel maps.

    ``maps`` (B, C, P): C channel maps of P = h·w values per sample; ``init`` (B, K): distinct
    initial centre channels. Iterates assignment (Eq. 1) and snapped k-means update (Eq. 2)
    per sample until its centres are stable — (Σ_l ||c_l - c_l'||)² < ``tol`` — or ``max_iter``
    updates; each iteration works on the samples not yet converged only. Returns the group index
    of every channel (B, C) from the last assignment step, i.e. to the centres *before* the last
    update, as the official code does (they differ from the final centres' assignment only when
    ``max_iter`` stops a sample, or a shift below ``tol`` still moved a centre), and the final
    centres (B, K). Computed in float32 (float64 kept), without gradient.
    """
    with torch.no_grad():
        x = maps.detach()
        x = (x if x.dtype == torch.float64 else x.float()).contiguous()  # e.g. from channels_last
        sq = torch.linalg.vector_norm(x, dim=2).square()
        centres = init.clone()
        assign = torch.empty(x.shape[:2], dtype=torch.long, device=x.device)
        # the samples computed on ("work", a compacted copy of their maps) and, among them, those
        # still iterating; work shrinks to the iterating ones when they are at most half of it
        work = torch.arange(x.shape[0], device=x.device)
        xw, sqw = x, sq
        iterating = torch.ones_like(work, dtype=torch.bool)
        for _ in range(max_iter):
            if int(iterating.sum()) <= work.numel() // 2:
                keep = iterating.nonzero().squeeze(1)
                work, xw, sqw = work[keep], xw.index_select(0, keep), sqw[keep]
                iterating = iterating[keep]
            current = centres[work]
            groups_of = nearest_centre(xw, sqw, current)
            new = snap_centres(xw, sqw, current, groups_of)
            moved = _gather_channels(xw, new) - _gather_channels(xw, current)
            shift = moved.square().sum(dim=2).sqrt().sum(dim=1)
            rows = work[iterating]
            assign[rows] = groups_of[iterating]
            centres[rows] = new[iterating]
            iterating = iterating & (shift.square() >= tol)
            if not bool(iterating.any()):
                break
        return assign, centres


# ----------------------------------------------------------------------------- GMW, Eqs. (3)-(5)
def channel_weights(grad: torch.Tensor) -> torch.Tensor:
    """GMW, Eq. (3): w_j = spatial mean of dL_d/da_j. grad (B, C, H, W) -> (B, C)."""
    return global_avg_pool2d(grad.float())


def _group_sum(values: torch.Tensor, assign: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum over the channels of each group: values (B, C, P), assign (B, C) -> (B, K, P); an
    empty group's sum is 0."""
    return torch.bmm(F.one_hot(assign, groups).to(values.dtype).transpose(1, 2), values)


def _group_mean(values: torch.Tensor, assign: torch.Tensor, groups: int) -> torch.Tensor:
    """Mean over the channels of each group (B, K, P); an empty group's mean is 0."""
    counts = F.one_hot(assign, groups).sum(dim=1).clamp_min(1).to(values.dtype)
    return _group_sum(values, assign, groups) / counts[:, :, None]


def group_importance(weights: torch.Tensor, assign: torch.Tensor, groups: int) -> torch.Tensor:
    """GMW, Eq. (4) as the official code computes it: I_l = the *sum* of w_j over the channels of
    group l (the paper's 1/N_l does not change the sign, the only thing I_l decides). (B, C) ->
    (B, K)."""
    return _group_sum(weights[:, :, None], assign, groups)[:, :, 0]


def group_maps(
    maps: torch.Tensor, weights: torch.Tensor, assign: torch.Tensor, groups: int
) -> torch.Tensor:
    """GMW, Eq. (5) as the official code computes it: m_l = the *sum* of w_j·a_j over the
    channels of group l (the paper writes the mean, 1/N_l times it). RRF's z-score removes the
    scale except against its fixed 1e-8: with the mean, the mask of a group of N_l channels goes
    flat N_l times sooner as the gradients shrink. (B, C, P) -> (B, K, P)."""
    return _group_sum(weights[:, :, None] * maps, assign, groups)


# ----------------------------------------------------------------------------- RRF, Eqs. (6)-(7)
def reversed_maps(
    maps: torch.Tensor,
    importance: torch.Tensor,
    *,
    binary: bool = False,
    standardize: bool = True,
    negative_mask: float = 1.0,
) -> torch.Tensor:
    """RRF, Eq. (6): rm_l = 1 / (1 + e^{m_l}) for groups with I_l > 0, ``negative_mask`` else.

    maps (B, K, P), importance (B, K) -> masks (B, K, P) in [0, 1]. ``standardize``: z-score each
    m_l over space first (official). ``binary``: the Table 3 variant, the step function of the
    same z-score (1 where m_l is at most its spatial mean, 0 above).
    """
    z = maps
    if standardize:
        mean = maps.mean(dim=2, keepdim=True)
        z = (maps - mean) / (maps.std(dim=2, unbiased=False, keepdim=True) + STD_EPS)
    rm = (z <= 0).to(maps.dtype) if binary else torch.sigmoid(-z)
    return torch.where(importance[:, :, None] > 0, rm, torch.full_like(rm, negative_mask))


def expand_group_masks(masks: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Eq. (7)'s group-wise Hadamard product: every channel gets its group's mask.

    masks (B, K, P), assign (B, C) -> (B, C, P)."""
    return masks.gather(1, assign[:, :, None].expand(-1, -1, masks.shape[2]))


# ----------------------------------------------------------------------------- L_o, Eq. (8)
def orthogonal_loss(maps: torch.Tensor, assign: torch.Tensor, groups: int) -> torch.Tensor:
    """L_o, Eq. (8) as the official code computes it.

    Per sample: the mean map of each non-empty group, |<g_l, g_k>| summed over pairs l < k and
    divided by the number of such pairs (1 if fewer than two groups); then the mean over samples.
    maps (B, C, P) keep their gradient.
    """
    means = _group_mean(maps, assign, groups)
    gram = torch.bmm(means, means.transpose(1, 2)).abs().triu(diagonal=1).sum(dim=(1, 2))
    filled = (F.one_hot(assign, groups).sum(dim=1) > 0).sum(dim=1).to(maps.dtype)
    pairs = torch.where(filled > 1, filled * (filled - 1) / 2, torch.ones_like(filled))
    return (gram / pairs).mean()


# ----------------------------------------------------------------------------- the method
@register_method
class Tenet(Method):
    """TENET training (Liu et al., ICCV 2021), Algorithm 1. See the module docstring.

    Options: ``stage`` (node; default the second-to-last stage), ``groups`` N_G, ``alpha``,
    ``mu`` (0 disables L_o), ``inhibition`` (group | channel | instance: Tables 2-3),
    ``mask`` (smooth RRF | binary), ``standardize``, ``negative_mask``, ``score`` (sigmoid |
    logit), ``features`` (train | eval), schedule ``start_step``, ``every``, ``correct_only``,
    CFG ``max_iter``, ``tol``.

    Logged per step: loss_ce, loss_inhibit (α's term), loss_orth (μ's term), tenet_active (1 on
    TENET steps), tenet_used (fraction of the batch inhibited), tenet_mask_std (mean spread of
    the masks; near 0 means they barely inhibit). Steps where TENET is off log 0 for these.
    """

    name = "tenet"

    def __init__(
        self,
        model: StagedModel,
        stage: str | None = None,
        groups: int = 6,
        alpha: float = 0.1,
        mu: float = 1e-3,
        inhibition: str = "group",
        mask: str = "smooth",
        standardize: bool = True,
        negative_mask: float = 1.0,
        score: str = "sigmoid",
        features: str = "eval",
        start_step: int = 500,
        every: int = 3,
        correct_only: bool = True,
        max_iter: int = 50,
        tol: float = 1e-4,
    ) -> None:
        super().__init__(model)
        stage = model.stage_names[-2] if stage is None else stage
        model.resolve_node(stage)  # ConfigError naming the valid nodes
        channels = model.feature_info[stage].channels
        check(
            inhibition in INHIBITIONS,
            f"inhibition must be one of {INHIBITIONS}, got {inhibition!r}",
        )
        check(mask in MASKS, f"mask must be one of {MASKS}, got {mask!r}")
        check(score in SCORES, f"score must be one of {SCORES}, got {score!r}")
        check(features in FEATURES, f"features must be one of {FEATURES}, got {features!r}")
        check(
            isinstance(groups, int) and 2 <= groups <= channels,
            f"groups must be an integer in [2, {channels}] (channels at {stage!r}), got {groups!r}",
        )
        check(alpha >= 0 and mu >= 0, f"alpha and mu must be >= 0, got {alpha}, {mu}")
        check(0.0 <= negative_mask <= 1.0, f"negative_mask must be in [0, 1], got {negative_mask}")
        check(
            isinstance(start_step, int) and start_step >= 0,
            f"start_step must be an integer >= 0, got {start_step!r}",
        )
        check(
            isinstance(every, int) and every >= 1, f"every must be an integer >= 1, got {every!r}"
        )
        check(
            isinstance(max_iter, int) and max_iter >= 1,
            f"max_iter must be an integer >= 1, got {max_iter!r}",
        )
        check(tol >= 0, f"tol must be >= 0, got {tol}")
        self.stage, self.groups, self.alpha, self.mu = stage, groups, alpha, mu
        self.inhibition, self.binary, self.standardize = inhibition, mask == "binary", standardize
        self.negative_mask, self.score, self.features = negative_mask, score, features
        self.start_step, self.every, self.correct_only = start_step, every, correct_only
        self.max_iter, self.tol = max_iter, tol
        # optimizer steps taken: a buffer, so a resumed run keeps the schedule
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ schedule
    def active(self) -> bool:
        """Whether the next training step is a TENET step: its 1-based number t (the official
        ``global_ite``) has t >= ``start_step`` and t % ``every`` == 0 (official: 501, 504, ...)."""
        iteration = int(self.steps_done) + 1
        return self.training and iteration >= self.start_step and iteration % self.every == 0

    def first_active_step(self) -> int:
        """The 1-based number of the first TENET step (the schedule of ``active``)."""
        start = max(self.start_step, 1)
        return start + (-start) % self.every

    def startup_warnings(self, total_steps: int, image_shape: tuple[int, ...]) -> list[str]:
        first = self.first_active_step()
        if first <= total_steps:
            return []
        return [
            f"tenet: its first step is {first} (start_step {self.start_step}, every "
            f"{self.every}) but the run has {total_steps} steps: TENET never acts and this is "
            "plain CE; lower --method-arg start_step or train longer"
        ]

    def after_step(self) -> None:
        self.steps_done += 1

    # ------------------------------------------------------------------ Eq. (3)'s gradient
    def saliency_gradient(self, feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """dL_d/dA with L_d = score of class ``target`` of D(A), D in eval mode (official)."""
        feats = feats.detach().requires_grad_(True)
        with model_mode(self.model, "eval"), torch.enable_grad():
            logits = self.model.run_from(self.stage, feats).float()
            score = logits.gather(1, target[:, None])
            if self.score == "sigmoid":
                score = torch.sigmoid(score)
            (grad,) = torch.autograd.grad(score.sum(), feats)
        return grad

    def grouping(self, maps: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Group index of each channel (B, C) and the number of groups, per ``inhibition``."""
        batch, channels, _ = maps.shape
        if self.inhibition == "channel":
            return torch.arange(channels, device=maps.device).expand(batch, -1), channels
        if self.inhibition == "instance":
            return torch.zeros(batch, channels, dtype=torch.long, device=maps.device), 1
        init = random_centres(batch, channels, self.groups, maps.device)
        assign, _ = channel_grouping(maps, init, self.max_iter, self.tol)
        return assign, self.groups

    def inhibition_masks(
        self, maps: torch.Tensor, grad: torch.Tensor, assign: torch.Tensor, groups: int
    ) -> torch.Tensor:
        """GMW + RRF: the reversed map of every channel (B, C, P), from the channel maps
        (B, C, P) and dL_d/dA (B, C, H, W); no gradient."""
        weights = channel_weights(grad)
        if self.inhibition == "instance":  # Grad-CAM map, inhibited whatever its sign
            cam = F.relu((weights[:, :, None] * maps).sum(dim=1, keepdim=True))
            importance = torch.ones(cam.shape[:2], device=cam.device)
            masks = reversed_maps(cam, importance, binary=self.binary, standardize=self.standardize)
        else:
            masks = reversed_maps(
                group_maps(maps, weights, assign, groups),
                group_importance(weights, assign, groups),
                binary=self.binary,
                standardize=self.standardize,
                negative_mask=self.negative_mask,
            )
        return expand_group_masks(masks, assign)

    # ------------------------------------------------------------------ the step
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.model.forward_features(x, nodes=[self.stage])[self.stage]
        logits = self.model.run_from(self.stage, feats)
        loss_ce = F.cross_entropy(logits, y)
        zero = loss_ce.detach().new_zeros(())
        out = {
            "loss": loss_ce,
            "logits": logits,
            "loss_ce": loss_ce,
            "loss_inhibit": zero,
            "loss_orth": zero,
            "tenet_active": zero,
            "tenet_used": zero,
            "tenet_mask_std": zero,
        }
        if not self.active():
            return out
        pred = logits.detach().argmax(dim=1)
        used = (pred == y).nonzero().squeeze(1) if self.correct_only else None
        a, target, labels = (feats, pred, y) if used is None else (feats[used], pred[used], y[used])
        out["tenet_active"] = zero + 1
        if a.shape[0] == 0:  # nothing classified correctly yet
            return out
        source = a
        if self.features == "eval":
            with torch.no_grad(), model_mode(self.model, "eval"):
                xs = x if used is None else x[used]
                source = self.model.forward_features(xs, nodes=[self.stage])[self.stage]
        grad = self.saliency_gradient(source, target)
        maps = source.detach().float().flatten(2).contiguous()  # (B, C, h·w)
        assign, groups = self.grouping(maps)
        masks = self.inhibition_masks(maps, grad, assign, groups).view_as(a)
        inhibited = self.model.run_from(self.stage, a * masks.to(a.dtype))
        loss_inhibit = F.cross_entropy(inhibited, labels)
        loss = loss_ce + self.alpha * loss_inhibit
        if self.mu > 0 and groups > 1:
            loss_orth = orthogonal_loss(a.float().flatten(2), assign, groups)
            loss = loss + self.mu * loss_orth
            out["loss_orth"] = loss_orth
        out.update(
            loss=loss,
            loss_inhibit=loss_inhibit,
            tenet_used=zero + a.shape[0] / x.shape[0],
            # spread of the masks over channels and space (0: no inhibition, or a flat mask)
            tenet_mask_std=masks.flatten(1).std(dim=1).mean(),
        )
        return out
