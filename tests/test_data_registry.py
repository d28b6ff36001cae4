"""load_dataset: names, options, splits, and the torchvision datasets' local-file handling."""

import struct

import pytest
import torch

from robustfeat.data import check_dataset_spec, dataset_options, list_datasets, load_dataset
from robustfeat.errors import ConfigError, DataError, UnknownNameError


def test_registered_names():
    assert {"shapes", "cifar10", "cifar100", "svhn", "fashion_mnist"} <= set(list_datasets())


def test_unknown_name_lists_valid_names_and_path_forms():
    with pytest.raises(UnknownNameError) as info:
        load_dataset("cifar")
    message = str(info.value)
    assert "cifar10" in message and "shapes" in message
    assert "folder:PATH" in message and "zip:PATH" in message


def test_unknown_option_lists_valid_options():
    with pytest.raises(ConfigError) as info:
        load_dataset("shapes", n_trian=10)
    assert "n_trian" in str(info.value) and "n_train" in str(info.value)
    assert "workers" in dataset_options("zip:any.zip")


def test_bad_split_and_empty_path():
    with pytest.raises(ConfigError, match="split"):
        load_dataset("shapes", "validation")
    with pytest.raises(ConfigError, match="path"):
        load_dataset("folder:")


def test_check_dataset_spec_loads_nothing(tmp_path):
    check_dataset_spec("shapes")
    check_dataset_spec(f"zip:{tmp_path / 'not-yet-there.zip'}")  # existence is checked on load
    with pytest.raises(UnknownNameError):
        check_dataset_spec("imagenet")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "fashion_mnist"])
def test_missing_torchvision_files_say_how_to_point_at_local_files(name, tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset(name, "train", root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "root=" in message and "--data-root" in message
    assert "zip:PATH" in message
    if name == "cifar10":
        assert "zip:../shared/data/cifar10-jpeg.zip" in message


def write_idx(path, array: torch.Tensor) -> None:
    """The MNIST idx format: magic (0x08 = uint8, then ndim), big-endian dims, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.numpy().tobytes())


def test_fashion_mnist_becomes_three_identical_channels(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 9, 9, 3], dtype=torch.uint8)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    data = load_dataset("fashion_mnist", "test", root=str(tmp_path))
    assert data.images.shape == (6, 3, 28, 28) and data.images.dtype == torch.uint8
    for channel in range(3):
        assert torch.equal(data.images[:, channel], images)
    assert data.labels.tolist() == [0, 1, 2, 9, 9, 3] and data.labels.dtype == torch.int64
    assert data.num_classes == 10 and data.class_names[0] == "T-shirt/top"
