"""Common corruptions: invariants per corruption, hand-computed pieces, the script's quirks,
caching, released-file loading, and the mCE metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from robustfeat.corruptions import (
    CORRUPTIONS,
    cifar_mce,
    evaluate_corruptions,
    generate,
    generated_set,
    load_released,
    normalized_mce,
)
from robustfeat.corruptions import functional as fn
from robustfeat.data.base import ImageDataset
from robustfeat.errors import ConfigError, DataError


def images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images (natural-ish: blur and noise change them measurably)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    return (x * 200 + 25).round().to(torch.uint8)


BATCH = images()

# severities that are not ordered by distance from the clean image in the original constants
NOT_MONOTONIC = {"glass_blur", "elastic_transform", "frost", "motion_blur"}


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_invariants(name):
    outs = [generate(BATCH, name, s, seed=0) for s in range(1, 6)]
    for out in outs:
        assert out.shape == BATCH.shape and out.dtype == torch.uint8
    assert torch.equal(generate(BATCH, name, 3, seed=0), outs[2])  # deterministic by seed
    dists = [distance(o, BATCH) for o in outs]
    assert dists[4] > 0.5  # severity 5 visibly changes the images
    if name not in NOT_MONOTONIC:
        assert all(b >= 0.9 * a - 0.05 for a, b in itertools.pairwise(dists)), dists
    else:
        assert dists[4] > min(dists) - 1e-9
    # one image corrupted alone equals its row of the batch for the deterministic corruptions
    if name in (
        "defocus_blur",
        "zoom_blur",
        "brightness",
        "contrast",
        "pixelate",
        "jpeg_compression",
    ):
        assert torch.equal(generate(BATCH[2:3], name, 4), outs[3][2:3])


@pytest.mark.parametrize(
    "name",
    [
        "gaussian_noise",
        "glass_blur",
        "fog",
        "frost",
        "snow",
        "elastic_transform",
        "motion_blur",
        "impulse_noise",
        "shot_noise",
    ],
)
def test_random_corruptions_depend_on_seed(name):
    assert not torch.equal(generate(BATCH, name, 3, seed=0), generate(BATCH, name, 3, seed=1))


def test_grey_images_and_bad_input():
    grey = BATCH[:, :1]
    out = generate(grey, "contrast", 2)
    assert out.shape == grey.shape and out.dtype == torch.uint8
    with pytest.raises(ConfigError):
        generate(BATCH.float(), "contrast", 1)
    with pytest.raises(ConfigError, match="valid"):
        generate(BATCH, "rain", 1)
    with pytest.raises(ConfigError):
        generate(BATCH, "contrast", 6)
    assert generate(BATCH[:0], "fog", 1).shape[0] == 0


def test_contrast_and_brightness_hand_computed():
    x = np.array([[[[0.2, 0.4, 0.6], [0.6, 0.4, 0.2]]]])  # one 1x2 image
    out = fn.contrast(x, 1, np.random.default_rng(0)) / 255  # c = 0.75 around the channel means
    mean = np.array([0.4, 0.4, 0.4])
    np.testing.assert_allclose(out[0, 0], (x[0, 0] - mean) * 0.75 + mean)
    # brightness: HSV value + 0.05 keeps hue and saturation: RGB scales by V'/V; black -> grey
    y = np.array([[[[0.2, 0.4, 0.6], [0.0, 0.0, 0.0]]]])
    out = fn.brightness(y, 1, np.random.default_rng(0)) / 255
    np.testing.assert_allclose(out[0, 0, 0], np.array([0.2, 0.4, 0.6]) * 0.65 / 0.6)
    np.testing.assert_allclose(out[0, 0, 1], [0.05, 0.05, 0.05])
    import colorsys

    h, s, v = colorsys.rgb_to_hsv(0.2, 0.4, 0.6)
    np.testing.assert_allclose(out[0, 0, 0], colorsys.hsv_to_rgb(h, s, v + 0.05))


def test_disk_and_motion_kernels():
    k = fn.disk_kernel(1.0, 0.2)
    assert k.shape == (17, 17) and k.sum() == pytest.approx(1.0)
    assert k[8, 8] == k.max() and np.allclose(k, k.T) and np.allclose(k, k[::-1])
    m = fn.motion_blur_kernel(6, 1.0)
    assert len(m) == 13 and m.sum() == pytest.approx(1.0) and np.all(np.diff(m) < 0)
    # angle 0: weights applied to pixels to the right (edge pixels repeated)
    row = np.zeros((1, 1, 20, 1))
    row[0, 0, 5, 0] = 1.0
    out = fn._motion_blur(row, 6, 1.0, np.array([0.0]))
    np.testing.assert_allclose(out[0, 0, 5 - np.arange(13), 0][:6], m[:6])
    np.testing.assert_allclose(out[0, 0, 6:, 0], 0.0)


def test_clipped_zoom_matches_scipy_zoom():
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    for zoom in (1.03, 1.17, 1.25, 2.25):
        crop = int(np.ceil(32 / zoom))
        top = (32 - crop) // 2
        ref = ndimage.zoom(x[:, top : top + crop, top : top + crop], (1, zoom, zoom, 1), order=1)
        trim = (ref.shape[1] - 32) // 2
        np.testing.assert_allclose(
            fn.clipped_zoom(x, zoom), ref[:, trim : trim + 32, trim : trim + 32], atol=1e-5
        )


def test_glass_blur_shuffle_reproduces_the_scripts_view_swap():
    """The script's loop, literally (tuple assignment of numpy views), with the same offsets."""
    rng_image = np.random.default_rng(3)
    x = rng_image.random((2, 8, 8, 3))
    ours = fn.glass_blur(x, 1, np.random.default_rng(5))  # sigma 0.05: the blurs are identities

    rng = np.random.default_rng(5)
    offsets = rng.integers(-1, 1, size=(2, 6, 6, 2))
    expected = []
    for i in range(2):
        img = np.floor(x[i] * 255).astype(np.uint8)
        for a, h in enumerate(range(7, 1, -1)):
            for b, w in enumerate(range(7, 1, -1)):
                dx, dy = offsets[i, a, b]
                h_prime, w_prime = h + dy, w + dx
                img[h, w], img[h_prime, w_prime] = img[h_prime, w_prime], img[h, w]  # views: a copy
        expected.append(img / 255.0 * 255)
    np.testing.assert_allclose(ours, np.stack(expected), atol=1e-9)


def test_plasma_fractal_range_and_shape():
    maps = fn.plasma_fractal(3, 32, 2.0, np.random.default_rng(0))
    assert maps.shape == (3, 32, 32)
    np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)
    with pytest.raises(ValueError):
        fn.plasma_fractal(1, 30, 2.0, np.random.default_rng(0))


def test_frost_textures_are_vendored():
    textures = fn.frost_images()
    assert len(textures) == 5
    assert [t.shape for t in textures] == [
        (120, 180, 3),
        (63, 112, 3),
        (63, 112, 3),
        (70, 105, 3),
        (99, 132, 3),
    ]


# ------------------------------------------------------------------ metrics
def test_mce_metrics_hand_computed():
    errors = {"a": [0.1, 0.2, 0.3, 0.4, 0.5], "b": [0.2, 0.2, 0.2, 0.2, 0.2]}
    assert cifar_mce(errors) == pytest.approx((0.3 + 0.2) / 2)
    reference = {"a": [0.5] * 5, "b": [0.4] * 5}
    assert normalized_mce(errors, reference) == pytest.approx((1.5 / 2.5 + 1.0 / 2.0) / 2)
    with pytest.raises(ConfigError):
        normalized_mce(errors, {"a": [0.5] * 5})


# ------------------------------------------------------------------ caching, loading, evaluating
def test_generated_set_is_cached(tmp_path):
    first = generated_set(BATCH, "contrast", seed=0, cache=tmp_path)
    files = list(tmp_path.rglob("contrast.safetensors"))
    assert first.shape == (5, *BATCH.shape) and len(files) == 1
    assert torch.equal(generated_set(BATCH, "contrast", seed=0, cache=tmp_path), first)
    files[0].write_bytes(b"garbage")  # a damaged cache entry is regenerated
    assert torch.equal(generated_set(BATCH, "contrast", seed=0, cache=tmp_path), first)


class Colour(nn.Module):
    """Predicts the brightest channel: robust to contrast, hurt by noise."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) * 10 + self.dummy


def colour_dataset(n: int = 12) -> ImageDataset:
    imgs = images(n, seed=1)
    labels = imgs.float().mean((2, 3)).argmax(1)
    return ImageDataset(imgs, labels, 3, ["r", "g", "b"])


def test_evaluate_generated_corruptions(tmp_path):
    data = colour_dataset()
    out = evaluate_corruptions(Colour(), data, n=8, cache=tmp_path)
    assert out["source"] == "generated" and out["n"] == 8 and out["clean_error"] == 0.0
    assert list(out["per_corruption"]) == list(CORRUPTIONS)
    assert all(len(v) == 5 and all(0 <= e <= 1 for e in v) for v in out["per_corruption"].values())
    assert out["mce"] == pytest.approx(
        np.mean([np.mean(v) for v in out["per_corruption"].values()])
    )
    ref = {k: [0.5] * 5 for k in CORRUPTIONS}
    with_ref = evaluate_corruptions(Colour(), data, n=8, cache=tmp_path, reference=ref)
    assert with_ref["normalized_mce"] == pytest.approx(2 * with_ref["mce"])


def test_load_released_files(tmp_path):
    n = 4
    rng = np.random.default_rng(0)
    for name in CORRUPTIONS:
        np.save(
            tmp_path / f"{name}.npy", rng.integers(0, 256, size=(5 * n, 32, 32, 3), dtype=np.uint8)
        )
    np.save(tmp_path / "labels.npy", np.tile(np.arange(n) % 3, 5).astype(np.uint8))
    imgs, labels = load_released(tmp_path, "fog")
    raw = np.load(tmp_path / "fog.npy")
    assert imgs.shape == (5, n, 3, 32, 32) and labels.tolist() == [0, 1, 2, 0]
    assert torch.equal(imgs[2, 1].permute(1, 2, 0), torch.from_numpy(raw[2 * n + 1]))
    picked, _ = load_released(tmp_path, "fog", torch.tensor([3, 1]))
    assert torch.equal(picked, imgs[:, [3, 1]])
    out = evaluate_corruptions(Colour(), colour_dataset(), n=None, source_dir=tmp_path, cache=False)
    assert out["source"].startswith("released:") and out["n"] == n
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(DataError, match=r"labels\.npy"):
        load_released(tmp_path, "fog")
