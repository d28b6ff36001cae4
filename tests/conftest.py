import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

# Test models are tiny: one thread per process is faster than two (thread sync dominates) and
# lets pytest-xdist run one worker per core.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dataset caches of tests go to a temp dir, never the user's cache."""
    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def robustfeat_cli():
    """``robustfeat ARGS`` in a fresh interpreter, in directory ``cwd``, with this checkout's src
    (after any ``pythonpath`` entries) on PYTHONPATH; one torch thread."""
    src = Path(__file__).resolve().parents[1] / "src"

    def run(
        args: list[str], cwd: Path, pythonpath: Sequence[Path] = ()
    ) -> subprocess.CompletedProcess:
        path = os.pathsep.join(str(p) for p in [*pythonpath, src])
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
        return subprocess.run(
            [sys.executable, "-m", "robustfeat", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run


@pytest.fixture
def benchmark_script() -> Callable[[str], ModuleType]:
    """Loader of a script in benchmarks/ (not a package) by its name, as a module."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


# The same checks on every device: ``cpu`` always; ``cuda`` (marked ``cuda``: ``pytest -m cuda``
# runs only those, benchmarks/gpu_check.py does) where a CUDA device is present, else skipped.
CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ],
)
DEVICES = ["cpu", CUDA]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def tiny_resnet_config() -> Callable[..., Any]:
    """A width-4 ResNet-20 on ``shapes`` for one epoch, batch 32, quiet; keyword overrides."""
    from robustfeat.config import make_config

    base = {
        "model": "resnet20",
        "model_args": {"width": 4},
        "data": "shapes",
        "batch_size": 32,
        "epochs": 1,
        "progress": False,
    }
    return lambda **overrides: make_config(base, overrides)
