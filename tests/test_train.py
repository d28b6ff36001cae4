import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CUDA
from robustfeat.cli import main
from robustfeat.config import make_config
from robustfeat.data import prepare_data
from robustfeat.errors import ConfigError, UnknownNameError
from robustfeat.evaluate import evaluate
from robustfeat.io import load_tensors
from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.train import BestEpoch, Trainer, loop, lr_factor, selection, train
from test_reliability_faults import TRAIN as FAULT_TRAIN
from test_reliability_faults import checkpoint_step, run_cli

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = {
    "model": "resnet20",
    "model_args": {"width": 4},
    "data": "shapes",
    "data_args": {"n_train": 256, "n_test": 128},
    "batch_size": 32,
    "epochs": 2,
    "lr": 0.05,
    "progress": False,
    "log_every": 2,
}


@pytest.fixture(scope="module")
def tiny_data():
    return prepare_data("shapes", n_train=256, n_test=128)


def test_lr_schedules_match_hand_computed_values():
    cfg = make_config({"schedule": "onecycle", "warmup": 0.25})
    # 8 steps, warm-up 2 steps: factors at t = step + 1 = 1..8 -> 0.5, 1, then linear to 0
    assert [round(lr_factor(s, 8, cfg), 4) for s in range(8)] == [
        0.5,
        1.0,
        0.8333,
        0.6667,
        0.5,
        0.3333,
        0.1667,
        0.0,
    ]
    cfg = make_config(
        {"schedule": "multistep", "warmup": 0.0, "milestones": [0.5, 0.75], "gamma": 0.1}
    )
    assert [round(lr_factor(s, 8, cfg), 4) for s in range(8)] == [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    cfg = make_config({"schedule": "cosine", "warmup": 0.0})
    assert lr_factor(0, 4, cfg) == pytest.approx(
        0.5 * (1 + torch.cos(torch.tensor(torch.pi / 4)).item())
    )
    assert lr_factor(3, 4, cfg) == pytest.approx(0.0, abs=1e-12)


def test_training_learns_and_writes_the_run_directory(tmp_path, tiny_data):
    cfg = make_config(TINY, {"epochs": 6, "lr": 0.1})
    results = train(cfg, tmp_path / "run", data=tiny_data)
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "state.json",
        "weights.safetensors",
        "results.json",
        "provenance.json",
    ):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "img_per_s" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "loss_ce", "train_acc", "lr", "img_per_s"} <= set(epochs[-1])
    assert epochs[-1]["loss"] < 0.97 * epochs[0]["loss"]  # it learns (tiny budget: no accuracy bar)
    saved = json.loads((run / "results.json").read_text())
    assert saved["schema"] == "robustfeat.results/1"
    assert saved["run"]["method"] == "ce" and saved["run"]["config"]["epochs"] == 6
    assert len(saved["run"]["git_sha"]) >= 7 and "torch" in saved["run"]["versions"]
    assert saved["clean"]["n"] == 128 and saved["clean"]["accuracy"] == results["clean"]["accuracy"]
    assert 0.0 <= results["clean"]["accuracy"] <= 1.0
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 6 * (256 // 32) and state["finished"]
    assert len(list((run / "checkpoints").iterdir())) == 1


def test_same_seed_gives_identical_weights(tmp_path, tiny_data):
    cfg = make_config(TINY, {"checkpoint_every": 3})
    train(cfg, tmp_path / "a", data=tiny_data)
    train(cfg, tmp_path / "b", data=tiny_data)
    a = load_tensors(tmp_path / "a" / "weights.safetensors")
    b = load_tensors(tmp_path / "b" / "weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _cli(args, extra_env=None, **kw):
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "robustfeat", *args], env=env, **kw)


TRAIN_ARGS = [
    "train",
    "--model",
    "resnet20",
    "--model-arg",
    "width=4",
    "--data",
    "shapes",
    "--data-arg",
    "n_train=512",
    "--data-arg",
    "n_test=64",
    "--batch-size",
    "32",
    "--epochs",
    "3",
    "--lr",
    "0.05",
    "--no-progress",
    "--set",
    "checkpoint_every=2",
]


def test_kill9_and_resume_gives_bit_identical_weights(tmp_path):
    ref = _cli(
        [*TRAIN_ARGS, "-o", str(tmp_path / "ref")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    reference = load_tensors(tmp_path / "ref" / "weights.safetensors")
    run = tmp_path / "killed"
    for kill_after_step in (2, 20):  # first checkpoint; then mid-way through the second epoch
        resume = ["--resume"] if run.exists() else []  # --resume needs a run to continue
        proc = _cli(
            [*TRAIN_ARGS, "-o", str(run), *resume],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 240
        while time.time() < deadline:
            state = run / "state.json"
            if (
                state.exists()
                and json.loads(state.read_text() or "{}").get("step", 0) >= kill_after_step
            ):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = _cli(
        [*TRAIN_ARGS, "-o", str(run), "--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()
    resumed = load_tensors(run / "weights.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--method", "nope"], "unknown method 'nope'"),
        (["train", "--model", "resnet21"], "Did you mean 'resnet32'"),
        (["train", "--data", "imagenet"], "unknown dataset"),
        (["train", "--epochs", "0"], "epochs"),
        (["train", "-c", "nosuchrecipe"], "unknown recipe"),
        (["train", "--arg", "novalue"], "key=value"),
        (["list", "things"], "cannot list"),
    ],
)
def test_cli_bad_input_is_one_clear_error_with_exit_code_2(
    tmp_path, monkeypatch, capsys, args, needle
):
    monkeypatch.chdir(tmp_path)
    argv = [*args, "-o", str(tmp_path / "out")] if args[0] == "train" else args
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") <= 2
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # no partial output


def test_cli_process_exit_code_and_argparse_errors(tmp_path):
    proc = _cli(
        ["train", "--epochs", "many"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "invalid int value: 'many'" in err.decode()
    assert "Traceback" not in err.decode()


def test_unknown_method_option_is_rejected_before_training(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="label_smoothing"):
        train(
            make_config(TINY, {"method_args": {"smoothing": 0.1}}), tmp_path / "x", data=tiny_data
        )
    with pytest.raises(UnknownNameError):
        train(make_config(TINY, {"at": "pgd_att"}), tmp_path / "y", data=tiny_data)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_best_epoch_update_keeps_the_first_maximum():
    best = BestEpoch()
    assert [best.update(s) for s in (0.2, 0.5, 0.5, 0.1)] == [True, True, False, False]
    assert (best.epoch, best.score, best.scores) == (2, 0.5, [0.2, 0.5, 0.5, 0.1])


def test_select_best_needs_a_validation_split_and_a_known_criterion():
    with pytest.raises(ConfigError, match="val_fraction > 0"):
        make_config(TINY, {"select_best": "pgd10"})
    with pytest.raises(ConfigError, match="valid: clean, pgd10"):
        make_config(TINY, {"select_best": "pgd20", "val_fraction": 0.2})


def test_select_best_evaluates_the_best_epoch_without_changing_training(tmp_path, monkeypatch):
    data = prepare_data("shapes", n_train=256, n_test=128, val_fraction=0.25)
    base = {"epochs": 4, "val_fraction": 0.25}
    plain = train(make_config(TINY, base), tmp_path / "plain", data=data)
    scores = iter([0.1, 0.9, 0.3, 0.2])  # epoch 2 is the best, so it is evaluated too
    monkeypatch.setattr(loop, "selection_score", lambda *a: next(scores))
    results = train(make_config(TINY, base, {"select_best": "clean"}), tmp_path / "sel", data=data)
    run = tmp_path / "sel"
    # scoring the epochs does not change what is trained
    final, plain_final = (
        load_tensors(p / "weights.safetensors") for p in (run, tmp_path / "plain")
    )
    assert all(torch.equal(final[k], plain_final[k]) for k in final)
    assert results["clean"]["accuracy"] == plain["clean"]["accuracy"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_clean"] for r in records if "img_per_s" in r] == [0.1, 0.9, 0.3, 0.2]
    best = results["best_epoch"]
    assert (best["epoch"], best["score"], best["last_epoch"], best["n_val"]) == (
        2,
        0.9,
        4,
        len(data.val),
    )
    assert json.loads((run / "state.json").read_text())["best"]["epoch"] == 2
    # best.safetensors holds epoch 2's weights, and the evaluation is of those weights
    method = create_method(
        "ce", create_model("resnet20", 10, width=4, mean=data.mean, std=data.std)
    )
    method.load_state_dict(load_tensors(run / "best.safetensors"))
    assert any(not torch.equal(method.state_dict()[k], final[k]) for k in final)
    accuracy = evaluate(method, data.test)["clean"]["accuracy"]
    assert best["evaluation"]["clean"]["accuracy"] == accuracy
    assert best["evaluation"]["subsets"]["n_aa"] == 0  # no AutoAttack on the best epoch


def test_pgd10_selection_score_is_at_most_clean_accuracy(tiny_data):
    torch.manual_seed(0)
    method = create_method("ce", create_model("resnet20", 10, width=4))
    clean = selection.selection_score(method, tiny_data.test, "clean")
    robust = selection.selection_score(method, tiny_data.test, "pgd10")
    assert 0.0 <= robust <= clean and clean > 0


def test_adaptive_selection_is_the_worst_case_over_the_methods_attack_losses(
    tiny_data, monkeypatch
):
    torch.manual_seed(0)
    ce = create_method("ce", create_model("resnet20", 10, width=4))
    plain = selection.selection_score(ce, tiny_data.test, "pgd10")
    # no attack losses: the adaptive score is the plain one
    assert selection.selection_score(ce, tiny_data.test, "pgd10_adaptive") == plain

    cas = create_method("cas", create_model("resnet20", 10, width=4))
    run_attack = selection.run_attack
    survivors: dict[str, torch.Tensor] = {}

    def recording(model, attack, dataset, *args):
        record = run_attack(model, attack, dataset, *args)
        survivors[getattr(attack, "loss", "ce")] = record.correct["1"]
        return record

    monkeypatch.setattr(selection, "run_attack", recording)
    plain = selection.selection_score(cas, tiny_data.test, "pgd10")
    adaptive = selection.selection_score(cas, tiny_data.test, "pgd10_adaptive")
    losses = [f"adaptive:{name}" for name in cas.attack_losses()]
    assert sorted(survivors) == sorted(["ce", *losses])
    worst = torch.stack(list(survivors.values())).all(0).float().mean().item()
    assert adaptive == pytest.approx(worst) and adaptive <= plain


def test_resume_takes_the_runs_settings_and_flags_may_only_repeat_them(tmp_path, capsys):
    run = tmp_path / "run"
    proc = _cli(
        [*TRAIN_ARGS, "-o", str(run)],
        extra_env={"ROBUSTFEAT_FAULT": "checkpoint_pointer:2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.wait(timeout=300) == -signal.SIGKILL  # killed after its first checkpoint
    saved = (run / "config.yaml").read_text()
    # a flag that contradicts the run is refused, one line, nothing changed
    assert main(["train", "--resume", "-o", str(run), "--lr", "0.5", "--no-progress"]) == 2
    assert "lr 0.05 -> 0.5" in capsys.readouterr().err
    # --resume alone: every setting from the run's config.yaml (resnet20 width 4 on 512 shapes)
    assert main(["train", "--resume", "-o", str(run), "--no-progress"]) == 0
    assert (run / "config.yaml").read_text() == saved
    results = json.loads((run / "results.json").read_text())
    assert results["run"]["config"]["model_args"] == {"width": 4}
    assert results["clean"]["n"] == 64


def test_keep_checkpoint_false_leaves_one_copy_of_the_final_weights(tmp_path, tiny_data):
    sizes = {}
    for keep in (True, False):
        run = tmp_path / f"keep{keep}"
        train(make_config(TINY, {"keep_checkpoint": keep}), run, data=tiny_data)
        assert (run / "checkpoints").is_dir() == keep
        assert (run / "weights.safetensors").is_file() and (run / "results.json").is_file()
        sizes[keep] = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    weights = (tmp_path / "keepFalse" / "weights.safetensors").stat().st_size
    # the checkpoint held the weights again plus SGD's momentum buffers (as large again)
    assert sizes[True] - sizes[False] >= 1.9 * weights
    a = load_tensors(tmp_path / "keepTrue" / "weights.safetensors")
    b = load_tensors(tmp_path / "keepFalse" / "weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("precision", ["bf16", "amp"])
def test_mixed_precision_training_learns_on_the_device(tmp_path, tiny_data, device, precision):
    """bf16 autocast, and amp (CUDA: fp16 autocast + GradScaler, whose state the checkpoint
    keeps; CPU: bf16), from the device-resident loader: fp32 weights, finite losses, learning."""
    layer = {"epochs": 3, "lr": 0.1, "precision": precision, "loader": "device"}
    cfg = make_config(TINY, layer, {"device": device.type, "channels_last": True})
    results = train(cfg, tmp_path / "run", data=tiny_data)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    epochs = [r for r in records if "img_per_s" in r]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert epochs[-1]["loss"] < 0.97 * epochs[0]["loss"]
    weights = load_tensors(tmp_path / "run" / "weights.safetensors")
    assert all(w.dtype in (torch.float32, torch.int64) for w in weights.values())
    assert 0.0 <= results["clean"]["accuracy"] <= 1.0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    if precision == "amp" and device.type == "cuda":
        assert state["grad_scaler"]["scale"] > 0 and "_growth_tracker" in state["grad_scaler"]
    else:
        assert "grad_scaler" not in state


def test_deterministic_switches_deterministic_algorithms_on_while_training(tmp_path, tiny_data):
    seen = []
    fit = Trainer.fit

    def spy(self, *args, **kwargs):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark))
        return fit(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "fit", spy)
        before = torch.are_deterministic_algorithms_enabled()
        for flag in (True, False):
            train(
                make_config(TINY, {"epochs": 1, "deterministic": flag}),
                tmp_path / str(flag),
                data=tiny_data,
            )
            assert torch.are_deterministic_algorithms_enabled() == before  # restored after
    assert seen == [(True, False), (before, torch.backends.cudnn.benchmark)]
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")


# on CPU, test_reliability_faults.py kills and resumes in every window
@pytest.mark.parametrize("device", [CUDA], indirect=True)
@pytest.mark.parametrize("precision", ["fp32", "amp"])
def test_kill9_and_resume_is_bit_identical_on_the_device(tmp_path, device, precision):
    """With ``deterministic: true`` a run killed mid-epoch and resumed ends bit-identical to an
    uninterrupted one on CUDA too, the GradScaler's state included (amp)."""
    args = [*FAULT_TRAIN, "--device", device.type, "--precision", precision]
    args += ["--set", "deterministic=true", "--set", "loader=device"]
    code, err = run_cli([*args, "-o", str(tmp_path / "ref")])
    assert code == 0, err
    code, _ = run_cli([*args, "-o", str(tmp_path / "run")], fault="step:7")
    assert code != 0 and checkpoint_step(tmp_path / "run") == 6
    code, err = run_cli([*args, "-o", str(tmp_path / "run"), "--resume"])
    assert code == 0, err
    ref, resumed = (load_tensors(tmp_path / n / "weights.safetensors") for n in ("ref", "run"))
    assert ref.keys() == resumed.keys() and all(torch.equal(ref[k], resumed[k]) for k in ref)
    state_ref, state = (
        json.loads((tmp_path / n / "state.json").read_text()) for n in ("ref", "run")
    )
    assert state.get("grad_scaler") == state_ref.get("grad_scaler")
    assert ("grad_scaler" in state) == (precision == "amp" and device.type == "cuda")
