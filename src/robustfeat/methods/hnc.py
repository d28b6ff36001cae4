"""HNC: Homogeneous Negative CAM loss (Sun et al., "Fixing Localization Errors to Improve Image
Classification", ECCV 2020).

The CAMs M (B, C, h, w) of the last stage are computed once per step (the classifier as a 1x1
convolution, bias included); the logits are their spatial mean, which equals the model's own
logits. The loss is CE(s, l) + lam * HNC(M, l) (Eq. 7), or for multi-hot labels the weighted
sigmoid cross-entropy SCE (Eq. 8) + lam * HNC (Eq. 9). HNC acts on the CAMs of J'_>, the top-k
negative classes by score:

- ``mse``: HNC_mse (Eq. 2, alpha = 0), the squared CAM values pushed to 0;
- ``kd``: HNC_kd (Eq. 5), KL(uniform || spatial softmax of the CAM) up to a constant.

Facts taken from the official code (GuoleiSun/HNC_loss, ImageNet script) where the paper is
silent: the CAM includes the classifier bias; J'_> is ranked by the CAM's spatial sum (the same
order as the logits) with the true class excluded, k = 100 of 1000 classes; HNC_mse is
``MSELoss`` over the selected CAM values, i.e. Eq. (2) averaged over the selected (sample,
class) pairs; HNC_kd is Eq. (5) summed over the selected classes and averaged over the batch;
lam = 0.07 (mse) and 0.0065 (kd, ResNet-101; 0.0048 for ResNet-152).

Choices of ours: J'_> follows the paper's definition (every negative class scoring >= t_k, so
ties can select more than k; the official ``topk`` picks exactly k, the same whenever scores
differ); the default k is 10% of the classes as in the official code (rounded up) but at least
3 (or C - 1), because 10% of CIFAR-10's classes would be a single class; the SCE positive rates
p_o are the training set's label frequencies, estimated from the batches seen so far (kept in
the state dict) unless ``pos_rate`` gives them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import check
from ..interpret.cam import (
    cam_from_features,
    last_stage_features,
    positives_mask,
    small_class_map_warning,
)
from ..models.base import StagedModel
from ..nn.topk_pool import global_avg_pool2d
from ._base import Method
from ._registry import register_method

VARIANTS = ("mse", "kd")
DEFAULT_LAMBDA = {"mse": 0.07, "kd": 0.0065}  # official scripts (ResNet-101, ImageNet)


# ------------------------------------------------------------------ paper equations
def negative_set(scores: torch.Tensor, positives: torch.Tensor, k: int) -> torch.Tensor:
    """J'_> of Sun et al. 2020, Sec. 3.2: the negative classes whose score is >= t_k, the k-th
    highest negative score (ties included). ``positives`` is the bool (B, C) label set; rows
    with fewer than k negatives select all of them. -> bool (B, C)."""
    negative_scores = scores.detach().masked_fill(positives, float("-inf"))
    k = min(k, scores.shape[1] - 1)
    t_k = negative_scores.topk(k, dim=1).values[:, -1:]
    return (negative_scores >= t_k) & ~positives


def hnc_mse(cams: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """HNC_mse, Eq. (2) of Sun et al. 2020 with alpha = 0: (1/hw) sum_{o in J'_>} sum_ij M_o(i,j)^2,
    per sample. ``cams`` (B, C, h, w), ``negatives`` bool (B, C) -> (B,)."""
    per_class = cams.float().pow(2).mean((2, 3))
    return (per_class * negatives).sum(1)


def hnc_kd(cams: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """HNC_kd, Eq. (5) of Sun et al. 2020: -(1/hw) sum_{o in J'_>} sum_ij log softmax(M_o)(i,j),
    the softmax taken over the h*w positions, per sample. -> (B,)."""
    log_probs = F.log_softmax(cams.float().flatten(2), dim=-1)
    return (-log_probs.mean(-1) * negatives).sum(1)


def sce_weights(targets: torch.Tensor, pos_rate: torch.Tensor) -> torch.Tensor:
    """u_o of Eq. (8), Sun et al. 2020: exp(1 - p_o) for present classes, exp(p_o) for absent."""
    p = pos_rate.to(targets.device, torch.float32)
    return torch.where(targets > 0.5, torch.exp(1 - p), torch.exp(p))


def weighted_sigmoid_ce(
    logits: torch.Tensor, targets: torch.Tensor, pos_rate: torch.Tensor
) -> torch.Tensor:
    """SCE, Eq. (8) of Sun et al. 2020 (weighted sigmoid cross-entropy of Li et al. 2015):
    -(1/n) sum_o u_o [t_o log sigmoid(s_o) + (1 - t_o) log(1 - sigmoid(s_o))], per sample."""
    s = logits.float()
    t = targets.float()
    log_likelihood = t * F.logsigmoid(s) + (1 - t) * F.logsigmoid(-s)
    return -(sce_weights(t, pos_rate) * log_likelihood).mean(1)


def default_k(num_classes: int) -> int:
    """10% of the classes (official: 100 of 1000), at least 3 (or all C - 1 negatives)."""
    return max(math.ceil(0.1 * num_classes), min(3, num_classes - 1))


# ------------------------------------------------------------------ the method
@register_method
class HNC(Method):
    """CE (or SCE for multi-hot labels) + lam * HNC_mse / HNC_kd on the last stage's CAMs.

    Options: ``variant`` ("mse" | "kd"); ``lam`` (default: the official 0.07 / 0.0065); ``k``
    (negative classes per sample, default ``default_k``); ``bias`` (False: HNC acts on the CAMs
    without the classifier bias; the logits keep it); ``pos_rate`` (p_o of Eq. 8 per class for
    multi-hot labels; default: estimated from the training batches).
    """

    name = "hnc"

    def __init__(
        self,
        model: StagedModel,
        variant: str = "mse",
        lam: float | None = None,
        k: int | None = None,
        bias: bool = True,
        pos_rate: Sequence[float] | None = None,
    ) -> None:
        super().__init__(model)
        check(variant in VARIANTS, f"hnc variant must be one of {VARIANTS}, got {variant!r}")
        classes = model.get_classifier().out_features  # ConfigError without a GAP + linear head
        self.variant = variant
        self.lam = DEFAULT_LAMBDA[variant] if lam is None else float(lam)
        check(self.lam >= 0, f"hnc lam must be >= 0, got {lam!r}")
        self.k = default_k(classes) if k is None else k
        check(
            isinstance(self.k, int) and 1 <= self.k <= classes - 1,
            f"hnc k (negative classes per sample) must be an int in [1, {classes - 1}], got {k!r}",
        )
        self.bias = bool(bias)
        if pos_rate is not None:
            check(
                len(pos_rate) == classes and all(0.0 <= p <= 1.0 for p in pos_rate),
                f"hnc pos_rate must list {classes} frequencies in [0, 1], got {pos_rate!r}",
            )
        self.fixed_pos_rate = None if pos_rate is None else torch.tensor(list(pos_rate))
        # Label counts of the multi-label batches seen in training (p_o of Eq. 8).
        self.register_buffer("label_count", torch.zeros(classes, dtype=torch.float64))
        self.register_buffer("label_seen", torch.zeros((), dtype=torch.float64))

    @property
    def classifier(self) -> torch.nn.Linear:
        return self.model.get_classifier()

    def pos_rate(self, targets: torch.Tensor) -> torch.Tensor:
        """p_o: the given frequencies, or the running label frequency (this batch included)."""
        if self.fixed_pos_rate is not None:
            return self.fixed_pos_rate
        if self.training:
            self.label_count += targets.detach().double().sum(0)
            self.label_seen += targets.shape[0]
        return (self.label_count / self.label_seen.clamp_min(1)).float()

    def startup_warnings(self, total_steps: int, image_shape: tuple[int, ...]) -> list[str]:
        return small_class_map_warning(self.eval_model(), image_shape, self.name)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        cams = cam_from_features(last_stage_features(self.model, x), self.classifier, bias=True)
        logits = global_avg_pool2d(cams)  # == model(x): the bias is in every CAM position
        positives = positives_mask(y, logits.shape[1])
        negatives = negative_set(logits, positives, self.k)
        if not self.bias:
            cams = cams - self.classifier.bias[:, None, None]
        if self.variant == "mse":  # official: MSELoss over the selected CAM values
            hnc = hnc_mse(cams, negatives).sum() / negatives.sum().clamp_min(1)
        else:
            hnc = hnc_kd(cams, negatives).mean()
        if y.ndim == 2:
            cls_name, cls = "loss_sce", weighted_sigmoid_ce(logits, y, self.pos_rate(y)).mean()
        else:
            cls_name, cls = "loss_ce", F.cross_entropy(logits.float(), y)
        return {"loss": cls + self.lam * hnc, "logits": logits, cls_name: cls, "loss_hnc": hnc}
