"""Bad input: each case is one ``robustfeat: error:`` line, exit code 2, no traceback, and no
output (no run directory, nothing new next to it, an existing run left untouched)."""

from __future__ import annotations

import hashlib
import inspect
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from robustfeat import io
from robustfeat.cli import main
from robustfeat.errors import ConfigError
from robustfeat.methods import METHODS, check_method_options, list_methods
from robustfeat.models import create_model
from test_reliability_faults import TRAIN, error_line


def tree_listing(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (to show nothing was written)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def fails_cleanly(argv: list[str], capsys: pytest.CaptureFixture, where: Path) -> str:
    """Run the CLI in-process; assert exit code 2, one error line, and no change under ``where``."""
    before = tree_listing(where)
    capsys.readouterr()
    assert main(argv) == 2
    err = error_line(capsys.readouterr().err)
    assert tree_listing(where) == before
    return err


# ------------------------------------------------------------------ names, types, ranges
BAD_TRAIN_ARGS = {
    "unknown model": (["--model", "resnet21"], "unknown model 'resnet21'. Did you mean"),
    "unknown timm model": (["--model", "timm/no_such_net"], "unknown timm model"),
    "unknown method": (["--method", "tenett"], "unknown method 'tenett'"),
    "unknown dataset": (["--data", "imagenet"], "unknown dataset 'imagenet'"),
    "dataset path missing": (["--data", "folder:"], "needs a path after 'folder:'"),
    "unknown scheme": (["--at", "pgd_att"], "unknown adversarial-training scheme 'pgd_att'"),
    "unknown recipe": (["-c", "nosuchrecipe"], "unknown recipe 'nosuchrecipe'; valid: "),
    "unknown config key": (["--set", "colour=red"], "unknown config key(s) ['colour']"),
    "float as text": (["--set", "lr=abc"], "config 'lr' must be float, got 'abc'"),
    "int as float": (["--set", "epochs=1.5"], "config 'epochs' must be int"),
    "bool as text": (["--set", "flip=maybe"], "config 'flip' must be bool"),
    "mapping as int": (["--set", "data_args=3"], "config 'data_args' must be dict"),
    "zero epochs": (["--epochs", "0"], "config 'epochs' must be >= 1"),
    "negative lr": (["--lr", "-0.1"], "config 'lr' must be > 0.0"),
    "bad choice": (["--set", "nan_policy=maybe"], "valid: stop, skip"),
    "bad precision": (["--precision", "fp8"], "valid: fp32, bf16, amp, auto"),
    "bad device": (["--device", "tpu"], "bad device 'tpu'"),
    "label noise > 1": (["--label-noise", "1.5"], "config 'label_noise' must be >= 0.0 and <= 1.0"),
    "milestones": (["--set", "milestones=[0.8, 0.2]"], "milestones must be increasing"),
    "not key=value": (["--arg", "novalue"], "--arg must look like key=value, got 'novalue'"),
    "method option unknown": (
        ["--arg", "smoothing=0.1"],
        "unknown option(s) ['smoothing']; valid: ",
    ),
    "method option type": (["--arg", "label_smoothing=abc"], "'label_smoothing' must be float"),
    "method option range": (["--arg", "label_smoothing=-0.1"], "label_smoothing must be in [0, 1)"),
    "method option range hi": (["--arg", "label_smoothing=1"], "label_smoothing must be in [0, 1)"),
    "scheme option alone": (["--at-arg", "eps=1"], "given without an adversarial-training scheme"),
    "model option unknown": (
        ["--model-arg", "depth=3"],
        "model 'test_cnn': unknown option(s) ['depth']",
    ),
    "model option type": (["--model-arg", "width=abc"], "'width' must be int, got 'abc'"),
    "model option range": (["--model-arg", "width=0"], "positive"),
    "data option unknown": (["--data-arg", "colour=1"], "unknown option(s) ['colour'] for dataset"),
    "data option type": (["--data-arg", "noise=abc"], "'noise' must be float, got 'abc'"),
    "data option range": (["--data-arg", "n_train=-5"], "n_train must be an integer >= 1"),
    "subset too large": (["--samples-per-class", "1000"], "has only"),
    "batch > data": (["--batch-size", "1024"], "fewer than one batch of 1024"),
    "unknown eval suite": (["--eval-suite", "nope"], "unknown evaluation suite 'nope'; valid: "),
}


@pytest.mark.parametrize("case", BAD_TRAIN_ARGS)
def test_bad_train_arguments(tmp_path, monkeypatch, capsys, case):
    extra, needle = BAD_TRAIN_ARGS[case]
    monkeypatch.chdir(tmp_path)  # the default run directory would be under runs/ here
    err = fails_cleanly([*TRAIN, *extra, "-o", str(tmp_path / "out")], capsys, tmp_path)
    assert needle in err
    assert list(tmp_path.iterdir()) == []


# method options: types from the annotations, ranges and sites from the methods themselves
BAD_METHOD_OPTIONS = [
    ("alfa", "eps=-1", "eps must be > 0 or None"),
    ("alfa", "steps=0", "steps must be an int >= 1"),
    ("alfa", "alpha=-0.1", "alpha must be > 0"),
    ("alfa", "nodes=stage9", "unknown perturbation site 'stage9'; valid: stages ['stem'"),
    ("alfa", "bn_mode=weird", "bn_mode must be one of ('train', 'eval')"),
    ("alfa", "steps=2.5", "'steps' must be int, got 2.5"),
    ("lalfa", "lam=-1", "lam must be >= 0"),
    ("moex", "p=2", "p must be in [0, 1]"),
    ("moex", "node=stage9", "unknown feature node 'stage9'"),
    ("advprop", "eps=-1", "eps must be > 0"),
    ("advprop", "random_start=maybe", "'random_start' must be bool"),
    ("feature_noise", "sigma=-1", "sigma must be > 0"),
    ("feature_noise", "nodes=[stem, nope]", "unknown perturbation site 'nope'"),
]


@pytest.mark.parametrize(("method", "option", "needle"), BAD_METHOD_OPTIONS)
def test_bad_method_options(tmp_path, capsys, method, option, needle):
    argv = [*TRAIN, "--method", method, "--arg", option, "-o", str(tmp_path / "o")]
    assert needle in fails_cleanly(argv, capsys, tmp_path)


@pytest.mark.parametrize("method", list_methods())
def test_every_method_lists_its_options_and_accepts_its_defaults(method):
    """The option check (names and annotated types) agrees with every method's own defaults."""
    params = inspect.signature(METHODS.get(method).__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    check_method_options(method, defaults)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['no_such_option'\]; valid: \["):
        check_method_options(method, {"no_such_option": 1})


def test_unknown_names_list_the_valid_ones(tmp_path, capsys):
    err = fails_cleanly([*TRAIN, "--method", "nope", "-o", str(tmp_path / "o")], capsys, tmp_path)
    assert f"Valid: {', '.join(list_methods())}" in err
    err = fails_cleanly([*TRAIN, "--data", "nope", "-o", str(tmp_path / "o")], capsys, tmp_path)
    assert "shapes" in err and "folder:PATH" in err


def test_argparse_errors_exit_2_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--epochs", "many"])
    assert exit_info.value.code == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err
    assert main(["list", "things"]) == 2
    assert "cannot list 'things'; valid: models, methods" in capsys.readouterr().err


# ------------------------------------------------------------------ recipes
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("epochs: [1\n", "is not valid YAML: line 2, column 1: expected ',' or ']'"),
        ("- a\n- b\n", "must hold a mapping of config keys, got list"),
        ("extends: SELF\nepochs: 1\n", "extends itself (recipe -> recipe)"),
        ("extends: 3\n", "extends must be a recipe name or path"),
        ("colour: red\n", "unknown config key(s) ['colour']"),
        ("weight_decay: -1\n", "config 'weight_decay' must be >= 0.0"),
    ],
)
def test_bad_recipes(tmp_path, capsys, text, needle):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text.replace("SELF", str(recipe)))
    err = fails_cleanly([*TRAIN, "-c", str(recipe), "-o", str(tmp_path / "o")], capsys, tmp_path)
    assert needle in err
    assert not (tmp_path / "o").exists()


def test_missing_recipe_file(tmp_path, capsys):
    err = fails_cleanly(
        [*TRAIN, "-c", str(tmp_path / "gone.yaml"), "-o", str(tmp_path / "o")], capsys, tmp_path
    )
    assert "recipe file" in err and "does not exist" in err


# ------------------------------------------------------------------ datasets
def _drop_data_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if not skip and arg != "--data-arg":
            out.append(arg)
        skip = arg == "--data-arg"
    return out


TRAIN_ON_FOLDER = _drop_data_args(TRAIN)  # the shapes options do not apply to folder:/zip:


def image(path: Path, size: tuple[int, int] = (8, 8), colour: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (colour, 255 - colour, (3 * colour) % 256)).save(path)


def image_tree(root: Path) -> Path:
    for cls in ("cat", "dog"):
        for i in range(4):
            image(root / cls / f"{i}.png", colour=40 * i)
    return root


def _empty_class(root: Path) -> str:
    (root / "eel").mkdir()
    return "class folder eel/ has no image files"


def _corrupt(root: Path) -> str:
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return f"{root / 'cat' / 'broken.png'} is not a readable image"


def _not_an_image(root: Path) -> str:
    (root / "dog" / "notes.txt").write_text("hello")
    return f"{root / 'dog' / 'notes.txt'} is not a readable image"


def _mixed_sizes(root: Path) -> str:
    image(root / "dog" / "wide.png", size=(12, 8))
    return "images have mixed sizes: " + str(root / "dog" / "wide.png") + " is 12x8"


def _no_classes(root: Path) -> str:
    shutil.rmtree(root)
    image(root / "loose.png")
    return "no class folders"


@pytest.mark.parametrize(
    "damage", [_empty_class, _corrupt, _not_an_image, _mixed_sizes, _no_classes]
)
def test_dataset_problems_name_the_folder_or_file(tmp_path, capsys, damage):
    root = image_tree(tmp_path / "data")
    needle = damage(root)
    argv = [*TRAIN_ON_FOLDER, "--data", f"folder:{root}", "--batch-size", "4"]
    argv += ["-o", str(tmp_path / "o")]
    assert needle in fails_cleanly(argv, capsys, tmp_path)
    assert not (tmp_path / "o").exists()


def test_a_constant_colour_channel_cannot_be_normalised(tmp_path, capsys):
    root = tmp_path / "data"
    for cls in ("cat", "dog"):
        for i in range(4):
            path = root / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(path)
    argv = [*TRAIN_ON_FOLDER, "--data", f"folder:{root}", "--batch-size", "4"]
    err = fails_cleanly([*argv, "-o", str(tmp_path / "o")], capsys, tmp_path)
    assert "normalization needs one positive std per mean" in err


def test_images_too_small_for_reflect_padding(tmp_path, capsys):
    root = tmp_path / "data"
    for cls in ("cat", "dog"):
        for i in range(4):
            image(root / cls / f"{i}.png", size=(4, 4), colour=40 * i)
    argv = [*TRAIN_ON_FOLDER, "--data", f"folder:{root}", "--batch-size", "4"]
    err = fails_cleanly([*argv, "-o", str(tmp_path / "o")], capsys, tmp_path)
    assert "reflect padding 4 needs images larger than 4 pixels, got 4x4" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("folder:{tmp}/missing", "missing does not exist"),
        ("zip:{tmp}/missing.zip", "missing.zip does not exist or is not a file"),
        ("zip:{tmp}/fake.zip", "is not a readable zip file"),
        ("folder:{tmp}/fake.zip", "is not a directory (a zip loads as zip:PATH)"),
    ],
)
def test_dataset_paths(tmp_path, capsys, spec, needle):
    (tmp_path / "fake.zip").write_text("not a zip")
    argv = [*TRAIN_ON_FOLDER, "--data", spec.format(tmp=tmp_path), "-o", str(tmp_path / "o")]
    assert needle in fails_cleanly(argv, capsys, tmp_path)


# ------------------------------------------------------------------ checkpoints (on --resume)
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main([*TRAIN, "--epochs", "1", "-o", str(run)]) == 0
    return run


def _checkpoint_weights(run: Path) -> Path:
    return next((run / "checkpoints").iterdir()) / "weights.safetensors"


# damages of a weights file (a checkpoint's or the final one): path -> expected message
def _truncate(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:100])
    return "is not a valid safetensors file (truncated or corrupt?)"


def _garble_header(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[8:40] = b"#" * 32
    path.write_bytes(bytes(data))
    return "is not a valid safetensors file"


def _pickled(path: Path) -> str:
    path.write_bytes(b"\x80\x04" + b"K\x01." * 4)
    return "is a pickle / torch.save file"


def _nan_tensor(path: Path) -> str:
    tensors = io.load_tensors(path)
    tensors["model.fc.weight"][0, :2] = torch.tensor([float("nan"), float("inf")])
    io.save_tensors(path, tensors, check_finite=False)  # damage io would refuse to write
    return "holds NaN/inf values in ['model.fc.weight']"


def _other_architecture(path: Path) -> str:
    wider = create_model("test_cnn", 10, width=8).state_dict()
    io.save_tensors(path, {f"model.{k}": v for k, v in wider.items()})
    return "does not fit this model (wrong architecture or classes?): "


def _fewer_classes(path: Path) -> str:
    tensors = io.load_tensors(path)
    tensors["model.fc.weight"] = tensors["model.fc.weight"][:5]
    tensors["model.fc.bias"] = tensors["model.fc.bias"][:5]
    io.save_tensors(path, tensors)
    return "model.fc.weight: file (5, 16) vs model (10, 16)"


WEIGHT_DAMAGE = [
    _truncate,
    _garble_header,
    _pickled,
    _nan_tensor,
    _other_architecture,
    _fewer_classes,
]


@pytest.mark.parametrize("damage", WEIGHT_DAMAGE)
def test_damaged_checkpoint_weights_on_resume(tmp_path, capsys, finished, damage):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    needle = damage(_checkpoint_weights(run))
    argv = [*TRAIN, "--epochs", "1", "-o", str(run), "--resume"]
    assert needle in fails_cleanly(argv, capsys, tmp_path)


def _optimizer_missing(run: Path) -> str:
    (_checkpoint_weights(run).parent / "optimizer.json").unlink()
    return "optimizer.json does not exist"


def _optimizer_shape(run: Path) -> str:
    path = _checkpoint_weights(run).parent / "optimizer.safetensors"
    tensors = io.load_tensors(path, check_finite=False)
    tensors["0.momentum_buffer"] = torch.zeros(3)
    io.save_tensors(path, tensors)
    return "0.momentum_buffer has shape (3,), its parameter (4, 3, 3, 3)"


def _optimizer_extra(run: Path) -> str:
    path = _checkpoint_weights(run).parent / "optimizer.safetensors"
    tensors = io.load_tensors(path, check_finite=False)
    io.save_tensors(path, {**tensors, "99.momentum_buffer": torch.zeros(1)})
    return "optimizer state does not fit this run: entry '99.momentum_buffer'"


def _state_not_json(run: Path) -> str:
    (run / "state.json").write_text('{"step": 4, "checkp')
    return "state.json is not valid JSON (truncated or corrupt?)"


@pytest.mark.parametrize(
    "damage", [_optimizer_missing, _optimizer_shape, _optimizer_extra, _state_not_json]
)
def test_damaged_checkpoint_state_on_resume(tmp_path, capsys, finished, damage):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    needle = damage(run)
    argv = [*TRAIN, "--epochs", "1", "-o", str(run), "--resume"]
    assert needle in fails_cleanly(argv, capsys, tmp_path)


# ------------------------------------------------------------------ bench matrices
BENCH_HEAD = "model: test_cnn\ndata: shapes\nbench:\n"


@pytest.mark.parametrize(
    ("cells", "needle"),
    [
        ("  cells:\n    - {method: ce, name: ../../escaped}\n", "must be a plain name"),
        ("  cells:\n    - {method: ce, name: /abs}\n", "must be a plain name"),
        ("  cells:\n    - {method: ce, name: .hidden}\n", "must be a plain name"),
        ("  cells:\n    - {method: ce, name: 123}\n", "name must be str, got 123"),
        ("  cells:\n    - {method: ce, seeds: 3}\n", "seeds must be list[int], got 3"),
        ("  cells:\n    - {method: ce, seeds: ['../x']}\n", "seeds must be list[int]"),
        ("  seeds: [a]\n  cells:\n    - {method: ce}\n", "must be a list of integers"),
        ("  cells:\n    - {method: ce, set: 5}\n", "set must be dict or None, got 5"),
        ("  cells:\n    - {method: nope}\n", "unknown method 'nope'"),
        ("  cells:\n    - {method: ce, set: {lr: -1}}\n", "config 'lr' must be > 0.0"),
        ("  cells: 3\n", "has no `bench: {cells: [...]}` section"),
    ],
)
def test_bad_bench_matrices(tmp_path, capsys, cells, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BENCH_HEAD + cells)
    argv = ["bench", "--recipe", str(recipe)]
    argv += ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    assert needle in fails_cleanly(argv, capsys, tmp_path.parent)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


# ------------------------------------------------------------------ robustfeat eval RUN_DIR
EVAL = ["--suite", "clean", "--no-progress", "--device", "cpu"]


def _eval_weights(run: Path) -> Path:
    return run / "weights.safetensors"


@pytest.mark.parametrize("damage", WEIGHT_DAMAGE)
def test_eval_of_damaged_weights(tmp_path, capsys, finished, damage):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "results.json").unlink()
    needle = damage(_eval_weights(run))
    assert needle in fails_cleanly(["eval", str(run), *EVAL], capsys, tmp_path)
    assert not (run / "results.json").exists()


def _eval_no_weights(run: Path) -> str:
    _eval_weights(run).unlink()
    (run / "state.json").unlink()
    return "no weights in"


def _eval_checkpoint_gone(run: Path) -> str:
    _eval_weights(run).unlink()
    shutil.rmtree(run / "checkpoints")
    return "state.json points at"


def _eval_pointer_outside(run: Path) -> str:
    _eval_weights(run).unlink()
    (run / "state.json").write_text('{"step": 4, "checkpoint": "../../etc"}')
    return "is not a robustfeat checkpoint pointer"


def _eval_config_tag(run: Path) -> str:
    (run / "config.yaml").write_text("epochs: !!python/object/apply:os.system ['true']\n")
    return "config.yaml is not valid YAML"


def _eval_config_value(run: Path) -> str:
    (run / "config.yaml").write_text("model: test_cnn\nepochs: zero\n")
    return "config 'epochs' must be int"


@pytest.mark.parametrize(
    "damage",
    [
        _eval_no_weights,
        _eval_checkpoint_gone,
        _eval_pointer_outside,
        _eval_config_tag,
        _eval_config_value,
    ],
)
def test_eval_of_a_damaged_run_directory(tmp_path, capsys, finished, damage):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "results.json").unlink()
    needle = damage(run)
    assert needle in fails_cleanly(["eval", str(run), *EVAL], capsys, tmp_path)
    assert not (run / "results.json").exists()


def test_eval_with_a_dataset_of_other_classes(tmp_path, capsys, finished):
    """A 2-class test set against a 10-class checkpoint."""
    root = tmp_path / "data"
    for cls in ("cat", "dog"):
        for i in range(2):
            image(root / cls / f"{i}.png", size=(16, 16), colour=60 * i)
    argv = ["eval", str(finished), *EVAL, "--data", f"folder:{root}", "--out", str(tmp_path / "r")]
    err = fails_cleanly(argv, capsys, tmp_path)
    assert f"data does not fit {finished}: its class names ['cat', 'dog'] differ" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--n", "-1"], "n must be an integer >= 0, got -1"),
        (["--suite", "nope"], "unknown evaluation suite 'nope'"),
        (["--device", "tpu"], "bad device 'tpu'"),
        (["--shift", "x=nope"], "unknown dataset 'nope'"),
    ],
)
def test_bad_eval_arguments(tmp_path, capsys, finished, args, needle):
    argv = ["eval", str(finished), *EVAL, *args, "--out", str(tmp_path / "r.json")]
    assert needle in fails_cleanly(argv, capsys, tmp_path)
