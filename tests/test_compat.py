"""Compatibility: every method composes with every adversarial-training scheme, and every
paper recipe runs (with a tiny budget) with its own model, method and scheme."""

import math

import pytest
import torch

from robustfeat.adversarial import list_schemes
from robustfeat.bench import plan
from robustfeat.config import list_recipes, load_recipe, make_config
from robustfeat.data import DataSplits, prepare_data
from robustfeat.data.base import ImageDataset
from robustfeat.methods import list_methods
from robustfeat.train import train

TINY = {
    "model": "test_cnn",
    "data": "shapes",
    "data_args": {"n_train": 32, "n_test": 16},
    "batch_size": 8,
    "steps": 2,
    "progress": False,
    "eval_suite": "quick",
    "eval_n": 8,
}
# small enough for a test_cnn; Free-AT replays each batch, so 2 steps need 2 * replays budget
SCHEME_ARGS = {
    "pgd_at": {"steps": 2},
    "trades": {"steps": 2},
    "fat": {"steps": 2},
    "free_at": {"replays": 2},
}


@pytest.fixture(scope="module")
def tiny_data():
    return prepare_data("shapes", n_train=32, n_test=16)


@pytest.mark.parametrize("scheme", [None, *list_schemes()])
@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_with_every_scheme_and_evaluates(
    tmp_path, tiny_data, method, scheme, device
):
    if device.type == "cuda" and scheme is not None and method != "ce":
        pytest.skip("on CUDA (the GPU check's time): every method alone, every scheme with CE")
    at_args = SCHEME_ARGS.get(scheme, {})
    steps = 2 * at_args.get("replays", 1)
    layer = {"method": method, "at": scheme, "at_args": at_args, "steps": steps}
    cfg = make_config(TINY, layer, {"device": device.type})
    results = train(cfg, tmp_path / "run", data=tiny_data)
    assert 0.0 <= results["clean"]["accuracy"] <= 1.0 and results["clean"]["n"] == 16
    labels = {a["label"] for a in results["attacks"]}
    assert {"fgsm", "pgd10"} <= labels
    assert all(0.0 <= a["accuracy"] <= 1.0 for a in results["attacks"])
    assert results["worst_case"]["accuracy"] <= min(
        a["accuracy"] for a in results["attacks"] if a["label"] in {"fgsm", "pgd10"}
    )
    assert results["run"]["method"] == method and results["run"]["at"] == scheme


PAPER_RECIPES = [r for r in list_recipes() if r.startswith("paper-")]


def test_there_is_a_paper_recipe_per_method_paper():
    assert {"paper-tenet", "paper-hnc", "paper-cifs", "paper-topgap", "paper-alfa"} <= set(
        PAPER_RECIPES
    )


def random_splits(num_classes: int) -> DataSplits:
    """Random 32x32 images, two per class: the paper recipes' own class counts, no download."""
    gen = torch.Generator().manual_seed(0)
    n = 2 * num_classes
    data = ImageDataset(
        images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
        labels=torch.arange(n) % num_classes,
        num_classes=num_classes,
        class_names=[str(i) for i in range(num_classes)],
    )
    mean, std = data.channel_stats()
    return DataSplits(train=data, val=None, test=data, num_classes=num_classes, mean=mean, std=std)


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_paper_recipe_smoke(tmp_path, recipe):
    """The recipe's own model, method, scheme and optimiser, one step on tiny data with the
    recipe's number of classes."""
    base = load_recipe(recipe)
    splits = random_splits(100 if base["data"] == "cifar100" else 10)
    rows = plan(recipe, results_dir=tmp_path)  # every bench cell resolves and validates
    assert rows
    overrides = {k: TINY[k] for k in ("data", "data_args", "progress")}
    cfg = make_config(
        base,
        overrides,
        {
            "steps": 1,
            "batch_size": 4,
            "precision": "fp32",
            "compile": False,
            "channels_last": False,
            "eval_suite": "clean",
            "samples_per_class": None,
            "val_fraction": 0.0,
            "label_noise": 0.0,
            "augment": base.get("augment"),
        },
    )
    if cfg.at == "free_at":
        cfg = make_config(cfg.to_dict(), {"steps": cfg.at_args.get("replays", 8)})
    results = train(cfg, tmp_path / "run", data=splits)
    assert (
        results["run"]["model"] == base["model"]
        and results["clean"]["n"] == splits.test.labels.numel()
    )
    assert math.isfinite(results["clean"]["accuracy"])
