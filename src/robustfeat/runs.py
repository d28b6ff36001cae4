"""Rebuild a trained Method from a run directory (config.yaml + weights.safetensors).

Only safetensors weights are read (``robustfeat.io.load_tensors``). The number of classes is
taken, in order, from the caller, from the weights' metadata, or from the weight shapes (a
throw-away copy of the method is built with 2 classes and every tensor whose size differs in
the file gives the class count).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from . import io
from .config import TrainConfig, make_config, read_yaml_document
from .data import DataSplits, ImageDataset
from .errors import CheckpointError, ConfigError, DataError
from .methods import Method, create_method
from .models import create_model
from .provenance import provenance
from .rundir import RunDir


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved training config of a run directory."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {run_dir} is not a robustfeat run directory")
    data = read_yaml_document(path) or {}
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a mapping of config keys")
    return make_config(data)


def weights_path(run_dir: str | Path) -> Path:
    """``weights.safetensors`` (final), else the latest complete checkpoint's weights."""
    run_dir = Path(run_dir)
    final = run_dir / "weights.safetensors"
    if final.is_file():
        return final
    if (run_dir / "state.json").is_file():
        # the checked pointer: it cannot lead outside run_dir
        ckpt = RunDir(run_dir).checkpoint_state()[1] / "weights.safetensors"
        if ckpt.is_file():
            return ckpt
    raise CheckpointError(f"no weights in {run_dir}: neither weights.safetensors nor a checkpoint")


def _build(cfg: TrainConfig, num_classes: int) -> Method:
    model = create_model(cfg.model, num_classes, **cfg.model_args)
    return create_method(cfg.method, model, **cfg.method_args)


def infer_num_classes(cfg: TrainConfig, tensors: dict[str, torch.Tensor]) -> int:
    """The class count the weights were trained with (see the module docstring)."""
    probe = _build(cfg, 2).state_dict()
    votes: Counter[int] = Counter()
    for key, own in probe.items():
        theirs = tensors.get(key)
        if theirs is None or theirs.ndim != own.ndim or tuple(theirs.shape) == tuple(own.shape):
            continue
        votes.update(t for o, t in zip(own.shape, theirs.shape, strict=True) if o == 2 and t != 2)
    return votes.most_common(1)[0][0] if votes else 2


def load_run(
    run_dir: str | Path, num_classes: int | None = None, device: str | torch.device = "cpu"
) -> Method:
    """The trained Method of ``run_dir`` (model + method rebuilt from config.yaml, weights loaded),
    on ``device``, in eval mode."""
    cfg = read_run_config(run_dir)
    path = weights_path(run_dir)
    tensors = io.load_tensors(path)
    if num_classes is None:
        meta = _metadata(path)
        if "num_classes" not in meta:
            num_classes = infer_num_classes(cfg, tensors)
        elif meta["num_classes"].isdigit() and int(meta["num_classes"]) >= 1:
            num_classes = int(meta["num_classes"])
        else:
            raise CheckpointError(
                f"{path}: metadata num_classes must be a positive integer, got "
                f"{meta['num_classes'][:40]!r}"
            )
    try:
        method = _build(cfg, num_classes)
    except TypeError as err:
        raise ConfigError(f"cannot rebuild the method of {run_dir}: {err}") from err
    io.load_state_into(method, tensors, path)
    return method.to(device).eval()


def data_metadata(data: DataSplits) -> dict[str, str]:
    """The final weights' metadata: what data they fit (checked by ``check_data_fits``)."""
    return {
        "format": "robustfeat.method/1",
        "num_classes": str(data.num_classes),
        "class_names": json.dumps(list(data.test.class_names)),
        "image_shape": json.dumps(list(data.test.image_shape)),
    }


def check_data_fits(run_dir: str | Path, test: ImageDataset) -> None:
    """Refuse test data whose classes (by name, in label order) or image shape differ from
    what the run was trained on: its accuracy would be a number about nothing. Runs saved
    before this metadata existed are not checked."""
    path = weights_path(run_dir)
    meta = _metadata(path)
    for key, theirs in (
        ("class_names", list(test.class_names)),
        ("image_shape", list(test.image_shape)),
    ):
        try:
            ours = json.loads(meta[key]) if key in meta else theirs
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: metadata {key} is not valid JSON") from err
        if ours != theirs:
            raise DataError(
                f"{test.name} does not fit {run_dir}: its {key.replace('_', ' ')} "
                f"{shorten(theirs)} differ from the run's {shorten(ours)}"
            )


def shorten(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _metadata(path: Path) -> dict[str, str]:
    meta = io.read_safetensors_header(path).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def run_info(cfg: TrainConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """The ``run`` block of results.json for an evaluated run."""
    return {
        "method": cfg.method,
        "at": cfg.at,
        "model": cfg.model,
        "data": cfg.data,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        **provenance(),
        "config": cfg.to_dict(),
        **({"run_dir": str(run_dir)} if run_dir is not None else {}),
    }


def default_shift_sets(cfg: TrainConfig, n: int) -> dict[str, Any]:
    """Distribution-shift sets a run implies: for ``shapes`` trained with a spurious background
    (spurious_p > 0), fresh images of the biased training distribution (the train split of the
    next render seed, so none was trained on), to compare with its unbiased test set."""
    if cfg.data != "shapes" or cfg.data_args.get("spurious_p", 0) <= 0:
        return {}
    from .data import load_dataset

    options = {
        **cfg.data_args,
        "n_train": n,
        "render_seed": cfg.data_args.get("render_seed", 0) + 1,
    }
    return {"spurious_train_distribution": load_dataset(cfg.data, "train", **options)}
