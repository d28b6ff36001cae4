"""Plugins: a method registered in the user's own module is trained, evaluated and listed from
the CLI, loaded with `--plugin MODULE` / `--plugin FILE.py` or the `robustfeat.plugins` entry-point
group."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from robustfeat.cli import main
from robustfeat.methods import METHODS

SRC = Path(__file__).resolve().parents[1] / "src"

PLUGIN = textwrap.dedent(
    '''
    """A user's plugin: CE plus a penalty on the squared logits."""

    import torch.nn.functional as F

    from robustfeat.methods import Method, register_method


    @register_method
    class LogitPenaltyCE(Method):
        """CE + beta * mean squared logit."""

        name = "logit_penalty_ce"

        def __init__(self, model, beta: float = 0.25) -> None:
            super().__init__(model)
            self.beta = beta

        def forward(self, x, y):
            logits = self.model(x)
            loss_ce = F.cross_entropy(logits, y)
            loss_logits = logits.float().pow(2).mean()
            loss = loss_ce + self.beta * loss_logits
            return {"loss": loss, "logits": logits, "loss_ce": loss_ce, "loss_logits": loss_logits}
    '''
)

TINY_RUN = ["--model", "test_cnn", "--data", "shapes", "--batch-size", "16", "--steps", "4"]
TINY_RUN += ["--data-arg", "n_train=64", "--data-arg", "n_test=32", "--data-arg", "image_size=16"]
TINY_RUN += ["--no-progress", "--set", "log_every=1"]


def test_plugin_method_trains_evaluates_and_lists_from_the_cli(tmp_path, robustfeat_cli):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    run = tmp_path / "run"
    # a module name found in the current directory (as `python -m` would find it)
    train = ["--plugin", "my_plugin", "train", "--method", "logit_penalty_ce", "-a", "beta=0.5"]
    trained = robustfeat_cli([*train, *TINY_RUN, "-o", str(run)], cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss_logits" in r]
    assert {r["step"] for r in steps} == {1, 2, 3, 4}  # the plugin's own loss part, every step
    for r in steps:  # the trainer optimised the plugin's loss, with the option given
        assert r["loss"] == pytest.approx(r["loss_ce"] + 0.5 * r["loss_logits"], rel=1e-5)
    # eval: the run's method comes from the plugin (given after the command, as a file path)
    evaluate = ["eval", str(run), "--plugin", "my_plugin.py", "--suite", "clean"]
    evaluated = robustfeat_cli(evaluate, tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["run"]["method"] == "logit_penalty_ce"
    assert results["clean"]["n"] == 32
    # without the plugin the method is unknown: one line, exit 2
    missing = robustfeat_cli(["eval", str(run), "--suite", "clean"], tmp_path)
    assert missing.returncode == 2
    assert "unknown method 'logit_penalty_ce'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_entry_point_plugins_load_for_every_command(tmp_path, robustfeat_cli):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    listed = robustfeat_cli(["list", "methods", "-v"], tmp_path, pythonpath=[tmp_path])
    assert "logit_penalty_ce" not in listed.stdout  # on the path but not declared
    dist = tmp_path / "my_plugin_dist-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin-dist\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[robustfeat.plugins]\nmine = my_plugin\n")
    listed = robustfeat_cli(["list", "methods", "-v"], tmp_path, pythonpath=[tmp_path])
    assert listed.returncode == 0, listed.stderr
    block = listed.stdout.split("logit_penalty_ce: ", 1)[1].split("\n\n")[0]
    assert block == "CE + beta * mean squared logit.\n    beta: float = 0.25"


def test_a_plugin_that_cannot_be_found_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main(["--plugin", "no_such_plugin_module", "list", "methods"]) == 2
    err = capsys.readouterr().err
    assert "cannot import plugin 'no_such_plugin_module'" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["list", "methods", "--plugin", "missing.py"]) == 2
    assert "plugin file 'missing.py' does not exist" in capsys.readouterr().err


def test_plugin_by_name_from_the_current_directory_and_by_path_registers_once(
    tmp_path, capsys, monkeypatch
):
    (tmp_path / "twice_plugin.py").write_text(PLUGIN.replace("logit_penalty_ce", "twice_ce"))
    monkeypatch.chdir(tmp_path)  # not on sys.path (the installed `robustfeat` script's case)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # leave the registry as found
    monkeypatch.delitem(sys.modules, "twice_plugin", raising=False)
    # the same module by name, then by path: imported once, so registered once (not an error)
    assert main(["--plugin", "twice_plugin", "list", "methods", "--plugin", "twice_plugin.py"]) == 0
    assert capsys.readouterr().out.split().count("twice_ce") == 1
    sys.modules.pop("twice_plugin", None)
