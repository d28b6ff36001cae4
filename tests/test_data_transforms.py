"""Batched augmentation: crops against hand-computed values, flips, range, determinism."""

import pytest
import torch

from robustfeat.data import (
    Augment,
    RandomCrop,
    RandomHorizontalFlip,
    crop_at,
    default_train_augment,
    random_crop,
    random_hflip,
)
from robustfeat.data.transforms import flip_where
from robustfeat.errors import ConfigError

GRID = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])[None, None]  # 1,1,3,3


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_constant_padding_hand_computed():
    out = crop_at(GRID, 1, torch.tensor([0]), torch.tensor([2]), mode="constant")
    # padded rows 0..2, cols 2..4 of the zero-padded 5x5 grid
    expected = torch.tensor([[0.0, 0.0, 0.0], [2.0, 3.0, 0.0], [5.0, 6.0, 0.0]])
    assert torch.equal(out[0, 0], expected)


def test_crop_reflect_and_replicate_hand_computed():
    out = crop_at(GRID, 1, torch.tensor([2]), torch.tensor([0]), mode="reflect")
    # reflect padding by 1: padded rows 2..4 are [5 4 5 6 5], [8 7 8 9 8], [5 4 5 6 5]
    expected = torch.tensor([[5.0, 4.0, 5.0], [8.0, 7.0, 8.0], [5.0, 4.0, 5.0]])
    assert torch.equal(out[0, 0], expected)
    out = crop_at(GRID, 1, torch.tensor([0]), torch.tensor([0]), mode="replicate")
    expected = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 2.0], [4.0, 4.0, 5.0]])
    assert torch.equal(out[0, 0], expected)


def test_per_image_offsets_and_identity_at_centre():
    batch = torch.rand(4, 3, 6, 6, generator=generator(0))
    assert torch.equal(crop_at(batch, 2, torch.full((4,), 2), torch.full((4,), 2)), batch)
    top, left = torch.tensor([0, 1, 3, 4]), torch.tensor([4, 0, 2, 1])
    out = crop_at(batch, 2, top, left, mode="constant", fill=0.5)
    padded = torch.nn.functional.pad(batch, (2, 2, 2, 2), value=0.5)
    for i in range(4):
        assert torch.equal(out[i], padded[i, :, top[i] : top[i] + 6, left[i] : left[i] + 6])


def test_random_crop_uses_one_offset_per_image_from_the_generator():
    batch = torch.rand(64, 3, 8, 8, generator=generator(1))
    out = random_crop(batch, generator(5), padding=4)
    assert out.shape == batch.shape
    assert torch.equal(out, random_crop(batch, generator(5), padding=4))
    assert not torch.equal(out, random_crop(batch, generator(6), padding=4))
    draw = generator(5)
    top, left = (
        torch.randint(0, 9, (64,), generator=draw),
        torch.randint(0, 9, (64,), generator=draw),
    )
    assert torch.equal(out, crop_at(batch, 4, top, left))
    assert len({(int(t), int(c)) for t, c in zip(top, left, strict=True)}) > 10


def test_flip():
    batch = torch.rand(2, 3, 4, 5, generator=generator(2))
    out = flip_where(batch, torch.tensor([True, False]))
    assert torch.equal(out[0], batch[0].flip(-1)) and torch.equal(out[1], batch[1])
    assert torch.equal(out[0, :, :, 0], batch[0, :, :, 4])
    assert torch.equal(random_hflip(batch, generator(0), p=1.0), batch.flip(-1))
    assert torch.equal(random_hflip(batch, generator(0), p=0.0), batch)
    many = torch.rand(1000, 1, 1, 2, generator=generator(3))
    flipped = (random_hflip(many, generator(4)) != many).any(-1).float().mean()
    assert 0.45 < flipped < 0.55


def test_pipeline_range_determinism_and_composition():
    batch = torch.rand(16, 3, 8, 8, generator=generator(3))
    augment = default_train_augment(4, "reflect", True)
    out = augment(batch, generator(9))
    assert out.shape == batch.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(out, augment(batch, generator(9)))
    g = generator(9)
    by_hand = random_hflip(random_crop(batch, g, 4, "reflect"), g)
    assert torch.equal(out, by_hand)
    assert torch.equal(Augment()(batch, generator(0)), batch)
    assert [type(s) for s in default_train_augment(0, "reflect", True).steps] == [
        RandomHorizontalFlip
    ]
    crop_only = default_train_augment(4, "constant", False).steps
    assert [type(s) for s in crop_only] == [RandomCrop]


def test_bad_settings():
    with pytest.raises(ConfigError):
        RandomCrop(4, mode="wrap")
    with pytest.raises(ConfigError):
        RandomCrop(-1)
    with pytest.raises(ConfigError):
        RandomHorizontalFlip(2.0)
