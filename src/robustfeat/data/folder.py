"""``folder:PATH`` and ``zip:PATH``: ImageFolder trees (plain or zipped) decoded once and cached.

Layout: ``PATH/<class>/<image>`` (the tree serves whichever split is asked for, recorded as
``meta["whole_tree"]``), or ``PATH/train/<class>/...`` plus ``PATH/test/<class>/...`` (one per
split). A zip may wrap the tree in one top-level folder. Every non-hidden file inside a class
folder must be an image; all images must have one size, unless ``size=H,W`` resizes them on load
(bilinear); they are converted to RGB.

The first load decodes with PIL (a process pool for large trees) under a progress bar and
writes a uint8 cache (safetensors + JSON sidecar with the class names, never pickle) to
``$ROBUSTFEAT_CACHE`` or ``~/.cache/robustfeat``, keyed by the absolute path, size and mtime
of the source, the split and the resize. Later loads read the cache. Writes are atomic (temp
file + rename).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import DataError, check
from ..progress import progress_task
from ..reads import MAX_JSON_BYTES, read_bytes, read_text
from ._registry import SPLITS, register_path_form
from .base import ImageDataset

CACHE_VERSION = 1
_CHUNK = 1000  # files per decoding task
_POOL_MIN_FILES = 2000  # below this, decoding in-process beats starting a pool
# Input bounds, checked before reading: a file's size (a zip member's from its header, so a
# zip bomb is refused unread) and an image's pixel count (from its header, before decoding).
MAX_FILE_BYTES = 256 * 2**20
MAX_IMAGE_PIXELS = 2**26
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def available_cpus() -> int:
    """The cores this process may run on (its affinity mask; the machine's count elsewhere)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cache_dir() -> Path:
    """Where decoded datasets are cached: env ``ROBUSTFEAT_CACHE`` or ``~/.cache/robustfeat``."""
    env = os.environ.get("ROBUSTFEAT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "robustfeat"


@register_path_form(name="folder")
def load_folder(
    path: str,
    split: str,
    *,
    root: str | None = None,
    download: bool = False,
    workers: int = 2,
    progress: bool = True,
    size: int | str | list[int] | None = None,
) -> ImageDataset:
    """An ImageFolder tree on disk (``root``/``download`` are ignored; ``size``: see
    ``image_size``)."""
    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise DataError(f"folder:{path}: {source} does not exist")
    if not source.is_dir():
        raise DataError(f"folder:{path}: {source} is not a directory (a zip loads as zip:PATH)")
    files: list[str] = []
    dirs: set[str] = set()
    stats = hashlib.sha256()  # any added, removed, resized or touched file changes the cache key
    for entry in sorted(source.rglob("*")):
        relative = entry.relative_to(source).as_posix()
        if entry.is_dir():
            dirs.add(relative)
        elif entry.is_file():
            stat = entry.stat()
            files.append(relative)
            stats.update(f"{relative}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    fingerprint = stats.hexdigest()
    return _load_tree(
        "folder", source, fingerprint, split, workers, progress, lambda: (files, dirs), size
    )


@register_path_form(name="zip")
def load_zip(
    path: str,
    split: str,
    *,
    root: str | None = None,
    download: bool = False,
    workers: int = 2,
    progress: bool = True,
    size: int | str | list[int] | None = None,
) -> ImageDataset:
    """An ImageFolder tree inside a zip file (``root``/``download`` are ignored; ``size``: see
    ``image_size``)."""
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise DataError(f"zip:{path}: {source} does not exist or is not a file")

    def listing() -> tuple[list[str], set[str]]:
        try:
            with zipfile.ZipFile(source) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            raise DataError(f"zip:{path}: {source} is not a readable zip file ({err})") from err
        files = sorted(n for n in names if not n.endswith("/"))
        dirs = {n.rstrip("/") for n in names if n.endswith("/")}
        for f in files:  # folders implied by the member names
            parts = f.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        return files, dirs

    stat = source.stat()
    fingerprint = f"{stat.st_size}|{stat.st_mtime_ns}"
    return _load_tree("zip", source, fingerprint, split, workers, progress, listing, size)


# ------------------------------------------------------------------ layout
def _hidden(relpath: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in relpath.split("/"))


def _children(dirs: Iterable[str], prefix: str) -> list[str]:
    """Immediate sub-folder names of ``prefix`` ("" is the top)."""
    depth = prefix.count("/")
    return sorted(
        d.split("/")[depth]
        for d in dirs
        if d.startswith(prefix) and d.count("/") == depth and not _hidden(d)
    )


def _class_files(
    files: list[str], dirs: set[str], split: str, where: str
) -> tuple[list[str], list[list[str]], bool]:
    """(class names, files per class, whole_tree) of one split of an ImageFolder tree."""
    prefix = ""
    # Descend through a single wrapper folder (``cifar10/train/...`` inside a zip).
    while True:
        kids = _children(dirs, prefix)
        loose = [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :]]
        if (
            len(kids) != 1
            or loose
            or kids[0] in SPLITS
            or not _children(dirs, prefix + kids[0] + "/")
        ):
            break
        prefix += kids[0] + "/"
    whole_tree = not set(SPLITS) <= set(kids)
    if not whole_tree:
        prefix += split + "/"
    classes = _children(dirs, prefix)
    if not classes:
        layout = "<class>/<image> or train/<class>/<image> and test/<class>/<image>"
        raise DataError(
            f"{where}: no class folders in {prefix or 'the top level'}; expected {layout}"
        )
    members: dict[str, list[str]] = {name: [] for name in classes}
    for f in files:
        name, sep, _ = f[len(prefix) :].partition("/")
        if f.startswith(prefix) and sep and name in members and not _hidden(f):
            members[name].append(f)
    for name, found in members.items():
        if not found:
            raise DataError(f"{where}: class folder {prefix}{name}/ has no image files")
    return classes, list(members.values()), whole_tree


# ------------------------------------------------------------------ decoding
class _Reader:
    """Reads member files of a folder or zip; a zip is opened once per process."""

    def __init__(self, kind: str, source: Path) -> None:
        self.kind, self.source = kind, source
        self.archive = zipfile.ZipFile(source) if kind == "zip" else None

    def shown(self, name: str) -> str:
        return _shown(self.kind, self.source, name)

    def read(self, name: str) -> bytes:
        if self.archive:
            size = self.archive.getinfo(name).file_size
        else:
            size = (self.source / name).stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataError(
                f"{self.shown(name)} is {size} bytes{' uncompressed' if self.archive else ''}, "
                f"over the {MAX_FILE_BYTES}-byte limit for one image file"
            )
        return (
            self.archive.read(name)
            if self.archive
            else read_bytes(self.source / name, MAX_FILE_BYTES)
        )

    def close(self) -> None:
        if self.archive:
            self.archive.close()


def image_size(size: int | str | list[int] | None) -> tuple[int, int] | None:
    """``size`` (``--data-arg size=32`` or ``size=32,48`` or ``[32, 48]``: height, width) as
    (H, W); every image is resized to it on load (bilinear), so mixed sizes are accepted."""
    if size is None:
        return None
    parts = [size] if isinstance(size, int) else size
    if isinstance(parts, str):
        parts = [p.strip() for p in parts.split(",")]
    try:
        hw = [int(p) for p in parts]
    except (TypeError, ValueError):
        hw = []
    if len(hw) == 1:
        hw *= 2
    if len(hw) != 2 or not all(1 <= v <= 4096 for v in hw):
        raise DataError(f"size must be H or H,W in pixels (1 to 4096), got {size!r}")
    return hw[0], hw[1]


def _decode_chunk(
    reader: _Reader, names: list[str], size: tuple[int, int] | None = None
) -> tuple[tuple[int, int], bytes]:
    """Decode files to RGB uint8 (resized to ``size``, (H, W), if given); returns ((H, W),
    stacked pixel bytes)."""
    arrays, first = [], None
    for name in names:
        data = reader.read(name)
        try:
            with Image.open(io.BytesIO(data)) as image:
                array = _rgb_pixels(image, reader.shown(name))
            if size is not None and array.shape[:2] != size:
                resized = Image.fromarray(array).resize(size[::-1], Image.Resampling.BILINEAR)
                array = np.asarray(resized)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise DataError(f"{reader.shown(name)} is not a readable image ({err})") from None
        except Image.DecompressionBombError:
            raise DataError(_too_large(reader.shown(name))) from None
        if first is None:
            first = (reader.shown(name), array.shape)
        elif array.shape != first[1]:
            raise DataError(_mixed_sizes(reader.shown(name), array.shape, *first))
        arrays.append(array)
    return first[1][:2], np.stack(arrays).tobytes()


def _too_large(shown: str, size: tuple[int, int] | None = None) -> str:
    dims = f" ({size[0]}x{size[1]})" if size else ""
    return f"{shown} has more than {MAX_IMAGE_PIXELS} pixels{dims}; refused before decoding"


def _rgb_pixels(image: Image.Image, shown: str) -> np.ndarray:
    """An opened image as (H, W, 3) uint8, its pixel count bounded before decoding. 16-bit
    images are scaled to 8 bits (PIL's convert("RGB") would clip them at 255); other
    high-depth modes, whose range the file does not say, are refused."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(_too_large(shown, image.size))
    if image.mode in _SIXTEEN_BIT or (image.mode == "I" and image.format == "PNG"):
        wide = np.asarray(image).astype(np.uint32)
        eight = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(eight[:, :, None], 3, axis=2)
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        raise DataError(
            f"{shown} has {image.mode} pixels (32-bit or float), whose range is unknown; "
            "convert it to 8-bit or 16-bit first"
        )
    return np.asarray(image.convert("RGB"))


_WORKER_READER: _Reader | None = None  # set in each pool worker by _init_worker


_WORKER_SIZE: tuple[int, int] | None = None


def _init_worker(kind: str, source: Path, size: tuple[int, int] | None) -> None:
    global _WORKER_READER, _WORKER_SIZE
    _WORKER_READER, _WORKER_SIZE = _Reader(kind, source), size


def _decode_in_worker(names: list[str]) -> tuple[tuple[int, int], bytes]:
    assert _WORKER_READER is not None
    return _decode_chunk(_WORKER_READER, names, _WORKER_SIZE)


def _shown(kind: str, source: Path, name: str) -> str:
    """How a member file is named in messages."""
    return f"{source}:{name}" if kind == "zip" else str(source / name)


def _mixed_sizes(
    file: str, shape: tuple[int, ...], ref_file: str, ref_shape: tuple[int, ...]
) -> str:
    return (
        f"images have mixed sizes: {file} is {shape[1]}x{shape[0]} but {ref_file} is "
        f"{ref_shape[1]}x{ref_shape[0]} (width x height); resize them to one size first, or "
        "load them resized with --data-arg size=H,W"
    )


def _decode_all(
    kind: str,
    source: Path,
    names: list[str],
    workers: int,
    progress: bool,
    label: str,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """All files as one uint8 tensor (N, 3, H, W), in the order of ``names``."""
    chunks = [names[i : i + _CHUNK] for i in range(0, len(names), _CHUNK)]
    results: list[tuple[tuple[int, int], bytes]] = []
    if workers > 1 and len(names) >= _POOL_MIN_FILES:
        # fork starts workers without re-importing torch. ProcessPoolExecutor launches all fork
        # workers at the first submit, before the progress bar starts its refresh thread.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_init_worker,
            initargs=(kind, source, size),
        ) as pool:
            futures = [pool.submit(_decode_in_worker, chunk) for chunk in chunks]
            with progress_task(label, len(names), enabled=progress) as advance:
                for chunk, future in zip(chunks, futures, strict=True):
                    results.append(future.result())
                    advance(len(chunk))
    else:
        reader = _Reader(kind, source)
        try:
            with progress_task(label, len(names), enabled=progress) as advance:
                for chunk in chunks:
                    results.append(_decode_chunk(reader, chunk, size))
                    advance(len(chunk))
        finally:
            reader.close()
    (height, width), _ = results[0]
    for chunk, ((h, w), _) in zip(chunks, results, strict=True):
        if (h, w) != (height, width):
            first = _shown(kind, source, names[0])
            raise DataError(
                _mixed_sizes(_shown(kind, source, chunk[0]), (h, w), first, (height, width))
            )
    pixels = np.frombuffer(b"".join(blob for _, blob in results), dtype=np.uint8)
    return torch.from_numpy(pixels.reshape(len(names), height, width, 3).copy()).permute(0, 3, 1, 2)


# ------------------------------------------------------------------ cache
def _cache_paths(
    kind: str, source: Path, split: str, fingerprint: str, size: tuple[int, int] | None = None
) -> tuple[Path, Path, str]:
    resized = "" if size is None else f"|{size[0]}x{size[1]}"  # unresized keys stay as they were
    key_text = f"v{CACHE_VERSION}|{kind}|{source}|{fingerprint}|{split}{resized}"
    key = hashlib.sha256(key_text.encode()).hexdigest()
    stem = f"{kind}-{source.name.replace('.', '_')}-{split}-{key[:16]}"
    directory = cache_dir()
    return directory / f"{stem}.safetensors", directory / f"{stem}.json", key


def _read_cache(tensors_path: Path, sidecar_path: Path, key: str) -> tuple[dict, dict] | None:
    """The cached tensors and sidecar, or None when absent, stale or unreadable (re-decode)."""
    if not (tensors_path.is_file() and sidecar_path.is_file()):
        return None
    try:
        sidecar = json.loads(read_text(sidecar_path, MAX_JSON_BYTES))
        tensors = load_file(tensors_path)
    except (OSError, ValueError, SafetensorError):
        return None
    if sidecar.get("key") != key or tensors["labels"].shape[0] != sidecar.get("count"):
        return None
    return tensors, sidecar


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_tree(
    kind: str,
    source: Path,
    fingerprint: str,
    split: str,
    workers: int,
    progress: bool,
    listing: Callable[[], tuple[list[str], set[str]]],
    size: int | str | list[int] | None = None,
) -> ImageDataset:
    """Read the cache of (source, split, size) or decode the tree and write the cache."""
    hw = image_size(size)
    check(
        isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1,
        f"workers must be an integer >= 1, got {workers!r}",
    )
    workers = min(workers, available_cpus())  # more decoders than cores only adds processes
    where = f"{kind}:{source}"
    tensors_path, sidecar_path, key = _cache_paths(kind, source, split, fingerprint, hw)
    cached = _read_cache(tensors_path, sidecar_path, key)
    if cached is None:
        files, dirs = listing()
        classes, per_class, whole_tree = _class_files(files, dirs, split, where)
        names = [f for members in per_class for f in members]
        labels = torch.cat(
            [torch.full((len(m),), k, dtype=torch.int64) for k, m in enumerate(per_class)]
        )
        label = f"decoding {source.name} [{split}] (once, then cached)"
        images = _decode_all(kind, source, names, workers, progress, label, hw).contiguous()
        sidecar = {
            "key": key,
            "source": where,
            "split": split,
            "whole_tree": whole_tree,
            "count": len(names),
            "class_names": classes,
        }
        try:
            tensors_path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(
                tensors_path, lambda p: save_file({"images": images, "labels": labels}, p)
            )
            _write_atomic(sidecar_path, lambda p: p.write_text(json.dumps(sidecar, indent=1)))
        except OSError as err:
            raise DataError(
                f"cannot write the dataset cache {tensors_path}: {err.strerror or err}; set "
                "ROBUSTFEAT_CACHE to a writable directory"
            ) from err
    else:
        tensors, sidecar = cached
        images, labels = tensors["images"], tensors["labels"]
    return ImageDataset(
        images=images,
        labels=labels,
        num_classes=len(sidecar["class_names"]),
        class_names=sidecar["class_names"],
        name=source.stem,
        meta={
            "source": where,
            "split": split,
            "whole_tree": sidecar["whole_tree"],
            "cache": str(tensors_path),
        },
    )
