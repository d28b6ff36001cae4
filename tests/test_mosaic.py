"""The mosaic multi-label dataset, multi-label metrics (HNC Table 4) and training on it."""

import json

import pytest
import torch

from robustfeat.config import make_config
from robustfeat.data import load_dataset, prepare_data
from robustfeat.data.base import ImageDataset
from robustfeat.data.mosaic import make_mosaic, tile
from robustfeat.errors import ConfigError, DataError
from robustfeat.evaluate.multilabel import (
    average_precision,
    mean_average_precision,
    multilabel_metrics,
    precision_recall_f1,
)
from robustfeat.interpret.metrics import cam_quality
from robustfeat.models import create_model
from robustfeat.train import train


def _constant_source(n: int = 8, classes: int = 4) -> ImageDataset:
    """Image i is filled with value i; label i % classes; object mask = top-left pixel."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()
    masks = torch.zeros(n, 4, 4, dtype=torch.bool)
    masks[:, 0, 0] = True
    labels = torch.arange(n) % classes
    return ImageDataset(images, labels, classes, [f"c{i}" for i in range(classes)], masks=masks)


def test_tile_places_images_row_major():
    tiles = torch.arange(4.0).view(1, 4, 1, 1, 1).expand(1, 4, 1, 2, 2)
    out = tile(tiles, 2)[0, 0]
    assert out.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_mosaic_tiles_labels_and_class_masks():
    source = _constant_source()
    mosaic = make_mosaic(source, 2, 2, False, torch.Generator().manual_seed(0))
    assert mosaic.images.shape == (2, 3, 8, 8) and mosaic.labels.shape == (2, 4)
    assert mosaic.multilabel
    for i in range(2):
        ids = [int(mosaic.images[i, 0, r, c]) for r, c in ((0, 0), (0, 4), (4, 0), (4, 4))]
        assert mosaic.tile_labels[i].tolist() == [k % 4 for k in ids]
        expected = torch.zeros(4)
        expected[[k % 4 for k in ids]] = 1
        assert torch.equal(mosaic.labels[i], expected)
    used = mosaic.images[:, 0, ::4, ::4].flatten().tolist()
    assert len(set(used)) == 8  # each source image once
    masks = mosaic.class_masks(torch.arange(2))
    assert masks.shape == (2, 4, 8, 8)
    first = mosaic.tile_labels[0, 0]
    assert masks[0, first, 0, 0] and masks[0].sum() == 4  # one object pixel per tile
    assert torch.equal(masks[0].any(0), mosaic.masks[0])


def test_mosaic_subset_keeps_tiles_aligned_and_resize_keeps_the_size():
    source = _constant_source()
    mosaic = make_mosaic(source, 2, 2, False, torch.Generator().manual_seed(0))
    sub = mosaic.subset(torch.tensor([1]))
    assert torch.equal(sub.tile_labels[0], mosaic.tile_labels[1])
    assert torch.equal(sub.class_masks(torch.tensor([0])), mosaic.class_masks(torch.tensor([1])))
    small = make_mosaic(source, 2, 2, True, torch.Generator().manual_seed(0))
    assert small.images.shape == (2, 3, 4, 4)


def test_mosaic_registered_as_a_path_form_with_source_options():
    data = load_dataset("mosaic:shapes", "train", base_args={"n_train": 40}, mosaic_seed=3)
    assert len(data) == 10 and data.images.shape[-1] == 64
    again = load_dataset("mosaic:shapes", "train", base_args={"n_train": 40}, mosaic_seed=3)
    assert torch.equal(data.images, again.images)
    with pytest.raises(ConfigError, match="unknown option"):
        load_dataset("mosaic:shapes", "train", grids=3)
    with pytest.raises(DataError, match="single-label"):
        make_mosaic(data, 1, 2, False, torch.Generator())
    with pytest.raises(ConfigError, match="multi-label"):
        prepare_data("mosaic:shapes", label_noise=0.2, base_args={"n_train": 40, "n_test": 40})


def test_average_precision_hand_computed_with_ties():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert average_precision(scores, torch.tensor([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.5
    assert average_precision(scores, torch.zeros(4)) != average_precision(scores, torch.zeros(4))
    mean_ap, per_class = mean_average_precision(
        torch.stack([scores, scores], 1), torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]])
    )
    assert mean_ap == pytest.approx(5 / 6) and per_class[1] != per_class[1]


def test_precision_recall_f1_per_class_and_overall():
    logits = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    out = precision_recall_f1(logits, targets)
    # class 0: tp 1 fp 1 fn 1 -> P 0.5 R 0.5; class 1: tp 0 fp 1 fn 1 -> 0, 0
    assert out["P-C"] == 0.25 and out["R-C"] == 0.25 and out["F1-C"] == 0.25
    assert out["P-O"] == pytest.approx(1 / 3) and out["R-O"] == pytest.approx(1 / 3)
    assert out["F1-O"] == pytest.approx(1 / 3)
    assert multilabel_metrics(logits, targets)["accuracy"] == 0.0


def test_training_hnc_on_mosaics_writes_multilabel_results(tmp_path):
    data = prepare_data("mosaic:shapes", base_args={"n_train": 96, "n_test": 32}, resize=True)
    cfg = make_config(
        {
            "model": "test_cnn",
            "method": "hnc",
            "data": "mosaic:shapes",
            "steps": 3,
            "batch_size": 8,
            "progress": False,
            "device": "cpu",
        }
    )
    results = train(cfg, tmp_path / "run", data=data)
    assert results["suite"] == "multilabel"
    assert 0.0 <= results["clean"]["mAP"] <= 1.0 and set(results["clean"]["per_class"]) == set(
        data.test.class_names
    )
    lines = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert "loss_sce" in lines[-1] and "train_acc" not in lines[-1]


def test_cam_quality_localises_each_class_of_a_mosaic():
    data = load_dataset("mosaic:shapes", "test", base_args={"n_test": 16})
    model = create_model("test_cnn", num_classes=10)
    out = cam_quality(model, data, n=3, erf=False)
    assert out["localized"] == int(data.labels[:3].sum())  # one map per present class
    assert "accuracy" not in out
