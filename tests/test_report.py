"""The report: seed statistics, the improvement rule, the paper-table spec and layout, tables
from synthetic results trees (dicts shaped exactly like ``evaluate``'s output), perf.json,
provenance, README markers. Rendering and the real producer: test_report_render.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from robustfeat.errors import ConfigError
from robustfeat.report import load_spec, replace_results_section
from robustfeat.report.build import build, papers_section
from robustfeat.report.claims import (
    claims_table,
    comparison_verdict,
    load_claims,
    threshold_verdict,
)
from robustfeat.report.collect import CellGroup, Run, collect, group
from robustfeat.report.plots import epoch_series, eta_keys, make_plots, sweep_plot
from robustfeat.report.spec import Metric, dataset_family, measure, train_seconds
from robustfeat.report.stats import Stat, compare, parse_eps, summarize
from robustfeat.report.tables.cam import cam_table
from robustfeat.report.tables.cells import cells_table
from robustfeat.report.tables.common import LEGEND, compared, ours_cell
from robustfeat.report.tables.flags import flags_table
from robustfeat.report.tables.paper import paper_table
from robustfeat.report.tables.perf import perf_tables
from robustfeat.report.tables.provenance import provenance_table
from robustfeat.report.tables.references import reference_names
from robustfeat.report.tables.sweeps import best_cell, sweep_table

EPS = 8 / 255


# ------------------------------------------------------------------ synthetic results
def attack(
    label: str,
    name: str,
    accuracy: float,
    eps: float = EPS,
    steps: int | None = None,
    kind: str = "standard",
    restarts: int | None = 1,
    n: int = 100,
    topk: tuple[float, float] | None = None,
    per_class: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    """An attack entry as ``Evaluation.attack`` writes it (``topk``: its top-2 / top-3)."""
    entry = {
        "label": label,
        "name": name,
        "norm": "linf",
        "eps": eps,
        "steps": steps if steps is not None else (1 if name == "fgsm" else 20),
        "step_size": eps if name == "fgsm" else 2 / 255,
        "loss": "ce",
        "kind": kind,
        "accuracy": accuracy,
        "n": n,
        "seconds": 1.0,
    }
    if name != "fgsm" and restarts is not None:
        entry.update(restarts=restarts, random_start=True, early_stop=True)
    if topk is not None:
        entry["topk"] = {"1": accuracy, "2": topk[0], "3": topk[1]}
    if per_class is not None:
        entry["per_class"] = per_class
    if kind == "adaptive":
        entry["template"] = label.split("[")[0]
        entry["loss"] = f"adaptive:{label.split('[')[1][:-1]}"
    return entry


def results(
    clean: float,
    *,
    method: str = "ce",
    at: str | None = None,
    seed: int = 0,
    attacks: list[dict[str, Any]] | None = None,
    mce: float | None = None,
    flags: list[dict[str, Any]] | None = None,
    sha: str = "abc123",
    train_seconds: float = 100.0,
    epochs: int = 10,
    checks: bool = True,
) -> dict:
    attacks = attacks or []
    out: dict[str, Any] = {
        "schema": "robustfeat.results/1",
        "run": {
            "method": method,
            "at": at,
            "model": "resnet20",
            "data": "zip:../shared/data/cifar10-jpeg.zip",
            "seed": seed,
            "epochs": epochs,
            "git_sha": sha,
            "versions": {"python": "3.11.2", "torch": "2.14.1"},
            "machine": {
                "host": "box",
                "cpu": "Xeon",
                "cpu_count": 2,
                "torch_threads": 2,
                "cuda": False,
            },
            "config": {"method": method, "at": at, "seed": seed},
            "train_seconds": train_seconds,
            "eval_seconds": 10.0,
        },
        "suite": "standard",
        "suite_description": "...",
        "clean": {"accuracy": clean, "n": 10000, "seconds": 1.0},
        "labels": "true",
        "subsets": {"seed": 0, "n": 100, "n_aa": 50},
        "worst_case": (
            {
                "accuracy": min(a["accuracy"] for a in attacks),
                "n": 100,
                "attack": " + ".join(a["label"] for a in attacks),
            }
            if attacks
            else {"accuracy": clean, "n": 10000, "attack": "clean"}
        ),
        "checks": {
            "eps_sweep": {
                "attack": "pgd20",
                "n": 100,
                "points": [
                    {"eps": e / 255, "accuracy": max(0.0, clean - e / 20)} for e in (1, 2, 4, 8, 32)
                ]
                + [{"eps": 0.5, "accuracy": 0.0}],
            }
        }
        if checks
        else {},
        "attacks": attacks,
        "flags": flags or [],
        "seconds": 5.0,
    }
    if mce is not None:
        out["corruptions"] = {
            "source": "generated",
            "n": 1000,
            "mce": mce,
            "per_corruption": {"gaussian_noise": [mce] * 5},
            "per_severity": [mce - 0.1, mce - 0.05, mce, mce + 0.05, mce + 0.1],
            "clean_error": 1 - clean,
            "seconds": 3.0,
        }
    return out


def write_run(
    root: Path, recipe: str, cell: str, seed: int, data: dict, epochs: list[dict] | None = None
) -> Path:
    run = root / recipe / cell / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(data))
    (run / "config.yaml").write_text(f"method: {data['run']['method']}\nseed: {seed}\n")
    lines = [json.dumps(r) for r in epochs or []]
    (run / "metrics.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
    return run


def groups_of(root: Path) -> list[CellGroup]:
    return group(collect([root]).runs)


def by_key(groups: list[CellGroup]) -> dict[str, CellGroup]:
    return {g.key: g for g in groups}


def row_for(table, label: str, cell: str | None = None) -> dict[str, str]:
    for row in table.rows:
        if row[0] == label and (cell is None or row[1] == cell):
            return dict(zip(table.header, row, strict=True))
    raise AssertionError(f"no row {label!r} / {cell!r} in {table.title}")


# ------------------------------------------------------------------ statistics
def test_summarize_is_mean_and_sample_std_of_finite_values():
    stat = summarize([0.5, 0.7, 0.9, None, float("nan")])
    assert stat.n == 3 and stat.mean == pytest.approx(0.7)
    assert stat.std == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / (3 - 1))
    one = summarize([0.3])
    assert one == Stat(0.3, None, 1)
    assert summarize([None, float("inf")]) is None


@pytest.mark.parametrize(
    ("a", "b", "higher", "verdict"),
    [
        (Stat(0.80, 0.01, 3), Stat(0.75, 0.02, 3), True, "better"),  # 0.05 > 0.03
        (Stat(0.76, 0.01, 3), Stat(0.75, 0.02, 3), True, "within_spread"),  # 0.01 < 0.03
        (Stat(0.70, 0.01, 3), Stat(0.75, 0.02, 3), True, "worse"),
        (Stat(0.70, 0.01, 3), Stat(0.75, 0.02, 3), False, "better"),  # errors: lower is better
        (Stat(0.875, 0.125, 3), Stat(0.5, 0.25, 3), True, "within_spread"),  # == spread (exact)
        (Stat(0.90, None, 1), Stat(0.10, 0.01, 3), True, "unknown"),  # one seed: no spread
        (Stat(0.90, 0.0, 2), Stat(0.89, 0.0, 2), True, "better"),  # identical seeds: any gap
    ],
)
def test_improvement_rule(a, b, higher, verdict):
    assert compare(a, b, higher) == verdict
    assert compare(a, None, higher) == "unknown"


def test_parse_eps():
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps(0.05) == 0.05 and parse_eps(" 4 / 255 ") == pytest.approx(4 / 255)
    with pytest.raises(ConfigError, match="a/b"):
        parse_eps("eight")


# ------------------------------------------------------------------ the spec (paper values)
def test_label_noise_table_takes_only_the_label_noise_recipe_and_compares_at_equal_noise(
    tmp_path,
):
    for seed, (ce, mse) in enumerate([(0.50, 0.56), (0.52, 0.57)]):
        write_run(tmp_path, "cpu-labelnoise", "ce_sym0.6", seed, results(ce, seed=seed))
        write_run(tmp_path, "cpu-labelnoise", "hnc_mse_sym0.6", seed, results(mse, method="hnc"))
    write_run(tmp_path, "cpu-labelnoise", "ce_sym0.2", 0, results(0.70))
    write_run(tmp_path, "cpu", "ce", 0, results(0.84))
    noise = next(t for t in load_spec().tables if t.id == "hnc_noise")
    table = paper_table(noise, groups_of(tmp_path))
    hnc = row_for(table, "HNC_mse, symmetric r = 0.6")
    # 56.50 +- 0.71 vs CE 51.00 +- 1.41: the gap exceeds the spread
    assert hnc["Clean top-1: ours"] == "56.50 ± 0.71 ▲"
    assert hnc["Clean top-1: paper"] == "32.86"
    assert row_for(table, "CE, symmetric r = 0.2")["Clean top-1: ours"] == "70.00"
    assert row_for(table, "CE, symmetric r = 0.4")["Our cell"] == "not run"
    assert "cpu/ce" not in [r[1] for r in table.rows]


def test_default_spec_holds_the_papers_tables_as_transcribed():
    spec = load_spec()
    tables = {t.id: t for t in spec.tables}
    assert list(tables) == [
        "tenet",
        "hnc",
        "hnc_noise",
        "cifs",
        "cifs_best",
        "cifs_topk",
        "topgap",
        "topgap_ablation",
        "alfa",
    ]
    ablation = tables["topgap_ablation"]  # Table 7: FPN, l1, Top-GAP on / off
    assert len(ablation.rows) == 8
    assert ablation.row("FPN ✓, ℓ1 ✓, Top-GAP ✗").paper["fgsm"].value == 0.305
    assert ablation.row("FPN ✗, ℓ1 ✗, Top-GAP ✓").paper["acc"].value == 0.681
    tenet = tables["tenet"]
    assert [c.label for c in tenet.columns] == [
        "Clean err.",
        "mCE",
        "FGSM (8/255) err.",
        "PGD-7 (4/255) err.",
        "PGD-100 (8/255) err.",
    ]
    assert tenet.row("TENET (A.T.)").paper["pgd100"].value == 37.07
    assert tenet.row("Baseline [31]").paper["pgd100"] is None  # "-" in the paper
    assert tables["hnc"].row("HNC_kd").paper["fgsm005"].value == 29.80
    noise = tables["hnc_noise"]
    assert len(noise.rows) == 24  # (CE, HNC_mse, HNC_kd) x (4 symmetric + 4 asymmetric rates)
    assert noise.row("HNC_mse, symmetric r = 0.6").paper["top1"].value == 32.86
    assert noise.row("HNC_kd, asymmetric r = 0.4").paper["top1"].value == 43.04
    assert noise.row("HNC_kd, asymmetric r = 0.4").reference == "CE, asymmetric r = 0.4"
    assert tables["cifs"].row("CIFS").paper["pgd100"].value == 48.70
    assert tables["cifs"].row("CIFS").paper["time"].value == 172
    assert tables["cifs_topk"].row("AT ResNet-18").paper["pgd2"].value == 71.71
    assert tables["cifs_best"].row("Vanilla").paper["pgd100"].value == 49.47
    assert {c.metric.epoch for c in tables["cifs_best"].columns} == {"best"}
    assert tables["topgap"].paper_scale == 100  # fractions in the paper
    assert tables["topgap"].row("Top-GAP (ours, PRN18)").paper["apgd"].approx
    alfa = tables["alfa"]
    assert [s.key for s in alfa.columns[0].paper] == ["sa_r20", "sa_r18"]
    assert alfa.row("ALFA").paper["sa_r20"].value == 92.52
    assert alfa.row("ALFA").paper["sa_r18"].std == 0.08
    # the eps of the mapping's attack columns are parsed fractions
    assert tenet.columns[3].metric.match == {
        "name": "pgd",
        "eps": pytest.approx(4 / 255),
        "steps": 7,
    }


DEFAULT_ROWS = {
    "ce": {
        "tenet": "Baseline [31]",
        "hnc": "Cross Entropy",
        "topgap": "Baseline (PRN18)",
        "topgap_ablation": "FPN ✗, ℓ1 ✗, Top-GAP ✗ (baseline)",
        "alfa": "Standard Training",
    },
    "cutout": {"tenet": "Cutout [7]"},
    "augmix": {"tenet": "Augmix [14]"},
    "random_erasing": {},
    "tenet": {"tenet": "TENET"},
    "tenet_aug": {"tenet": "TENET (Aug.)"},
    "ce+fgsm_rs": {
        "tenet": "A.T. [24]",
        "cifs": "Vanilla",
        "cifs_best": "Vanilla",
        "cifs_topk": "AT ResNet-18",
        "topgap": "FGSM-AT (PRN18)",
        "alfa": "Adversarial training",
    },
    "ce+free_at": {
        "tenet": "A.T. [24]",
        "cifs": "Vanilla",
        "cifs_best": "Vanilla",
        "cifs_topk": "AT ResNet-18",
        "alfa": "Adversarial training",
    },
    "tenet+free_at": {"tenet": "TENET (A.T.)"},
    "hnc_mse": {"hnc": "HNC_mse"},
    "hnc_kd": {"hnc": "HNC_kd"},
    "topgap_k4": {"topgap": "Top-GAP (ours, PRN18)"},
    "topgap_k16": {
        "topgap": "Top-GAP (ours, PRN18)",
        "topgap_ablation": "FPN ✓, ℓ1 ✓, Top-GAP ✓ (Top-GAP)",
    },
    "topgap_k16_no_topgap": {
        "topgap": "Top-GAP (ours, PRN18)",
        "topgap_ablation": "FPN ✓, ℓ1 ✓, Top-GAP ✗",
    },
    "cifs+fgsm_rs": {
        "cifs": "CIFS",
        "cifs_best": "CIFS",
        "cifs_topk": "CIFS (not in the paper's table)",
    },
    "cas+free_at": {"cifs": "CAS", "cifs_best": "CAS"},
    "alfa": {"alfa": "ALFA"},
    "lalfa": {"alfa": "L-ALFA"},
    "feature_noise": {"alfa": "Random Noise"},
    "moex": {"alfa": "MoEx"},
    "advprop": {"alfa": "AdvProp"},
}


@pytest.mark.parametrize("cell", list(DEFAULT_ROWS))
def test_default_mapping_puts_each_cell_in_its_paper_rows(cell):
    group_ = CellGroup("cpu", cell, [])
    found = {t.id: r.label for t in load_spec().tables for r in t.rows if r.matches(group_)}
    assert found == DEFAULT_ROWS[cell]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t["columns"][0]["metric"].update(kind="bogus"), "unknown metric kind"),
        (lambda t: t["rows"][0]["paper"].update(nope=1.0), "unknown column"),
        (lambda t: t["rows"][1].update(reference="Nobody"), "is not a row"),
        (lambda t: t["columns"][2]["metric"].pop("match"), "needs a `match`"),
        (lambda t: t["columns"][2]["metric"]["match"].update(colour="red"), "unknown match key"),
        (lambda t: t["rows"][0]["paper"].update(clean="high"), "a paper value is a number"),
        (lambda t: t["columns"][0]["metric"].update(epoch="first"), "valid: last, best"),
        (lambda t: t["columns"][0]["metric"].update(kind="cam"), "a cam metric needs `field`"),
        (lambda t: t.update(exclude_recipes="cpu"), "`exclude_recipes` must be a list"),
    ],
)
def test_spec_errors_say_what_is_wrong(tmp_path, change, message):
    import yaml

    from robustfeat.report.spec import DEFAULT_TABLES

    data = yaml.safe_load(DEFAULT_TABLES.read_text())
    change(data["tables"][0])
    path = tmp_path / "tables.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_spec(path)


def test_best_epoch_metrics_read_the_best_epochs_evaluation():
    last = results(0.80, attacks=[attack("pgd20", "pgd", 0.30, steps=20)])
    best_eval = results(0.78, attacks=[attack("pgd20", "pgd", 0.35, steps=20)])
    pgd = Metric("attack", {"name": "pgd", "steps": 20}, epoch="best")

    def run(best_epoch):
        return Run(Path("r.json"), "cpu", "ce+fgsm_rs", 0, {**last, **best_epoch})

    selected = run({"best_epoch": {"epoch": 7, "last_epoch": 10, "evaluation": best_eval}})
    assert measure(selected, pgd) == pytest.approx(0.35)
    assert measure(selected, Metric("clean", epoch="best")) == pytest.approx(0.78)
    assert measure(selected, Metric("clean")) == pytest.approx(0.80)
    # the last epoch was the best: same numbers; no selection at all: not measured
    last_is_best = run({"best_epoch": {"epoch": 10, "last_epoch": 10, "evaluation": None}})
    assert measure(last_is_best, pgd) == pytest.approx(0.30)
    assert measure(run({}), pgd) is None


def test_attack_metric_is_the_worst_over_matching_standard_and_adaptive_entries():
    run = Run(
        Path("r.json"),
        "cpu",
        "cifs+fgsm_rs",
        0,
        results(
            0.8,
            attacks=[
                attack("pgd20", "pgd", 0.50, steps=20),
                attack("pgd20[beta_1]", "pgd", 0.40, steps=20, kind="adaptive"),
                attack("pgd20x3", "pgd", 0.30, steps=20, restarts=3),  # excluded: restarts: 1
                attack("pgd100", "pgd", 0.20, steps=100),  # excluded: steps
                attack("fgsm", "fgsm", 0.60),
            ],
        ),
    )
    match = {"name": "pgd", "eps": EPS, "steps": 20, "restarts": 1}
    assert measure(run, Metric("attack", match)) == pytest.approx(0.40)
    assert measure(run, Metric("attack", match, error=True)) == pytest.approx(0.60)
    # FGSM entries record no restarts: treated as 1
    assert measure(run, Metric("attack", {"name": "fgsm", "restarts": 1})) == 0.60
    assert measure(run, Metric("attack", {"name": "pgd", "eps": 4 / 255})) is None
    # top-k under attack: the worst matching entry's top-k; entries without top-k are skipped
    topk = Run(
        Path("r.json"),
        "cpu",
        "ce+fgsm_rs",
        0,
        results(
            0.8,
            attacks=[
                attack("pgd20", "pgd", 0.5, topk=(0.7, 0.8)),
                attack("pgd20[a]", "pgd", 0.45, kind="adaptive", topk=(0.75, 0.78)),
                attack("pgd20[b]", "pgd", 0.44, kind="adaptive"),
            ],
        ),
    )
    assert measure(topk, Metric("attack", {"name": "pgd"}, k=2)) == 0.7
    assert measure(topk, Metric("attack", {"name": "pgd"}, k=3)) == 0.78
    assert measure(topk, Metric("attack", {"name": "pgd"}, k=1)) == 0.44
    assert measure(run, Metric("clean_error")) == pytest.approx(0.2)
    assert measure(run, Metric("train_s_per_epoch")) == pytest.approx(10.0)  # 100 s / 10 epochs


# ------------------------------------------------------------------ tables from a tree
@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "results"
    for seed, (ce, tenet, fgsm_ce, fgsm_tenet) in enumerate(
        [(0.80, 0.90, 0.10, 0.30), (0.82, 0.91, 0.12, 0.31), (0.84, 0.92, 0.14, 0.32)]
    ):
        write_run(
            root,
            "cpu",
            "ce",
            seed,
            results(
                ce, seed=seed, mce=0.3 + seed * 0.01, attacks=[attack("fgsm", "fgsm", fgsm_ce)]
            ),
        )
        write_run(
            root,
            "cpu",
            "tenet",
            seed,
            results(
                tenet,
                method="tenet",
                seed=seed,
                mce=0.25,
                attacks=[attack("fgsm", "fgsm", fgsm_tenet)],
                flags=[
                    {"name": "zero_gradients", "detail": f"2.0% zero (seed {seed})", "values": {}}
                ]
                if seed == 1
                else [],
            ),
        )
    for seed in (0, 1):
        for cell, method, at, clean in (
            ("ce+fgsm_rs", "ce", "fgsm_rs", 0.70),
            ("ce+free_at", "ce", "free_at", 0.60),
            ("cifs+fgsm_rs", "cifs", "fgsm_rs", 0.71),
        ):
            write_run(
                root,
                "cpu",
                cell,
                seed,
                results(
                    clean + 0.01 * seed,
                    method=method,
                    at=at,
                    seed=seed,
                    sha=f"sha{seed}",
                    attacks=[
                        attack(
                            "pgd20",
                            "pgd",
                            0.40 + 0.01 * seed,
                            steps=20,
                            per_class={"cat": 0.2, "dog": 0.3 + 0.01 * seed, "frog": None},
                        )
                    ],
                ),
            )
    return root


def test_paper_table_layout_aggregates_seeds_beside_paper_values(tree):
    groups = groups_of(tree)
    table = paper_table(next(t for t in load_spec().tables if t.id == "tenet"), groups)
    assert table.header[:5] == [
        "Paper row",
        "Our cell",
        "Seeds",
        "Clean err.: ours",
        "Clean err.: paper",
    ]
    assert [r[0] for r in table.rows] == [
        "Baseline [31]",
        "Cutout [7]",
        "Augmix [14]",
        "TENET",
        "TENET (Aug.)",
        "A.T. [24]",
        "A.T. [24]",
        "TENET (A.T.)",
    ]  # two AT cells fill the A.T. row
    base = row_for(table, "Baseline [31]")
    assert base["Our cell"] == "cpu/ce" and base["Seeds"] == "3 (0,1,2)"
    assert base["Clean err.: ours"] == "18.00 ± 2.00"  # errors 20, 18, 16 %
    assert base["Clean err.: paper"] == "5.72"
    assert base["FGSM (8/255) err.: ours"] == "88.00 ± 2.00"
    assert base["mCE: ours"] == "31.00 ± 1.00"
    tenet = row_for(table, "TENET")
    assert tenet["Clean err.: ours"] == "9.00 ± 1.00 ▲"  # 18 - 9 = 9 > 2 + 1
    assert tenet["FGSM (8/255) err.: ours"] == "69.00 ± 1.00 ▲"
    assert tenet["Clean err.: paper"] == "3.89"
    assert row_for(table, "Cutout [7]")["Our cell"] == "not run"
    assert row_for(table, "TENET (A.T.)")["PGD-100 (8/255) err.: paper"] == "37.07"
    assert any("ResNeXt-29" in n and "resnet20" in n for n in table.notes)


def test_cells_are_compared_within_their_at_scheme(tree):
    groups = groups_of(tree)
    cifs = next(t for t in load_spec().tables if t.id == "cifs")
    table = paper_table(cifs, groups)
    row = row_for(table, "CIFS", "cpu/cifs+fgsm_rs")
    # clean 71, 72 vs ce+fgsm_rs 70, 71 (std 0.71 each): 1.0 < 1.41 -> within the spread;
    # against ce+free_at (60, 61) it would have been an improvement
    assert row["Natural: ours"] == "71.50 ± 0.71 ≈"
    assert row["PGD-20: ours"] == "40.50 ± 0.71 ≈"
    assert row["Natural: paper"] == "83.86"


def test_a_cell_of_ours_reads_the_same_in_the_cells_and_the_paper_tables(tmp_path):
    """One formatter (``ours_cell``) for every table: the same text for the same cell and
    reference; a descriptive column (train s/epoch) carries a ratio and a marker only where it
    is a ratio to the reference (the papers'), and a metric fewer seeds measured says (n=k)."""
    for seed in (0, 1):
        ce = results(0.70 + 0.01 * seed, at="fgsm_rs", seed=seed, mce=0.35)
        ce["run"]["train_seconds"] = 100.0 + 20 * seed  # 10 epochs: 10, 12 s/epoch
        write_run(tmp_path, "cpu", "ce+fgsm_rs", seed, ce)
        cifs = results(0.60 + 0.01 * seed, method="cifs", at="fgsm_rs", seed=seed)
        cifs["run"]["train_seconds"] = 200.0 + 20 * seed  # 20, 22 s/epoch
        if seed == 0:
            cifs["corruptions"] = ce["corruptions"] | {"mce": 0.30}
        write_run(tmp_path, "cpu", "cifs+fgsm_rs", seed, cifs)
    groups = groups_of(tmp_path)
    ref, cell = by_key(groups)["cpu/ce+fgsm_rs"], by_key(groups)["cpu/cifs+fgsm_rs"]
    # clean 60.5 vs 70.5: |10| > 0.71 + 0.71 -> worse; s/epoch 21 vs 11: slower by 10 > 1.4 + 1.4
    cells = row_for(cells_table(groups, load_spec()), "cpu/cifs+fgsm_rs")
    assert cells["Clean"] == "60.50 ± 0.71 ▼"
    assert cells["Train s/epoch"] == "21.0 ± 1.4 s"  # describes training: no marker
    assert cells["mCE"] == "30.00 (n=1) ?"  # one of two seeds measured it: undecidable
    paper = paper_table(load_spec().table("cifs"), groups)
    row = row_for(paper, "CIFS", "cpu/cifs+fgsm_rs")
    assert row["Natural: ours"] == cells["Clean"]
    assert row["Train s/epoch: ours"] == "21.0 ± 1.4 s (×1.91) ▼"  # 21 / 11
    assert ours_cell(cell, ref, Metric("train_s_per_epoch")) == cells["Train s/epoch"]
    assert ours_cell(cell, None, Metric("clean")) == "60.50 ± 0.71"  # no reference, no marker
    assert not compared(Metric("train_gap")) and not compared(Metric("train"))
    assert compared(Metric("train_s_per_epoch", ratio_to_reference=True))


def test_cells_are_compared_within_their_recipe(tmp_path):
    root = tmp_path / "r"
    for seed in (0, 1):
        write_run(root, "cpu", "ce", seed, results(0.5 + 0.01 * seed))
        write_run(root, "demo", "ce", seed, results(0.9 + 0.01 * seed))
        write_run(root, "cpu", "tenet", seed, results(0.6 + 0.01 * seed, method="tenet"))
    table = paper_table(load_spec().tables[0], groups_of(root))
    assert [r[1] for r in table.rows if r[0] == "Baseline [31]"] == ["cpu/ce", "demo/ce"]
    assert row_for(table, "TENET")["Clean err.: ours"] == "39.50 ± 0.71 ▲"  # vs cpu/ce only


def test_paper_tables_take_only_their_recipes(tmp_path):
    """shapes / low-data / sweep recipes reuse cell names like `ce`: they stay out of the papers'
    tables (the default `exclude_recipes`), runs outside the bench layout still fill rows."""
    root = tmp_path / "r"
    write_run(root, "cpu", "ce", 0, results(0.5))
    write_run(root, "shapes-cam", "ce", 0, results(0.9))
    write_run(root, "paper-tenet", "ce", 0, results(0.7))
    loose = tmp_path / "loose" / "my-run"
    loose.mkdir(parents=True)
    (loose / "results.json").write_text(json.dumps(results(0.6)))
    spec = load_spec()
    assert spec.tables[0].exclude_recipes == ("cpu-*", "shapes-*")
    table = paper_table(spec.tables[0], group(collect([root, loose]).runs))
    assert [r[1] for r in table.rows if r[0] == "Baseline [31]"] == [
        "my-run",
        "cpu/ce",
        "paper-tenet/ce",
    ]


def cam_results(clean: float, method: str, data_args: dict, **cam: float) -> dict:
    out = results(clean, method=method)
    out["run"]["config"]["data"] = "shapes"
    out["run"]["config"]["data_args"] = {"n_train": 10000, **data_args}
    out["cam"] = {"n": 1000, "source": "cam", **cam}
    return out


def test_cam_table_compares_each_cell_with_ce_on_the_same_data(tmp_path):
    root = tmp_path / "r"
    small = {"size_range": [0.2, 0.3]}
    for seed, (iou, iou_hnc, peak) in enumerate([(0.50, 0.60, 6.0), (0.52, 0.62, 6.2)]):
        write_run(root, "shapes-cam", "ce", seed, cam_results(1.0, "ce", {}, iou_best=iou))
        write_run(
            root,
            "shapes-cam",
            "hnc_mse",
            seed,
            cam_results(1.0, "hnc", {}, iou_best=iou_hnc, neg_peakiness=peak / 3),
        )
    write_run(root, "shapes-cam", "small_ce", 0, cam_results(0.9, "ce", small, iou_best=0.4))
    spurious = cam_results(0.7, "topgap", {"spurious_p": 0.9}, sparsity_l1=0.1234)
    spurious["shift"] = {"spurious_train_distribution": {"accuracy": 0.95, "n": 2000}}
    write_run(root, "shapes-cam", "spurious_topgap_k16", 0, spurious)
    small_tg = cam_results(0.9, "topgap", small, iou_best=0.45, erf_distance=0.3)
    write_run(root, "shapes-cam", "small_topgap_k32", 0, small_tg)
    write_run(root, "cpu", "ce", 0, results(0.8))  # no CAM metrics: not in the table

    table = cam_table(groups_of(root), load_spec())
    assert [r[0] for r in table.rows] == [
        "shapes-cam/ce",
        "shapes-cam/hnc_mse",
        "shapes-cam/small_ce",
        "shapes-cam/small_topgap_k32",
        "shapes-cam/spurious_topgap_k16",
    ]
    # IoU is a plain score, not a percentage; HNC is judged against CE on the same data
    hnc = row_for(table, "shapes-cam/hnc_mse")
    assert hnc["IoU (best thr.)"] == "0.610 ± 0.014 ▲"
    assert hnc["Data options"] == "default"
    assert hnc["Neg. peakiness"] == "2.033 ± 0.047"  # CE has no peakiness: no marker
    # small objects: the reference is small_ce (one seed each: undecidable), not ce
    small_row = row_for(table, "shapes-cam/small_topgap_k32")
    assert small_row["Data options"] == "size_range [0.2, 0.3]"
    assert small_row["IoU (best thr.)"] == "0.450 ?"
    assert small_row["ERF distance"] == "0.300"
    spur = row_for(table, "shapes-cam/spurious_topgap_k16")
    assert spur["Biased-distribution acc."] == "95.00"
    assert spur["L1 sparsity"] == "0.123"
    assert spur["Clean"] == "70.00"


def test_cam_table_is_absent_without_cam_metrics(tree):
    assert cam_table(groups_of(tree), load_spec()) is None


def test_lower_is_better_for_sparsity_and_peakiness():
    assert not Metric("cam", field="sparsity_l1").higher_is_better
    assert not Metric("cam", field="neg_peakiness").higher_is_better
    assert Metric("cam", field="iou_best").higher_is_better
    assert Metric("cam", field="erf_distance").higher_is_better


def test_single_seed_cells_are_never_called_improvements(tmp_path):
    root = tmp_path / "r"
    write_run(root, "cpu", "ce", 0, results(0.5))
    write_run(root, "cpu", "tenet", 0, results(0.9, method="tenet"))
    table = paper_table(load_spec().tables[0], groups_of(root))
    assert row_for(table, "TENET")["Clean err.: ours"] == "10.00 ?"


def test_cells_table_compares_a_cell_on_other_data_with_the_ce_cell_on_that_data(tmp_path):
    root = tmp_path / "r"

    def run(recipe: str, cell: str, seed: int, clean: float, method: str, **config) -> None:
        data = results(clean, method=method, seed=seed)
        data["run"]["config"].update(config)
        write_run(root, recipe, cell, seed, data)

    for seed, jitter in enumerate((0.0, 0.01)):
        run("ln", "ce_sym0.6", seed, 0.60 + jitter, "ce", label_noise=0.6)
        run("ln", "ce_sym0.2", seed, 0.80 + jitter, "ce", label_noise=0.2)
        run("ln", "hnc_mse_sym0.6", seed, 0.70 + jitter, "hnc", label_noise=0.6)
        run("sh", "ce", seed, 0.90 + jitter, "ce")
        run("sh", "spurious_ce", seed, 0.50 + jitter, "ce", data_args={"spurious": 0.9})
        run("sh", "spurious_hnc_kd", seed, 0.60 + jitter, "hnc", data_args={"spurious": 0.9})
        # named like the reference but trained on other data: never compared
        run("sh", "small_hnc", seed, 0.95 + jitter, "hnc", data_args={"size": 4})
        run("sh", "small_ce", seed, 0.10 + jitter, "ce", data_args={"size": 8})
    table = cells_table(groups_of(root), load_spec())
    # 70 vs 60 (not vs ce_sym0.2's 80, which would be a "worse")
    assert row_for(table, "ln/hnc_mse_sym0.6")["Clean"] == "70.50 ± 0.71 ▲"
    assert row_for(table, "ln/ce_sym0.2")["Clean"] == "80.50 ± 0.71"  # no ce at r = 0.2's peer
    # 60 vs spurious_ce's 50 (▲), not vs the unbiased ce's 90 (▼)
    assert row_for(table, "sh/spurious_hnc_kd")["Clean"] == "60.50 ± 0.71 ▲"
    assert row_for(table, "sh/small_hnc")["Clean"] == "95.50 ± 0.71"  # small_ce: other data
    assert reference_names("hnc_mse_sym0.6", None, "ce") == [
        "ce_mse_sym0.6",
        "ce_sym0.6",
        "hnc_mse_ce",
        "hnc_ce",
        "ce",
    ]
    assert reference_names("cifs+fgsm_rs", "fgsm_rs", "ce") == ["ce+fgsm_rs"]


def test_cells_table_has_every_cell_and_drops_unmeasured_columns(tree):
    table = cells_table(groups_of(tree), load_spec())
    assert [r[0] for r in table.rows] == [
        "cpu/ce",
        "cpu/ce+fgsm_rs",
        "cpu/ce+free_at",
        "cpu/cifs+fgsm_rs",
        "cpu/tenet",
    ]
    assert table.header == [
        "Cell",
        "Method",
        "AT",
        "Seeds",
        "Clean",
        "fgsm",
        "pgd20",
        "Worst case",
        "mCE",
        "Train s/epoch",
        "Flags",
    ]
    tenet = row_for(table, "cpu/tenet")
    assert tenet["Clean"] == "91.00 ± 1.00 ▲" and tenet["fgsm"] == "31.00 ± 1.00 ▲"
    assert tenet["Flags"] == "zero_gradients (1/3)"
    assert tenet["Train s/epoch"] == "10.0 ± 0.0 s"
    assert row_for(table, "cpu/ce+free_at")["fgsm"] == "–"
    # an AT cell is compared with ce+<its scheme>, never with plain ce
    assert row_for(table, "cpu/cifs+fgsm_rs")["Clean"] == "71.50 ± 0.71 ≈"


def test_flags_table_lists_every_flag_with_its_detail(tmp_path, tree):
    write_run(tree, "cpu", "clean_only", 0, results(0.5, checks=False))
    table = flags_table(groups_of(tree))
    assert table.rows == [["cpu/tenet", "1", "zero_gradients", "2.0% zero (seed 1)"]]
    assert any("cpu/clean_only" in n and "absence of flags means nothing" in n for n in table.notes)


def test_missing_fields_do_not_break_any_table(tmp_path):
    root = tmp_path / "r"
    bare = {"schema": "robustfeat.results/1", "clean": {"accuracy": 0.5}}
    write_run(root, "cpu", "ce", 0, {**bare, "run": {"method": "ce"}})
    (root / "cpu" / "ce" / "seed1").mkdir()
    (root / "cpu" / "ce" / "seed1" / "results.json").write_text(json.dumps(bare))
    (root / "cpu" / "ce" / "seed0" / "metrics.jsonl").write_text('{"epoch": 1, "train_sec')
    built = build([root], plots=True)
    cells = built.report.sections[1].tables[0]
    assert cells.header == ["Cell", "Method", "AT", "Seeds", "Clean", "Flags"]
    assert cells.rows[0][4] == "50.00 ± 0.00" and cells.rows[0][-1] == "not checked"
    for section in built.report.sections:
        for table in section.tables:
            assert all(len(r) == len(table.header) for r in table.rows)


def test_collect_errors_and_skips(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        collect([tmp_path / "nope"])
    with pytest.raises(ConfigError, match=r"no results\.json"):
        collect([tmp_path])
    root = tmp_path / "r"
    write_run(root, "cpu", "ce", 0, results(0.5))
    other = root / "cpu" / "old" / "seed0"
    other.mkdir(parents=True)
    (other / "results.json").write_text(json.dumps({"schema": "robustfeat.results/0"}))
    found = collect([root])
    assert [r.cell for r in found.runs] == ["ce"]
    assert len(found.skipped) == 1 and "robustfeat.results/0" in found.skipped[0]


def test_run_outside_the_bench_layout_is_its_own_cell_matched_by_method(tmp_path):
    run = tmp_path / "ce-cpu"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results(0.8, seed=4)))
    groups = groups_of(run)
    assert [(g.recipe, g.cell, g.runs[0].seed) for g in groups] == [(None, "ce-cpu", 4)]
    table = paper_table(load_spec().tables[0], groups)
    assert row_for(table, "Baseline [31]")["Our cell"] == "ce-cpu"


# ------------------------------------------------------------------ perf and provenance
PERF = {
    "schema": "robustfeat.perf/1",
    "machine": {"cpu": "Xeon", "threads": 2},
    "step_time_ratio_vs_ce": {"hnc": 1.04, "cifs": 1.20, "topgap": 4.1, "tenet": 1.9},
    "flop_ratio_vs_ce": {"hnc": 1.01, "cifs": 1.02, "topgap": 3.9},
    "step_time_ratio_vs_at": {"cifs": 1.03},
    "trainer_vs_bare_loop": 0.97,
    "peak_rss_mb": {"ce": 512.0, "tenet": 700.5},
    "grouping_time_vs_channels": {"64": 0.01, "128": 0.02},
}


def test_overhead_table_puts_measured_beside_flops_and_goal():
    tables = {t.id: t for t in perf_tables(PERF, load_yaml_goals())}
    overhead = tables["overhead"]
    hnc = row_for(overhead, "hnc")
    assert hnc["Step time ÷ CE"] == "1.04×" and hnc["FLOP-implied ratio"] == "1.01×"
    assert hnc["Measured ÷ FLOPs"] == "1.03" and hnc["Meets goal"] == "yes"
    assert row_for(overhead, "cifs")["Meets goal"] == "no"  # 1.20 > 1.05
    assert row_for(overhead, "topgap")["Meets goal"] == "yes"  # 4.1 / 3.9 = 1.05 <= 1.10
    assert row_for(overhead, "tenet")["FLOP-implied ratio"] == "–"
    assert row_for(overhead, "cifs + AT (÷ AT)")["Meets goal"] == "yes"
    assert hnc["Spread (IQR)"] == "–"  # no spread in this perf.json
    per_scheme = {**PERF, "step_time_ratio_vs_at": {"cifs+fgsm_rs": {"step": 1.08, "flops": 1.0}}}
    row = row_for(perf_tables(per_scheme, load_yaml_goals())[0], "cifs+fgsm_rs (÷ ce+fgsm_rs)")
    assert (row["Step time ÷ CE"], row["FLOP-implied ratio"]) == ("1.08×", "1.00×")
    assert row["Meets goal"] == "no"  # 1.08 > the CIFS + AT goal of 1.05
    assert "alfa" not in [r[0] for r in overhead.rows]  # nothing measured: no row
    assert row_for(tables["throughput"], "trainer_vs_bare_loop")["Meets goal"] == "yes"
    assert tables["memory"].rows == [["ce", "512.00"], ["tenet", "700.50"]]
    assert ["grouping_time_vs_channels.64", "0.01"] in tables["perf_other"].rows


def test_overhead_verdict_says_when_the_goal_lies_inside_the_rounds_spread():
    perf = {
        **PERF,
        "step_time_ratio_vs_ce": {"hnc": 1.04, "cifs": 1.06},
        "step_time_ratio_spread_vs_ce": {"hnc": [1.01, 1.07], "cifs": [1.055, 1.08]},
        "step_time_ratio_vs_at": {"cifs+pgd_at": {"step": 1.06, "spread": [1.03, 1.09]}},
    }
    overhead = perf_tables(perf, load_yaml_goals())[0]
    hnc, cifs = row_for(overhead, "hnc"), row_for(overhead, "cifs")
    assert hnc["Spread (IQR)"] == "1.01-1.07" and hnc["Meets goal"] == "yes"  # 1.10 outside
    assert cifs["Meets goal"] == "no"  # 1.05 is below the whole interquartile range
    at = row_for(overhead, "cifs+pgd_at (÷ ce+pgd_at)")
    assert at["Spread (IQR)"] == "1.03-1.09" and at["Meets goal"] == "no (within spread)"


def test_overhead_verdict_is_not_within_spread_when_the_flop_slack_fails_at_both_ends():
    # the 1.05 goal lies inside 1.03-1.09, but 1.03 / 0.90 = 1.14 already breaks the 10% FLOP
    # slack at the low end, so no noise in the interquartile range turns the "no" into a "yes"
    perf = {
        **PERF,
        "step_time_ratio_vs_ce": {"cifs": 1.06},
        "step_time_ratio_spread_vs_ce": {"cifs": [1.03, 1.09]},
        "flop_ratio_vs_ce": {"cifs": 0.90},
    }
    cifs = row_for(perf_tables(perf, load_yaml_goals())[0], "cifs")
    assert cifs["Meets goal"] == "no"
    within = {**perf, "flop_ratio_vs_ce": {"cifs": 1.0}}  # now the goal alone decides
    assert row_for(perf_tables(within, load_yaml_goals())[0], "cifs")["Meets goal"] == (
        "no (within spread)"
    )


def test_perf_with_only_a_schema_or_odd_values_renders():
    tables = perf_tables({"schema": "robustfeat.perf/1"}, load_yaml_goals())
    assert [t.id for t in tables] == ["overhead"] and tables[0].rows == []
    odd = {
        "schema": "robustfeat.perf/1",
        "step_time_ratio_vs_ce": [1.1, 1.2],
        "trainer_vs_bare_loop": {"median": 0.9, "repeats": 5},
        "peak_rss_mb": None,
    }
    tables = {t.id: t for t in perf_tables(odd, load_yaml_goals())}
    assert tables["overhead"].rows == []
    assert row_for(tables["throughput"], "trainer_vs_bare_loop")["Meets goal"] == "no"
    assert ["step_time_ratio_vs_ce", "[1.1,1.2]"] in tables["perf_other"].rows
    assert ["peak_rss_mb", "None"] in tables["perf_other"].rows


def load_yaml_goals() -> dict:
    from robustfeat.report.spec import DEFAULT_PERF_GOALS, load_yaml

    return load_yaml(DEFAULT_PERF_GOALS)


def test_provenance_warns_about_mixed_shas(tree):
    table = provenance_table(groups_of(tree), PERF)
    shas = [r for r in table.rows if r[0] == "git SHA"]
    assert {r[1] for r in shas} == {"abc123", "sha0", "sha1"}
    assert any("3 different git SHAs" in n for n in table.notes)
    assert ["package", "torch", "2.14.1 (12 runs)"] in table.rows
    wall = next(r for r in table.rows if r[0] == "wall time")
    assert wall[1] == f"train {12 * 100 / 3600:.2f} h, eval {12 * 10 / 3600:.2f} h"


# ------------------------------------------------------------------ figures
def test_plots_appear_only_with_their_data(tree):
    groups = groups_of(tree)
    assert {p.id for p in make_plots(groups)} == {"eps", "severity", "cost", "per_class"}
    eta = [
        {
            "epoch": e,
            "train_seconds": 10.0 * e,
            "loss": 2.0 / e,
            "train_acc": 0.1 * e,
            "eta": {"stage2": 0.1 * e, "stage3": 0.3},  # as L-ALFA's epoch_log() writes it
        }
        for e in (1, 2, 3)
    ]
    write_run(tree, "cpu", "lalfa", 0, results(0.85, method="lalfa"), epochs=eta)
    plots = {p.id: p for p in make_plots(groups_of(tree))}
    assert set(plots) == {"eps", "severity", "cost", "per_class", "training", "eta"}
    assert all(p.png.startswith(b"\x89PNG\r\n\x1a\n") for p in plots.values())
    lalfa = next(g for g in groups_of(tree) if g.cell == "lalfa")
    assert eta_keys(lalfa) == ["eta/stage2", "eta/stage3"]
    assert epoch_series(lalfa, "eta/stage2") == {1.0: [0.1], 2.0: [0.2], 3.0: [0.1 * 3]}
    selected = [{"epoch": e, "train_seconds": 1.0, "val_pgd10": v} for e, v in ((1, 0.2), (2, 0.3))]
    write_run(tree, "cpu", "ce+fgsm_rs", 9, results(0.7, at="fgsm_rs"), epochs=selected)
    plots = {p.id for p in make_plots(groups_of(tree))}
    assert "selection" in plots
    at_group = next(g for g in groups_of(tree) if g.cell == "ce+fgsm_rs")
    assert epoch_series(at_group, "val_pgd10") == {1.0: [0.2], 2.0: [0.3]}


# ------------------------------------------------------------------ README markers
README = (
    "# robustfeat\n\nintro\n\n<!-- results:start -->\nold table\n<!-- results:end -->\n\nrest\n"
)


def test_readme_section_replaced_between_markers_only():
    new = replace_results_section(README, "| new | table |\n")
    assert new == (
        "# robustfeat\n\nintro\n\n<!-- results:start -->\n| new | table |\n"
        "<!-- results:end -->\n\nrest\n"
    )
    assert replace_results_section(new, "| new | table |") == new  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "# no markers\n",
        "<!-- results:start -->\n",
        "<!-- results:end -->\nx\n<!-- results:start -->\n",
        README + README,
    ],
)
def test_readme_without_a_proper_marker_pair_is_an_error(text):
    with pytest.raises(ConfigError, match="results"):
        replace_results_section(text, "x")


def test_mean_of_stat_is_exact_for_hand_values():
    stat = summarize([0.1, 0.2, 0.6])
    assert stat.mean == pytest.approx(0.3)
    assert stat.std == pytest.approx(math.sqrt((0.04 + 0.01 + 0.09) / 2))


# ------------------------------------------------------------------ sweeps
def topgap_results(clean: float, fgsm: float, pgd20: float, seed: int = 0, **args: Any) -> dict:
    data = results(
        clean,
        method="topgap" if args else "ce",
        seed=seed,
        attacks=[attack("fgsm", "fgsm", fgsm), attack("pgd20", "pgd", pgd20, steps=20)],
    )
    data["run"]["config"]["method_args"] = args
    return data


def test_sweep_table_lists_settings_and_names_the_best_for_accuracy_and_robustness(tmp_path):
    root = tmp_path / "r"
    for seed, clean in enumerate([0.84, 0.86]):
        write_run(root, "cpu", "ce", seed, topgap_results(clean, 0.02, 0.0, seed))
    write_run(root, "cpu", "topgap_k16", 0, topgap_results(0.83, 0.09, 0.0, k=16))
    k8_dir = write_run(root, "cpu-sweeps", "topgap_k8", 0, topgap_results(0.80, 0.15, 0.01, k=8))
    k64 = topgap_results(0.86, 0.05, 0.0, k=64, lam=0.1, l1=False)
    write_run(root, "cpu-sweeps", "topgap_k64", 0, k64)
    write_run(root, "cpu-labelnoise", "topgap_k16", 0, topgap_results(0.5, 0.5, 0.5, k=16))
    # k8's weights again under the paper's protocol (robust = prediction unchanged)
    protocol = topgap_results(0.99, 0.6, 0.3, k=8) | {"suite": "paper-topgap"}
    (k8_dir / "paper-topgap.json").write_text(json.dumps(protocol))
    spec = load_spec()
    sweep = next(s for s in spec.sweeps if s.id == "topgap")

    table = sweep_table(sweep, spec, groups_of(root))
    assert [r[0] for r in table.rows] == [
        "cpu/ce (reference)",
        "cpu/topgap_k16",
        "cpu-sweeps/topgap_k64",
        "cpu-sweeps/topgap_k8",
        "cpu-sweeps/topgap_k8 [paper-topgap]",
        "Paper: Top-GAP (ours, PRN18)",
    ]  # the label-noise recipe's cell is another setting: not in the sweep
    again = row_for(table, "cpu-sweeps/topgap_k8 [paper-topgap]")
    assert (again["Setting"], again["PGD-20"], again["Clean"]) == ("k 8", "30.00", "99.00")
    k64_row = row_for(table, "cpu-sweeps/topgap_k64")
    assert k64_row["Setting"] == "k 64, lam 0.1, l1 false"
    assert k64_row["Clean"] == "86.00 ?"  # one seed against the reference's two: undecidable
    assert row_for(table, "cpu/ce (reference)")["Clean"] == "85.00 ± 1.41"
    paper = row_for(table, "Paper: Top-GAP (ours, PRN18)")
    assert (paper["Clean"], paper["PGD-20"], paper["AutoAttack"]) == (
        "95.10",
        "51.70",
        "0.00 [Sec. 4.3] (2)",  # note (2): the paper's "all attacks together lead to 0%"
    )
    claim = next(n for n in table.notes if n.startswith("Paper row:"))
    assert "highest here: Clean 95.10 vs 99.00 (`cpu-sweeps/topgap_k8 [paper-topgap]`); " in claim
    # the paper-protocol row counts here (the paper's own way of measuring), not in the ranking
    assert "PGD-20 51.70 vs 30.00 (`cpu-sweeps/topgap_k8 [paper-topgap]`)" in claim
    assert "APGD" not in claim  # a column nobody measured is left out
    # accuracy: k64 (86%); robustness: k8, the only one above 0 in the worst case
    assert any(
        n.startswith("Best for accuracy: `cpu-sweeps/topgap_k64` (k 64") for n in table.notes
    )
    best_robust = next(n for n in table.notes if n.startswith("Best for robustness"))
    assert best_robust.startswith(
        "Best for robustness (by Worst case, then PGD-20, then FGSM): `cpu-sweeps/topgap_k8` "
        "(k 8): Worst case 1.00, PGD-20 1.00, FGSM 15.00."
    )
    plot = sweep_plot(sweep, groups_of(root))
    assert plot.png.startswith(b"\x89PNG") and plot.id == "sweep-topgap"
    assert "Clean, Worst case, PGD-20, FGSM (mean" in plot.caption


def test_best_cell_breaks_ties_by_the_next_metric_and_skips_unmeasured_cells(tmp_path):
    root = tmp_path / "r"
    write_run(root, "cpu", "a", 0, topgap_results(0.9, 0.10, 0.0, k=1))
    write_run(root, "cpu", "b", 0, topgap_results(0.8, 0.20, 0.0, k=2))
    write_run(root, "cpu", "c", 0, results(0.95))  # no attacks: not ranked by robustness
    groups = by_key(groups_of(root))
    pgd20 = Metric("attack", {"name": "pgd", "steps": 20})
    fgsm = Metric("attack", {"name": "fgsm"})
    cells = list(groups.values())
    assert best_cell(cells, [pgd20, fgsm]).key == "cpu/b"  # PGD-20 ties at 0: FGSM decides
    assert best_cell(cells, [Metric("clean")]).key == "cpu/c"
    assert best_cell([groups["cpu/c"]], [pgd20]) is None


def test_a_protocol_file_of_another_suite_is_an_error(tmp_path):
    root = tmp_path / "r"
    for cell in ("topgap_k8", "topgap_k16"):
        run = write_run(root, "cpu", cell, 0, topgap_results(0.8, 0.1, 0.0, k=8))
    (run / "paper-topgap.json").write_text(json.dumps(topgap_results(0.8, 0.1, 0.0, k=8)))
    spec = load_spec()
    sweep = next(s for s in spec.sweeps if s.id == "topgap")
    with pytest.raises(
        ConfigError, match=r"paper-topgap\.json is not a .* with suite 'paper-topgap'"
    ):
        sweep_table(sweep, spec, groups_of(root))


def test_a_paper_row_of_a_recipe_without_the_reference_compares_with_the_same_setup(tmp_path):
    root = tmp_path / "r"
    for seed, clean in enumerate([0.84, 0.85]):
        write_run(root, "cpu", "ce", seed, topgap_results(clean, 0.02, 0.0, seed))
    write_run(root, "cpu-sweeps", "topgap_k16_no_topgap", 0, topgap_results(0.82, 0.2, 0.01, k=16))
    spec = load_spec()
    table = paper_table(spec.table("topgap_ablation"), groups_of(root))
    row = row_for(table, "FPN ✓, ℓ1 ✓, Top-GAP ✗")
    assert (row["Our cell"], row["Clean: ours"]) == ("cpu-sweeps/topgap_k16_no_topgap", "82.00 ?")
    # another training setup (here: a different batch size) is never the reference
    other = root / "cpu-sweeps" / "topgap_k16_no_topgap" / "seed0" / "results.json"
    data = json.loads(other.read_text())
    data["run"]["config"]["batch_size"] = 64
    other.write_text(json.dumps(data))
    table = paper_table(spec.table("topgap_ablation"), groups_of(root))
    assert row_for(table, "FPN ✓, ℓ1 ✓, Top-GAP ✗")["Clean: ours"] == "82.00"


def write_diverged(root: Path, recipe: str, cell: str, seed: int, step: int, **args: Any) -> Path:
    run = root / recipe / cell / f"seed{seed}"
    run.mkdir(parents=True)
    record = {
        "schema": "robustfeat.diverged/1",
        "step": step,
        "parts": {"loss": "nan", "loss_ce": 2.3, "loss_l1": "inf"},
        "nonfinite": ["loss_l1"],
        "message": f"non-finite loss at step {step}",
    }
    (run / "diverged.json").write_text(json.dumps(record))
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "topgap", "method_args": args}))
    return run


def test_a_diverged_setting_is_a_sweep_row_and_a_note_never_a_ranked_cell(tmp_path):
    root = tmp_path / "r"
    write_run(root, "cpu", "ce", 0, topgap_results(0.84, 0.02, 0.0))
    write_run(root, "cpu", "topgap_k16", 0, topgap_results(0.83, 0.09, 0.0, k=16))
    write_run(root, "cpu-sweeps", "topgap_k8", 0, topgap_results(0.80, 0.15, 0.01, k=8))
    write_diverged(root, "cpu-sweeps", "topgap_k16_lam10", 0, 37, k=16, lam=10.0)
    collection = collect([root])
    assert [(r.cell, r.seed) for r in collection.diverged] == [("topgap_k16_lam10", 0)]
    assert "topgap_k16_lam10" not in {r.cell for r in collection.runs}
    groups, diverged = group(collection.runs), group(collection.diverged)
    spec = load_spec()
    sweep = next(s for s in spec.sweeps if s.id == "topgap")

    table = sweep_table(sweep, spec, groups, diverged)
    row = row_for(table, "cpu-sweeps/topgap_k16_lam10")
    assert (row["Setting"], row["Clean"], row["PGD-20"]) == ("k 16, lam 10.0", "diverged", "–")
    note = "`cpu-sweeps/topgap_k16_lam10` (k 16, lam 10.0; seed 0: step 37, loss_l1 non-finite)"
    assert any(note in n for n in table.notes)
    assert not any("topgap_k16_lam10" in n for n in table.notes if n.startswith("Best for"))
    cells = cells_table(groups, spec, diverged)
    assert "cpu-sweeps/topgap_k16_lam10" not in [r[0] for r in cells.rows]
    assert any(n.startswith("Training diverged") and note in n for n in cells.notes)
    (root / "cpu-sweeps" / "topgap_k16_lam10" / "seed0" / "diverged.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"is not a robustfeat\.diverged/1 record"):
        collect([root])


def test_sweep_table_needs_two_cells(tmp_path):
    root = tmp_path / "r"
    write_run(root, "cpu", "topgap_k16", 0, topgap_results(0.83, 0.09, 0.0, k=16))
    spec = load_spec()
    assert all(sweep_table(s, spec, groups_of(root)) is None for s in spec.sweeps)
    assert all(sweep_plot(s, groups_of(root)) is None for s in spec.sweeps)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.update(robustness=["worst", "nope"]),
            r"ranks by unknown column\(s\) \['nope'\]",
        ),
        (lambda s: s.update(claim={"table": "topgap", "row": "Nobody"}), "has no row 'Nobody'"),
        (lambda s: s.update(claim={"table": "nope", "row": "x"}), "claim table 'nope'"),
        (lambda s: s.update(cells="topgap*"), "`cells` must be a list"),
        (lambda s: s.update(protocol=["paper-topgap"]), "`protocol` is an evaluation suite"),
    ],
)
def test_sweep_spec_errors_say_what_is_wrong(tmp_path, change, message):
    import yaml

    from robustfeat.report.spec import DEFAULT_TABLES

    data = yaml.safe_load(DEFAULT_TABLES.read_text())
    change(data["sweeps"][0])
    path = tmp_path / "tables.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(ConfigError, match=message):
        load_spec(path)


def test_a_recipe_without_ce_compares_with_the_ce_of_a_recipe_trained_alike(tmp_path):
    root = tmp_path / "r"
    for seed in (0, 1):
        write_run(root, "cpu", "ce", seed, results(0.80 + 0.01 * seed, seed=seed))
        sweep = results(0.70 + 0.01 * seed, method="topgap", seed=seed)
        sweep["run"]["config"].update(method_args={"k": 8}, eval_suite="standard", data_seed=seed)
        write_run(root, "cpu-sweeps", "topgap_k8", seed, sweep)
        other = results(0.70 + 0.01 * seed, method="topgap", seed=seed)
        other["run"]["config"]["lr"] = 0.05  # trained differently: no reference
        write_run(root, "demo", "topgap_k8", seed, other)
    table = cells_table(groups_of(root), load_spec())
    assert row_for(table, "cpu-sweeps/topgap_k8")["Clean"] == "70.50 ± 0.71 ▼"
    assert row_for(table, "demo/topgap_k8")["Clean"] == "70.50 ± 0.71"
    assert row_for(table, "cpu/ce")["Clean"] == "80.50 ± 0.71"  # never its own reference


def test_a_gain_under_standard_attacks_that_adaptive_attacks_beat_is_marked_masked(tmp_path):
    """CAS-like cells: far above AT under FGSM / PGD-20, below it under their own adaptive
    loss. Their ▲ on a standard attack becomes ⚠; clean accuracy keeps its ▲."""
    root = tmp_path / "r"
    masked_flag = {"name": "adaptive_attack_stronger", "detail": "...", "values": {}}

    def run(cell: str, seed: int, accuracies: list[float], adaptive: bool, **kw) -> None:
        clean, fgsm, pgd, *rest = [a + 0.01 * seed for a in accuracies]
        attacks = [attack("fgsm", "fgsm", fgsm), attack("pgd20", "pgd", pgd)]
        if adaptive:
            attacks.append(attack("pgd20[ce_beta2]", "pgd", rest[0], kind="adaptive"))
        data = results(clean, at="fgsm_rs", seed=seed, attacks=attacks, **kw)
        write_run(root, "cpu", cell, seed, data)

    for seed in (0, 1):
        run("ce+fgsm_rs", seed, [0.60, 0.40, 0.35], False)
        run("cas+fgsm_rs", seed, [0.70, 0.75, 0.66, 0.30], True, method="cas", flags=[masked_flag])
        run("cifs+fgsm_rs", seed, [0.50, 0.45, 0.40, 0.38], True, method="cifs")  # no flag: ▲ kept
    table = cells_table(groups_of(root), load_spec())
    cas = row_for(table, "cpu/cas+fgsm_rs")
    assert (cas["fgsm"], cas["pgd20"]) == ("75.50 ± 0.71 ⚠", "66.50 ± 0.71 ⚠")
    assert cas["Clean"] == "70.50 ± 0.71 ▲"  # not an attack: no masking to speak of
    assert cas["Worst case"] == "30.50 ± 0.71 ▼"  # the worst case counts the adaptive attack
    cifs = row_for(table, "cpu/cifs+fgsm_rs")
    assert (cifs["fgsm"], cifs["pgd20"]) == ("45.50 ± 0.71 ▲", "40.50 ± 0.71 ▲")
    assert "⚠" in LEGEND
    # CIFS's Table 1: its PGD-20 column takes the worst of PGD-20 and the adaptive PGD-20s
    paper = paper_table(next(t for t in load_spec().tables if t.id == "cifs"), groups_of(root))
    cas_row = row_for(paper, "CAS", "cpu/cas+fgsm_rs")
    assert cas_row["FGSM: ours"] == "75.50 ± 0.71 ⚠"
    assert cas_row["PGD-20: ours"] == "30.50 ± 0.71 ▼"


STEP_PROFILE = {
    "schema": "robustfeat.step_profile/1",
    "mode": "quick",
    "throughput_ratio_vs_baseline": 1.31,
    "load_average_at_start": [2.04, 1.0, 1.0],
    "load_average_at_end": [3.5, 1.0, 1.0],
    "side_by_side": {"ratio": {"median": 1.31, "q1": 1.25, "q3": 1.4}},
    "in_process": [
        {
            "setting": {"threads": 2},
            "ratio_vs_baseline": {"median": 1.0, "q1": 1.0, "q3": 1.0},
            "profile": {
                "profiled_wall_ms_per_step": 96.4,
                "share": {"conv_fwd": 0.2, "conv_bwd": 0.44, "batchnorm": 0.25, "data": 0.11},
            },
        },
        {
            "setting": {"threads": 1, "compile": False, "method": "cifs"},
            "ratio_vs_baseline": {"median": 0.4, "q1": 0.38, "q3": 0.41},
            "cpu_ratio_vs_ce": {"median": 1.043, "q1": 1.02, "q3": 1.06},
            "profile": {"share": {"conv_fwd": 0.3}},
        },
    ],
}


def test_step_profile_beside_perf_json_is_a_table_in_the_report_and_readme(tmp_path):
    root = tmp_path / "results"
    write_run(root, "cpu", "ce", 0, results(0.5))
    (root / "perf.json").write_text(json.dumps(PERF))
    (root / "step_profile.json").write_text(json.dumps(STEP_PROFILE))
    built = build([root / "cpu"], plots=False)
    assert not built.collection.skipped  # read beside perf.json, not taken for a run
    table = next(t for s in built.report.sections for t in s.tables if t.id == "step_profile")
    base = row_for(table, "cpu recipe, 2 threads")
    assert base["img/s ÷ baseline"] == "1.00× (1.00-1.00)" and base["ms/step"] == "96"
    assert (base["Conv fwd"], base["Conv bwd"], base["BN"], base["Data"]) == (
        "20%",
        "44%",
        "25%",
        "11%",
    )
    assert base["Optim."] == "–" and base["Per-core img/s ÷ CE"] == "–"
    cifs = row_for(table, "cpu recipe, 1 thread, compile False, method cifs")
    assert cifs["Per-core img/s ÷ CE"] == "1.04× (1.02-1.06)" and cifs["ms/step"] == "–"
    pair = row_for(table, "2 one-thread processes at once (total)")
    assert pair["img/s ÷ baseline"] == "1.31× (1.25-1.40)"
    assert "throughput_ratio_vs_baseline 1.31×; 1-minute load average 2.0 → 3.5" in table.notes[1]
    assert "Training step profile (ResNet-20 CE)" in built.readme_section
    (root / "step_profile.json").write_text(json.dumps({**STEP_PROFILE, "schema": "other/1"}))
    assert "Training step profile" not in build([root / "cpu"], plots=False).readme_section


def test_cells_table_shows_train_fit_and_gap_without_improvement_markers(tmp_path):
    root = tmp_path / "results"
    for seed, (ce_test, ce_train, hnc_test, hnc_train) in enumerate(
        [(0.80, 0.99, 0.90, 0.95), (0.82, 0.98, 0.91, 0.96)]
    ):
        ce = results(ce_test, seed=seed)
        ce["train"] = {"accuracy": ce_train, "n": 50000}
        hnc = results(hnc_test, method="hnc", seed=seed)
        hnc["train"] = {"accuracy": hnc_train, "n": 50000}
        write_run(root, "cpu", "ce", seed, ce)
        write_run(root, "cpu", "hnc", seed, hnc)
    table = cells_table(groups_of(root), load_spec())
    assert table.header[4:7] == ["Clean", "Train", "Gap"]
    ce, hnc = row_for(table, "cpu/ce"), row_for(table, "cpu/hnc")
    assert ce["Train"] == "98.50 ± 0.71" and ce["Gap"] == "17.50 ± 2.12"  # gaps 19 and 16
    # hnc's clean accuracy is marked against ce; its train fit and gap are descriptive
    assert hnc["Clean"].endswith("▲")
    assert hnc["Train"] == "95.50 ± 0.71" and hnc["Gap"] == "5.00 ± 0.00"
    run = groups_of(root)[0].runs[0]
    assert measure(run, Metric("train_gap")) == pytest.approx(0.19)


def test_label_noise_cells_show_how_much_noise_was_memorised(tmp_path):
    root = tmp_path / "results"
    fits = {"ce_sym0.4": (0.45, 0.97, 0.93), "hnc_mse_sym0.4": (0.55, 0.70, 0.30)}
    for cell, (test, train, memorised) in fits.items():
        run = results(test, method=cell.split("_sym")[0])
        run["train"] = {"accuracy": train, "mislabelled": 0.4, "memorised": memorised}
        write_run(root, "cpu-converged-labelnoise", cell, 0, run)
    write_run(root, "cpu", "ce", 0, results(0.8))  # a clean cell: no label noise, no value
    table = cells_table(groups_of(root), load_spec())
    assert table.header[4:8] == ["Clean", "Train", "Gap", "Memorised"]
    ce = row_for(table, "cpu-converged-labelnoise/ce_sym0.4")
    hnc = row_for(table, "cpu-converged-labelnoise/hnc_mse_sym0.4")
    # descriptive like the train fit: no marker, although hnc's clean accuracy carries one
    assert ce["Memorised"] == "93.00" and hnc["Memorised"] == "30.00"
    assert hnc["Clean"] == "55.00 ?"
    assert row_for(table, "cpu/ce")["Memorised"] == "–"
    assert "share predicted as their wrong label" in table.notes[1]


# ------------------------------------------------------------------ the claims table
CLAIMS_YAML = """
budgets: ["10 epochs", converged]
claims:
  - paper: HNC
    claim: "raises clean accuracy"
    figure: "73.79 -> 75.00"
    paper_change: [73.79, 75.00]
    metric: {kind: clean}
    at:
      "10 epochs": {recipe: cpu, cell: hnc_mse, reference: ce}
      converged: {recipe: cpu-converged, cell: hnc_mse, reference: ce}
  - paper: TENET
    claim: "lowers mCE"
    figure: "29.88 -> 26.46"
    paper_change: [29.88, 26.46]
    metric: {kind: mce}
    at:
      converged: {recipe: cpu-converged, cell: tenet, reference: ce}
  - paper: ALFA
    claim: "eta on the last block"
    figure: "Fig. 4"
    metric: {kind: eta_last}
    threshold: 0.5
    at:
      converged: {recipe: cpu-converged, cell: lalfa}
"""


def test_claims_table_compares_each_budget_and_reads_the_verdict_from_the_last(tmp_path):
    root = tmp_path / "results"
    for seed in (0, 1, 2):
        # 10 epochs: hnc_mse within ce's spread; converged: above it by more than the spread
        write_run(root, "cpu", "ce", seed, results(0.80 + 0.01 * seed, seed=seed))
        write_run(root, "cpu", "hnc_mse", seed, results(0.81 + 0.01 * seed, seed=seed))
        write_run(root, "cpu-converged", "ce", seed, results(0.70 + 0.01 * seed, mce=0.30))
        write_run(root, "cpu-converged", "hnc_mse", seed, results(0.75 + 0.01 * seed))
    for seed, eta in enumerate((0.9, 0.8)):
        epochs = [{"epoch": 1, "train_seconds": 1.0, "eta": {"s1": 1 - eta, "s3": eta}}]
        write_run(root, "cpu-converged", "lalfa", seed, results(0.7, seed=seed), epochs)
    (tmp_path / "claims.yaml").write_text(CLAIMS_YAML)
    table = claims_table(load_claims(tmp_path / "claims.yaml"), groups_of(root))
    assert table is not None
    hnc, tenet, lalfa = (dict(zip(table.header, r, strict=True)) for r in table.rows)
    assert hnc["Ours, 10 epochs"] == "81.00 ± 1.00 (n=3) → 82.00 ± 1.00 (n=3) ≈"
    assert hnc["Ours, converged"] == "71.00 ± 1.00 (n=3) → 76.00 ± 1.00 (n=3) ▲"
    assert hnc["Verdict (converged)"] == "reproduces"
    # tenet was never run; its reference was
    assert tenet["Ours, 10 epochs"] == "not run yet" == tenet["Verdict (converged)"]
    # η 0.85 ± 0.07: above 0.5 beyond the spread
    assert lalfa["Ours, converged"] == "0.850 ± 0.071 (n=2); above 0.5?"
    assert lalfa["Verdict (converged)"] == "reproduces"


@pytest.mark.parametrize(
    ("cell", "reference", "verdict"),
    [
        # clean accuracy, the paper's +1.21 points: ours +5.00 and +0.61 (half: 0.605) reproduce
        ((0.76, 0.01), (0.71, 0.01), "reproduces"),
        ((0.7161, 0.001), (0.71, 0.001), "reproduces"),
        (
            (0.7159, 0.001),
            (0.71, 0.001),
            "in direction only (better by 0.6 points; the paper: by 1.2)",
        ),
        ((0.72, 0.01), (0.71, 0.01), "does not (within the seeds' spread)"),
        ((0.60, 0.01), (0.71, 0.01), "does not (worse)"),
    ],
)
def test_a_gain_reproduces_a_claim_only_with_half_the_papers_change(
    tmp_path, cell, reference, verdict
):
    (tmp_path / "claims.yaml").write_text(CLAIMS_YAML)
    hnc = load_claims(tmp_path / "claims.yaml").claims[0]
    assert hnc.paper_change == (73.79, 75.0)
    stat, ref = Stat(cell[0], cell[1], 3), Stat(reference[0], reference[1], 3)
    assert comparison_verdict(hnc, stat, ref)[1] == verdict


def test_an_error_claim_counts_its_gain_downwards(tmp_path):
    """TENET's mCE: the paper lowers it by 3.42 points; ours by 1.00 (0.29 of it) is in
    direction only, by 2.00 (0.58) reproduces."""
    (tmp_path / "claims.yaml").write_text(CLAIMS_YAML)
    tenet = load_claims(tmp_path / "claims.yaml").claims[1]
    ref = Stat(0.32, 0.001, 3)
    assert comparison_verdict(tenet, Stat(0.31, 0.001, 3), ref) == (
        "▲",
        "in direction only (better by 1.0 points; the paper: by 3.4)",
    )
    assert comparison_verdict(tenet, Stat(0.30, 0.001, 3), ref) == ("▲", "reproduces")


def test_threshold_verdicts_need_two_seeds_and_a_margin_beyond_the_spread():
    assert threshold_verdict(Stat(0.9, 0.1, 3), 0.5) == "reproduces"
    assert threshold_verdict(Stat(0.55, 0.1, 3), 0.5) == "does not (within the seeds' spread)"
    assert threshold_verdict(Stat(0.2, 0.1, 3), 0.5) == "does not (below)"
    assert threshold_verdict(Stat(0.9, None, 1), 0.5) == "inconclusive (one seed)"


def test_claims_table_is_left_out_when_nothing_was_measured(tree):
    assert claims_table(load_claims(), groups_of(tree)[:0]) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["claims"][0]["at"]["converged"].pop("reference"), "needs a `reference`"),
        (lambda c: c["claims"][2].update(threshold="high"), "threshold must be a number"),
        (lambda c: c["claims"][2]["at"]["converged"].update(reference="ce"), "no `reference`"),
        (lambda c: c["claims"][0]["at"].update(later={}), "maps budgets"),
        (lambda c: c["claims"][0]["metric"].update(kind="speed"), "unknown metric kind"),
        (lambda c: c["claims"][0].update(paper_change=[75.0]), "must be \\[reference, method\\]"),
        (lambda c: c["claims"][0].update(paper_change=[75.0, 73.79]), "no improvement"),
        (lambda c: c["claims"][1].update(paper_change=[26.46, 29.88]), "lower is better"),
    ],
)
def test_claims_errors_say_what_is_wrong(tmp_path, change, message):
    data = yaml.safe_load(CLAIMS_YAML)
    change(data)
    (tmp_path / "claims.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_claims(tmp_path / "claims.yaml")


@pytest.mark.parametrize(
    ("data", "family"),
    [
        ("zip:../shared/data/cifar10-jpeg.zip", "cifar10"),
        ("cifar100", "cifar100"),
        ("folder:/home/me/CIFAR-10", "cifar10"),
        ("folder:/home/me/leaves", None),
        ("shapes", None),
        ("folder:/data/cifar1000", None),
    ],
)
def test_dataset_family_from_the_data_spec(data, family):
    assert dataset_family(data) == family


def test_paper_tables_take_only_runs_on_the_papers_datasets(tmp_path):
    root = tmp_path / "results"
    for seed in (0, 1):
        own = results(0.9, seed=seed)
        own["run"]["data"] = "folder:/home/me/leaves"
        write_run(root, "mine", "ce", seed, own)
        write_run(root, "mine", "hnc_mse", seed, {**own, "run": {**own["run"], "method": "hnc"}})
    spec = load_spec()
    groups = groups_of(root)
    assert not any(t.takes(g) for t in spec.tables for g in groups)
    section = papers_section(spec, groups)
    assert section.tables == [] and "No run fills (left out): TENET" in section.paragraphs[1]
    # the same runs on CIFAR-10 fill the TENET and HNC tables, and only those left out are named
    for run in (r for g in groups for r in g.runs):
        run.results["run"]["data"] = "cifar10"
    section = papers_section(spec, groups)
    assert {t.id for t in section.tables} >= {"tenet", "hnc"}
    assert "TENET" not in section.paragraphs[1]


def test_training_time_falls_back_to_the_runs_metrics_log(tmp_path):
    root = tmp_path / "results"
    data = results(0.8)
    del data["run"]["train_seconds"]  # a run re-evaluated by an older version
    epochs = [{"epoch": e, "train_seconds": 30.0 * e} for e in (1, 2, 3)]
    write_run(root, "cpu", "ce", 0, data, epochs)
    (run,) = groups_of(root)[0].runs
    assert train_seconds(run) == 90.0
    assert measure(run, Metric("train_s_per_epoch")) == pytest.approx(90.0 / 3)  # 3 logged epochs


def test_every_committed_claim_is_measured_by_cells_its_recipes_run():
    """Each place of report/claims.yaml names a cell (and reference) of the recipe's bench matrix,
    so no claim waits for a cell that nothing will ever run."""
    from robustfeat.bench import recipe_cells

    names: dict[str, set[str]] = {}
    for claim in load_claims().claims:
        for budget, place in claim.at.items():
            if place.recipe not in names:
                names[place.recipe] = {cell.name for cell in recipe_cells(place.recipe)}
            wanted = {place.cell, place.reference} - {None}
            missing = wanted - names[place.recipe]
            assert not missing, f"{claim.claim} ({budget}): {sorted(missing)} not in {place.recipe}"
