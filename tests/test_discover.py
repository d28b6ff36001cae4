"""Discoverability: `list KIND -v` (options and defaults read from the code), defaults in
`--help`, `--version`, and the lazy imports that keep `import robustfeat`, `--help` and `list`
light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import robustfeat
from robustfeat.catalog import format_value, in_255ths
from robustfeat.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


def blocks(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, str]:
    """`robustfeat list ... -v` output as {entry name: its block}."""
    assert main(["list", *argv, "-v"]) == 0
    out = capsys.readouterr().out
    return {block.split(": ", 1)[0]: block for block in out.strip().split("\n\n")}


def test_list_methods_verbose_shows_each_option_with_its_default_and_a_doc_line(capsys):
    methods = blocks(capsys, "methods")
    assert set(methods) == set(robustfeat.list_methods())
    # a class without a docstring of its own: its module's summary, not Method's "Base class"
    assert methods["ce"] == (
        "ce: Cross-entropy baseline (optional label smoothing).\n    label_smoothing: float = 0.0"
    )
    assert "    start_step: int = 500\n" in methods["tenet"]
    assert "    variant: str = 'mse'\n" in methods["hnc"]
    assert "    alpha: float = 0.00196078 (= 0.5/255)\n" in methods["alfa"]
    assert "\n    model:" not in methods["cifs"]  # filled in by the trainer


@pytest.mark.parametrize(
    ("kind", "name", "line", "absent"),
    [
        ("models", "resnet20", "    width: int = 16", "num_classes"),
        ("attacks", "pgd", "    steps: int = 20", "self"),
        ("schemes", "pgd_at", "    eps: float | str = 0.0313725 (= 8/255)", "method"),
        ("augments", "cutout", "    size: int = 16", "mean"),  # the trainer passes the mean
        ("datasets", "shapes", "    n_train: int = 10000", "split"),
        ("datasets", "folder:PATH", "    workers: int = 2", "root"),
        ("suites", "quick", "    n = 200", "description"),
        ("recipes", "demo", "    model = 'test_cnn'", "description"),
    ],
)
def test_list_verbose_of_every_kind(capsys, kind, name, line, absent):
    entry = blocks(capsys, kind)[name]
    assert line in entry.splitlines()
    options = [row.split()[0].rstrip(":") for row in entry.splitlines()[1:]]
    assert absent not in options


def test_list_config_verbose_gives_type_and_default_per_key(capsys):
    assert main(["list", "config", "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "epochs: int = 10" in lines
    assert "milestones: list[float] = [0.5, 0.75]" in lines


def test_list_without_v_prints_bare_names(capsys):
    assert main(["list", "methods"]) == 0
    assert capsys.readouterr().out.split() == robustfeat.list_methods()
    assert main(["list", "models"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "timm/<name>"


def test_timm_options_are_read_only_for_verbose(capsys):
    models = blocks(capsys, "models")
    assert "    default_input_size: int | None = None" in models["timm/<name>"].splitlines()
    assert "... and any other option, passed on" in models["timm/<name>"]


def test_pixel_sizes_are_shown_in_255ths():
    assert format_value(8 / 255) == "0.0313725 (= 8/255)"
    assert format_value(0.1) == "0.1"  # 25.5/255 is not a pixel size anyone writes
    assert format_value(0.5) == "0.5"
    assert format_value((1 / 255, 2 / 255)) == "(1/255, 2/255)"
    assert in_255ths(1e-5) is None


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["cams", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "test images (default: 6)" in out
    assert "which test images (default: 0)" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    # train flags fall back to TrainConfig's defaults unless a recipe sets them
    assert "--epochs EPOCHS (default: 10, or the recipe's)" in out
    assert "--method METHOD training method (see `robustfeat list methods`) (default: ce" in out
    assert "(default: None)" not in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"robustfeat {robustfeat.__version__}"


HEAVY = ["timm", "torchattacks", "torchvision", "scipy", "matplotlib", "rich.progress"]
HEAVY += ["pytorch_grad_cam", "robustfeat.evaluate", "robustfeat.train"]


def imported_after(code: str) -> dict[str, bool]:
    """Which of HEAVY (and torch) a fresh interpreter has imported after running ``code``."""
    names = [*HEAVY, "torch"]
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {names}}}))"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_robustfeat_and_every_registry_import_nothing_heavy():
    loaded = imported_after(
        "import robustfeat, robustfeat.methods, robustfeat.models, robustfeat.attacks, "
        "robustfeat.adversarial, robustfeat.data, robustfeat.cli"
    )
    assert not any(loaded[m] for m in HEAVY), loaded


def test_help_imports_no_torch_and_list_nothing_heavy():
    loaded = imported_after(
        "from robustfeat.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert not loaded["torch"], loaded
    loaded = imported_after("from robustfeat.cli import main\nmain(['list', 'methods'])")
    assert not any(loaded[m] for m in HEAVY), loaded


def test_public_names_resolve_lazily_and_evaluate_stays_the_function():
    code = (
        "import robustfeat as rf, robustfeat.evaluate\n"
        "assert callable(rf.evaluate) and rf.evaluate.__module__ == 'robustfeat.evaluate.suite'\n"
        "assert rf.create_method.__module__ == 'robustfeat.methods._registry'\n"
        "assert 'load_run' in dir(rf)"
    )
    imported_after(code)  # raises CalledProcessError on a failed assert
    with pytest.raises(AttributeError):
        _ = robustfeat.no_such_name


def test_every_module_imports_first_without_a_cycle():
    """With nothing imported eagerly by the package, each module must import on its own (an import
    cycle shows up as "partially initialized module" for whichever module comes first)."""
    code = textwrap.dedent(
        """
        import pkgutil, sys
        import robustfeat
        names = [m.name for m in pkgutil.walk_packages(robustfeat.__path__, "robustfeat.")]
        failed = []
        for name in names:
            if name == "robustfeat.__main__":
                continue
            for loaded in [m for m in sys.modules if m.startswith("robustfeat.")]:
                del sys.modules[loaded]
            try:
                __import__(name)
            except ImportError as err:
                failed.append(f"{name}: {err}")
        print(len(names), failed)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    count, failed = out.stdout.split(" ", 1)
    assert int(count) > 50 and failed.strip() == "[]", out.stdout + out.stderr
