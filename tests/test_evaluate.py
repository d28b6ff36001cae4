"""The evaluator: schema, subsets, worst case, suites as data, gradient-masking flags."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from robustfeat import io
from robustfeat.attacks import checks, create_attack
from robustfeat.attacks.suites import LARGE_EPS, SUITES, AttackSpec, Suite, get_suite
from robustfeat.errors import ConfigError, UnknownNameError
from robustfeat.evaluate import evaluate, topk_correct
from test_attacks import ProbeMethod, toy_images, toy_task


def flag_names(results: dict) -> set[str]:
    return {f["name"] for f in results["flags"]}


MASKING_FLAGS = {
    "zero_gradients",
    "nan_gradients",
    "probability_outputs",
    "randomized_model",
    "not_broken_at_large_eps",
    "accuracy_not_monotonic_in_eps",
    "pgd_weaker_than_fgsm",
}


# ------------------------------------------------------------------ schema
def test_quick_suite_schema_and_values(tmp_path):
    model, test = toy_task()
    out = tmp_path / "results.json"
    results = evaluate(
        ProbeMethod(model),
        test,
        "quick",
        n=64,
        run={"method": "probe_toy"},
        progress=False,
        out=out,
    )
    assert json.loads(out.read_text()) == json.loads(io.dumps(results))  # written, strict JSON
    for key in (
        "schema",
        "run",
        "clean",
        "attacks",
        "worst_case",
        "flags",
        "checks",
        "suite",
        "seconds",
    ):
        assert key in results
    assert results["schema"] == "robustfeat.results/1" and results["run"] == {"method": "probe_toy"}
    assert results["clean"]["n"] == len(test)  # clean always on the whole test set
    labels = [a["label"] for a in results["attacks"]]
    assert labels == ["fgsm", "pgd10", "pgd10[probe]", "pgd10[final]"]
    for a in results["attacks"]:
        assert a["n"] == 64 and 0 <= a["accuracy"] <= results["clean"]["topk"]["1"] + 1e-9
        assert {
            "name",
            "norm",
            "eps",
            "steps",
            "step_size",
            "loss",
            "seconds",
            "kind",
            "topk",
        } <= set(a)
        assert a["topk"]["1"] <= a["topk"]["2"] <= a["topk"]["3"]
        assert a["eps"] == pytest.approx(8 / 255)
    assert results["adaptive"]["losses"] == ["probe", "final"]
    # the undefended toy model: PGD beats FGSM, and nothing looks masked
    by_label = {a["label"]: a for a in results["attacks"]}
    assert by_label["pgd10"]["accuracy"] <= by_label["fgsm"]["accuracy"]
    assert not flag_names(results) & MASKING_FLAGS
    sweep = results["checks"]["eps_sweep"]["points"]
    assert [p["eps"] for p in sweep] == [2 / 255, 8 / 255, 32 / 255, LARGE_EPS]
    assert sweep[-1]["accuracy"] == 0.0


def test_worst_case_is_the_per_sample_minimum_over_attacks():
    model, test = toy_task()
    results = evaluate(ProbeMethod(model), test, "quick", n=64, progress=False)
    wc = results["worst_case"]
    assert wc["n"] == 64
    assert wc["accuracy"] <= min(a["accuracy"] for a in results["attacks"])
    assert wc["attack"].split(" + ") == [a["label"] for a in results["attacks"]]
    assert sum(wc["uniquely_broken"].values()) <= 64


def test_clean_suite_and_subsets_and_errors():
    model, test = toy_task()
    results = evaluate(model, test, "clean", progress=False)
    assert results["attacks"] == [] and results["worst_case"]["attack"] == "clean"
    assert results["worst_case"]["accuracy"] == results["clean"]["accuracy"]
    with pytest.raises(UnknownNameError, match="quick"):
        evaluate(model, test, "quik", progress=False)
    with pytest.raises(ConfigError):
        evaluate(model, test, "quick", n=-1, progress=False)
    with pytest.raises(ConfigError):
        evaluate(model, "not a dataset", "clean", progress=False)


def test_n_aa_prefix_and_larger_subset_worst_case():
    model, test = toy_task()
    suite = Suite(
        "t",
        "test",
        attacks=(
            AttackSpec("pgd5", "pgd", {"eps": 4 / 255, "steps": 5}),
            AttackSpec("square", "square", {"eps": 4 / 255, "queries": 20}, subset="n_aa"),
        ),
    )
    results = evaluate(model, test, suite, n=40, n_aa=10, progress=False)
    assert [a["n"] for a in results["attacks"]] == [40, 10]
    assert results["worst_case"]["n"] == 10
    assert results["worst_case"]["larger_subset"]["n"] == 40


def test_predicted_labels_mode_counts_changed_predictions():
    model, test = toy_task()
    weak = nn.Sequential(model, nn.Identity())
    suite = Suite(
        "p", "test", attacks=(AttackSpec("fgsm0", "fgsm", {"eps": 0.0}),), labels="predicted"
    )
    test_noisy = test.subset(torch.arange(len(test)))
    test_noisy.labels = (test.labels + 1) % 4  # every label wrong: clean accuracy 0
    results = evaluate(weak, test_noisy, suite, progress=False)
    assert results["clean"]["accuracy"] == 0.0
    assert results["attacks"][0]["accuracy"] == 1.0  # eps 0: every prediction unchanged


def test_topk_and_per_class():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    y = torch.tensor([1, 1, 0])
    top = topk_correct(logits, y, (1, 2, 3))
    assert top["1"].tolist() == [False, True, False]
    assert top["2"].tolist() == [True, True, False]
    assert top["3"].tolist() == [True, True, True]
    model, test = toy_task()
    suite = Suite(
        "pc", "test", attacks=(AttackSpec("fgsm", "fgsm", {"eps": 8 / 255}),), per_class=True
    )
    results = evaluate(model, test, suite, n=40, progress=False)
    per_class = results["attacks"][0]["per_class"]
    assert set(per_class) == {"c0", "c1", "c2", "c3"}
    counts = torch.bincount(
        test.subset(torch.randperm(256, generator=torch.Generator().manual_seed(0))[:40]).labels,
        minlength=4,
    )
    weighted = sum(per_class[f"c{c}"] * counts[c].item() for c in range(4)) / 40
    assert weighted == pytest.approx(results["attacks"][0]["accuracy"])


def test_shift_sets():
    model, test = toy_task()
    shifted = toy_images(64, torch.Generator().manual_seed(9))
    shifted.images = 255 - shifted.images  # inverted colours: a strong shift
    results = evaluate(model, test, "clean", shift={"inverted": shifted}, progress=False)
    entry = results["shift"]["inverted"]
    assert entry["n"] == 64 and entry["drop"] == pytest.approx(
        results["clean"]["accuracy"] - entry["accuracy"]
    )
    assert entry["accuracy"] < results["clean"]["accuracy"]


# ------------------------------------------------------------------ gradient masking is caught
class Quantized(nn.Module):
    """Rounds its input to 8 levels: zero input gradients everywhere (shattered gradients)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 7) / 7)


class SaturatedSoftmax(nn.Module):
    """Outputs a saturated softmax instead of logits."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(50 * self.inner(x), dim=1)


@pytest.mark.parametrize(
    "wrapper,expected", [(Quantized, "zero_gradients"), (SaturatedSoftmax, "probability_outputs")]
)
def test_gradient_masked_models_are_flagged(wrapper, expected):
    model, test = toy_task()
    results = evaluate(wrapper(model), test, "quick", n=64, progress=False)
    names = flag_names(results)
    assert expected in names
    flag = next(f for f in results["flags"] if f["name"] == expected)
    assert flag["detail"] and flag["values"]


def test_quantized_model_looks_robust_but_is_flagged():
    model, test = toy_task()
    results = evaluate(Quantized(model), test, "quick", n=64, progress=False)
    pgd = next(a for a in results["attacks"] if a["label"] == "pgd10")
    assert pgd["accuracy"] > 0.5  # the masked model fools the gradient attack ...
    assert (
        results["checks"]["gradients"]["ce"]["fraction_zero"] == 1.0
    )  # ... and the check shows why


# ------------------------------------------------------------------ checks on hand-made records
def _rec(label, name, acc, n=100, eps=8 / 255, steps=1, restarts=1, loss="ce", **kw):
    return {
        "label": label,
        "name": name,
        "accuracy": acc,
        "n": n,
        "norm": "linf",
        "eps": eps,
        "steps": steps,
        "restarts": restarts,
        "loss": loss,
        "kind": "standard",
        **kw,
    }


def test_comparison_checks_hand_made():
    records = [
        _rec("fgsm", "fgsm", 0.30),
        _rec("pgd20", "pgd", 0.40, steps=20),
        _rec("pgd100", "pgd", 0.45, steps=100),
        _rec("pgd20x3", "pgd", 0.47, steps=20, restarts=3),
        _rec("square", "square", 0.10),
        _rec(
            "aa",
            "autoattack",
            0.05,
            stages={"apgd_ce": 0.2, "apgd_t": 0.2, "fab_t": 0.2, "square": 0.05},
        ),
        _rec("fgsm_big", "fgsm", 0.9, eps=0.3),  # another threat model: not compared
    ]
    names = [f["name"] for f in checks.comparison_checks(records)]
    assert names.count("pgd_weaker_than_fgsm") == 3
    assert "more_steps_raised_accuracy" in names and "more_restarts_raised_accuracy" in names
    assert names.count("black_box_beats_white_box") == 2
    ok = [
        _rec("fgsm", "fgsm", 0.30),
        _rec("pgd20", "pgd", 0.20, steps=20),
        _rec("pgd100", "pgd", 0.205, steps=100),
    ]
    assert checks.comparison_checks(ok) == []  # within tolerance (1 point)


def test_adaptive_flag():
    records = [
        _rec("pgd20", "pgd", 0.5, steps=20),
        _rec("pgd20[probe]", "pgd", 0.2, steps=20, kind="adaptive"),
    ]
    names = [f["name"] for f in checks.comparison_checks(records)]
    assert names == ["adaptive_attack_stronger"]


def test_sweep_checks_hand_made():
    good = [
        {"eps": 1 / 255, "accuracy": 0.6},
        {"eps": 8 / 255, "accuracy": 0.3},
        {"eps": LARGE_EPS, "accuracy": 0.0},
    ]
    assert checks.sweep_checks(good, 500, LARGE_EPS) == []
    bad = [
        {"eps": 1 / 255, "accuracy": 0.3},
        {"eps": 8 / 255, "accuracy": 0.5},
        {"eps": LARGE_EPS, "accuracy": 0.2},
    ]
    names = [f["name"] for f in checks.sweep_checks(bad, 500, LARGE_EPS)]
    assert names == ["accuracy_not_monotonic_in_eps", "not_broken_at_large_eps"]
    assert checks.tolerance(100) == pytest.approx(0.03) and checks.tolerance(10_000) == 0.01


def test_randomized_model_flag():
    model, test = toy_task()
    noisy = nn.Sequential(model, nn.Dropout(0.5))
    noisy[1].forward = lambda z: z + torch.randn_like(z)  # noise even in eval mode
    _, flags = checks.output_checks(noisy, test.float_images(slice(0, 16)))
    assert [f["name"] for f in flags] == ["randomized_model"]


# ------------------------------------------------------------------ the suites are valid data
@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_suite_builds_its_attacks(name):
    suite = get_suite(name)
    labels = [a.label for a in suite.attacks]
    assert len(labels) == len(set(labels))
    for spec in (*suite.attacks, *suite.adaptive):
        attack = create_attack(spec.attack, **spec.params)
        assert attack.eps > 0


def test_paper_protocols():
    def params(suite, label):
        return next(a for a in get_suite(suite).attacks if a.label == label).params

    assert params("paper-cifs", "pgd20") == {
        "eps": 8 / 255,
        "steps": 20,
        "step_size": 8 / 255 / 10,
        "early_stop": False,
    }
    assert params("paper-cifs", "cw30")["step_size"] == pytest.approx(0.8 / 255)
    assert (
        params("paper-tenet", "pgd7_4")["eps"] == 4 / 255
        and params("paper-tenet", "pgd7_4")["step_size"] == 2 / 255
    )
    assert get_suite("paper-tenet").corruptions
    assert {a.params["eps"] for a in get_suite("paper-hnc").attacks} == {
        8 / 255,
        0.05,
        0.1,
        0.2,
        0.3,
    }
    assert get_suite("paper-topgap").labels == "predicted"
    assert params("paper-topgap-large", "pgd40")["eps"] == 1 / 255
    assert params("paper-alfa", "pgd20")["step_size"] == 2 / 255
    assert math.isclose(params("standard", "pgd20")["step_size"], 2 / 255)


def test_combined_suites_union_attacks_first_label_wins():
    combo = get_suite("standard+paper-tenet+paper-hnc")
    labels = [a.label for a in combo.attacks]
    assert labels[: len(SUITES["standard"].attacks)] == [
        a.label for a in SUITES["standard"].attacks
    ]
    assert {"pgd7_4", "fgsm_0.05", "fgsm_0.3"} <= set(labels) and len(labels) == len(set(labels))
    pgd100 = next(a for a in combo.attacks if a.label == "pgd100")
    assert pgd100 == next(a for a in SUITES["standard"].attacks if a.label == "pgd100")
    assert combo.corruptions and combo.n == SUITES["standard"].n
    with pytest.raises(UnknownNameError, match="joined with"):
        get_suite("standard+paper-nope")
    with pytest.raises(ConfigError, match="label modes"):
        get_suite("standard+paper-topgap")


def test_shapes_suite_adds_cam_quality_and_the_spurious_shift_set(tmp_path):
    from robustfeat.config import make_config
    from robustfeat.train import train

    cfg = make_config(
        {
            "model": "test_cnn",
            "data": "shapes",
            "epochs": 1,
            "batch_size": 32,
            "progress": False,
            "data_args": {"n_train": 64, "n_test": 32, "spurious_p": 0.9},
            "eval_suite": "shapes",
        }
    )
    results = train(cfg, tmp_path / "run")
    cam = results["cam"]
    assert 0.0 <= cam["iou_best"] <= 1.0 and cam["n"] == 32
    assert set(results["clean"]["per_class"]) == {
        "circle",
        "square",
        "triangle",
        "cross",
        "ring",
        "star",
        "diamond",
        "hexagon",
        "L",
        "T",
    }
    shift = results["shift"]["spurious_train_distribution"]
    assert shift["n"] == 32 and shift["drop"] == pytest.approx(
        results["clean"]["accuracy"] - shift["accuracy"]
    )
