"""Files from strangers: pickles are refused unread, YAML cannot build objects, config strings are
never evaluated, and names from configs cannot write outside the output directory. A scan of
src/ keeps future code from loading pickles, evaluating strings or loading YAML unsafely (or
with unbounded alias expansion: only robustfeat.config's bounded loader) or reading a file whole
without a size bound."""

from __future__ import annotations

import ast
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from robustfeat import io, reads
from robustfeat.cli import main
from robustfeat.config import MAX_YAML_BYTES, read_yaml_document, recipe_path
from robustfeat.errors import CheckpointError, ConfigError
from test_reliability_faults import TRAIN, error_line

SRC = Path(__file__).resolve().parents[1] / "src" / "robustfeat"


class Payload:
    """Unpickling this runs code that creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def malicious_files(tmp_path: Path, marker: Path) -> dict[str, bytes]:
    """The payload in every container a .pt / .pkl / .safetensors file could be."""
    out = {f"pickle protocol {p}": pickle.dumps(Payload(marker), protocol=p) for p in range(6)}
    torch.save({"w": Payload(marker)}, tmp_path / "zip.pt")
    out["torch.save (zip)"] = (tmp_path / "zip.pt").read_bytes()
    torch.save({"w": Payload(marker)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    out["torch.save (legacy)"] = (tmp_path / "legacy.pt").read_bytes()
    return out


def test_pickles_are_refused_without_executing(tmp_path):
    marker = tmp_path / "PWNED"
    for kind, data in malicious_files(tmp_path, marker).items():
        for name in ("weights.safetensors", "model.pt", "model.pkl"):
            (tmp_path / name).write_bytes(data)
            with pytest.raises(CheckpointError, match=r"pickle|not a valid safetensors"):
                io.load_tensors(tmp_path / name)
            assert not marker.exists(), (kind, name)
    # the payload is real: unpickling it would have created the marker
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.read_text() == "pwned"


def test_a_pickle_in_a_run_directory_is_refused_on_resume(tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    assert main([*TRAIN, "--epochs", "1", "-o", str(run)]) == 0
    ckpt = next((run / "checkpoints").iterdir())
    (ckpt / "weights.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    capsys.readouterr()
    assert main([*TRAIN, "--epochs", "1", "-o", str(run), "--resume"]) == 2
    assert "is a pickle / torch.save file; robustfeat only loads safetensors" in error_line(
        capsys.readouterr().err
    )
    assert not marker.exists()


def test_a_pickle_as_run_weights_is_refused_by_eval_and_load_run(tmp_path, capsys):
    from robustfeat.runs import load_run

    run, marker = tmp_path / "run", tmp_path / "PWNED"
    assert main([*TRAIN, "--epochs", "1", "-o", str(run)]) == 0
    (run / "results.json").unlink()
    (run / "weights.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match="pickle"):
        load_run(run)
    capsys.readouterr()
    assert main(["eval", str(run), "--suite", "clean", "--no-progress", "--device", "cpu"]) == 2
    assert "is a pickle / torch.save file" in error_line(capsys.readouterr().err)
    assert not marker.exists() and not (run / "results.json").exists()


def test_a_pickle_as_timm_pretrained_file_is_refused(tmp_path, capsys):
    marker, evil = tmp_path / "PWNED", tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    argv = [*TRAIN, "--model", "timm/resnet18", "--model-arg", f"pretrained_file={evil}"]
    assert main([*argv, "-o", str(tmp_path / "o")]) == 2
    assert "cannot read" in error_line(capsys.readouterr().err)
    assert not marker.exists() and not (tmp_path / "o").exists()
    argv[-1] = f"pretrained_file={tmp_path / 'model.pth'}"
    assert main([*argv, "-o", str(tmp_path / "o")]) == 2
    assert "must be a .safetensors file" in error_line(capsys.readouterr().err)


# ------------------------------------------------------------------ YAML and config strings
def yaml_payloads(marker: Path) -> list[str]:
    command = f"touch {marker}"
    return [
        f"!!python/object/apply:os.system [{command!r}]",
        f"!!python/object/new:subprocess.Popen [[sh, -c, {command!r}]]",
        "!!python/name:os.system",
        "!!python/object:robustfeat.config.TrainConfig {epochs: 1}",
    ]


def test_yaml_tags_in_recipes_are_refused(tmp_path, capsys):
    marker, recipe = tmp_path / "PWNED", tmp_path / "evil.yaml"
    for payload in yaml_payloads(marker):
        recipe.write_text(f"epochs: {payload}\n")
        assert main([*TRAIN, "-c", str(recipe), "-o", str(tmp_path / "o")]) == 2
        err = error_line(capsys.readouterr().err)
        assert "is not valid YAML" in err and "could not determine a constructor" in err
        assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--set", "--arg", "--data-arg", "--model-arg", "--at-arg"])
def test_yaml_tags_in_command_line_values_are_refused(tmp_path, capsys, flag):
    marker = tmp_path / "PWNED"
    for payload in yaml_payloads(marker):
        assert main([*TRAIN, flag, f"lr={payload}", "-o", str(tmp_path / "o")]) == 2
        assert "cannot parse value of" in error_line(capsys.readouterr().err)
        assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("flag", "needle"),
    [
        ("--set", "config 'lr' must be float"),
        ("--arg", "'label_smoothing' must be float"),
    ],
)
def test_config_strings_are_never_evaluated(tmp_path, capsys, flag, needle):
    marker = tmp_path / "PWNED"
    code = f"__import__('os').system('touch {marker}')"
    key = "lr" if flag == "--set" else "label_smoothing"
    assert main([*TRAIN, flag, f"{key}={code}", "-o", str(tmp_path / "o")]) == 2
    assert needle in error_line(capsys.readouterr().err)
    assert not marker.exists()


# ------------------------------------------------------------------ paths from configs
def test_names_from_configs_cannot_escape_the_output_directory(tmp_path, capsys, monkeypatch):
    """Every place a config-provided name becomes a written path: run directories named after
    the method/model/data (default --out), bench cells and recipes, checkpoint pointers."""
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    monkeypatch.chdir(sandbox)
    # default run directory runs/<method>-<model>-<data>-seed<k>: names are checked first
    for flag, value in [("--method", "../../x"), ("--model", "../../x"), ("--at", "../../x")]:
        assert main([*TRAIN, flag, value]) == 2
        assert "unknown" in error_line(capsys.readouterr().err)
    # bench cells: by name, by method name, and by recipe name
    for cell in ["{method: ce, name: ../../x}", "{method: ../../x}", "{method: ce, name: '..'}"]:
        recipe = sandbox / "r.yaml"
        recipe.write_text(f"bench:\n  cells:\n    - {cell}\n")
        assert main(["bench", "--recipe", str(recipe)]) == 2
        capsys.readouterr()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["r.yaml", "sandbox"]


def test_safe_name_accepts_plain_names_only():
    for good in ["ce", "hnc_mse", "cifs+pgd_at", "seed3", "TENET-k2"]:
        assert io.safe_name(good, "name") == good
    for bad in ["", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden", " x", "x\0y", 3, None]:
        with pytest.raises(ConfigError, match="must be a plain name"):
            io.safe_name(bad, "name")


def test_state_json_cannot_point_outside_the_run(tmp_path, capsys):
    run, outside = tmp_path / "run", tmp_path / "outside"
    assert main([*TRAIN, "--epochs", "1", "-o", str(run)]) == 0
    shutil.copytree(next((run / "checkpoints").iterdir()), outside / "checkpoints" / "step-1")
    (run / "state.json").write_text('{"step": 4, "checkpoint": "../outside/checkpoints/step-1"}')
    capsys.readouterr()
    assert main([*TRAIN, "--epochs", "1", "-o", str(run), "--resume"]) == 2
    assert "is not a robustfeat checkpoint pointer" in error_line(capsys.readouterr().err)


def test_oversized_records_are_refused_before_reading(tmp_path, capsys, monkeypatch):
    """A results.json / state.json / metrics.jsonl larger than its bound is refused with one
    line, before a byte is read (a sparse file: its size is on disk, its content never is)."""
    huge = tmp_path / "results.json"
    with huge.open("wb") as f:
        f.truncate(io.MAX_JSON_BYTES + 1)

    def no_reading(*args, **kwargs):
        raise AssertionError("an oversized file was opened for reading")

    monkeypatch.setattr(Path, "open", no_reading)
    with pytest.raises(CheckpointError, match="over the 67108864-byte limit"):
        io.read_json(huge)
    monkeypatch.undo()
    small = tmp_path / "small.json"
    small.write_text('{"a": 1}')
    assert io.read_json(small) == {"a": 1}
    with pytest.raises(ValueError, match="over the 4-byte limit"):
        reads.read_text(small, 4)
    capsys.readouterr()
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    err = error_line(capsys.readouterr().err)
    assert "cannot read" in err and "limit" in err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ a scan of src/ for regressions
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "marshal",
    "shelve",
    "joblib",
}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}
SAFE_YAML_LOADERS = {"_BoundedLoader"}  # robustfeat.config's: safe, alias expansion bounded
UNBOUNDED_READS = {"read_text", "read_bytes"}  # Path's: the whole file, whatever its size


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """What in ``source`` could run code from a file or a string: pickle-family imports,
    ``torch.load`` without ``weights_only=True``, ``torch.save`` (weights are safetensors),
    ``np.load(allow_pickle=True)``, YAML loads without a safe loader, eval/exec/compile, shells;
    and what reads a file whole without a bound (``Path.read_text``, ``json.load``, ...)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            names = {a.name for a in node.names}
            if node.module in UNSAFE_MODULES or (node.module == "torch" and "load" in names):
                found.append(f"{where} from {node.module} import {', '.join(sorted(names))}")
            if node.module == "yaml" and names & {"load", "load_all", "unsafe_load", "full_load"}:
                found.append(f"{where} from yaml import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            weights_only = _keyword(node, "weights_only")
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            allow_pickle = _keyword(node, "allow_pickle")
            if name in UNSAFE_BUILTINS:
                found.append(f"{where} {name}()")
            elif name == "torch.load" and not (
                isinstance(weights_only, ast.Constant) and weights_only.value is True
            ):
                found.append(f"{where} torch.load without weights_only=True")
            elif name == "torch.save":
                found.append(f"{where} torch.save (a pickle; use safetensors)")
            elif name in ("np.load", "numpy.load") and not (
                allow_pickle is None
                or (isinstance(allow_pickle, ast.Constant) and allow_pickle.value is False)
            ):
                found.append(f"{where} np.load with allow_pickle")
            elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"):
                found.append(f"{where} {name}")
            elif name in ("yaml.safe_load", "yaml.safe_load_all"):  # aliases expand unbounded
                found.append(f"{where} {name} (use robustfeat.config.yaml_document)")
            elif name in ("yaml.load", "yaml.load_all") and (
                loader is None or _dotted(loader).split(".")[-1] not in SAFE_YAML_LOADERS
            ):
                found.append(f"{where} {name} without a safe Loader")
            elif (
                isinstance(node.func, ast.Attribute)
                and node.func.attr in UNBOUNDED_READS
                and _dotted(node.func.value) != "reads"
            ) or name in ("json.load", "np.fromfile", "numpy.fromfile"):
                found.append(f"{where} {name}() reads a file unbounded (use reads.read_bytes)")
            elif name in ("os.system", "os.popen") or (
                isinstance(_keyword(node, "shell"), ast.Constant)
                and _keyword(node, "shell").value is True
            ):
                found.append(f"{where} shell command")
    return found


def test_src_has_no_unsafe_loading_or_evaluation():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20  # the scan really looks at the package
    found = [hit for f in files for hit in unsafe_calls(f.read_text(), str(f.relative_to(SRC)))]
    assert found == []


def test_a_yaml_file_is_read_no_further_than_its_bound(tmp_path, monkeypatch):
    """The YAML reader stops at its bound even when the size it was told is 0 (a kernel or
    special file, or one that grew after the check): the read itself is bounded."""
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(MAX_YAML_BYTES + 1)
    real_stat = Path.stat

    def zero_size(self, *args, **kwargs):
        st = real_stat(self, *args, **kwargs)
        return os.stat_result((*st[:6], 0, *st[7:])) if self == big else st

    monkeypatch.setattr(Path, "stat", zero_size)
    with pytest.raises(ConfigError, match=f"over the {MAX_YAML_BYTES}-byte limit"):
        read_yaml_document(big)


def test_a_recipe_path_that_is_not_a_regular_file_says_so(tmp_path):
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        recipe_path(str(fifo))
    with pytest.raises(ConfigError, match="does not exist"):
        recipe_path(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "from pickle import loads",
        "import dill",
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "torch.save(model.state_dict(), path)",
        "from torch import load",
        "np.load(path, allow_pickle=True)",
        "yaml.load(text)",
        "yaml.load(text, Loader=yaml.FullLoader)",
        "yaml.load(text, yaml.Loader)",
        "yaml.unsafe_load(text)",
        "yaml.full_load(text)",
        "yaml.safe_load(text)",
        "yaml.load(text, Loader=yaml.SafeLoader)",
        "eval(cfg['lr'])",
        "exec(code)",
        "__import__(name)",
        "os.system(cmd)",
        "subprocess.run(cmd, shell=True)",
        "path.read_text()",
        "Path(p).read_bytes()",
        "json.load(f)",
    ],
)
def test_the_scan_catches_each_unsafe_pattern(snippet):
    assert len(unsafe_calls(snippet)) == 1


@pytest.mark.parametrize(
    "snippet",
    [
        "torch.load(path, weights_only=True)",
        "yaml.load(text, Loader=_BoundedLoader)",
        "np.load(path, allow_pickle=False)",
        "np.load(path)",
        "model.eval()",
        "module.compile()",
        "subprocess.run([sys.executable, '-c', 'pass'])",
        "# pickle.load(f) in a comment",
        "'torch.load(x) in a string'",
        "reads.read_text(path, reads.MAX_LOG_BYTES)",
        "read_bytes(path, MAX_FILE_BYTES)",
        "json.loads(text)",
    ],
)
def test_the_scan_accepts_safe_code(snippet):
    assert unsafe_calls(snippet) == []
