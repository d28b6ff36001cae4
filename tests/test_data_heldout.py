"""A folder without train/ and test/ is split reproducibly, never scored on its own training
images (issue 32, item 1): training and `robustfeat eval` hold out the same stratified part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from robustfeat.cli import main
from robustfeat.data import evaluation_split, prepare_data


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(tmp_path / "cache"))


def make_tree(base: Path, classes: int = 3, per_class: int = 10) -> Path:
    """Every image a distinct colour, so images can be told apart after the split."""
    for c in range(classes):
        for i in range(per_class):
            path = base / f"class{c}" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * c, 20 * i, 10 + 9 * i + 3 * c)).save(path)
    return base


def colours(images: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(img[:, 0, 0].tolist()) for img in images}


def test_a_whole_tree_is_split_stratified_and_disjoint(tmp_path):
    spec = f"folder:{make_tree(tmp_path / 'tree')}"
    data = prepare_data(spec, seed=0)
    assert len(data.train) == 24 and len(data.test) == 6
    assert data.test.labels.bincount().tolist() == [2, 2, 2]  # 20% of each class
    assert not colours(data.train.images) & colours(data.test.images)
    assert data.test.meta["held_out_test"] == {"fraction": 0.2, "seed": 0, "n_test": 6}
    # reproducible for a seed, another seed holds out other images
    assert torch.equal(prepare_data(spec, seed=0).test.images, data.test.images)
    assert colours(prepare_data(spec, seed=1).test.images) != colours(data.test.images)
    # a larger fraction holds out more
    assert len(prepare_data(spec, seed=0, test_fraction=0.5).test) == 15
    # evaluation takes exactly the images training held out
    held = evaluation_split(spec, test_fraction=0.2, seed=0)
    assert torch.equal(held.images, data.test.images)


def test_train_and_eval_on_a_whole_tree_score_only_held_out_images(tmp_path, capsys):
    tree = make_tree(tmp_path / "tree")
    run = tmp_path / "run"
    common = ["--model", "test_cnn", "--data", f"folder:{tree}", "--batch-size", "8"]
    args = ["train", *common, "--epochs", "1", "--out", str(run), "--set", "eval_suite=clean"]
    assert main([*args, "--set", "progress=false"]) == 0
    trained = json.loads((run / "results.json").read_text())
    assert trained["clean"]["n"] == 6 and trained["train"]["n"] == 24
    assert main(["eval", str(run), "--suite", "clean", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((run / "results.json").read_text())["clean"]["n"] == 6
