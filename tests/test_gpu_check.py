"""benchmarks/gpu_check.py on the CPU (``--device cpu --quick``): every line that does not need
CUDA runs here, so the check is ready when a session is lent a GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from robustfeat.runtime import resolve_precision

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check")
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check_tests.xml"]
    return json.loads((out / "gpu_check.json").read_text())


def test_quick_cpu_run_writes_the_schema_with_provenance(report):
    assert report["schema"] == "robustfeat.gpu_check/1" and report["ok"] is True
    assert list(report["phases"]) == ["resnet20", "preact18", "paper", "tests"]
    assert all(p["status"] == "ok" and p["seconds"] > 0 for p in report["phases"].values())
    assert report["seconds"] >= sum(p["seconds"] for p in report["phases"].values())
    assert report["device"] == {"type": "cpu", "torch": report["provenance"]["versions"]["torch"]}
    assert {"git_sha", "versions", "machine"} <= set(report["provenance"])
    assert len(report["load_average"]["start"]) == len(report["load_average"]["end"]) == 3
    assert report["options"]["quick"] and report["options"]["device"] == "cpu"


def test_the_cuda_tests_are_collected_and_skipped_without_cuda(report):
    tests = report["phases"]["tests"]
    assert tests["returncode"] == 0 and tests["failed"] == []
    counts = tests["counts"]  # test_data_loader.py's cuda variants (quick runs that file only)
    assert counts["tests"] == counts["skipped"] >= 2 and counts["passed"] == 0
    assert "-m" in tests["command"] and "cuda" in tests["command"]


def test_resnet20_cells_img_per_s_step_time_and_ratio_to_ce(report):
    phase = report["phases"]["resnet20"]
    assert phase["settings"]["recipe"] == "cpu" and phase["settings"]["loader"] == "device"
    # the cpu recipe's precision auto, as it resolves here (bf16 only with native bf16)
    precision = resolve_precision("auto", torch.device("cpu"))
    assert phase["settings"]["precision"] == precision in ("bf16", "fp32")
    assert phase["settings"]["batch_size"] == 8
    rows = {r["cell"]: r for r in phase["cells"]}
    assert list(rows) == ["ce", "ce+free_at", "ce (again)"]
    assert rows["ce+free_at"]["replays"] == 4 and rows["ce"]["replays"] == 1
    for row in rows.values():
        assert len(row["img_per_s"]) == 2  # one record per epoch, 2 epochs
        assert row["step_ms"] == pytest.approx(1000 * 8 / row["img_per_s"][-1])
        ratio = row["step_ms"] / rows["ce"]["step_ms"]
        assert row["step_ratio_vs_ce"] == pytest.approx(ratio)
    assert rows["ce"]["step_ratio_vs_ce"] == 1.0


def test_preact18_epoch_times_with_each_loader(report):
    phase = report["phases"]["preact18"]
    for loader in ("device", "host"):
        run = phase[f"loader_{loader}"]
        assert len(run["img_per_s"]) == len(run["epoch_seconds"]) == 2
        # 16 images, batch 8: 16 images an epoch
        assert run["epoch_seconds"][-1] == pytest.approx(16 / run["img_per_s"][-1])


def test_paper_projection_is_epochs_times_images_over_img_per_s(report):
    (row,) = report["phases"]["paper"]["recipes"]  # --quick: paper-alfa only
    assert row["recipe"] == "paper-alfa" and row["model"] == "resnet20"
    assert (row["epochs"], row["train_images"], row["batch_size"]) == (200, 45_000, 2)
    hours = 200 * 45_000 / row["img_per_s"] / 3600
    assert row["projected_hours"] == pytest.approx(hours)


def test_failures_are_recorded_and_the_other_phases_still_run(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(gpu_check, "timed_run", broken)
    monkeypatch.setattr(gpu_check, "phase_preact18", broken)
    argv = ["--device", "cpu", "--quick", "--phases", "resnet20,preact18,paper", "--out"]
    assert gpu_check.main([*argv, str(tmp_path)]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    phases = report["phases"]
    assert [phases[n]["status"] for n in phases] == ["failed", "error", "failed"]
    assert all("illegal memory access" in r["error"] for r in phases["resnet20"]["cells"])
    assert "illegal memory access" in phases["paper"]["recipes"][0]["error"]
    assert "RuntimeError" in phases["preact18"]["traceback"] and report["ok"] is False
    assert "ERROR RuntimeError" in capsys.readouterr().out  # the summary table names them


def test_a_spent_budget_skips_the_phases(tmp_path):
    argv = ["--device", "cpu", "--quick", "--budget-s", "0", "--out", str(tmp_path)]
    assert gpu_check.main(argv) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {p["status"] for p in report["phases"].values()} == {"skipped"}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--phases", "tests,bench"], "--phases: unknown ['bench']"),
        (["--r20-epochs", "0"], "--r20-epochs must be >= 1"),
        (["--device", "tpu"], "--device must be cuda, cuda:N or cpu"),
        pytest.param(
            ["--device", "cuda"],
            "CUDA is not available here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),
        ),
        (["--device", "cpu", "--out", "FILE"], "exists and is not a directory"),
        (["--device", "cpu"], "no output directory: give --out DIR or set OUT"),
    ],
)
def test_bad_arguments_are_one_clear_error_before_anything_is_written(
    tmp_path, monkeypatch, capsys, argv, needle
):
    monkeypatch.delenv("OUT", raising=False)
    (tmp_path / "FILE").write_text("not ours")
    monkeypatch.chdir(tmp_path)
    if "--out" not in argv and not needle.startswith("no output"):
        argv = [*argv, "--out", "out"]
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(argv)
    assert exit_info.value.code == 2 and needle in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]
    assert (tmp_path / "FILE").read_text() == "not ours"
