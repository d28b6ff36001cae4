"""The 18 breaks of issue 31, each reproduced as it was found: nothing outside the run directory
is touched, nothing wrong is written as if right, nothing is read unbounded, and bad input is
one bounded line (exit 2) before anything is written.

Numbered as in the issue: 1-4 data loss, 5-11 wrong results, 12-13 reading what we should not,
14-16 resource exhaustion, 17-18 unclear or late failures.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import tracemalloc
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import save_file
from torch import nn

import robustfeat.data.folder as folder_module
from robustfeat.attacks.base import ATTACKS, Attack, AttackOutput
from robustfeat.attacks.suites import AttackSpec, Suite
from robustfeat.cli import main
from robustfeat.data import ImageDataset, load_dataset, prepare_data
from robustfeat.errors import CheckpointError, ConfigError, DataError
from robustfeat.evaluate import evaluate
from robustfeat.io import load_tensors, save_tensors
from robustfeat.methods import METHODS
from robustfeat.report.build import EXTERNAL_SECTION, load_external_figures
from robustfeat.runs import check_data_fits, load_run
from robustfeat.train import RunDir
from test_data_folder import make_tree, write_image, zip_tree
from test_reliability_faults import TRAIN, InjectNonFinite, epoch_records, error_line
from test_security import Payload

ONE_EPOCH = [*TRAIN, "--epochs", "1"]
RUN_MARKER = ".robustfeat-run"


def tree(path: Path) -> dict[str, bytes | None]:
    """Every file (content) and folder (None) under ``path``: what "nothing touched" compares."""
    return {
        p.relative_to(path).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(path.rglob("*"))
    }


def trained(tmp_path: Path, *extra: str) -> Path:
    run = tmp_path / "run"
    assert main([*ONE_EPOCH, *extra, "-o", str(run)]) == 0
    return run


# ------------------------------------------------------------------ 1-4: data loss
def test_1_a_symlinked_checkpoints_folder_is_refused_and_its_target_kept(tmp_path, capsys):
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "data.txt").write_text("precious")
    run = tmp_path / "r"
    run.mkdir()
    (run / "checkpoints").symlink_to(outside)
    before = tree(outside)
    assert main([*ONE_EPOCH, "-o", str(run)]) == 2
    assert "checkpoints is a symlink" in error_line(capsys.readouterr().err)
    assert tree(outside) == before
    # also inside a run of ours: a checkpoint replaced by a link is refused on --resume
    run = trained(tmp_path)
    ckpt = next((run / "checkpoints").iterdir())
    ckpt.rename(tmp_path / "moved")
    ckpt.symlink_to(tmp_path / "moved")
    before = tree(tmp_path / "moved")
    capsys.readouterr()
    assert main([*ONE_EPOCH, "-o", str(run), "--resume"]) == 2
    assert "is a symlink" in error_line(capsys.readouterr().err)
    assert tree(tmp_path / "moved") == before


def test_2_out_on_a_foreign_folder_is_refused_and_nothing_is_deleted(tmp_path, capsys):
    foreign = tmp_path / "p"
    (foreign / "checkpoints" / "old").mkdir(parents=True)
    (foreign / "results.json").write_text("{}")
    (foreign / "notes.txt").write_text("mine")
    before = tree(foreign)
    for extra in ([], ["--resume"]):
        assert main([*ONE_EPOCH, *extra, "-o", str(foreign)]) == 2
        assert "is not a robustfeat run directory" in error_line(capsys.readouterr().err)
        assert tree(foreign) == before
    # an empty folder is fine, and becomes ours
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*ONE_EPOCH, "-o", str(empty)]) == 0
    assert (empty / RUN_MARKER).is_file() and (empty / "weights.safetensors").is_file()


def test_3_a_finished_run_is_not_started_over_without_resume(tmp_path, capsys):
    run = trained(tmp_path)
    before = tree(run)
    capsys.readouterr()
    assert main([*ONE_EPOCH, "--seed", "1", "-o", str(run)]) == 2
    err = error_line(capsys.readouterr().err)
    assert "already holds a run" in err and "--resume" in err
    assert tree(run) == before
    # --resume continues it (finished: evaluated again, the weights unchanged)
    assert main([*ONE_EPOCH, "-o", str(run), "--resume"]) == 0
    weights = load_tensors(run / "weights.safetensors")
    assert all(
        torch.equal(v, st_load(before["weights.safetensors"])[k]) for k, v in weights.items()
    )


def test_4_a_run_directory_is_locked_while_a_process_writes_it(tmp_path, capsys):
    run = trained(tmp_path)
    holder = RunDir(run)
    holder.prepare(resume=True)  # another process training into it (flock is per open file)
    before = tree(run)
    try:
        for extra in (["--resume"], ["--seed", "1"]):
            capsys.readouterr()
            assert main([*ONE_EPOCH, *extra, "-o", str(run)]) == 2
            assert "being written by another robustfeat process" in error_line(
                capsys.readouterr().err
            )
            assert tree(run) == before
    finally:
        holder.release()
    assert main([*ONE_EPOCH, "-o", str(run), "--resume"]) == 0  # free again


# ------------------------------------------------------------------ 5-11: wrong results
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run; tests that change it work on a copy (``copy_of``)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main([*ONE_EPOCH, "-o", str(run)]) == 0
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.float64])
def test_8_weights_of_another_dtype_are_refused(tmp_path, capsys, finished, dtype):
    run = copy_of(finished, tmp_path)
    path = run / "weights.safetensors"
    tensors = load_tensors(path)
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = tensors[key].to(dtype)
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=f"1 dtype mismatch.*{key}: file {dtype} vs model"):
        load_run(run)
    capsys.readouterr()
    assert main(["eval", str(run), "--suite", "clean", "--device", "cpu", "--no-progress"]) == 2
    assert "dtype mismatch" in error_line(capsys.readouterr().err)


def test_17_bad_num_classes_metadata_is_a_checkpoint_error(tmp_path, finished):
    run = copy_of(finished, tmp_path)
    path = run / "weights.safetensors"
    save_file(load_tensors(path), path, metadata={"num_classes": "abc"})
    with pytest.raises(CheckpointError, match="metadata num_classes must be a positive integer"):
        load_run(run)


class NaNGradient(InjectNonFinite):
    """A finite loss whose gradients are NaN at the given steps (d sqrt(|u|) / du at u = 0)."""

    name = "test_nan_gradient"

    def forward(self, x, y):
        logits = self.model(x)
        ce = F.cross_entropy(logits, y)
        if torch.initial_seed() in self.bad_seeds:
            ce = ce + (logits.sum() * 0).abs().sqrt()
        return {"loss": ce, "logits": logits, "loss_ce": ce}


def test_5_nan_policy_skip_skips_nan_gradients_and_never_writes_nan_weights(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(METHODS._entries, NaNGradient.name, NaNGradient)
    run = tmp_path / "run"
    args = [*TRAIN, "--method", NaNGradient.name, "--arg", "at=[2]", "--set", "nan_policy=skip"]
    assert main([*args, "-o", str(run)]) == 0
    assert "non-finite gradients at step 2" in capsys.readouterr().err
    assert [r.get("skipped_batches", 0) for r in epoch_records(run)] == [1, 0]
    load_tensors(run / "weights.safetensors")  # finite (load_tensors checks)
    # and whatever the path, NaN weights are refused by the writer itself
    with pytest.raises(CheckpointError, match=r"not writing .*w\.safetensors: NaN/inf values"):
        save_tensors(tmp_path / "w.safetensors", {"a": torch.tensor([1.0, float("nan")])})
    assert not (tmp_path / "w.safetensors").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--lr", "nan"], "config 'lr' must be > 0.0, got nan"),
        (["--lr", "inf"], "config 'lr' must be > 0.0, got inf"),
        (["--set", "warmup=.nan"], "config 'warmup' must be >= 0.0 and <= 1.0, got nan"),
        (["--set", "weight_decay=.nan"], "config 'weight_decay' must be >= 0.0, got nan"),
        (["--set", "gamma=-3"], "config 'gamma' must be > 0.0, got -3"),
        (["--set", "momentum=-5"], "config 'momentum' must be >= 0.0 and <= 1.0, got -5"),  # 17
        (["--set", "eval_n=-5"], "config 'eval_n' must be >= 1, got -5"),  # 18
    ],
)
def test_11_17_18_non_finite_and_out_of_range_values_are_refused_before_writing(
    tmp_path, capsys, flags, needle
):
    assert main([*ONE_EPOCH, *flags, "-o", str(tmp_path / "run")]) == 2
    assert needle in error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_11_divergence_before_the_first_checkpoint_does_not_claim_one_is_kept(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(METHODS._entries, InjectNonFinite.name, InjectNonFinite)
    run = tmp_path / "run"
    assert main([*TRAIN, "--method", InjectNonFinite.name, "--arg", "at=[2]", "-o", str(run)]) == 2
    err = error_line(capsys.readouterr().err)
    assert "non-finite loss at step 2" in err and "before the first checkpoint" in err
    assert "last good checkpoint is kept" not in err and not (run / "state.json").exists()


def test_9_resume_without_config_yaml_is_refused(tmp_path, capsys):
    run = trained(tmp_path)
    (run / "config.yaml").unlink()
    (run / "weights.safetensors").unlink()
    (run / "results.json").unlink()
    before = tree(run)
    capsys.readouterr()
    assert main([*ONE_EPOCH, "--lr", "0.5", "-o", str(run), "--resume"]) == 2
    assert "config.yaml is missing" in error_line(capsys.readouterr().err)
    assert tree(run) == before


# ------------------------------------------------------------------ 17-18: late failures
def test_18_resume_of_a_directory_that_does_not_exist_is_refused(tmp_path, capsys):
    assert main([*ONE_EPOCH, "-o", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "does not exist" in error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


class Brighten(Attack):
    """Test-only "attack" that adds eps to every pixel: it makes dark images of class 1 right."""

    name = "test_brighten"

    def perturb(self, model, x, y):
        return AttackOutput(x + self.eps)


class MeanBrightness(nn.Module):
    """Class 1 when the mean pixel is above 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(100.0))

    def forward(self, x):
        m = x.mean((1, 2, 3)) - 0.5
        return torch.stack([-m, m], 1) * self.scale


def test_10_worst_case_never_exceeds_clean_on_the_same_images(monkeypatch):
    monkeypatch.setitem(ATTACKS._entries, Brighten.name, Brighten)
    levels = torch.tensor([0.49, 0.51] * 20)  # all class 1: half dark (wrong), half light
    images = (levels[:, None, None, None] * 255).round().to(torch.uint8).expand(-1, 3, 4, 4)
    test = ImageDataset(images.contiguous(), torch.ones(40, dtype=torch.long), 2, ["a", "b"])
    suite = Suite("t", "test", attacks=(AttackSpec("bright", Brighten.name, {"eps": 8 / 255}),))
    results = evaluate(MeanBrightness(), test, suite, n=10, progress=False)
    assert results["clean"]["accuracy"] == 0.5 and results["attacks"][0]["accuracy"] == 1.0
    worst = results["worst_case"]  # on the 10 attacked images, whose clean accuracy is:
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:10]
    clean_here = int((levels[perm] > 0.5).sum()) / 10
    assert worst["n"] == 10 and worst["accuracy"] == worst["clean_accuracy"] == clean_here
    # no attack at all is no robust accuracy (it printed the clean one as the worst case)
    with pytest.raises(ConfigError, match="n=0 attacks no image"):
        evaluate(MeanBrightness(), test, suite, n=0, progress=False)


# ------------------------------------------------------------------ 6-7: data read wrongly
@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(directory))
    return directory


def test_6_sixteen_bit_pngs_are_scaled_not_saturated(tmp_path, cache):
    levels = {"dark": 1000, "light": 60000}  # 16-bit values; 8-bit: round(v * 255 / 65535)
    for name, level in levels.items():
        path = tmp_path / "tree" / name / "x.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(np.full((4, 4), level, dtype=np.uint16)).save(path)
        assert Image.open(path).mode == "I;16"
    data = load_dataset(f"folder:{tmp_path / 'tree'}")
    assert [data.images[i].unique().tolist() for i in range(2)] == [[4], [233]]


def test_7_train_and_test_classes_must_match_by_name(tmp_path, cache):
    for split, names in (("train", ("cat", "dog")), ("test", ("cat", "frog"))):
        for name in names:
            write_image(tmp_path / "tree" / split / name / "0.png", (9, 9, 9))
    with pytest.raises(DataError, match="train 'dog' vs test 'frog'"):
        prepare_data(f"folder:{tmp_path / 'tree'}")


# ------------------------------------------------------------------ 12-13: reading outside
@pytest.mark.parametrize("option", ["checkpoint_path", "pretrained_cfg"])
def test_12_timm_options_that_torch_load_a_file_are_refused_unread(tmp_path, capsys, option):
    timm = pytest.importorskip("timm")
    marker, pth = tmp_path / "PWNED", tmp_path / "x.pth"
    if option == "checkpoint_path":  # a harmless pickle: timm's torch.load would use its weights
        torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), pth)
        value = str(pth)
    else:
        pth.write_bytes(pickle.dumps(Payload(marker)))
        value = f"{{file: {pth}}}"
    base = [a for a in ONE_EPOCH if a not in ("--model-arg", "width=4")]  # test_cnn's option
    argv = [*base, "--model", "timm/resnet18", "--model-arg", f"{option}={value}"]
    assert main([*argv, "-o", str(tmp_path / "o")]) == 2
    err = error_line(capsys.readouterr().err)
    assert f"timm option {option} is refused" in err and "pretrained_file" in err
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_13_report_figures_embed_only_pngs_of_the_figures_directory(tmp_path, where):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(secret)
    figures = tmp_path / "figures"
    figures.mkdir()
    name = {"parent": "../secret.png", "absolute": str(secret), "symlink": "link.png"}[where]
    (figures / "link.png").symlink_to(secret)
    (figures / "index.yaml").write_text(yaml.safe_dump({"figures": [{"file": name}]}))
    with pytest.raises(ConfigError, match=r"must be a plain name|is a symlink"):
        load_external_figures(figures)
    Image.new("RGB", (2, 2)).save(figures / "own.png")  # a file of its own is embedded
    (figures / "index.yaml").write_text(yaml.safe_dump({"figures": [{"file": "own.png"}]}))
    assert [p.id for p in load_external_figures(figures)[EXTERNAL_SECTION]] == ["ext-own"]


# ------------------------------------------------------------------ 15-17: bounded input
def test_15_a_zip_member_too_large_by_its_header_is_refused_unread(tmp_path, cache, monkeypatch):
    tree = tmp_path / "tree"
    write_image(tree / "cat" / "0.png", (1, 2, 3), size=(64, 64))
    write_image(tree / "dog" / "0.png", (3, 2, 1))
    archive = zip_tree(tree, tmp_path / "data.zip")
    size = zipfile.ZipFile(archive).getinfo("cat/0.png").file_size
    monkeypatch.setattr(folder_module, "MAX_FILE_BYTES", size - 1)
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a: pytest.fail("a member was read"))
    with pytest.raises(DataError, match=f"cat/0.png is {size} bytes uncompressed, over the"):
        load_dataset(f"zip:{archive}")


def billion_laughs(depth: int) -> str:
    """YAML whose last alias expands to 10**depth strings (a few hundred bytes as text)."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 10)}]" for k in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def test_14_yaml_alias_bombs_are_refused_unexpanded(tmp_path, capsys):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(billion_laughs(9))
    assert len(recipe.read_bytes()) < 1000
    assert main([*ONE_EPOCH, "-c", str(recipe), "-o", str(tmp_path / "o")]) == 2
    err = error_line(capsys.readouterr().err)
    assert f"{recipe} is not valid YAML: its aliases expand to more than 100000" in err
    assert not (tmp_path / "o").exists()
    assert main([*ONE_EPOCH, "--set", "model_args=" + billion_laughs(9).replace("\n", " ")]) == 2
    # in a run's config.yaml, one within the bound (10**3 strings) as a value quoted in the
    # error: the line is cut to a bounded length
    anchors = billion_laughs(3).replace("\n", ", ").replace(": &", ": !!seq &")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("lr: {" + anchors.rstrip(", ") + "}\n")
    capsys.readouterr()
    assert main(["eval", str(run), "--suite", "clean", "--device", "cpu"]) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("robustfeat: error: config 'lr' must be float, got {'a0': ['lol'")
    assert len(err) == len("robustfeat: error: ") + 2000 and err.endswith("...")


@pytest.mark.parametrize("damage", ["sparse_tail", "header_too_big"])
def test_15_safetensors_sizes_are_checked_against_the_file_before_reading(tmp_path, damage):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.ones(4)})
    if damage == "sparse_tail":  # 256 MiB on paper, no disk used: a sparse file
        with path.open("r+b") as f:
            f.truncate(256 * 2**20)
        needle = "declares 16 bytes of tensors, the file holds"
    else:
        data = path.read_bytes()
        path.write_bytes((2**40).to_bytes(8, "little") + data[8:])
        needle = f"header size {2**40} does not fit"
    tracemalloc.start()
    with pytest.raises(CheckpointError, match=needle):
        load_tensors(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20  # the file was not read


def huge_png(path: Path, width: int, height: int) -> None:
    """A valid 1x1 PNG whose header says ``width`` x ``height`` (what a decoder sees first)."""
    buffer = BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("side", [30000, 9000])  # beyond PIL's bomb limit; beyond ours only
def test_17_an_image_too_large_by_its_header_is_one_clear_error(tmp_path, cache, side):
    huge_png(tmp_path / "tree" / "cat" / "0.png", side, side)
    write_image(tmp_path / "tree" / "dog" / "0.png", (3, 2, 1))
    with pytest.raises(DataError, match=r"cat/0\.png has more than \d+ pixels"):
        load_dataset(f"folder:{tmp_path / 'tree'}")


def test_16_decoder_processes_are_capped_at_the_available_cores(tmp_path, cache, monkeypatch):
    started = []

    class Recording(ProcessPoolExecutor):
        def __init__(self, max_workers, **kwargs):
            started.append(max_workers)
            super().__init__(max_workers=1, **kwargs)

    monkeypatch.setattr(folder_module, "ProcessPoolExecutor", Recording)
    monkeypatch.setattr(folder_module, "_POOL_MIN_FILES", 1)
    data = load_dataset(f"folder:{make_tree(tmp_path / 'tree')}", workers=64)
    assert len(data) == 5 and started == [min(64, len(os.sched_getaffinity(0)))]


def test_17_an_unwritable_dataset_cache_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(tmp_path / "a-file"))
    with pytest.raises(DataError, match=r"cannot write the dataset cache .*ROBUSTFEAT_CACHE"):
        load_dataset(f"folder:{make_tree(tmp_path / 'tree')}")


def test_18_eval_on_data_with_other_classes_or_image_size_is_refused(
    tmp_path, capsys, cache, finished
):
    for k in range(10):  # as many classes as shapes, 16x16 like the run, other names
        write_image(tmp_path / "tree" / f"other{k}" / "0.png", (k, k, k), size=(16, 16))
    run = copy_of(finished, tmp_path)
    before = tree(run)
    data = ["--data", f"folder:{tmp_path / 'tree'}", "--device", "cpu"]
    assert main(["eval", str(run), "--suite", "clean", *data, "--no-progress"]) == 2
    assert f"does not fit {run}: its class names" in error_line(capsys.readouterr().err)
    assert main(["cams", str(run), *data, "-o", str(tmp_path / "cams")]) == 2
    assert "its class names" in error_line(capsys.readouterr().err)
    assert tree(run) == before and not (tmp_path / "cams").exists()
    # the same classes at another image size
    other_size = load_dataset("shapes", "test", n_test=10, image_size=8)
    with pytest.raises(DataError, match=r"its image shape \[3, 8, 8\] differ"):
        check_data_fits(run, other_size)
    check_data_fits(run, load_dataset("shapes", "test", n_test=10, image_size=16))


def test_18_cams_checks_n_metric_before_writing(tmp_path, capsys, finished):
    out = tmp_path / "cams"
    assert main(["cams", str(finished), "--n-metric", "0", "--device", "cpu", "-o", str(out)]) == 2
    assert "--n-metric must be >= 1, got 0" in error_line(capsys.readouterr().err)
    assert not out.exists()
