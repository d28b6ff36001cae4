"""docs/DESIGN.md: its "Write your own method" walkthrough runs as written (the code block as a
plugin module, the commands through the CLI at a tiny budget), and it names every module."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "DESIGN.md").read_text()
WALKTHROUGH = DOC.split("## Write your own method", 1)[1]
# the documented commands at a tiny budget (later flags win): seconds on the generated shapes
TINY = ["--model", "test_cnn", "--steps", "4", "--batch-size", "16", "--no-progress"]
TINY += ["--data-arg", "n_train=64", "--data-arg", "n_test=32", "--data-arg", "image_size=16"]
TINY += ["--set", "log_every=1"]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def documented_commands() -> dict[str, list[str]]:
    """The walkthrough's `robustfeat ...` lines by subcommand, as argv lists (comments dropped)."""
    (block,) = code_blocks(WALKTHROUGH, "bash")
    commands = {}
    for line in block.splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "robustfeat", line
        command = next(a for a in argv[1:] if not a.startswith("-") and a != "my_methods")
        commands[command] = argv[1:]
    return commands


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    (block,) = [b for b in code_blocks(WALKTHROUGH, "python") if b.startswith("# my_methods.py")]
    (tmp_path / "my_methods.py").write_text(block)
    return tmp_path


def test_walkthrough_method_lists_trains_and_evaluates_through_the_cli(plugin_dir, robustfeat_cli):
    commands = documented_commands()
    assert set(commands) == {"list", "train", "eval"}

    listed = robustfeat_cli(commands["list"], plugin_dir)
    assert listed.returncode == 0, listed.stderr
    block = listed.stdout.split("feature_norm_ce: ", 1)[1].split("\n\n")[0]
    assert block == (
        "CE + lam * the mean squared activation of one stage's output.\n"
        "    lam: float = 0.01\n"
        "    stage: str | None = None"
    )

    train = commands["train"]
    lam = float(train[train.index("--arg") + 1].removeprefix("lam="))
    trained = robustfeat_cli([*train, *TINY], plugin_dir)
    assert trained.returncode == 0, trained.stderr
    run = plugin_dir / train[train.index("-o") + 1]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss_norm" in r]
    assert {r["step"] for r in steps} == {1, 2, 3, 4}
    for r in steps:  # the trainer optimised this method's loss with the documented lam
        assert r["loss"] == pytest.approx(r["loss_ce"] + lam * r["loss_norm"], rel=1e-5)
        assert r["loss_norm"] > 0

    evaluated = robustfeat_cli(commands["eval"], plugin_dir)
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["run"]["method"] == "feature_norm_ce"
    assert results["suite"] == "quick"
    labels = {a["label"] for a in results["attacks"]}
    assert {"fgsm", "pgd10"} <= labels
    assert 0 <= results["worst_case"]["accuracy"] <= results["clean"]["accuracy"]


def test_walkthrough_method_refuses_a_bad_stage_before_training(plugin_dir, robustfeat_cli):
    train = documented_commands()["train"]
    bad = robustfeat_cli([*train, *TINY, "--arg", "stage=stage9"], plugin_dir)
    assert bad.returncode == 2
    assert "unknown feature node 'stage9'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (plugin_dir / train[train.index("-o") + 1]).exists()


def test_design_doc_names_every_module_and_the_code_points_at_it():
    package = ROOT / "src" / "robustfeat"
    modules = [p for p in package.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    missing = [str(p.relative_to(package)) for p in modules if f"`{p.name}`" not in DOC]
    assert not missing, f"docs/DESIGN.md does not say what these modules own: {missing}"
    cited = [p for p in package.rglob("*.py") if "DESIGN.md" in p.read_text()]
    assert cited and all("docs/DESIGN.md" in p.read_text() for p in cited)
    readme = (ROOT / "README.md").read_text()
    assert "docs/DESIGN.md" in readme
    assert "--plugin" in readme and "robustfeat.plugins" in readme
    assert "robustfeat[cam]" in readme and "robustfeat[tensorboard]" in readme
