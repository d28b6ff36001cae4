"""The GPU check: one command, no network, that proves (or shows what breaks in) the CUDA path
and measures its speed, in at most 8 minutes on one H100 (``--budget-s`` 330: no phase starts
later; the tests get what the measurements leave). Written before any session here was lent a
GPU: nothing in it has run on one yet, and its time estimate is a guess.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out "$OUT"            # on a CUDA machine
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gc  # CI (CPU)

``benchmarks/gpu_check.sh`` wraps it for the device tool (wheels, PYTHONPATH, $OUT; README "GPU").

Phases (``--phases``, in this order; each is timed, a failure is recorded and the next phase
runs; ``gpu_check.json`` is rewritten after every phase, so a run cut short keeps what it did;
a phase that would start past ``--budget-s`` is recorded as skipped):
- ``resnet20``: every cell of the ``cpu`` recipe's bench with that recipe's settings (ResNet-20,
  batch 128, SGD one-cycle, bf16, channels_last; ``torch.compile`` only with ``--compile``), for
  ``--r20-epochs`` epochs of ``--r20-images`` images each, through the real trainer
  (``loader: device``); img/s of the last epoch (the first one warms up), ms per trainer step
  (one batch drawn: Free-AT's step is its ``replays`` optimizer steps) and the ratio to CE's.
  TENET starts inhibiting at step 0 (its recipe's step 500 would never come in so few steps).
  CE is timed again at the end: the two CE numbers show the drift of the machine.
- ``preact18``: PreAct ResNet-18 (CIFS's and Top-GAP's backbone), CE, amp, channels_last,
  batch 128, two epochs of ``--preact-images`` (default 50,000, a CIFAR-10 epoch) with each
  loader (``device`` and ``host``): the second epoch's seconds are the epoch time.
- ``paper``: each ``paper-*`` recipe's own top-level configuration (model, method, scheme,
  precision, augmentation, batch size) trained for 2 x ``--paper-steps`` steps; the img/s of the
  second half gives the projected wall time of one run of the recipe: epochs x training images /
  replays / img/s (CIFAR's 50,000 training images, less the recipe's validation fraction).
- ``tests``: the suite's ``cuda``-marked tests (``pytest -m cuda``: the method contract for every
  method and every AT scheme, attack invariants, bf16 / amp training from the device-resident
  loader, resume bit-identity under ``deterministic: true``, one-process DDP over NCCL, the
  device loader and augmentations against the CPU's) in a subprocess, within the budget left,
  with its JUnit XML beside the JSON.

Data: ``--data random`` (default; uniform uint8 tensors of CIFAR-10's shape, 10 classes, or 100
for a CIFAR-100 recipe), or any dataset spec (``shapes``, ``zip:PATH``) whose images are
repeated to the sizes above. Step times of data-dependent methods (TENET's correct-only mask,
FAT's early stop) are those of random labels. Training run directories go to a temporary
directory that is removed at the end; only ``gpu_check.json`` (schema ``robustfeat.gpu_check/1``,
with provenance) and ``gpu_check_tests.xml`` are written to ``--out``.

Dependencies on the device machine (its image 'cuda', KINDS.md of the device tool): python3
3.12 with torch 2.11 (cu130), torchvision 0.26, timm, safetensors, PyYAML, rich, matplotlib,
numpy, pillow, scipy, pytest, pytest-timeout, pytest-xdist and hypothesis are installed;
``torchattacks`` (imported by robustfeat.attacks) is not, and ``grad-cam`` with ``ttach`` (only
the CAM code imports them) are not either. They travel as wheels in ``.whl/`` (ignored by git,
named in the run tool's ``carry``): ``bash benchmarks/gpu_check.sh prepare`` downloads them here
(grad-cam has no wheel on PyPI: pip builds one from its sdist, pure Python) and writes the git
SHA beside them (the device machine's copy of the tree has no .git); robustfeat itself runs
from ``src/`` (PYTHONPATH). CIFAR-10 is not carried (../shared does not travel; the zip is
53 MB of the 64 MB a call may carry): the check runs on random tensors.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fnmatch
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from robustfeat import io
from robustfeat.adversarial.schemes import create_scheme
from robustfeat.bench import recipe_cells, select
from robustfeat.config import TrainConfig, list_recipes, load_recipe, make_config
from robustfeat.data import DataSplits, ImageDataset, prepare_data
from robustfeat.models import MODELS
from robustfeat.provenance import provenance
from robustfeat.runtime import resolve_precision
from robustfeat.train import train

SCHEMA = "robustfeat.gpu_check/1"
RESULT = "gpu_check.json"
TESTS_XML = "gpu_check_tests.xml"
MAX_XML_BYTES = 16 * 2**20
# measurements first (their time is predictable), the tests get the rest of --budget-s
PHASES = ("resnet20", "preact18", "paper", "tests")
REPO = Path(__file__).resolve().parents[1]
SHA_FILE = REPO / ".whl" / "git_sha"  # written by gpu_check.sh prepare
CIFAR_TRAIN_IMAGES = 50_000  # CIFAR-10 and CIFAR-100 alike
# method options that make a short timing run pay the method's steady-state cost
TIMING_METHOD_ARGS = {"tenet": {"start_step": 0}}
QUICK = {  # --quick: every line runs, on a CPU, in seconds (numbers meaningless)
    "tests": ["tests/test_data_loader.py"],
    "threads": 1,  # a shared CPU: more threads than free cores make tiny ops crawl
    "width": 4,
    "r20_images": 16,
    "r20_batch": 8,
    "r20_only": ["ce", "ce+free_at"],
    "preact_images": 16,
    "preact_batch": 8,
    "paper_only": ["paper-alfa"],
    "paper_steps": 1,
    "paper_batch": 2,
    "test_images": 16,
}


# ------------------------------------------------------------------ data
def random_splits(n_train: int, n_test: int, num_classes: int, seed: int = 0) -> DataSplits:
    """Uniform uint8 images of CIFAR's shape (3 x 32 x 32), labels cycling over the classes."""
    generator = torch.Generator().manual_seed(seed)

    def dataset(n: int) -> ImageDataset:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
        names = [str(c) for c in range(num_classes)]
        return ImageDataset(images, torch.arange(n) % num_classes, num_classes, names, "random")

    train_set, test_set = dataset(n_train), dataset(n_test)
    mean, std = train_set.channel_stats()
    return DataSplits(train_set, None, test_set, num_classes, mean, std)


def repeated(dataset: ImageDataset, n: int) -> ImageDataset:
    """The first ``n`` images of ``dataset``, cycling through it again if it has fewer."""
    return dataset.subset(torch.arange(n) % len(dataset))


def make_splits(spec: str, n_train: int, n_test: int, num_classes: int) -> DataSplits:
    """``random`` tensors, or the dataset ``spec`` resized (by repetition) to the counts."""
    if spec == "random":
        return random_splits(n_train, n_test, num_classes)
    data = prepare_data(spec)
    return DataSplits(
        repeated(data.train, n_train),
        None,
        repeated(data.test, n_test),
        data.num_classes,
        data.mean,
        data.std,
    )


# ------------------------------------------------------------------ one timed training run
def epoch_records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "img_per_s" in r]


def timed_run(cfg: TrainConfig, data: DataSplits, root: Path, name: str) -> dict[str, Any]:
    """Train ``cfg`` on ``data`` into ``root/name``: the img/s of every epoch record (an epoch,
    or the steps since the last checkpoint), the loss, the training seconds, clean accuracy."""
    run = root / name
    results = train(cfg, run, data=data)
    records = epoch_records(run)
    shutil.rmtree(run)
    return {
        "img_per_s": [r["img_per_s"] for r in records],
        "loss": [r["loss"] for r in records],
        "train_seconds": records[-1]["train_seconds"],
        "clean_accuracy": results["clean"]["accuracy"],
    }


def replays(cfg: TrainConfig) -> int:
    return create_scheme(cfg.at, **cfg.at_args).replays if cfg.at not in (None, "none") else 1


def timing_layer(cfg: TrainConfig, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """What every timing run changes in a recipe's config: device, loader, batch, no compile
    unless asked, no per-epoch validation, a clean-only evaluation, no progress bar (and with
    ``--width``, the model's width where it has one)."""
    method_args = {**cfg.method_args, **TIMING_METHOD_ARGS.get(cfg.method, {})}
    model_args = dict(cfg.model_args)
    if args.width and "width" in inspect.signature(MODELS.get(cfg.model)).parameters:
        model_args["width"] = args.width
    return {
        "model_args": model_args,
        "device": args.device,
        "loader": "device",
        "batch_size": batch,
        "compile": cfg.compile and args.compile,
        "method_args": method_args,
        "val_fraction": 0.0,
        "select_best": None,
        "samples_per_class": None,
        "label_noise": 0.0,
        "eval_suite": "clean",
        "eval_n": None,
        "progress": False,
        "log_every": 10**6,
        "checkpoint_every": None,
    }


# ------------------------------------------------------------------ phases
def phase_tests(args: argparse.Namespace, out: Path, remaining: float) -> dict[str, Any]:
    """``pytest -m cuda`` in a subprocess; counts and failed test ids from its JUnit XML."""
    xml = out / TESTS_XML
    xml.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-n", "0", "-q", "-p"]
    command += ["no:cacheprovider", "--continue-on-collection-errors", f"--junitxml={xml}"]
    command += [f"--timeout={args.test_timeout_s:.0f}"]  # a hung test fails, the rest run
    command += args.tests
    paths = [str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}  # + wheels
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any cuBLAS use in pytest
    timeout = max(1.0, min(args.tests_timeout_s, remaining))
    try:
        proc = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        code, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        partial = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else ""
        code, log = None, f"{partial}\npytest stopped after {timeout:.0f} s (no JUnit XML)"
    report: dict[str, Any] = {"command": command[1:], "returncode": code, "log_tail": log[-4000:]}
    readable = xml.is_file() and xml.stat().st_size <= MAX_XML_BYTES  # bounded before reading
    report.update(junit_counts(xml) if readable else {"counts": None, "failed": []})
    # pytest's 5: no test selected (here: none collected); 0: all passed or skipped
    report["status"] = "ok" if code == 0 else "failed"
    return report


def junit_counts(xml: Path) -> dict[str, Any]:
    """Tests, passed, failed, errors, skipped and the ids of the failed ones (our own file)."""
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        counts["tests"] += 1
        tags = {child.tag for child in case}
        outcome = next(
            (k for t, k in (("failure", "failed"), ("error", "errors")) if t in tags), None
        )
        if outcome:
            counts[outcome] += 1
            failed.append(f"{case.get('classname')}::{case.get('name')}")
        elif "skipped" in tags:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {"counts": counts, "failed": failed}


def phase_resnet20(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Every cell of the cpu recipe's bench, a few epochs each: img/s and the ratio to CE."""
    batch = args.r20_batch
    base = load_recipe("cpu")
    cells = select(recipe_cells("cpu"), args.r20_only)
    data = make_splits(args.data, args.r20_images, args.test_images, 10)
    runs = [(cell.name, cell) for cell in cells]
    runs += [("ce (again)", cell) for cell in cells if cell.name == "ce"]  # the machine's drift
    rows = []
    for label, cell in runs:
        cfg = make_config(base, cell.config_layer(0))
        m = replays(cfg)
        epochs = {"epochs": args.r20_epochs * m}
        cfg = make_config(cfg.to_dict(), timing_layer(cfg, args, batch), epochs)
        row = {"cell": label, "method": cfg.method, "at": cfg.at, "replays": m}
        try:
            timing = timed_run(cfg, data, root, f"r20-{len(rows)}")
        except Exception as err:  # one cell's failure is a result; the others still run
            rows.append({**row, "error": f"{type(err).__name__}: {err}"})
            continue
        img_per_s = timing["img_per_s"][-1]
        rows.append({**row, **timing, "step_ms": 1000 * batch / img_per_s})
    ce = next((r for r in rows if r["cell"] == "ce" and "step_ms" in r), None)
    for row in rows:
        if ce is not None and "step_ms" in row:
            row["step_ratio_vs_ce"] = row["step_ms"] / ce["step_ms"]
    settings = {
        "recipe": "cpu",
        "images_per_epoch": args.r20_images,
        "epochs": args.r20_epochs,
        "batch_size": batch,
        "precision": resolve_precision(base["precision"], torch.device(args.device)),
        "channels_last": base["channels_last"],
        "compile": bool(base["compile"] and args.compile),
        "loader": "device",
    }
    failed = [r["cell"] for r in rows if "error" in r]
    return {"status": "failed" if failed else "ok", "settings": settings, "cells": rows}


def phase_preact18(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """PreAct ResNet-18, CE, amp: two epochs per loader; the second epoch's time."""
    data = make_splits(args.data, args.preact_images, args.test_images, 10)
    layer = {
        "model": "preact_resnet18",
        "method": "ce",
        "precision": "amp",
        "channels_last": True,
        "epochs": 2,
        "lr": 0.1,
        "schedule": "onecycle",
    }
    report: dict[str, Any] = {"images_per_epoch": args.preact_images}
    report["batch_size"] = args.preact_batch
    for loader in ("device", "host"):
        cfg = make_config(layer)
        timing = timing_layer(cfg, args, args.preact_batch)
        cfg = make_config(cfg.to_dict(), timing, {"loader": loader})
        timing = timed_run(cfg, data, root, f"preact18-{loader}")
        images = len(data.train) // args.preact_batch * args.preact_batch  # drop_last
        seconds = [images / rate for rate in timing["img_per_s"]]
        report[f"loader_{loader}"] = {**timing, "epoch_seconds": seconds}
    return {"status": "ok", **report}


def paper_train_images(base: dict[str, Any]) -> int | None:
    """Training images of a paper recipe's run (CIFAR-10/100 less the validation split)."""
    data = str(base.get("data", ""))
    if not (data.startswith("cifar") or "cifar10" in data):
        return None
    return round(CIFAR_TRAIN_IMAGES * (1 - base.get("val_fraction", 0.0)))


def phase_paper(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Each paper recipe's top-level config for 2 x paper_steps steps; projected wall time."""
    rows = []
    recipes = [r for r in list_recipes() if r.startswith("paper-")]
    for recipe in [r for r in recipes if any(fnmatch.fnmatchcase(r, p) for p in args.paper_only)]:
        base = load_recipe(recipe)
        cfg = make_config(base)
        batch = args.paper_batch or cfg.batch_size
        m = replays(cfg)
        steps = 2 * args.paper_steps
        layer = {**timing_layer(cfg, args, batch), "steps": steps * m, "epochs": 1}
        layer["checkpoint_every"] = args.paper_steps  # the epoch record then times the 2nd half
        num_classes = 100 if "100" in str(base["data"]) else 10
        data = make_splits(args.data, steps * batch, args.test_images, num_classes)
        row: dict[str, Any] = {
            "recipe": recipe,
            "model": cfg.model,
            "method": cfg.method,
            "at": cfg.at,
            "augment": cfg.augment,
            "precision": resolve_precision(cfg.precision, torch.device(args.device)),
            "batch_size": batch,
            "recipe_batch_size": cfg.batch_size,
            "epochs": cfg.epochs,
            "timed_steps": args.paper_steps,
        }
        try:
            timing = timed_run(make_config(cfg.to_dict(), layer), data, root, recipe)
        except Exception as err:
            rows.append({**row, "error": f"{type(err).__name__}: {err}"})
            continue
        img_per_s = timing["img_per_s"][-1]
        images = paper_train_images(base)
        row.update(img_per_s=img_per_s, train_images=images, projected_hours=None)
        if images is not None:  # at the batch timed (the recipe's, unless --paper-batch)
            row["projected_hours"] = cfg.epochs * images / m / img_per_s / 3600
        rows.append(row)
    failed = [r["recipe"] for r in rows if "error" in r]
    return {"status": "failed" if failed else "ok", "recipes": rows}


# ------------------------------------------------------------------ the report
def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            capability=[props.major, props.minor],
            memory_gib=props.total_memory / 2**30,
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return info


def source_provenance() -> dict[str, Any]:
    """provenance(), with the SHA ``gpu_check.sh prepare`` recorded when git cannot tell (the
    device machine's copy of the tree has no .git)."""
    record = provenance()
    if record["git_sha"] == "unknown" and SHA_FILE.is_file():
        record["git_sha"] = SHA_FILE.read_text()[:64].strip()
        record["git_sha_from"] = ".whl/git_sha (gpu_check.sh prepare)"
    return record


def run_phases(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "options": {k: v for k, v in vars(args).items() if k != "out"},
        "device": device_info(device),
        "provenance": source_provenance(),
        "load_average": {"start": list(os.getloadavg())},
        "phases": {},
    }
    start = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        root = Path(tmp)
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "tests": lambda: phase_tests(args, out, args.budget_s - elapsed()),
            "resnet20": lambda: phase_resnet20(args, root),
            "preact18": lambda: phase_preact18(args, root),
            "paper": lambda: phase_paper(args, root),
        }
        for name in args.phases:
            if elapsed() > args.budget_s:
                entry: dict[str, Any] = {"status": "skipped", "reason": "over --budget-s"}
            else:
                began = time.perf_counter()
                try:
                    entry = runners[name]()
                except Exception as err:
                    entry = {"status": "error", "error": f"{type(err).__name__}: {err}"}
                    entry["traceback"] = traceback.format_exc()[-4000:]
                entry["seconds"] = time.perf_counter() - began
            report["phases"][name] = entry
            report["load_average"]["end"] = list(os.getloadavg())
            report["seconds"] = elapsed()
            report["ok"] = all(p["status"] == "ok" for p in report["phases"].values())
            io.write_json(out / RESULT, report)
            print(f"gpu_check: {name}: {entry['status']} ({entry.get('seconds', 0):.0f} s)")
    return report


def summary(report: dict[str, Any]) -> str:
    """A short table for the end of the output (the device tool returns only its tail)."""
    lines = [f"gpu_check on {report['device'].get('name', report['device']['type'])}:"]
    phases = report["phases"]
    tests = phases.get("tests", {})
    if tests.get("counts"):
        lines.append(f"  tests: {tests['counts']}  failed: {tests['failed'][:10]}")
    for row in phases.get("resnet20", {}).get("cells", []):
        if "error" in row:
            lines.append(f"  r20 {row['cell']:<24} ERROR {row['error'][:80]}")
        else:
            ratio = row.get("step_ratio_vs_ce", math.nan)
            lines.append(
                f"  r20 {row['cell']:<24} {row['img_per_s'][-1]:9.0f} img/s  "
                f"{row['step_ms']:7.2f} ms/step  x{ratio:.2f} CE"
            )
    preact = phases.get("preact18", {})
    for loader in ("device", "host"):
        if f"loader_{loader}" in preact:
            seconds = preact[f"loader_{loader}"]["epoch_seconds"][-1]
            lines.append(f"  preact18 loader {loader}: {seconds:.2f} s/epoch")
    for row in phases.get("paper", {}).get("recipes", []):
        hours = row.get("projected_hours")
        text = "ERROR " + row["error"][:80] if "error" in row else f"{row['img_per_s']:.0f} img/s"
        lines.append(f"  {row['recipe']:<13} {text}" + (f"  ~{hours:.1f} h" if hours else ""))
    lines.append(f"  ok: {report['ok']}  ({report['seconds']:.0f} s)")
    return "\n".join(lines)


# ------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="directory for gpu_check.json (default: $OUT)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: every line, in seconds")
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset")
    p.add_argument("--data", default="random", help="random (default) or a dataset spec")
    p.add_argument("--compile", action="store_true", help="torch.compile where the recipe does")
    p.add_argument("--width", type=int, default=0, help="models' width where they have one")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--budget-s", type=float, default=330.0, help="start no phase after this")
    p.add_argument("--tests-timeout-s", type=float, default=300.0, help="all the tests")
    p.add_argument("--test-timeout-s", type=float, default=90.0, help="one test")
    p.add_argument("--tests", nargs="*", default=["tests"], help="pytest paths (default tests)")
    p.add_argument("--r20-images", type=int, default=128 * 50)
    p.add_argument("--r20-epochs", type=int, default=2)
    p.add_argument("--r20-batch", type=int, default=128)
    p.add_argument("--r20-only", nargs="*", default=None, help="cpu recipe cells (globs)")
    p.add_argument("--preact-images", type=int, default=CIFAR_TRAIN_IMAGES)
    p.add_argument("--preact-batch", type=int, default=128)
    p.add_argument("--paper-only", nargs="*", default=["paper-*"], help="recipes (globs)")
    p.add_argument("--paper-steps", type=int, default=20)
    p.add_argument("--paper-batch", type=int, default=0, help="0: each recipe's own")
    p.add_argument("--test-images", type=int, default=512)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.phases = [name for name in args.phases.split(",") if name]
    bad = [name for name in args.phases if name not in PHASES]
    if bad or not args.phases:
        p.error(f"--phases: unknown {bad}; valid: {','.join(PHASES)}")
    for key in ("r20_images", "r20_epochs", "r20_batch", "preact_images", "preact_batch"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.paper_steps < 1 or args.paper_batch < 0 or args.test_images < 1:
        p.error("--paper-steps and --test-images must be >= 1, --paper-batch >= 0")
    if args.device not in ("cuda", "cpu") and not args.device.startswith("cuda:"):
        p.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    if args.device != "cpu" and not torch.cuda.is_available():
        p.error("--device cuda asked for, but CUDA is not available here (use --device cpu)")
    out = args.out or os.environ.get("OUT")
    if not out:
        p.error("no output directory: give --out DIR or set OUT")
    args.out = Path(out)
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} exists and is not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines go to stderr
        report = run_phases(args, args.out)
    print(summary(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
