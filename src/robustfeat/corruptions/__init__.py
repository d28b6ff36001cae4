"""Common corruptions (CIFAR-10-C / CIFAR-100-C): generate or load, evaluate, mCE.

- ``generate(images, name, severity, seed)``: one corruption of a uint8 batch (see
  ``functional`` for the implementation and its documented deviations from the original script).
- ``generated_sets(dataset, seed, cache_dir)``: all 15 x 5 sets for a dataset, deterministic by
  seed and cached as uint8 safetensors (one file per corruption) under the cache directory.
- ``load_released(directory, name)``: the released ``<name>.npy`` (50,000 x 32 x 32 x 3 uint8,
  severities 1-5 stacked) and ``labels.npy``, read without pickle.
- metrics: ``cifar_mce`` (plain mean error over corruptions and severities, as the AugMix and
  TENET tables report it) and ``normalized_mce`` (ImageNet-C's CE: per corruption the summed
  error over severities divided by a reference model's, e.g. AlexNet; then the mean).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import io
from ..data import cache_dir
from ..data.base import ImageDataset
from ..errors import CheckpointError, ConfigError, DataError
from ..runtime import model_mode
from .functional import CORRUPTIONS, SEVERITIES

GENERATOR_VERSION = "1"  # bump when the generated images change


def list_corruptions() -> list[str]:
    return list(CORRUPTIONS)


def _check(name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ConfigError(f"severity must be one of {SEVERITIES}, got {severity!r}")


def generate(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt a uint8 batch (N, C, H, W) -> uint8 (N, C, H, W); the same (images, name,
    severity, seed) give the same output everywhere. Grey images are corrupted as RGB and
    averaged back."""
    _check(name, severity)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(
            f"corruptions need uint8 (N, 1 or 3, H, W) images, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        return images.clone()
    grey = images.shape[1] == 1
    x = images.expand(-1, 3, -1, -1) if grey else images
    array = x.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255.0
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(name), severity])
    out = CORRUPTIONS[name](array, severity, rng)
    out = torch.from_numpy(np.uint8(np.clip(out, 0, 255))).permute(0, 3, 1, 2).contiguous()
    return out.float().mean(1, keepdim=True).round().to(torch.uint8) if grey else out


def _cache_key(images: torch.Tensor, seed: int) -> str:
    digest = hashlib.sha256(images.contiguous().numpy().tobytes())
    digest.update(f"{tuple(images.shape)}/{seed}/{GENERATOR_VERSION}".encode())
    return digest.hexdigest()[:16]


def generated_set(
    images: torch.Tensor, name: str, seed: int = 0, cache: Path | None = None
) -> torch.Tensor:
    """All five severities of one corruption, uint8 (5, N, C, H, W), cached on disk."""
    path = None
    if cache is not None:
        path = cache / "corruptions" / _cache_key(images, seed) / f"{name}.safetensors"
        if path.exists():
            try:
                return io.load_tensors(path)["images"]
            except (CheckpointError, KeyError):  # a damaged cache entry is regenerated
                path.unlink(missing_ok=True)
    out = torch.stack([generate(images, name, s, seed) for s in SEVERITIES])
    if path is not None:
        io.save_tensors(
            path,
            {"images": out},
            metadata={"corruption": name, "seed": str(seed), "version": GENERATOR_VERSION},
        )
    return out


def load_released(
    directory: str | Path, name: str, index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A released CIFAR-10-C / CIFAR-100-C corruption: uint8 (5, N, 3, H, W) and all N labels;
    with ``index``, only those images (read from a memory map, never the whole file)."""
    directory = Path(directory)
    files = {"images": directory / f"{name}.npy", "labels": directory / "labels.npy"}
    for path in files.values():
        if not path.is_file():
            raise DataError(
                f"{path} not found: a CIFAR-10-C / CIFAR-100-C directory holds <corruption>.npy "
                "files and labels.npy"
            )
    try:
        images = np.load(files["images"], mmap_mode="r", allow_pickle=False)
        labels = np.load(files["labels"], allow_pickle=False)
    except ValueError as err:
        raise DataError(f"cannot read {files['images']}: {err}") from err
    if (
        images.ndim != 4
        or images.shape[0] % 5
        or images.shape[-1] != 3
        or len(labels) != len(images)
    ):
        raise DataError(
            f"{files['images']} has shape {images.shape} (labels {labels.shape}); expected "
            "(5 * N, H, W, 3) with one label per image"
        )
    n = images.shape[0] // 5
    per_severity = images.reshape(5, n, *images.shape[1:])
    labels = labels[:n]
    if index is not None:
        per_severity = per_severity[:, index.numpy()]
    tensor = torch.from_numpy(np.array(per_severity)).permute(0, 1, 4, 2, 3).contiguous()
    return tensor, torch.from_numpy(labels.astype(np.int64))


# ------------------------------------------------------------------ metrics
def cifar_mce(errors: Mapping[str, list[float]]) -> float:
    """CIFAR mCE: the plain mean error over corruptions and severities (AugMix / TENET tables)."""
    return float(np.mean([np.mean(v) for v in errors.values()]))


def normalized_mce(
    errors: Mapping[str, list[float]], reference: Mapping[str, list[float]]
) -> float:
    """ImageNet-C mCE (Hendrycks & Dietterich 2019): mean over corruptions of
    sum_s E_{s,c} / sum_s E^ref_{s,c}, the reference usually AlexNet."""
    missing = sorted(set(errors) - set(reference))
    if missing:
        raise ConfigError(f"reference errors missing for {missing}")
    return float(np.mean([np.sum(errors[c]) / np.sum(reference[c]) for c in errors]))


@torch.no_grad()
def _errors(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    wrong = 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device).float().div_(255)
        wrong += (model(x).argmax(1).cpu() != labels[start : start + batch_size]).sum().item()
    return wrong / max(images.shape[0], 1)


def evaluate_corruptions(
    model: nn.Module,
    test: ImageDataset,
    n: int | None = 1000,
    source_dir: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 250,
    reference: Mapping[str, list[float]] | None = None,
    progress: bool = False,
    cache: Path | bool | None = True,
) -> dict[str, Any]:
    """Errors per corruption and severity on the first ``n`` of a seeded permutation of the test
    set (released files: of their own images), CIFAR mCE, and the normalised mCE if
    ``reference`` errors are given. ``cache``: True for ``cache_dir()``, a path, or False."""
    cache_path = cache_dir() if cache is True else (cache or None)
    start = time.perf_counter()
    if source_dir is None:
        size = len(test) if n is None else min(n, len(test))
        index = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:size]
        images, labels = test.images[index], test.labels[index]
        source = "generated"
    else:
        all_labels = load_released(
            source_dir, next(iter(CORRUPTIONS)), torch.zeros(0, dtype=torch.long)
        )[1]
        size = len(all_labels) if n is None else min(n, len(all_labels))
        index = torch.randperm(len(all_labels), generator=torch.Generator().manual_seed(seed))[
            :size
        ]
        labels = all_labels[index]
        source = f"released:{source_dir}"
    per_corruption: dict[str, list[float]] = {}
    gen_seconds = 0.0
    with model_mode(model, "eval"):
        clean_error = _errors(model, images, labels, batch_size) if source_dir is None else None
        for name in CORRUPTIONS:
            t0 = time.perf_counter()
            if source_dir is None:
                sets = generated_set(images, name, seed, cache_path)
            else:
                sets = load_released(source_dir, name, index)[0]
            gen_seconds += time.perf_counter() - t0
            per_corruption[name] = [
                _errors(model, sets[s], labels, batch_size) for s in range(len(SEVERITIES))
            ]
            if progress:
                from rich.console import Console

                Console(stderr=True).log(
                    f"corruption {name}: errors {np.round(per_corruption[name], 3).tolist()}"
                )
    out: dict[str, Any] = {
        "source": source,
        "n": size,
        "seed": seed,
        "mce": cifar_mce(per_corruption),
        "per_corruption": per_corruption,
        "per_severity": [
            float(np.mean([v[s] for v in per_corruption.values()])) for s in range(len(SEVERITIES))
        ],
        "clean_error": clean_error,
        "seconds": time.perf_counter() - start,
        "seconds_generate_or_load": gen_seconds,
    }
    if reference is not None:
        out["normalized_mce"] = normalized_mce(per_corruption, reference)
    return out
