import os

import pytest
import torch

# Tests are small; two threads per process keeps them predictable on the 2-core CI machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dataset caches of tests go to a temp dir, never the user's cache."""
    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
