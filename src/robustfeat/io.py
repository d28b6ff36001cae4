"""Safe, atomic artifact I/O: weights as safetensors, metadata as JSON, never pickle.

Every write goes to a temporary file in the same directory, is flushed and fsync'ed, then
renamed over the target, so a reader (or a resumed run after kill -9) never sees half a file.
A write that fails (permissions, disk full) is an OutputError naming the file; names that come
from configs pass ``safe_name`` before they become paths, so no config can write outside its
output directory.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save

from .errors import CheckpointError, ConfigError, OutputError
from .reads import MAX_JSON_BYTES, read_text

TMP_SUFFIX = ".tmp"  # temp files of atomic writes are ".<name>.<random>.tmp" next to the target


def current_umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open honours umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
        raise


def safe_name(name: object, what: str) -> str:
    """``name`` if it can be one file or directory name inside an output directory.

    Names from configs and recipes (bench cells, run names) become paths; one that is empty,
    hidden, ``..``, absolute or holds a separator could write outside the output directory.
    """
    if (
        not isinstance(name, str)
        or not name
        or name != name.strip()
        or name.startswith(".")
        or any(ch in name for ch in "/\\\0")
    ):
        raise ConfigError(
            f"{what} {name!r} must be a plain name: non-empty, no '/', '\\' or NUL, "
            "no leading '.' or surrounding spaces"
        )
    return name


def json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def finite_or_none(obj: Any) -> Any:
    """Replace NaN/inf floats (not valid JSON) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (no NaN tokens); tensors and paths converted."""
    return json.dumps(finite_or_none(obj), indent=indent, default=json_default, allow_nan=False)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, dumps(obj, indent=2).encode() + b"\n")


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    try:
        return json.loads(read_text(path, max_bytes))
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupt?): {err}") from err
    except ValueError as err:  # over the limit
        raise CheckpointError(str(err)) from err


def nonfinite_keys(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def _some(keys: list[str]) -> str:
    return f"{keys[:5]}{' ...' if len(keys) > 5 else ''}"


def save_tensors(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    check_finite: bool = True,
) -> None:
    """Atomically write tensors as safetensors (contiguous CPU copies). NaN/inf values are
    refused unwritten (a CheckpointError): weights that are wrong are never written as if right.
    """
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    bad = nonfinite_keys(plain) if check_finite else []
    if bad:
        raise CheckpointError(
            f"not writing {path}: NaN/inf values in {_some(bad)} (the training diverged)"
        )
    atomic_write_bytes(path, st_save(plain, metadata=metadata))


MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK")


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size before anything
    else is read: a pickle is refused unread, and a header or tensor data larger than the file
    (or a file larger than its tensors: a sparse multi-GB file) is a CheckpointError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if head[:2] in _PICKLE_MAGIC:
                raise CheckpointError(
                    f"{path} is a pickle / torch.save file; robustfeat only loads safetensors "
                    "(pickles can run code when loaded). Convert it with "
                    "safetensors.torch.save_file."
                )
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{path} is not a valid safetensors file (truncated or corrupt?): header "
                    f"size {length} does not fit the file's {size} bytes"
                )
            header = json.loads(f.read(length))
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a valid safetensors file: bad header") from err
    ends = [
        entry.get("data_offsets", [0, 0])[1]
        for key, entry in (header.items() if isinstance(header, dict) else [])
        if key != "__metadata__" and isinstance(entry, dict)
    ]
    if not isinstance(header, dict) or not all(isinstance(e, int) for e in ends):
        raise CheckpointError(f"{path} is not a valid safetensors file: bad header")
    if 8 + length + max(ends, default=0) != size:
        raise CheckpointError(
            f"{path} is not a valid safetensors file (truncated or corrupt?): its header "
            f"declares {max(ends, default=0)} bytes of tensors, the file holds "
            f"{size - 8 - length}"
        )
    return header


def load_tensors(path: Path, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """Read a safetensors file; missing, truncated, corrupt or non-finite: a CheckpointError.

    Only safetensors is accepted: a pickle (e.g. a ``.pt`` from elsewhere) is refused unread,
    and the header is checked against the file's size before the tensors are read.
    """
    path = Path(path)
    read_safetensors_header(path)
    try:
        tensors = st_load_file(path)
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a valid safetensors file (truncated or corrupt?): {err}"
        ) from err
    bad = nonfinite_keys(tensors) if check_finite else []
    if bad:
        raise CheckpointError(f"{path} holds NaN/inf values in {_some(bad)}")
    return tensors


def load_state_into(
    module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: Path | str
) -> None:
    """Load a state dict, turning a mismatch into one clear CheckpointError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    # load_state_dict would cast silently: int or bool "weights" are not the model's
    dtypes = [k for k in own if k in tensors and own[k].dtype != tensors[k].dtype]
    if missing or unexpected or wrong or dtypes:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatch(es), e.g. {k}: "
                f"file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
            )
        if dtypes:
            k = dtypes[0]
            parts.append(
                f"{len(dtypes)} dtype mismatch(es), e.g. {k}: "
                f"file {tensors[k].dtype} vs model {own[k].dtype}"
            )
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        raise CheckpointError(
            f"{source} does not fit this model (wrong architecture or classes?): "
            + "; ".join(parts)
        )
    module.load_state_dict(tensors)


# ---------------------------------------------------------------- optimizer state
def optimizer_to_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into safetensors-able tensors and a JSON-able rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], rest: dict[str, Any]
) -> None:
    """Restore what ``optimizer_to_tensors`` saved; state that does not fit this optimizer's
    parameters (unknown ids, other shapes) is a CheckpointError, not a failure steps later."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, _, key = name.partition(".")
        if not (pid.isdigit() and key and int(pid) < len(params)):
            raise CheckpointError(
                f"optimizer state does not fit this run: entry {name!r} "
                f"(this optimizer has {len(params)} parameters)"
            )
        if value.ndim and value.shape != params[int(pid)].shape:
            raise CheckpointError(
                f"optimizer state does not fit this run: {name} has shape {tuple(value.shape)}, "
                f"its parameter {tuple(params[int(pid)].shape)}"
            )
        state.setdefault(int(pid), {})[key] = value
    for pid, entries in rest.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"optimizer state does not fit this run: {err}") from err
