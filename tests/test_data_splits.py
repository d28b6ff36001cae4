"""prepare_data: validation carve-out, per-class subsets, label noise (HNC / PENCIL definitions)."""

import pytest
import torch

from robustfeat.data import prepare_data
from robustfeat.data._seed import make_generator
from robustfeat.data.splits import noisy_labels, per_class_subset, stratified_split
from robustfeat.errors import ConfigError, DataError

SMALL = {"n_train": 500, "n_test": 100}


def image_keys(data) -> set[bytes]:
    return {bytes(row) for row in data.images.reshape(len(data), -1).numpy()}


def test_per_class_subset_counts_are_exact():
    splits = prepare_data("shapes", samples_per_class=7, **SMALL)
    assert torch.bincount(splits.train.labels, minlength=10).tolist() == [7] * 10
    assert len(splits.test) == 100  # test is never subset
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    chosen = per_class_subset(labels, 2, make_generator(0))
    assert torch.bincount(labels[chosen]).tolist() == [2, 2, 2]
    assert torch.equal(chosen, chosen.sort().values) and chosen.unique().numel() == 6


def test_subset_larger_than_a_class_is_a_data_error():
    with pytest.raises(DataError, match="only 50"):
        prepare_data("shapes", samples_per_class=51, **SMALL)


def test_symmetric_noise_resamples_uniformly_over_all_classes():
    clean = torch.arange(20000) % 10
    noisy, resampled = noisy_labels(clean, 10, 0.4, "symmetric", make_generator(1))
    assert abs(resampled.float().mean().item() - 0.4) < 0.015
    assert torch.equal(noisy[~resampled], clean[~resampled])
    # a resampled label is uniform over ALL classes (PENCIL): 1/10 of them keep their class
    wrong = (noisy != clean).float().mean().item()
    assert abs(wrong - 0.4 * 0.9) < 0.015
    assert abs((noisy[resampled] == clean[resampled]).float().mean().item() - 0.1) < 0.015
    counts = torch.bincount(noisy[resampled], minlength=10).float()
    assert (counts / counts.sum() - 0.1).abs().max() < 0.015


def test_asymmetric_noise_flips_to_the_next_class():
    clean = torch.arange(10000) % 7
    noisy, resampled = noisy_labels(clean, 7, 0.3, "asymmetric", make_generator(2))
    assert torch.equal(noisy != clean, resampled)  # every flip changes the label
    assert torch.equal(noisy[resampled], (clean[resampled] + 1) % 7)
    assert torch.equal(noisy[~resampled], clean[~resampled])
    assert abs(resampled.float().mean().item() - 0.3) < 0.02


def test_prepare_data_noises_train_only_and_keeps_clean_labels():
    clean_run = prepare_data("shapes", **SMALL)
    noisy_run = prepare_data("shapes", label_noise=0.4, label_noise_type="asymmetric", **SMALL)
    train = noisy_run.train
    assert torch.equal(train.clean_labels, clean_run.train.labels)
    flipped = train.labels != train.clean_labels
    assert torch.equal(train.labels[flipped], (train.clean_labels[flipped] + 1) % 10)
    record = train.meta["label_noise"]
    assert record["type"] == "asymmetric" and record["rate"] == 0.4
    assert record["realized_rate"] == pytest.approx(flipped.float().mean().item())
    assert 0.3 < record["realized_rate"] < 0.5
    assert torch.equal(noisy_run.test.labels, clean_run.test.labels)
    assert noisy_run.test.clean_labels is None


def test_noise_is_deterministic_by_seed():
    a = prepare_data("shapes", label_noise=0.5, seed=3, **SMALL).train.labels
    b = prepare_data("shapes", label_noise=0.5, seed=3, **SMALL).train.labels
    c = prepare_data("shapes", label_noise=0.5, seed=4, **SMALL).train.labels
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_validation_split_is_stratified_disjoint_and_deterministic():
    splits = prepare_data("shapes", val_fraction=0.2, **SMALL)
    assert torch.bincount(splits.val.labels, minlength=10).tolist() == [10] * 10
    assert torch.bincount(splits.train.labels, minlength=10).tolist() == [40] * 10
    full = prepare_data("shapes", **SMALL).train
    train_keys, val_keys = image_keys(splits.train), image_keys(splits.val)
    assert not train_keys & val_keys
    assert train_keys | val_keys == image_keys(full)
    again = prepare_data("shapes", val_fraction=0.2, **SMALL)
    assert torch.equal(again.val.images, splits.val.images)
    other = prepare_data("shapes", val_fraction=0.2, seed=1, **SMALL)
    assert not torch.equal(other.val.images, splits.val.images)


def test_stratified_split_indices():
    labels = torch.tensor([0] * 10 + [1] * 20)
    kept, held = stratified_split(labels, 0.3, make_generator(0))
    assert torch.bincount(labels[held]).tolist() == [3, 6]
    assert sorted(kept.tolist() + held.tolist()) == list(range(30))


def test_val_then_subset_then_noise_and_stats():
    splits = prepare_data(
        "shapes", val_fraction=0.1, samples_per_class=20, label_noise=0.2, **SMALL
    )
    assert len(splits.val) == 50 and len(splits.train) == 200
    assert splits.val.clean_labels is None  # validation labels stay clean
    assert splits.num_classes == 10
    mean, std = splits.train.channel_stats()
    assert splits.mean == mean and splits.std == std and len(mean) == 3
    assert splits.train.meta["samples_per_class"] == 20


@pytest.mark.parametrize(
    "options",
    [
        {"label_noise": 1.5},
        {"label_noise_type": "pairwise"},
        {"val_fraction": 1.0},
        {"samples_per_class": 0},
    ],
)
def test_bad_options(options):
    with pytest.raises(ConfigError):
        prepare_data("shapes", **SMALL, **options)
