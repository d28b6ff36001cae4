"""CAM quality: localization IoU against ground-truth masks, L1 sparsity, negative-CAM
peakiness, ERF distance; ``cam_quality`` evaluates a model on a dataset with masks.

- Localization IoU: the ground-truth class's map, upsampled to the image and min-max normalised
  to [0, 1], thresholded at t, against the object mask. Reported at the best threshold of a grid
  (one threshold for the whole dataset, the "optimal threshold" protocol of Choe et al. 2020, as
  Top-GAP appendix D picks the best-overlapping mask) and at a fixed threshold.
- L1 sparsity (Top-GAP Sec. 4.2): ||X||_1 / (n m) of the normalised, upsampled ground-truth-class
  map X of size n x m, i.e. its mean value in [0, 1]; lower = fewer highlighted pixels.
- Negative-CAM peakiness (HNC's motivation, Fig. 1): for the k highest-scoring negative classes,
  max - mean of the raw class map (logit units, so 0 is perfectly homogeneous), averaged over k.
  ``cam_peakiness`` also gives it relative to the positive map's peakiness: CAM scales differ
  between models, so only the ratio compares a CE and an HNC network (no masks needed).
- ERF distance (Top-GAP Def. 4.1): see ``interpret.erf``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.base import ImageDataset
from ..errors import DataError, check
from ..models.base import StagedModel
from ..runtime import model_mode
from .cam import (
    GRAD_CAM_METHODS,
    class_maps,
    grad_cam,
    positives_mask,
    ranked_negatives,
    to_input_size,
)
from .erf import erf_distance

DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95


# ------------------------------------------------------------------ pure metrics
def localization_iou(
    maps: torch.Tensor, masks: torch.Tensor, thresholds: tuple[float, ...] | list[float]
) -> torch.Tensor:
    """IoU of ``maps >= t`` with ``masks`` for each threshold t: (N, H, W) x (N, H, W) -> (T, N).

    An empty prediction on an empty mask counts as IoU 1.
    """
    gt = masks.bool()
    ious = []
    for t in thresholds:
        pred = maps >= t
        inter = (pred & gt).flatten(1).sum(1).float()
        union = (pred | gt).flatten(1).sum(1).float()
        ious.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)))
    return torch.stack(ious)


def iou_summary(
    ious: torch.Tensor, thresholds: tuple[float, ...] | list[float], fixed: float
) -> dict[str, Any]:
    """Mean IoU at the best threshold of the grid and at ``fixed`` (which must be on the grid)."""
    thresholds = [float(t) for t in thresholds]
    check(fixed in thresholds, f"fixed threshold {fixed} must be one of {thresholds}")
    mean = ious.mean(1)
    best = int(mean.argmax())
    return {
        "iou_best": float(mean[best]),
        "iou_best_threshold": thresholds[best],
        "iou_fixed": float(mean[thresholds.index(fixed)]),
        "iou_fixed_threshold": fixed,
        "iou_curve": {f"{t:.2f}": float(v) for t, v in zip(thresholds, mean, strict=True)},
    }


def cam_sparsity(maps: torch.Tensor) -> torch.Tensor:
    """Top-GAP Sec. 4.2 sparsity ||X||_1 / (n m) of normalised maps in [0, 1]: (N, n, m) -> (N,)."""
    return maps.abs().flatten(1).mean(1)


def negative_peakiness(
    cams: torch.Tensor, scores: torch.Tensor, positives: torch.Tensor, k: int
) -> torch.Tensor:
    """max - mean of each of the k highest-scoring negative class maps, averaged: -> (B,)."""
    index = ranked_negatives(scores, positives, k)  # (B, k)
    negative = cams.gather(1, index[:, :, None, None].expand(-1, -1, *cams.shape[-2:])).flatten(2)
    return (negative.amax(2) - negative.mean(2)).mean(1)


def positive_peakiness(cams: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """max - mean of the highest-valued positive class's map (single label: the label's) -> (B,)."""
    flat = cams.flatten(2)
    peak = flat.amax(2) - flat.mean(2)  # (B, classes)
    return peak.masked_fill(~positives, float("-inf")).amax(1)


# ------------------------------------------------------------------ evaluation on a dataset
def _has_class_maps(model: nn.Module) -> bool:
    if callable(getattr(model, "class_maps", None)):
        return True
    return isinstance(model, StagedModel) and isinstance(model.fc, nn.Linear)


def localization_targets(
    dataset: ImageDataset, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sample, class, mask) triples to localise for samples ``index``: the label and the object
    mask of single-label data; every present class and its own mask for data that defines
    ``class_masks(index)`` (the mosaic)."""
    labels = dataset.labels[index]
    own = getattr(dataset, "class_masks", None)
    if callable(own):
        masks = own(index)  # (n, C, H, W)
        sample, cls = (labels > 0.5).nonzero(as_tuple=True)
        return sample, cls, masks[sample, cls]
    if dataset.masks is None:
        raise DataError(f"dataset {dataset.name!r} has no ground-truth masks for CAM metrics")
    return torch.arange(index.numel()), labels, dataset.masks[index]


def cam_peakiness(
    model: nn.Module, dataset: ImageDataset, n: int = 1000, k: int = 4, batch_size: int = 250
) -> dict[str, float | int]:
    """Peakiness of the class maps over the first ``n`` samples (any labelled data): the means
    of the positive map's max - mean, of the top-``k`` negative maps' (``negative_peakiness``),
    and of their per-sample ratio negative / positive (HNC Fig. 1 in numbers: HNC flattens the
    negative maps, so its ratio should drop below CE's)."""
    check(_has_class_maps(model), f"{type(model).__name__} has no class maps")
    total = min(n, len(dataset))
    check(total >= 1, "cam_peakiness needs at least one sample")
    device = next(model.parameters()).device
    positive, negative = [], []
    for start in range(0, total, batch_size):
        index = torch.arange(start, min(total, start + batch_size))
        x, y = dataset.float_images(index).to(device), dataset.labels[index].to(device)
        with torch.no_grad(), model_mode(model, "eval"):
            maps, logits = class_maps(model, x).float(), model(x).float()
        positives = positives_mask(y, maps.shape[1])
        positive.append(positive_peakiness(maps, positives).cpu())
        negative.append(negative_peakiness(maps, logits, positives, k).cpu())
    pos, neg = torch.cat(positive), torch.cat(negative)
    return {
        "n": total,
        "k": k,
        "positive": float(pos.mean()),
        "negative": float(neg.mean()),
        "ratio": float((neg / pos.clamp_min(1e-12)).mean()),
    }


def cam_quality(
    method_or_model: nn.Module,
    dataset: ImageDataset,
    n: int | None = 500,
    batch_size: int = 100,
    source: str = "auto",
    k_negative: int = 4,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    fixed_threshold: float = 0.5,
    erf: bool = True,
    erf_normalize: str = "z",
) -> dict[str, Any]:
    """CAM quality of a method (its ``eval_model()``) or model on the first ``n`` samples of a
    dataset with ground-truth masks; every value is a mean over samples (see module docstring).

    ``source``: ``auto`` (the model's class maps: Top-GAP maps or CAM; Grad-CAM when it has
    none), ``cam`` (class maps), or a Grad-CAM method (``gradcam``, ``gradcam++``, ...).
    Negative peakiness needs class maps (absent with a Grad-CAM source).
    """
    model = (
        method_or_model.eval_model() if hasattr(method_or_model, "eval_model") else method_or_model
    )
    valid = ("auto", "cam", *GRAD_CAM_METHODS)
    check(source in valid, f"CAM source must be one of {valid}, got {source!r}")
    has_maps = _has_class_maps(model)
    if source == "auto":
        source = "cam" if has_maps else "gradcam"
    check(has_maps or source != "cam", f"{type(model).__name__} has no class maps; use Grad-CAM")
    total = len(dataset) if n is None else min(n, len(dataset))
    check(total >= 1, "cam_quality needs at least one sample")
    device = next(model.parameters()).device
    ious, sparsity, peaks, erfs, correct = [], [], [], {"center": [], "corner": []}, []
    map_size = None
    for start in range(0, total, batch_size):
        index = torch.arange(start, min(total, start + batch_size))
        x = dataset.float_images(index).to(device)
        y = dataset.labels[index].to(device)
        sample, cls, masks = localization_targets(dataset, index)
        sample, cls = sample.to(device), cls.to(device)
        with torch.no_grad(), model_mode(model, "eval"):
            maps = class_maps(model, x).float() if has_maps else None
            logits = model(x).float()  # Top-GAP logits are not the maps' mean
        if source == "cam":
            chosen = maps[sample, cls][:, None]
            map_size = list(maps.shape[-2:])
            images = to_input_size(chosen, x.shape[-2:])[:, 0]
        else:
            images = grad_cam(model, x[sample], cls, method=source).to(device)
        ious.append(localization_iou(images, masks.to(device), thresholds).cpu())
        sparsity.append(cam_sparsity(images).cpu())
        if maps is not None:
            positives = positives_mask(y, maps.shape[1])
            peaks.append(negative_peakiness(maps, logits, positives, k_negative).cpu())
        if y.ndim == 1:
            correct.append((logits.argmax(1) == y).cpu())
        if erf:
            values = erf_distance(model, x, normalize=erf_normalize)
            for key in erfs:
                erfs[key].append(values[key].cpu())
    iou = torch.cat(ious, 1)
    out: dict[str, Any] = {"n": total, "localized": int(iou.shape[1]), "source": source}
    if map_size is not None:
        out["map_size"] = map_size
    out.update(iou_summary(iou, thresholds, fixed_threshold))
    out["sparsity_l1"] = float(torch.cat(sparsity).mean())
    if peaks:
        out["neg_peakiness"] = float(torch.cat(peaks).mean())
        out["neg_peakiness_k"] = k_negative
    if correct:
        out["accuracy"] = float(torch.cat(correct).float().mean())
    if erf:
        center, corner = torch.cat(erfs["center"]), torch.cat(erfs["corner"])
        out.update(
            erf_center=float(center.mean()),
            erf_corner=float(corner.mean()),
            erf_distance=float((center - corner).mean()),
            erf_normalize=erf_normalize,
        )
    return out
