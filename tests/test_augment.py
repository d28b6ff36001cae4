"""Image-level augmentation baselines (data/augment.py) and AugMix-JSD (methods/augmix_jsd.py):
hand cases, torchvision equivalence of the AugMix operations and of the Random Erasing
parameter law, reproducibility from the generator, and the config wiring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from robustfeat.config import make_config
from robustfeat.data.augment import (
    AugMix,
    Cutout,
    RandomErasing,
    affine_warp,
    create_augment,
    erase_rectangles,
    generator_from_global_rng,
)
from robustfeat.errors import ConfigError, UnknownNameError
from robustfeat.methods import create_method
from robustfeat.methods.augmix_jsd import jsd_consistency
from robustfeat.models import create_model
from robustfeat.train import validate_names


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def erased_boxes(before: torch.Tensor, after: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the changed pixels of each image; asserts a rectangle."""
    boxes = []
    for changed in (before != after).any(dim=1):
        if not changed.any():
            boxes.append((0, 0, 0, 0))
            continue
        rows = changed.any(dim=1).nonzero().squeeze(1)
        cols = changed.any(dim=0).nonzero().squeeze(1)
        top, left = int(rows[0]), int(cols[0])
        height, width = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
        assert changed[top : top + height, left : left + width].all()
        assert int(changed.sum()) == height * width
        boxes.append((top, left, height, width))
    return boxes


def test_erase_rectangles_hand_case() -> None:
    x = torch.zeros(2, 1, 4, 4)
    out = erase_rectangles(
        x,
        torch.tensor([1, 0]),
        torch.tensor([2, 0]),
        torch.tensor([2, 0]),
        torch.tensor([1, 4]),
        torch.tensor([1.0]),
    )
    expected = torch.zeros(2, 1, 4, 4)
    expected[0, 0, 1:3, 2] = 1.0  # image 1 has height 0: untouched
    assert torch.equal(out, expected)


def test_cutout_is_a_clipped_16px_square_of_the_mean_colour_per_image() -> None:
    x = torch.full((64, 3, 32, 32), 0.5)
    mean = (0.1, 0.2, 0.3)
    out = Cutout(size=16, mean=mean)(x, gen())
    boxes = erased_boxes(x, out)
    assert all(h > 0 and h <= 16 and w <= 16 for _, _, h, w in boxes)
    for (top, left, h, w), img in zip(boxes, out, strict=True):
        # a side shorter than 16 touches the border
        assert h == 16 or top == 0 or top + h == 32
        assert w == 16 or left == 0 or left + w == 32
        assert torch.allclose(img[:, top, left], torch.tensor(mean))
    assert len(set(boxes)) > 30  # per-image positions
    assert torch.equal(Cutout(p=0.0)(x, gen()), x)
    assert torch.equal(out, Cutout(size=16, mean=mean)(x, gen()))  # same generator, same batch


def test_random_erasing_follows_torchvision_parameter_law() -> None:
    n = 3000
    x = torch.full((n, 3, 32, 32), 0.5)
    out = RandomErasing(fill=0.0)(x, gen(1))
    boxes = [b for b in erased_boxes(x, out) if b[2] > 0]
    assert abs(len(boxes) / n - 0.5) < 0.04  # p = 0.5
    areas = torch.tensor([h * w / 1024 for _, _, h, w in boxes])
    ratios = torch.tensor([h / w for _, _, h, w in boxes])
    assert areas.min() >= 0.015 and areas.max() <= 0.45  # scale (0.02, 0.4), rounded sides
    assert ratios.min() >= 0.25 and ratios.max() <= 4.0  # ratio (0.3, 1/0.3), rounded sides
    # same law as torchvision's RandomErasing applied image by image
    reference = v2.RandomErasing(p=1.0, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), value=0.0)
    torch.manual_seed(0)
    ref_boxes = erased_boxes(x[:1500], torch.stack([reference(img) for img in x[:1500]]))
    ref_areas = torch.tensor([h * w / 1024 for _, _, h, w in ref_boxes if h > 0])
    assert abs(areas.mean() - ref_areas.mean()) < 0.015
    assert abs(areas.std() - ref_areas.std()) < 0.015
    ref_tops = torch.tensor([t / (32 - h + 1) for t, _, h, _ in ref_boxes if h > 0])
    tops = torch.tensor([t / (32 - h + 1) for t, _, h, _ in boxes])
    assert abs(tops.mean() - ref_tops.mean()) < 0.03  # uniform position


def test_random_erasing_random_fill_only_touches_the_rectangle() -> None:
    x = torch.full((32, 3, 32, 32), 0.5)
    out = RandomErasing(p=1.0, fill="random")(x, gen(2))
    boxes = erased_boxes(x, out)
    assert all(h > 0 for _, _, h, _ in boxes)
    inside = torch.cat(
        [
            img[:, top : top + h, left : left + w].flatten()
            for (top, left, h, w), img in zip(boxes, out, strict=True)
        ]
    )
    assert inside.min() >= 0 and inside.max() <= 1 and inside.std() > 0.2


@pytest.mark.parametrize("all_ops", [False, True])
def test_augmix_operations_equal_torchvision_image_by_image(all_ops: bool) -> None:
    augmix = AugMix(all_ops=all_ops)
    images = (torch.rand(6, 3, 32, 32) * 255).to(torch.uint8)
    ref = augmix.reference
    for index, name in enumerate(augmix.ops):
        for level in range(augmix.severity):
            for negative in (False, True):
                ours = augmix.apply_ops(
                    images,
                    torch.full((6,), index),
                    torch.full((6,), level),
                    torch.full((6,), negative),
                )
                magnitude = augmix.magnitude(name, level, negative, 32, 32)
                expected = torch.stack(
                    [
                        ref._apply_image_or_video_transform(
                            img, name, magnitude, interpolation=ref.interpolation, fill=ref._fill
                        )
                        for img in images
                    ]
                )
                assert torch.equal(ours, expected), (name, level, negative)


def test_augmix_mixed_chain_step_applies_each_image_its_own_op() -> None:
    augmix = AugMix()
    images = (torch.rand(9, 3, 32, 32) * 255).to(torch.uint8)
    op = torch.arange(9) % len(augmix.ops)
    level = torch.arange(9) % 3
    negative = torch.arange(9) % 2 == 0
    mixed = augmix.apply_ops(images, op, level, negative)
    for i in range(9):
        alone = augmix.apply_ops(
            images[i : i + 1], op[i : i + 1], level[i : i + 1], negative[i : i + 1]
        )
        assert torch.equal(mixed[i : i + 1], alone)


def test_augmix_mixing_formula_and_reproducibility(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randint(0, 256, (8, 3, 32, 32)).float() / 255
    augmix = AugMix()
    out = augmix(x, gen(3))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, augmix(x, gen(3)))
    assert not torch.equal(out, augmix(x, gen(4)))
    same = augmix(x[:1].expand(8, -1, -1, -1), gen(5))
    assert len({tuple(img.flatten()[:50].tolist()) for img in same}) == 8  # per-image draws
    assert torch.equal(AugMix(p=0.0)(x, gen(3)), x)
    half = AugMix(p=0.5)(x.repeat(8, 1, 1, 1), gen(6))
    changed = (half != x.repeat(8, 1, 1, 1)).flatten(1).any(dim=1).float().mean()
    assert 0.25 < changed < 0.75
    # identity operations: the convex mix of copies of x is x
    monkeypatch.setattr(AugMix, "apply_ops", lambda self, images, *args: images)
    torch.testing.assert_close(augmix(x, gen(3)), x)


def test_affine_warp_builds_its_grid_on_the_images_device() -> None:
    """Regression: the grid's homogeneous coordinate was made on the CPU, so AugMix's affine ops
    failed on CUDA images (``meta`` images show it on any machine)."""
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device="meta")
    out = affine_warp(images, torch.eye(2, 3).expand(2, 2, 3))
    assert out.device.type == "meta" and out.shape == images.shape and out.dtype == torch.uint8


@pytest.mark.parametrize("name", ["cutout", "random_erasing", "augmix"])
def test_augmentations_on_the_device_match_the_cpu(name: str, device: torch.device) -> None:
    """Parameters come from the CPU generator: the result does not depend on the device (AugMix
    up to float rounding of its affine warps and mixing)."""
    x = torch.rand(16, 3, 32, 32, generator=gen(3))
    augment = create_augment(name, **({"fill": "random"} if name == "random_erasing" else {}))
    ref = augment(x, gen(4))
    out = augment(x.to(device), gen(4))
    assert out.device.type == device.type and not torch.equal(ref, x)
    if name == "augmix":
        off = (out.cpu() - ref).abs() > 1e-5
        assert off.float().mean() < 0.01, f"{off.float().mean():.4f} of the pixels differ"
    else:
        assert torch.equal(out.cpu(), ref)


def test_generator_from_global_rng_is_reproducible() -> None:
    torch.manual_seed(7)
    first = torch.rand(3, generator=generator_from_global_rng())
    torch.manual_seed(7)
    assert torch.equal(first, torch.rand(3, generator=generator_from_global_rng()))


def test_create_augment_and_config_validation() -> None:
    assert isinstance(create_augment("cutout", size=8), Cutout)
    with pytest.raises(UnknownNameError, match="augmix"):
        create_augment("mixup")
    for name, bad in (
        ("cutout", {"size": 0}),
        ("cutout", {"fill": "green"}),
        ("random_erasing", {"scale": (0.5, 0.1)}),
        ("augmix", {"severity": 11}),
        ("augmix", {"colour": 1}),
    ):
        with pytest.raises(ConfigError):
            create_augment(name, **bad)(torch.rand(1, 3, 8, 8), gen())
    with pytest.raises(UnknownNameError):
        validate_names(make_config({"augment": "mixup"}))
    with pytest.raises(ConfigError):
        validate_names(make_config({"augment": "cutout", "augment_args": {"size": -1}}))


def test_trainer_appends_the_augmentation_after_crop_and_flip(tmp_path) -> None:
    from robustfeat.data import prepare_data
    from robustfeat.train import Trainer

    data = prepare_data("shapes", n_train=64, n_test=32)
    cfg = make_config(
        {"model": "test_cnn", "augment": "cutout", "augment_args": {"size": 8}, "batch_size": 16}
    )
    trainer = Trainer.create(cfg, tmp_path / "run", data=data)
    steps = trainer.train_augment().steps
    assert [type(s).__name__ for s in steps] == ["RandomCrop", "RandomHorizontalFlip", "Cutout"]
    assert steps[-1].size == 8 and steps[-1].mean == tuple(data.mean)
    first = next(trainer.loader().batches(0))[0]
    assert torch.equal(first, next(trainer.loader().batches(0))[0])  # reproducible batches


# ----------------------------------------------------------------------------- AugMix + JSD
def test_jsd_consistency_hand_case() -> None:
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
    m = (p + q + q) / 3
    kl = lambda a, b: (a * (a / b).log()).sum()  # noqa: E731
    expected = (kl(p, m) + 2 * kl(q, m)) / 3
    got = jsd_consistency(p.log(), q.log(), q.log())
    torch.testing.assert_close(got, expected)
    assert jsd_consistency(p.log(), p.log(), p.log()).abs() < 1e-7


def test_augmix_jsd_method_loss_and_eval_mode() -> None:
    method = create_method("augmix_jsd", create_model("test_cnn", num_classes=5)).train()
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 5, (6,))
    out = method(x, y)
    assert out["logits"].shape == (6, 5)
    torch.testing.assert_close(out["loss"], out["loss_ce"] + 12.0 * out["loss_jsd"])
    assert out["loss_jsd"] > 0
    out["loss"].backward()
    with torch.no_grad():
        expected = F.cross_entropy(method.model.eval()(x), y)
    method.eval()
    torch.testing.assert_close(method(x, y)["loss"], expected)
    assert math.isfinite(out["loss"].item())
