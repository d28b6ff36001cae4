"""Class activation maps: differentiable CAM for losses, class maps of any model, Grad-CAM.

- ``cam_from_features`` / ``class_activation_maps``: CAM (Zhou et al. 2016; Eq. (1) of Sun et al.
  2020) of a backbone with a GAP + linear head: the classifier weight applied as a 1x1
  convolution to the last stage's output, *with* the bias (as the official HNC code does), so
  that the spatial mean of M is exactly the logits. Pure torch, differentiable, nothing
  detached: usable inside a loss.
- ``class_maps``: the maps a model classifies from: ``model.class_maps(x)`` when the model has
  them (the Top-GAP network: its head's class maps X^(n+1)), else the CAM above.
- ``grad_cam``: Grad-CAM and friends for any model through pytorch-grad-cam (pictures and
  metrics only: its output is detached and min-max normalised).
- ``to_input_size``: the "CAM mode" of Top-GAP (Sec. 3.1): maps upsampled to the input size and
  min-max normalised to [0, 1] per map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..adversarial.pgd import model_mode
from ..errors import ConfigError, UnknownNameError
from ..models.base import StagedModel

GRAD_CAM_METHODS = (
    "gradcam",
    "gradcam++",
    "hirescam",
    "xgradcam",
    "layercam",
    "eigencam",
    "scorecam",
)


def cam_from_features(
    features: torch.Tensor, classifier: nn.Linear, bias: bool = True
) -> torch.Tensor:
    """CAM (Eq. 1, Sun et al. 2020): M_o = sum_k w_{k,o} F_k (+ b_o), (B, K, h, w) -> (B, C, h, w).

    With the bias, ``M.mean((2, 3))`` equals ``classifier(GAP(features))``.
    """
    weight = classifier.weight[:, :, None, None]
    return F.conv2d(features, weight, classifier.bias if bias else None)


def last_stage_features(model: StagedModel, x: torch.Tensor) -> torch.Tensor:
    """The output of the model's last stage (the map its head pools)."""
    last = model.stage_names[-1]
    return model.forward_features(x, nodes=[last])[last]


def class_activation_maps(model: StagedModel, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """CAM of a GAP + linear StagedModel for inputs ``x`` in [0, 1]: (B, classes, h, w)."""
    return cam_from_features(last_stage_features(model, x), model.get_classifier(), bias)


def class_maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The class maps ``model`` classifies from, (B, classes, h, w), differentiable.

    A model with a ``class_maps`` method (the Top-GAP network) gives its own; a StagedModel with a
    GAP + linear head gives its CAM (bias included). Anything else: use ``grad_cam``.
    """
    own = getattr(model, "class_maps", None)
    if callable(own):
        return own(x)
    if isinstance(model, StagedModel):
        return class_activation_maps(model, x)
    raise ConfigError(
        f"{type(model).__name__} has no class maps (no class_maps method, not a StagedModel "
        "with a GAP + linear head); use grad_cam(...) for a picture of any model"
    )


# A class map smaller than this on a side (a timm ResNet-18 on 32-px images ends in 1x1) has
# nothing to localise: CAM pictures are uniform and CAM-based losses see one pixel
MIN_CAM_SIDE = 4


def class_map_size(model: nn.Module, image_shape: tuple[int, ...]) -> tuple[int, int]:
    """(h, w) of the class maps ``model`` classifies from, for images of ``image_shape``."""
    param = next(model.parameters(), None)
    x = torch.zeros(1, *image_shape, device=param.device if param is not None else "cpu")
    with torch.no_grad(), model_mode(model, "eval"):
        h, w = class_maps(model, x).shape[-2:]
    return int(h), int(w)


def small_class_map_warning(model: nn.Module, image_shape: tuple[int, ...], what: str) -> list[str]:
    """One warning line when the class maps are smaller than ``MIN_CAM_SIDE`` on a side."""
    h, w = class_map_size(model, image_shape)
    if min(h, w) >= MIN_CAM_SIDE:
        return []
    return [
        f"{what}: the class maps are {h}x{w} for {tuple(image_shape)} images (under "
        f"{MIN_CAM_SIDE}x{MIN_CAM_SIDE}): they cannot localise anything; use larger input "
        "images or a backbone whose last stage keeps more resolution"
    ]


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each map (last two dims) scaled to [0, 1]; a constant map becomes all zeros."""
    low = maps.amin((-2, -1), keepdim=True)
    high = maps.amax((-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp_min(eps)


def to_input_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Top-GAP "CAM mode": (B, C, h, w) maps upsampled (bilinear) to ``size``, then min-max
    normalised to [0, 1] per map."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return minmax_normalize(maps)


def ranked_negatives(scores: torch.Tensor, positives: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k) of the k highest-scoring classes that are not positive, best first.

    ``positives`` is a bool (B, C) mask (one-hot or multi-hot); ``k`` is capped at C - 1.
    """
    k = min(k, scores.shape[1] - 1)
    return scores.masked_fill(positives, float("-inf")).topk(k, dim=1).indices


def positives_mask(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Bool (B, C): the label set of each sample (integer labels or multi-hot rows)."""
    if y.ndim == 2:
        return y > 0.5
    return F.one_hot(y, num_classes).bool()


def default_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM reads: ``model.cam_target_layer`` if defined, else a StagedModel's
    last node (the block whose output is pooled; the forward runs node by node, so a hook on the
    stage container would never fire)."""
    own = getattr(model, "cam_target_layer", None)
    if isinstance(own, nn.Module):
        return own
    if isinstance(model, StagedModel):
        return model._nodes[-1][1]
    raise ConfigError(f"give target_layer= for Grad-CAM on {type(model).__name__}")


def _grad_cam_class(method: str) -> type:
    import pytorch_grad_cam as pgc  # imported on use: pulls in cv2 and scipy

    classes = {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "hirescam": pgc.HiResCAM,
        "xgradcam": pgc.XGradCAM,
        "layercam": pgc.LayerCAM,
        "eigencam": pgc.EigenCAM,
        "scorecam": pgc.ScoreCAM,
    }
    if method not in classes:
        raise UnknownNameError(
            f"unknown Grad-CAM method {method!r}; valid: {', '.join(GRAD_CAM_METHODS)}"
        )
    return classes[method]


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    classes: torch.Tensor | None = None,
    method: str = "gradcam",
    target_layer: nn.Module | None = None,
) -> torch.Tensor:
    """Grad-CAM-style maps (B, H, W) in [0, 1] at the input size, for ``classes`` (default: the
    predicted class), through pytorch-grad-cam; the model is in eval mode during the call and
    gets its own modes back afterwards. Detached (pictures and metrics, not losses)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = _grad_cam_class(method)
    layer = target_layer if target_layer is not None else default_target_layer(model)
    with model_mode(model, "eval"):
        cam = cls(model=model, target_layers=[layer])
        try:
            targets = (
                None
                if classes is None
                else [ClassifierOutputTarget(int(c)) for c in classes.tolist()]
            )
            maps = cam(input_tensor=x, targets=targets)
        finally:
            cam.activations_and_grads.release()
    return torch.from_numpy(maps).float()
