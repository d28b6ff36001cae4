"""Any timm CNN as a ``StagedModel`` (``create_model("timm/<name>")``).

The adapter does not hard-code model families. It reads timm's own structure:

- ``feature_info`` (timm's list of stage outputs: module path, channels, reduction) gives the
  stage boundaries. The *stem* is everything before the first stage with reduction > 2 (so
  ResNet's ``act1`` and EfficientNet's ``blocks.0`` at stride 2 belong to the stem); stage k ends
  at the k-th such feature module. A top-level ``nn.Sequential`` holding stage modules (``blocks``,
  ``stages``, ``features``) is opened so that its children can be split; a stage that is itself an
  ``nn.Sequential`` (e.g. ResNet ``layer1``) is opened one level, so its blocks become nodes.
- The modules after the last stage and before the global pooling (EfficientNet ``conv_head`` +
  ``bn2``, ByobNet/RegNet ``final_conv``, ConvNeXt ``norm_pre``) are appended to the last stage,
  so the last stage's output is the map that is pooled: ``fc`` after GAP is then a pure Linear and
  CAM (= ``fc`` as a 1x1 conv on the last stage output) is exact.
- The head after pooling: a Linear (or 1x1 conv, turned into the equivalent Linear) becomes ``fc``.
  A norm between pooling and the linear layer (ConvNeXt's ``head.norm``) cannot move before the
  pooling without changing the function; with ``cam_head=True`` (default) it is moved to the end of
  the last stage (a per-pixel LayerNorm2d before GAP: a different, CAM-compatible net; pretrained
  logits change), with ``cam_head=False`` it stays after pooling (exact timm function, ``fc`` is not
  a Linear, so CAM-based methods refuse the model). Any other post-pooling layers (MobileNetV3's
  ``conv_head`` + activation, an MLP ``pre_logits``) stay after pooling in ``fc`` the same way.

Every adapted model is checked once at construction (eval mode, one image of side
``default_input_size``): its stem, stages, GAP and post-pooling layers must reproduce timm's own
forward. This is what makes the adapter generic: a model that is not a plain chain of its modules
fails the check. Models whose stage outputs are not NCHW maps, whose feature_info reductions do not
increase (ViT, Swin, ...) or that have no global pooling raise ConfigError "not a CNN with stages".
With a moved head norm the adapted forward differs from timm's (``matches_timm_forward`` False).

Weights: no download ever happens. ``pretrained=True`` uses a safetensors file already in the
Hugging Face cache, or ``pretrained_file=<path.safetensors>``; otherwise CheckpointError.
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from torch import nn

from ..errors import CheckpointError, ConfigError, UnknownNameError
from ..io import read_safetensors_header
from .base import StagedModel

AVG_POOL_TYPES = ("avg", "fast", "fastavg")


class TimmStagedModel(StagedModel):
    """A timm CNN split into stem / stages / GAP + ``fc`` (see the module docstring)."""

    def __init__(
        self,
        stem: nn.Module,
        stages: dict[str, nn.Module],
        fc: nn.Module,
        num_classes: int,
        default_input_size: int,
        timm_name: str,
        matches_timm_forward: bool,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleDict(stages)
        self.fc = fc
        self.default_input_size = default_input_size
        self.timm_name = timm_name
        # False when cam_head moved a post-pooling norm before the pooling (a different function).
        self.matches_timm_forward = matches_timm_forward
        self._num_classes = num_classes

    @property
    def num_classes(self) -> int:  # fc need not be a Linear (post-pooling layers kept)
        return self._num_classes


# timm.create_model options that name a weights file timm would read itself, pickle included
TIMM_FILE_OPTIONS = frozenset({"checkpoint_path", "pretrained_cfg"})


def create_timm_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    cam_head: bool = True,
    default_input_size: int | None = None,
    **timm_kwargs: Any,
) -> TimmStagedModel:
    """Build timm model ``name`` with ``num_classes`` outputs, adapted to the stage contract.

    Args:
        name: a timm model name, with or without ``timm/`` and a pretrained tag
            (``resnet18``, ``timm/efficientnet_b0``, ``resnet18.a1_in1k``).
        pretrained: load the weights from the local Hugging Face cache (never downloads).
        pretrained_file: a local ``.safetensors`` file with timm's parameter names (implies
            ``pretrained``); its classifier is kept when it has ``num_classes`` outputs.
        cam_head: move a norm between pooling and classifier before the pooling (see module doc).
        default_input_size: the input side ``feature_info`` is measured at and the construction
            check runs at (default: timm's pretrained input size, e.g. 224; 32 for CIFAR use).
        timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).

    Inputs are in [0, 1]; ``create_model`` sets the normalization (give timm's mean/std for
    pretrained weights).
    """
    if default_input_size is not None and (
        not isinstance(default_input_size, int) or default_input_size < 8
    ):
        raise ConfigError(f"default_input_size must be an int >= 8, got {default_input_size!r}")
    arch = _check_name(name.removeprefix("timm/"))
    loaders = sorted(set(timm_kwargs) & TIMM_FILE_OPTIONS)
    if loaders:  # timm reads these with torch.load, i.e. unpickles them
        raise ConfigError(
            f"timm option {loaders[0]} is refused: timm would load its file with torch.load "
            "(a pickle can run code); give weights as pretrained_file=<path.safetensors>"
        )
    overlay = _weights_overlay(arch, pretrained, pretrained_file)
    try:
        model = timm.create_model(
            arch,
            num_classes=num_classes,
            pretrained=overlay is not None,
            pretrained_cfg_overlay=overlay,
            **timm_kwargs,
        )
    except TypeError as err:
        raise ConfigError(f"bad options for timm model {arch!r}: {err}") from err
    except Exception as err:  # timm raises many types; say which model and file failed
        if overlay is not None:
            raise CheckpointError(
                f"could not load weights {overlay['file']} into timm/{arch}: {err}"
            ) from err
        raise ConfigError(f"timm could not build {arch!r}: {err}") from err
    if default_input_size is None:
        default_input_size = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    return _adapt(model, arch, num_classes, cam_head, default_input_size)


# ------------------------------------------------------------------------- name and weights
def _check_name(arch: str) -> str:
    base, _tag = timm.models.split_model_name_tag(arch)
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join('timm/' + c for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown timm model {arch!r}.{hint} Valid: any CNN in timm.list_models()"
        )
    return arch


def _weights_overlay(
    arch: str, pretrained: bool, pretrained_file: str | Path | None
) -> dict[str, Any] | None:
    """timm ``pretrained_cfg_overlay`` pointing at a local safetensors file, or None (no weights).

    ``source=""`` keeps timm on its local-file path, so it never tries the network.
    """
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if path.suffix != ".safetensors":
            raise CheckpointError(f"pretrained_file must be a .safetensors file, got {path}")
        if not path.is_file():
            raise CheckpointError(f"pretrained_file {path} does not exist")
        return _file_overlay(arch, str(path))
    if not pretrained:
        return None
    cached = _cached_hub_weights(arch)
    if cached is None:
        raise CheckpointError(
            f"pretrained weights for timm/{arch} are not available offline (not in the Hugging "
            f"Face cache as safetensors, and nothing is downloaded); download them elsewhere and "
            f"pass pretrained_file=<path to .safetensors>, or use pretrained=False"
        )
    return _file_overlay(arch, cached)


def _file_overlay(arch: str, path: str) -> dict[str, Any]:
    """Overlay for a local file; ``num_classes`` is the file's own, so that timm keeps a classifier
    that fits (it drops the classifier only when the file's class count differs)."""
    overlay: dict[str, Any] = {"file": path, "source": ""}
    try:  # checked (pickle, sizes) before timm reads it
        header = read_safetensors_header(Path(path))
    except CheckpointError as err:
        raise CheckpointError(f"cannot read pretrained_file: {err}") from err
    classifier = getattr(timm.models.get_pretrained_cfg(arch), "classifier", None)
    entry = header.get(f"{classifier}.weight") if isinstance(classifier, str) else None
    if isinstance(entry, dict) and entry.get("shape"):
        overlay["num_classes"] = entry["shape"][0]
    return overlay


def _cached_hub_weights(arch: str) -> str | None:
    """Path of the model's safetensors weights in the local Hugging Face cache, if present."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        return None
    filename = cfg.hf_hub_filename or "model.safetensors"
    if not filename.endswith(".safetensors"):
        return None
    found = try_to_load_from_cache(cfg.hf_hub_id, filename)
    return found if isinstance(found, str) else None


# ------------------------------------------------------------------------------- structure
def _not_staged(arch: str, why: str) -> ConfigError:
    return ConfigError(
        f"timm/{arch} is not supported: not a CNN with stages ({why}). Supported: timm CNNs "
        f"whose forward is a chain of stages with a global-pooling head, e.g. timm/resnet18, "
        f"timm/efficientnet_b0, timm/convnext_tiny, timm/mobilenetv3_small_100, timm/regnetx_002"
    )


def _chain(model: nn.Module, feature_modules: list[str], arch: str) -> list[tuple[str, nn.Module]]:
    """The model's children in order, opening the plain ``nn.Sequential`` containers that hold a
    feature module so that every feature module is an element."""

    def expand(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
        out: list[tuple[str, nn.Module]] = []
        for child_name, child in module.named_children():
            path = f"{prefix}{child_name}"
            if any(f.startswith(path + ".") for f in feature_modules):
                if type(child) is not nn.Sequential:
                    raise _not_staged(
                        arch, f"stage module inside {type(child).__name__} {path!r}, not a chain"
                    )
                out += expand(path + ".", child)
            else:
                out.append((path, child))
        return out

    return expand("", model)


def _open(modules: list[nn.Module]) -> list[nn.Module]:
    """Open plain ``nn.Sequential`` modules one level (their children become nodes); drop
    ``nn.Identity`` placeholders (e.g. ConvNeXt's ``norm_pre``), which would be empty nodes."""
    out: list[nn.Module] = []
    for module in modules:
        out += list(module) if type(module) is nn.Sequential else [module]
    return [m for m in out if not isinstance(m, nn.Identity)]


def _as_node(modules: list[nn.Module]) -> nn.Module:
    opened = _open(modules)
    return opened[0] if len(opened) == 1 else nn.Sequential(*opened)


def _head_parts(rest: list[tuple[str, nn.Module]]) -> list[nn.Module]:
    """The modules after the last stage in order, with head containers (a module holding the
    ``global_pool``, e.g. timm's ClassifierHead / NormMlpClassifierHead) opened."""
    out: list[nn.Module] = []
    for _, module in rest:
        if not isinstance(module, SelectAdaptivePool2d) and hasattr(module, "global_pool"):
            out += list(module.children())
        else:
            out.append(module)
    return out


def _is_global_pool(module: nn.Module) -> bool:
    return isinstance(module, (SelectAdaptivePool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))


def _is_avg_pool(module: nn.Module) -> bool:
    if isinstance(module, SelectAdaptivePool2d):
        return module.pool_type.lower() in AVG_POOL_TYPES
    return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))


def _is_trivial(module: nn.Module) -> bool:
    return isinstance(module, (nn.Identity, nn.Flatten)) or (
        isinstance(module, nn.Dropout) and module.p == 0
    )


def _as_linear(module: nn.Module) -> nn.Linear | None:
    """``module`` if it is a Linear; the equivalent Linear for a 1x1 conv classifier; else None."""
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
        linear = nn.Linear(module.in_channels, module.out_channels, bias=module.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(module.weight.flatten(1))
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        return linear
    return None


def _is_channel_norm(module: nn.Module) -> bool:
    """A norm over the channels of an NCHW map (BatchNorm2d, timm's LayerNorm2d / RmsNorm2d),
    so it can run per pixel before the pooling; ``nn.LayerNorm`` (last dim) cannot."""
    return type(module).__name__.endswith("Norm2d") or isinstance(module, nn.GroupNorm)


def _split(
    model: nn.Module, arch: str
) -> tuple[list[dict], list[nn.Module], list[list[nn.Module]], list[nn.Module]]:
    """(stage feature_info, stem modules, modules of each stage, head modules after the stage)."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise _not_staged(arch, "timm gives it no feature_info")
    stage_info = [f for f in info if f["reduction"] > 2]
    reductions = [f["reduction"] for f in stage_info]
    if len(stage_info) < 2 or any(a >= b for a, b in itertools.pairwise(reductions)):
        raise _not_staged(arch, f"feature_info reductions {[f['reduction'] for f in info]}")
    chain = _chain(model, [f["module"] for f in stage_info], arch)
    names = [name for name, _ in chain]
    missing = [f["module"] for f in stage_info if f["module"] not in names]
    if missing:
        raise _not_staged(arch, f"stage modules {missing} are nested inside blocks")
    ends = [names.index(f["module"]) for f in stage_info]
    if ends[0] == 0:
        raise _not_staged(arch, "no stem before the first stage")
    modules = [m for _, m in chain]
    starts = [ends[0], *(end + 1 for end in ends[:-1])]
    stages = [modules[start : end + 1] for start, end in zip(starts, ends, strict=True)]
    return stage_info, modules[: ends[0]], stages, _head_parts(chain[ends[-1] + 1 :])


def _adapt(
    model: nn.Module, arch: str, num_classes: int, cam_head: bool, default_input_size: int
) -> TimmStagedModel:
    drop_rate = float(getattr(model, "drop_rate", 0.0) or 0.0)
    if drop_rate > 0:
        raise ConfigError(
            f"timm/{arch}: classifier dropout (drop_rate={drop_rate}) is not supported, the "
            f"adapted head is GAP + Linear; pass drop_rate=0 (drop_path_rate is fine)"
        )
    stage_info, stem_modules, stage_modules, head = _split(model, arch)
    pool_at = next((i for i, m in enumerate(head) if _is_global_pool(m)), None)
    if pool_at is None:
        raise _not_staged(arch, "no global pooling before the classifier")
    pool, post = head[pool_at], head[pool_at + 1 :]
    if not _is_avg_pool(pool):
        raise ConfigError(
            f"timm/{arch}: global pooling {getattr(pool, 'pool_type', pool)!r} is not average "
            f"pooling, which CAM and the GAP + Linear head need; pass global_pool='avg'"
        )
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in post):
        raise ConfigError(f"timm/{arch}: head dropout is not supported (GAP + Linear head)")
    stem = _as_node(stem_modules)
    stage_modules[-1] += head[:pool_at]  # pre-pooling feature layers end the last stage

    # Check the split: stem, stages, GAP and the post-pooling layers must reproduce timm's forward.
    model.eval()
    size = default_input_size
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            reference = model(x)
            outputs = [h := stem(x)]
            for modules in stage_modules:
                for module in modules:
                    h = module(h)
                outputs.append(h)
            pooled = pool(h)
            unflatten = [nn.Unflatten(1, (pooled.shape[1], 1, 1))] if pooled.dim() == 4 else []
            exact_head = nn.Sequential(*unflatten, *post)
            logits = exact_head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))
        except (RuntimeError, AssertionError, ValueError, TypeError) as err:
            raise _not_staged(arch, f"running its modules in order failed: {err}") from err
    for feature, out in zip(stage_info[:-1], outputs[1:-1], strict=True):
        if out.dim() != 4 or out.shape[1] != feature["num_chs"]:
            raise _not_staged(arch, f"{feature['module']} gives {tuple(out.shape)}, not NCHW")
    tolerance = 1e-4 * max(1.0, reference.abs().max().item())
    if logits.shape != reference.shape or not torch.allclose(logits, reference, 1e-4, tolerance):
        raise _not_staged(arch, "its forward is not the chain of its modules, pooling and head")

    core = [m for m in post if not _is_trivial(m)]
    fc = _as_linear(core[0]) if len(core) == 1 else None
    moved_norm = (
        fc is None
        and cam_head
        and len(core) == 2
        and pooled.dim() == 4
        and _is_channel_norm(core[0])
        and _as_linear(core[1]) is not None
    )
    if moved_norm:
        stage_modules[-1].append(core[0])  # per-pixel norm before GAP (a different function)
        fc = _as_linear(core[1])
    if fc is None:  # keep timm's post-pooling layers: exact, but no GAP + Linear head for CAM
        fc = exact_head
    stages = {f"stage{i + 1}": _as_node(modules) for i, modules in enumerate(stage_modules)}
    adapted = TimmStagedModel(
        stem, stages, fc, num_classes, default_input_size, arch, matches_timm_forward=not moved_norm
    )
    return adapted.train()
