"""Where a result came from: git SHA, package versions, machine."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .reads import read_text
from .runtime import native_cpu_bf16

CPUINFO_MAX_BYTES = 4 * 2**20  # /proc/cpuinfo: ~1.5 KiB per logical CPU
PACKAGES = (
    "robustfeat",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "torchattacks",
    "grad-cam",
    "safetensors",
)


@lru_cache(maxsize=1)
def git_sha() -> str:
    """HEAD of the repository this package runs from ("+dirty" if tracked files changed)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["torch"] = torch.__version__  # the build actually imported
    return out


def _cpu_model() -> str:
    try:
        for line in read_text(Path("/proc/cpuinfo"), CPUINFO_MAX_BYTES).splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, ValueError):  # unreadable, or over the bound / not UTF-8
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": native_cpu_bf16(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def provenance() -> dict[str, Any]:
    return {"git_sha": git_sha(), "versions": versions(), "machine": machine()}
