import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

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
def benchmark_script() -> Callable[[str], ModuleType]:
    """Loader of a script in benchmarks/ (not a package) by its name, as a module."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
