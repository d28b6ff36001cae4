"""The generated `shapes` dataset: format, determinism, masks, sizes, spurious colour."""

import colorsys
import math
import time

import pytest
import torch

from robustfeat.data import load_dataset
from robustfeat.data.shapes import SHAPE_NAMES
from robustfeat.errors import ConfigError

SMALL = {"n_train": 400, "n_test": 200}


def test_format_dtypes_and_ranges():
    data = load_dataset("shapes", "train", **SMALL)
    assert data.images.shape == (400, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.shape == (400,) and data.labels.dtype == torch.int64
    assert data.masks.shape == (400, 32, 32) and data.masks.dtype == torch.bool
    assert data.num_classes == 10 and data.class_names == list(SHAPE_NAMES)
    assert int(data.labels.min()) == 0 and int(data.labels.max()) == 9
    # images use the whole uint8 range, not a constant (the range is [0, 255] by type)
    assert data.images.float().std() > 20
    big = load_dataset("shapes", "test", n_test=20, image_size=48)
    assert big.images.shape == (20, 3, 48, 48) and big.masks.shape == (20, 48, 48)


def test_same_seed_same_bytes_other_seed_or_split_differs():
    a = load_dataset("shapes", "train", **SMALL)
    b = load_dataset("shapes", "train", **SMALL)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.masks, b.masks)
    other = load_dataset("shapes", "train", render_seed=1, **SMALL)
    assert not torch.equal(a.images, other.images)
    test = load_dataset("shapes", "test", n_test=400)
    assert not torch.equal(a.images, test.images)


def test_classes_exactly_balanced():
    data = load_dataset("shapes", "train", n_train=500)
    assert torch.bincount(data.labels, minlength=10).tolist() == [50] * 10


def test_mask_is_exactly_the_drawn_object():
    # Without noise and antialiasing the object is one flat colour and the mask its exact pixels.
    data = load_dataset("shapes", "train", n_train=200, noise=0.0, antialias=False)
    pixels = data.images.permute(0, 2, 3, 1).reshape(200, -1, 3)
    masks = data.masks.reshape(200, -1)
    assert masks.any(1).all(), "every image has an object"
    for i in range(200):
        inside, outside = pixels[i][masks[i]], pixels[i][~masks[i]]
        colour = inside[0]
        assert (inside == colour).all(), f"image {i}: object pixels are not one colour"
        same_as_object = (outside == colour).all(1).float().mean().item()
        assert same_as_object < 0.01, f"image {i}: background looks like the object"


def test_object_stands_out_from_background_with_noise():
    data = load_dataset("shapes", "train", **SMALL)
    x = data.float_images().permute(0, 2, 3, 1)  # N, H, W, 3
    m = data.masks[..., None].float()
    fg = (x * m).sum((1, 2)) / m.sum((1, 2))
    bg = (x * (1 - m)).sum((1, 2)) / (1 - m).sum((1, 2))
    distance = (fg - bg).norm(dim=1)
    assert (distance > 0.15).float().mean() > 0.95


@pytest.mark.parametrize("low,high", [(0.25, 0.35), (0.6, 0.7)])
def test_object_size_within_size_range(low, high):
    side = 32
    data = load_dataset("shapes", "train", n_train=300, size_range=(low, high), antialias=False)
    area = data.masks.sum((1, 2)).float()
    disk_max = math.pi * (high * side / 2) ** 2
    disk_min = math.pi * (low * side / 2) ** 2
    # Every shape lies in a disk of the drawn diameter and fills at least ~30 % of it.
    assert (area <= disk_max * 1.1 + 2).all()
    assert (area >= disk_min * 0.25).all()
    rows = data.masks.any(2).float()
    cols = data.masks.any(1).float()
    extent = torch.maximum(rows.sum(1), cols.sum(1))
    assert (extent <= high * side + 1).all()
    assert (extent >= low * side * 0.5).all()


def test_size_range_orders_object_areas():
    small = load_dataset("shapes", "train", n_train=300, size_range=(0.2, 0.3)).masks.sum((1, 2))
    large = load_dataset("shapes", "train", n_train=300, size_range=(0.6, 0.7)).masks.sum((1, 2))
    assert large.float().mean() > 3 * small.float().mean()


def _background_hue(data):
    x = data.float_images().permute(0, 2, 3, 1)
    m = (~data.masks)[..., None].float()
    mean = ((x * m).sum((1, 2)) / m.sum((1, 2))).tolist()
    return torch.tensor([colorsys.rgb_to_hsv(*rgb)[0] for rgb in mean])


def _hue_matches_class(data):
    class_hue = data.labels.float() / data.num_classes
    gap = (_background_hue(data) - class_hue).abs()
    return torch.minimum(gap, 1 - gap) < 0.04


def test_spurious_background_colour_in_train_only():
    train = load_dataset("shapes", "train", spurious_p=1.0, **SMALL)
    test = load_dataset("shapes", "test", spurious_p=1.0, **SMALL)
    assert _hue_matches_class(train).float().mean() > 0.95
    assert _hue_matches_class(test).float().mean() < 0.25
    half = load_dataset("shapes", "train", spurious_p=0.5, n_train=1000)
    assert 0.4 < _hue_matches_class(half).float().mean() < 0.65
    plain = load_dataset("shapes", "train", **SMALL)
    assert _hue_matches_class(plain).float().mean() < 0.25


def test_generation_is_fast():
    start = time.perf_counter()
    load_dataset("shapes", "train", n_train=4000)
    # ~0.2 s on an idle 2-core machine; the bound is loose for a shared one
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(
    "options",
    [{"size_range": (0.7, 0.3)}, {"size_range": (0.0, 0.5)}, {"spurious_p": 1.5}, {"n_train": 0}],
)
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        load_dataset("shapes", "train", **options)
