"""The package's layering (issue 34): evaluation never loads the training loop; the layers
below the methods (nn, models, data, and the neutral runtime / losses) never load the methods."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(modules: list[str]) -> set[str]:
    """The robustfeat modules a fresh interpreter holds after importing ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('robustfeat'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout))


def test_evaluation_never_loads_the_training_loop():
    loaded = loaded_after(["robustfeat.evaluate", "robustfeat.runs", "robustfeat.attacks.suites"])
    assert "robustfeat.evaluate" in loaded and "robustfeat.train" not in loaded


@pytest.mark.parametrize(
    "layer",
    [
        "robustfeat.nn",
        "robustfeat.models",
        "robustfeat.data",
        "robustfeat.runtime",
        "robustfeat.losses",
    ],
)
def test_lower_layers_never_load_the_methods(layer):
    loaded = loaded_after([layer])
    assert layer in loaded and not any(m.startswith("robustfeat.methods") for m in loaded)
