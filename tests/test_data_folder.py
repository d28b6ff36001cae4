"""folder:PATH and zip:PATH: layout, labels, the decode-once cache, and every DataError case."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustfeat.data.folder as folder_module
from robustfeat.data import load_dataset
from robustfeat.errors import DataError

COLOURS = {"cat": [(255, 0, 0), (200, 10, 10), (150, 20, 20)], "dog": [(0, 0, 255), (10, 10, 200)]}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(directory))
    return directory


def write_image(path: Path, colour, size=(8, 6), fmt="PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


def make_tree(base: Path, colours=COLOURS, size=(8, 6)) -> Path:
    for name, shades in colours.items():
        for i, colour in enumerate(shades):
            write_image(base / name / f"{i:04d}.png", colour, size)
    return base


def zip_tree(tree: Path, target: Path, wrapper: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                archive.write(path, wrapper + path.relative_to(tree).as_posix())
    return target


def expected_pixels(colours=COLOURS, size=(8, 6)) -> torch.Tensor:
    flat = [c for shades in colours.values() for c in shades]
    width, height = size
    return torch.tensor(flat, dtype=torch.uint8)[:, :, None, None].expand(-1, 3, height, width)


def test_folder_labels_classes_and_pixels(tmp_path):
    data = load_dataset(f"folder:{make_tree(tmp_path / 'tree')}", "train")
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.images.shape == (5, 3, 6, 8)  # N, C, H, W of 8x6 (width x height) files
    assert torch.equal(data.images, expected_pixels())  # PNG is lossless
    assert data.meta["whole_tree"] is True


def test_train_test_layout_picks_the_split(tmp_path):
    tree = tmp_path / "tree"
    make_tree(tree / "train")
    make_tree(tree / "test", {"cat": [(1, 2, 3)], "dog": [(4, 5, 6)]})
    train = load_dataset(f"folder:{tree}", "train")
    test = load_dataset(f"folder:{tree}", "test")
    assert len(train) == 5 and len(test) == 2
    assert test.labels.tolist() == [0, 1] and test.images[1, :, 0, 0].tolist() == [4, 5, 6]
    assert train.meta["whole_tree"] is False


def test_zip_with_wrapper_folder_equals_folder(tmp_path):
    tree = tmp_path / "tree"
    make_tree(tree / "train")
    make_tree(tree / "test", {"cat": [(1, 2, 3)], "dog": [(4, 5, 6)]})
    archive = zip_tree(tree, tmp_path / "data.zip", wrapper="mydata/")
    for split in ("train", "test"):
        from_zip = load_dataset(f"zip:{archive}", split)
        from_folder = load_dataset(f"folder:{tree}", split)
        assert torch.equal(from_zip.images, from_folder.images)
        assert torch.equal(from_zip.labels, from_folder.labels)
        assert from_zip.class_names == from_folder.class_names


def test_jpeg_files_decode_close_to_their_colour(tmp_path):
    tree = tmp_path / "tree"
    for name, colour in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
        write_image(tree / name / "x.jpg", colour, size=(16, 16), fmt="JPEG")
    data = load_dataset(f"folder:{tree}", "test")
    assert (data.images[0].float().mean((1, 2)) - torch.tensor([200.0, 40, 40])).abs().max() < 6


def test_cache_written_once_then_reused_without_decoding(tmp_path, cache, monkeypatch):
    tree = make_tree(tmp_path / "tree")
    first = load_dataset(f"folder:{tree}", "train")
    written = sorted(p.suffix for p in cache.iterdir())
    assert written == [".json", ".safetensors"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(folder_module.Image, "open", no_decoding)
    again = load_dataset(f"folder:{tree}", "train")
    assert torch.equal(again.images, first.images) and again.class_names == first.class_names
    # a changed tree is a different cache key: it is decoded again
    write_image(tree / "dog" / "0009.png", (1, 1, 1))
    with pytest.raises(AssertionError, match="decoded"):
        load_dataset(f"folder:{tree}", "train")


def test_zip_cache_reused(tmp_path, monkeypatch):
    archive = zip_tree(make_tree(tmp_path / "tree"), tmp_path / "d.zip")
    first = load_dataset(f"zip:{archive}", "train")
    monkeypatch.setattr(folder_module.Image, "open", lambda *a, **k: 1 / 0)
    assert torch.equal(load_dataset(f"zip:{archive}", "train").images, first.images)
    (tmp_path / "sub").mkdir()
    same_file = tmp_path / "sub" / ".." / "d.zip"  # another spelling of the path: same cache
    assert torch.equal(load_dataset(f"zip:{same_file}", "train").images, first.images)


def test_process_pool_decodes_the_same(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "tree")
    in_process = load_dataset(f"folder:{tree}", "train", workers=1, progress=False)
    monkeypatch.setattr(folder_module, "_POOL_MIN_FILES", 0)
    monkeypatch.setattr(folder_module, "_CHUNK", 2)  # several tasks
    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(tmp_path / "other-cache"))
    pooled = load_dataset(f"folder:{tree}", "train", workers=2, progress=False)
    assert torch.equal(pooled.images, in_process.images)
    assert torch.equal(pooled.labels, in_process.labels)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"zip:{tmp_path / 'nope.zip'}")


def test_not_a_zip(tmp_path):
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"plain text")
    with pytest.raises(DataError, match="not a readable zip"):
        load_dataset(f"zip:{bogus}")


def test_no_class_folders(tmp_path):
    tree = tmp_path / "tree"
    write_image(tree / "loose.png", (0, 0, 0))
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(f"folder:{tree}")


def test_empty_class_folder_is_named(tmp_path):
    tree = make_tree(tmp_path / "tree")
    (tree / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        load_dataset(f"folder:{tree}")


def test_corrupt_file_is_named(tmp_path):
    tree = make_tree(tmp_path / "tree")
    (tree / "dog" / "broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match=r"broken\.png is not a readable image"):
        load_dataset(f"folder:{tree}")


def test_corrupt_member_of_zip_is_named(tmp_path):
    tree = make_tree(tmp_path / "tree")
    (tree / "cat" / "notes.txt").write_text("hello")
    archive = zip_tree(tree, tmp_path / "d.zip")
    with pytest.raises(DataError, match=r"d\.zip:cat/notes\.txt is not a readable image"):
        load_dataset(f"zip:{archive}")


@pytest.mark.parametrize("chunk", [1000, 2])  # the odd image inside one task, or in another task
def test_mixed_sizes_name_a_file_and_both_sizes(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(folder_module, "_CHUNK", chunk)
    tree = make_tree(tmp_path / "tree")
    write_image(tree / "dog" / "9999.png", (0, 0, 0), size=(9, 6))
    with pytest.raises(DataError, match="mixed sizes") as info:
        load_dataset(f"folder:{tree}")
    message = str(info.value)
    assert "9999.png is 9x6" in message and "8x6" in message


def test_hidden_files_are_ignored(tmp_path):
    tree = make_tree(tmp_path / "tree")
    (tree / "cat" / ".DS_Store").write_bytes(b"junk")
    assert len(load_dataset(f"folder:{tree}")) == 5


def test_grayscale_images_become_rgb(tmp_path):
    tree = tmp_path / "tree"
    for name, level in (("a", 30), ("b", 220)):
        path = tree / name / "x.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(np.full((4, 4), level, dtype=np.uint8), mode="L").save(path)
    data = load_dataset(f"folder:{tree}")
    assert data.images.shape == (2, 3, 4, 4)
    assert data.images[1].unique().tolist() == [220]


def test_size_resizes_mixed_sizes_on_load_and_keys_the_cache(tmp_path):
    tree = tmp_path / "tree"
    write_image(tree / "cat" / "a.png", (255, 0, 0), size=(8, 6))
    write_image(tree / "dog" / "b.png", (0, 0, 255), size=(20, 10))
    with pytest.raises(DataError, match="--data-arg size=H,W"):
        load_dataset(f"folder:{tree}", "train")
    data = load_dataset(f"folder:{tree}", "train", size="4,5")
    assert data.images.shape == (2, 3, 4, 5)  # N, C, H, W
    # a plain colour stays that colour through the bilinear resize
    assert torch.equal(
        data.images[0], torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None].expand(3, 4, 5)
    )
    square = load_dataset(f"folder:{tree}", "train", size=7)  # another size: its own cache entry
    assert square.images.shape == (2, 3, 7, 7) and square.meta["cache"] != data.meta["cache"]
    for bad in ("0", "a,b", [1, 2, 3], "5000"):
        with pytest.raises(DataError, match="size must be H or H,W"):
            load_dataset(f"folder:{tree}", "train", size=bad)
