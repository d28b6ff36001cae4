"""BatchLoader / iterate_batches: coverage, exact resume, DDP rank slices, eval order."""

import pytest
import torch

from robustfeat.config import make_config
from robustfeat.data import BatchLoader, ImageDataset, default_train_augment, iterate_batches
from robustfeat.data import loader as loader_module
from robustfeat.data.augment import create_augment
from robustfeat.data.transforms import Augment
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


def full_augment() -> Augment:
    """Crop, flip and every batched augmentation of data/augment.py."""
    steps = default_train_augment().steps
    steps += [create_augment(name) for name in ("cutout", "random_erasing", "augmix")]
    return Augment(*steps)


@pytest.mark.parametrize(("rank", "world_size", "drop_last"), [(0, 1, True), (1, 2, False)])
def test_resident_loader_gives_the_host_loaders_batches(device, rank, world_size, drop_last):
    """``loader: device``: the same batches as the host loader (bit for bit) for a seed, every
    augmentation on, for a rank's slice and for a restart mid-epoch, read only from the copy it
    made on the device."""
    data = random_dataset(40)
    options = {
        "augment": full_augment(),
        "seed": 5,
        "rank": rank,
        "world_size": world_size,
        "drop_last": drop_last,
        "device": device,
    }
    host = BatchLoader(data, 12, **options)
    resident = BatchLoader(data, 12, resident=True, **options)
    images, labels = resident.source()
    assert images.device.type == labels.device.type == device.type
    # every batch must come from the device copy: the host images are blanked from here on
    resident.dataset = ImageDataset(torch.zeros_like(data.images), data.labels * 0, 4, list("abcd"))
    for epoch, start in ((0, 0), (1, 2)):
        expected = list(host.batches(epoch, start))
        got = list(resident.batches(epoch, start))
        assert len(got) == len(expected) == len(host) - start
        for (x, y), (x_ref, y_ref) in zip(got, expected, strict=True):
            assert x.device.type == y.device.type == device.type
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    # the crop/flip part is device-independent: equal to the CPU loader's batches
    cpu = BatchLoader(data, 12, augment=default_train_augment(), seed=5)
    crop_flip = BatchLoader(data, 12, augment=default_train_augment(), seed=5, device=device)
    crop_flip.resident = True
    for (x, y), (x_cpu, y_cpu) in zip(crop_flip.batches(0), cpu.batches(0), strict=True):
        assert torch.equal(x.cpu(), x_cpu) and torch.equal(y.cpu(), y_cpu)


def test_resident_loader_refuses_a_dataset_larger_than_half_the_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000, 4000))
    tensors = (torch.zeros(400, dtype=torch.uint8), torch.zeros(13, dtype=torch.int64))
    with pytest.raises(DataError, match=r"needs 0\.00 GiB on cuda.*use loader: host"):
        loader_module.to_resident(tensors, torch.device("cuda"))
    # 400 + 13 * 8 = 504 bytes > 0.5 * 1000: refused before anything is copied; 496 fits
    fits = (torch.zeros(392, dtype=torch.uint8), torch.zeros(13, dtype=torch.int64))
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device: self)
    assert all(
        a is b
        for a, b in zip(loader_module.to_resident(fits, torch.device("cuda")), fits, strict=True)
    )


def test_loader_config_choice():
    assert make_config({"loader": "device"}).loader == "device"
    with pytest.raises(ConfigError, match=r"loader.*host.*device"):
        make_config({"loader": "gpu"})
