"""BatchLoader / iterate_batches: coverage, exact resume, DDP rank slices, eval order."""

import pytest
import torch

from robustfeat.data import BatchLoader, ImageDataset, default_train_augment, iterate_batches
from robustfeat.errors import ConfigError, DataError


def indexed_dataset(n: int = 50) -> ImageDataset:
    """Image i is filled with the value i, so a batch tells which samples it holds."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 4, 4).clone()
    masks = torch.zeros(n, 4, 4, dtype=torch.bool)
    masks[:, 0, 0] = True
    return ImageDataset(images, torch.arange(n) % 5, 5, list("abcde"), masks=masks)


def random_dataset(n: int = 40) -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
    return ImageDataset(images, torch.arange(n) % 4, 4, list("abcd"))


def sample_ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0] * 255).round().long().tolist()


def test_len_and_shapes():
    data = indexed_dataset(50)
    assert len(BatchLoader(data, 8)) == 6
    assert len(BatchLoader(data, 8, drop_last=False)) == 7
    x, y = next(BatchLoader(data, 8).batches(0))
    assert x.shape == (8, 3, 4, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_every_sample_once_per_epoch_with_matching_labels():
    data = indexed_dataset(50)
    loader = BatchLoader(data, 8, drop_last=False)
    seen = []
    for x, y in loader.batches(3):
        ids = sample_ids(x)
        assert y.tolist() == data.labels[ids].tolist()
        seen += ids
    assert sorted(seen) == list(range(50))
    assert seen != list(range(50))  # shuffled


def test_order_depends_on_seed_and_epoch_only():
    data = indexed_dataset(50)
    first = [sample_ids(x) for x, _ in BatchLoader(data, 10, seed=1).batches(0)]
    again = [sample_ids(x) for x, _ in BatchLoader(data, 10, seed=1).batches(0)]
    next_epoch = [sample_ids(x) for x, _ in BatchLoader(data, 10, seed=1).batches(1)]
    other_seed = [sample_ids(x) for x, _ in BatchLoader(data, 10, seed=2).batches(0)]
    assert first == again and first != next_epoch and first != other_seed
    unshuffled = [sample_ids(x) for x, _ in BatchLoader(data, 10, shuffle=False).batches(0)]
    assert [i for ids in unshuffled for i in ids] == list(range(50))


def test_resume_reproduces_the_tail_bit_for_bit():
    data = random_dataset(40)
    loader = BatchLoader(data, 8, augment=default_train_augment(), seed=7)
    full = list(loader.batches(2))
    restarted = BatchLoader(data, 8, augment=default_train_augment(), seed=7)  # a new process
    tail = list(restarted.batches(2, start=3))
    assert len(tail) == len(full) - 3
    for (x_full, y_full), (x_tail, y_tail) in zip(full[3:], tail, strict=True):
        assert torch.equal(x_full, x_tail) and torch.equal(y_full, y_tail)
    # augmentation is really on: the batch differs from the plain images
    plain = next(BatchLoader(data, 8, seed=7).batches(2))[0]
    assert not torch.equal(plain, full[0][0])


@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_slices_are_disjoint_and_cover_the_global_batch(drop_last):
    data = random_dataset(40)
    options = {"augment": default_train_augment(), "seed": 3, "drop_last": drop_last}
    single = list(BatchLoader(data, 12, **options).batches(1))
    ranks = [
        list(BatchLoader(data, 12, rank=r, world_size=3, **options).batches(1)) for r in range(3)
    ]
    assert all(len(r) == len(single) for r in ranks)
    for i, (x, y) in enumerate(single):
        parts = [rank[i] for rank in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        if drop_last:
            assert all(p[0].shape[0] == 4 for p in parts)


def test_bad_loader_arguments():
    data = indexed_dataset(50)
    with pytest.raises(ConfigError, match="divisible"):
        BatchLoader(data, 10, world_size=3)
    with pytest.raises(ConfigError):
        BatchLoader(data, 8, rank=2, world_size=2)
    with pytest.raises(DataError, match="fewer than one batch"):
        BatchLoader(data, 64)
    with pytest.raises(ConfigError):
        list(BatchLoader(data, 8).batches(0, start=99))


def test_iterate_batches_in_order_with_masks():
    data = indexed_dataset(50)
    batches = list(iterate_batches(data, 16))
    assert [x.shape[0] for x, _ in batches] == [16, 16, 16, 2]
    assert [i for x, _ in batches for i in sample_ids(x)] == list(range(50))
    assert torch.equal(torch.cat([y for _, y in batches]), data.labels)
    _, _, m = next(iterate_batches(data, 16, with_masks=True))
    assert m.dtype == torch.bool and m.shape == (16, 4, 4) and m[:, 0, 0].all()
    with pytest.raises(DataError, match="no ground-truth object masks"):
        next(iterate_batches(random_dataset(), 4, with_masks=True))
