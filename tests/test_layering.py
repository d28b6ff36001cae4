"""The package's layering (issue 34): evaluation never loads the training loop; the layers
below the methods (nn, models, data, and the neutral runtime / losses) never load the methods;
the modules' import graph has no cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


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
    assert "robustfeat.evaluate" in loaded and "robustfeat.rundir" in loaded
    assert not [m for m in loaded if m == "robustfeat.train" or m.startswith("robustfeat.train.")]


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


def module_files(root: Path) -> dict[str, Path]:
    """Every module under ``root`` (a ``src`` folder) by dotted name; a package by its __init__."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def type_checking_only(tree: ast.Module) -> set[int]:
    """The nodes under ``if TYPE_CHECKING:``: imports for annotations that never run."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that running ``name`` may import: its import statements at module
    level and inside functions (lazy imports), relative ones resolved. ``from P import x`` is an
    edge to the submodule ``P.x`` when there is one, else to ``P`` (a re-export from P's
    __init__); importing ``a.b.c`` also runs the __init__ of ``a.b`` unless the importer lives
    inside it."""
    tree = ast.parse(path.read_text())
    skipped = type_checking_only(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    edges = set()
    for target in targets & modules.keys():
        parts = target.split(".")
        edges.add(target)
        edges.update(
            ".".join(parts[:k])
            for k in range(2, len(parts))
            if name.split(".")[:k] != parts[:k]  # a parent package of the importer is loading
        )
    return edges - {name}


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path that ends where it starts, or None (depth-first search)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for successor in sorted(graph[node]):
            cycle = visit(successor, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    return next((c for node in sorted(graph) if (c := visit(node, [])) is not None), None)


def test_import_graph_of_the_package_has_no_cycle():
    graph = import_graph(SRC)
    # the parser sees lazy imports (cli imports the trainer inside a function) and resolves
    # ``from . import io`` to the submodule
    assert "robustfeat.train" in graph["robustfeat.cli"]
    assert {"robustfeat.io", "robustfeat.config"} <= graph["robustfeat.runs"]
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_the_cycle_check_finds_a_lazy_cycle_through_a_package_init(tmp_path):
    """The runs <-> train cycle as it was: runs imported RunDir lazily from the train package,
    whose __init__ re-exports the loop, which imports runs. Annotation-only imports are no
    edge; importing a submodule of another package is an edge to that package's __init__ too."""
    files = {
        "pkg/__init__.py": "",
        "pkg/runs.py": "def weights():\n    from .train import RunDir\n",
        "pkg/train/__init__.py": "from .loop import train\n",
        "pkg/train/loop.py": (
            "from ..runs import run_info\nfrom . import schedule\nfrom ..data.base import Images\n"
        ),
        "pkg/data/__init__.py": "from .base import Images\n",
        "pkg/data/base.py": "",
        "pkg/train/schedule.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..train import loop\n"
        ),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["pkg.train.schedule"] == set()
    assert graph["pkg.train.loop"] == {
        "pkg.runs",
        "pkg.train.schedule",
        "pkg.data",
        "pkg.data.base",
    }
    assert graph["pkg.data"] == {"pkg.data.base"}  # its own submodule: no edge back
    assert find_cycle(graph) == ["pkg.runs", "pkg.train", "pkg.train.loop", "pkg.runs"]
    (tmp_path / "pkg/runs.py").write_text("def weights():\n    from .rundir import RunDir\n")
    (tmp_path / "pkg/rundir.py").write_text("")
    assert find_cycle(import_graph(tmp_path)) is None
