import json

import pytest

from robustfeat.bench import parse_cells
from robustfeat.config import read_yaml, recipe_path
from robustfeat.demo import run_demo
from robustfeat.errors import ConfigError
from robustfeat.methods import list_methods


def test_demo_cells_cover_every_registered_method():
    cells = parse_cells(read_yaml(recipe_path("demo"))["bench"], "demo")
    assert sorted(c.method for c in cells) == sorted(list_methods())
    assert all(c.at is None for c in cells)


def test_demo_trains_selected_cells_with_their_args(tmp_path):
    tiny = {"epochs": 1, "data_args": {"n_train": 128, "n_test": 64, "image_size": 16}}
    rows = run_demo(tmp_path, methods=["ce", "tenet"], overrides=tiny)
    assert [r["method"] for r in rows] == ["ce", "tenet"]
    for row in rows:
        assert row["worst_case"] <= min(row["fgsm"], row["pgd10"]) <= row["clean"]
    config = json.loads((tmp_path / "tenet" / "results.json").read_text())["run"]["config"]
    assert config["method_args"] == {"start_step": 50} and config["epochs"] == 1


def test_demo_unknown_method_lists_the_cells(tmp_path):
    with pytest.raises(ConfigError, match=r"--methods.*cells: ce, hnc"):
        run_demo(tmp_path, methods=["nope"])
    assert not any(tmp_path.iterdir())
