"""The performance benchmark: every method's training-step time relative to CE, beside the ratio
its extra FLOPs imply, plus peak memory, scaling with batch size and width, and the summaries of
the other benchmark files. Writes ``benchmarks/results/perf.json`` (schema ``robustfeat.perf/1``).

    PYTHONPATH=src python benchmarks/perf.py [--repeats 15] [--batch 128] [--threads 2]

One step = what the trainer does without data loading: the scheme's adversarial examples (if
any), the method's forward, backward, an SGD step and ``after_step``. All cells share one
ResNet-20 (copied per cell) and one fixed batch; cells alternate within every round in a rotating
order (after warm-up rounds) so load from other processes hits them alike. A ratio is the median
over rounds of the round's own ratio (cell time / reference time in the same round), so a load
change between rounds cancels; its interquartile range over rounds is written beside it. A cell
whose extra work is intermittent (``Cell.period``: TENET's every-3rd-step schedule, MoEx's p = 1/4)
is timed over that many consecutive steps, so its ratio is its amortized cost.
Precision: bf16 autocast + channels_last, eager (the cpu recipe also compiles; compile changes
every cell's time but is per-method noisy to warm up, so ratios are measured eager).
FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one full training step (fp32).
Peak memory: each cell runs alone in a subprocess and reports its peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from robustfeat import io
from robustfeat.adversarial.schemes import create_scheme
from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.provenance import provenance

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Cell:
    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    at: str | None = None
    at_options: dict[str, Any] = field(default_factory=dict)
    goal: float | None = None  # step-time ratio goal of the issue (vs CE, or vs CE+AT for AT cells)
    # steps per timed sample: a method whose extra work comes every k-th step (TENET's schedule)
    # or with probability 1/k (MoEx) is timed, and its FLOPs counted, over k steps, per step
    period: int = 1


CELLS = [
    Cell("ce", "ce"),
    Cell("hnc", "hnc", goal=1.10),
    Cell("hnc_kd", "hnc", {"variant": "kd"}, goal=1.10),
    Cell("topgap", "topgap"),
    Cell("topgap_w64", "topgap", {"width": 64}),
    Cell("cifs", "cifs", goal=1.05),
    Cell("cas", "cas"),
    Cell("tenet", "tenet", {"start_step": 0, "every": 1, "correct_only": False}, goal=2.0),
    # the default schedule (every 3rd step) from step 0, not step 500; all samples inhibited:
    # ``correct_only`` would inhibit only the ~10% the untrained net gets right on this random
    # batch, so this is the upper bound (late training, when nearly all are right)
    Cell(
        "tenet_amortized",
        "tenet",
        {"start_step": 0, "correct_only": False},
        goal=1.35,
        period=3,
    ),
    Cell("alfa", "alfa", goal=1.25),
    Cell("lalfa", "lalfa"),
    Cell("feature_noise", "feature_noise"),
    Cell("moex", "moex", period=4),
    Cell("advprop", "advprop"),
    Cell("augmix_jsd", "augmix_jsd"),
    Cell("ce+fgsm_rs", "ce", at="fgsm_rs"),
    Cell("cifs+fgsm_rs", "cifs", at="fgsm_rs", goal=1.05),
    Cell("ce+pgd_at", "ce", at="pgd_at", at_options={"steps": 3}),
    Cell("cifs+pgd_at", "cifs", at="pgd_at", at_options={"steps": 3}, goal=1.05),
]


def available(cells: list[Cell]) -> tuple[list[Cell], list[str]]:
    """Cells whose method is registered and whose options it takes (others are reported)."""
    from robustfeat.methods import check_method_options

    keep, skipped = [], []
    for cell in cells:
        try:
            check_method_options(cell.method, cell.options)
            if cell.at:
                create_scheme(cell.at, **cell.at_options)
        except Exception as err:
            skipped.append(f"{cell.name}: {err}")
            continue
        keep.append(cell)
    return keep, skipped


def make_step(cell: Cell, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool):
    method = create_method(cell.method, copy.deepcopy(model), **cell.options)
    if bf16:
        method.to(memory_format=torch.channels_last)
    method.train()
    scheme = create_scheme(cell.at, **cell.at_options)
    optimizer = torch.optim.SGD(
        method.param_groups({"lr": 0.01, "weight_decay": 5e-4}), lr=0.01, momentum=0.9
    )

    def step() -> None:
        """``cell.period`` training steps."""
        context = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
        with context:
            for _ in range(cell.period):
                for out in scheme.steps(method, x, y):
                    optimizer.zero_grad(set_to_none=True)
                    out["loss"].backward()
                    optimizer.step()
                    method.after_step()

    return step


def interleaved_times(
    steps: dict[str, Any], repeats: int, periods: dict[str, int], warmup: int = 5
) -> dict[str, list[float]]:
    """Seconds per training step of each cell, one sample per round. Warm-up rounds: a cell's
    first few steps run up to 2.5x slower (allocator and oneDNN primitive caches)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_ in range(repeats + warmup):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) / periods[name])
    return times


def time_cells(
    cells: list[Cell],
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    bf16: bool,
    repeats: int,
) -> dict[str, list[float]]:
    """Interleaved seconds per training step of every cell on the same model and batch."""
    steps = {c.name: make_step(c, model, x, y, bf16) for c in cells}
    return interleaved_times(steps, repeats, {c.name: c.period for c in cells})


def paired_ratio(times: dict[str, list[float]], name: str, base: str) -> tuple[float, list[float]]:
    """Median over rounds of ``times[name][r] / times[base][r]`` and its [q1, q3] over rounds."""
    ratios = [t / b for t, b in zip(times[name], times[base], strict=True)]
    if len(ratios) < 2:
        return ratios[0], [ratios[0], ratios[0]]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, [q1, q3]


class _GlobalOnly:
    """Stand-in for FlopCounterMode's per-module tracker: its backward hooks break methods that
    call torch.autograd.grad inside forward (CIFS, TENET); we only need the global total."""

    parents = ("Global",)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def step_flops(cell: Cell, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    step = make_step(cell, model, x, y, bf16=False)
    step()  # first step may differ (lazy state); count the second
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        step()
    return counter.get_total_flops() // cell.period


def peak_rss_mb(cell: Cell, batch: int) -> float:
    """Peak RSS (VmHWM, MiB) of a fresh process running a few steps of the cell alone.

    Not ``ru_maxrss``: Linux carries it over from the parent across fork and exec, so every
    child would report at least this (large) process's peak."""
    code = (
        f"import json, sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "import perf; cell = perf.Cell(**json.loads(sys.argv[1])); "
        "m = perf.create_model('resnet20', num_classes=10); "
        f"x = torch.rand({batch}, 3, 32, 32).contiguous(memory_format=torch.channels_last); "
        f"y = torch.randint(0, 10, ({batch},)); s = perf.make_step(cell, m, x, y, True); "
        "[s() for _ in range(3)]; "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]; "
        "print(int(hwm[0].split()[1]) / 1024)"
    )
    spec = json.dumps(cell.__dict__)
    out = subprocess.run(
        [sys.executable, "-c", code, spec], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def scaling(cells: list[Cell], repeats: int, bf16: bool) -> dict[str, Any]:
    """Step time vs batch size and vs width for CE and the methods with extra passes."""
    out: dict[str, Any] = {"batch": {}, "width": {}}
    for batch in (32, 64, 128, 256):
        model = create_model("resnet20", num_classes=10)
        x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        times = time_cells(cells, model, x, y, bf16, repeats)
        out["batch"][batch] = {k: statistics.median(v) for k, v in times.items()}
    for width in (8, 16, 32):
        model = create_model("resnet20", num_classes=10, width=width)
        x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
        times = time_cells(cells, model, x, y, bf16, repeats)
        out["width"][width] = {k: statistics.median(v) for k, v in times.items()}
    return out


def read_result(name: str, key: str) -> Any:
    path = RESULTS / name
    if not path.exists():
        return None
    return json.loads(path.read_text()).get(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast / channels_last")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "perf.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = not args.fp32

    cells, skipped = available(CELLS)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    x, y = torch.rand(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    times = time_cells(cells, model, x, y, bf16, args.repeats)
    median = {k: statistics.median(v) for k, v in times.items()}
    flops = {c.name: step_flops(c, model, x.contiguous(), y) for c in cells}

    standard = [c.name for c in cells if not c.at and c.name != "ce"]
    paired = {name: paired_ratio(times, name, "ce") for name in standard}
    vs_ce = {name: ratio for name, (ratio, _) in paired.items()}
    spread_vs_ce = {name: spread for name, (_, spread) in paired.items()}
    flop_vs_ce = {name: flops[name] / flops["ce"] for name in standard}
    vs_at = {}
    for c in cells:
        base = f"ce+{c.at}" if c.at else None
        if base and c.name != base and base in median:
            ratio, spread = paired_ratio(times, c.name, base)
            vs_at[c.name] = {"step": ratio, "spread": spread, "flops": flops[c.name] / flops[base]}
    goals = {c.name: c.goal for c in cells if c.goal}
    record = {
        "schema": "robustfeat.perf/1",
        "machine": provenance()["machine"],
        "setting": {
            "model": "resnet20",
            "batch": args.batch,
            "repeats": args.repeats,
            "precision": "bf16 autocast + channels_last, eager" if bf16 else "fp32 eager",
            "torch_threads": torch.get_num_threads(),
            "load_average_1min_at_end": os.getloadavg()[0],  # how busy the machine was
        },
        "step_time_s": median,
        "step_time_ratio_vs_ce": vs_ce,
        "step_time_ratio_spread_vs_ce": spread_vs_ce,
        "flop_ratio_vs_ce": flop_vs_ce,
        "step_time_ratio_vs_at": vs_at,
        "goals": goals,
        "skipped_cells": skipped,
        "pgd20_throughput_ratio_vs_torchattacks": read_result(
            "pgd_throughput.json", "ratio_ours_last_iterate_vs_torchattacks"
        ),
        "trainer_vs_bare_loop": read_result("trainer_overhead.json", "trainer_vs_bare_loop"),
        "step_times_all_s": times,
        **{k: v for k, v in provenance().items() if k != "machine"},
    }
    if not args.skip_memory:
        record["peak_rss_mb"] = {c.name: peak_rss_mb(c, args.batch) for c in cells}
        record["peak_rss_mb"]["_note"] = "whole process (VmHWM), MiB: Python, torch and the cell"
    if not args.skip_scaling:
        extra = [c for c in cells if c.name in {"ce", "tenet", "cifs"}]
        record["scaling"] = scaling(extra, max(3, args.repeats // 3), bf16)
    io.write_json(Path(args.out), record)
    for name in median:
        line = f"{name:18s} {median[name] * 1000:8.1f} ms"
        if name in vs_ce:
            line += f"  {vs_ce[name]:5.2f}x CE (FLOPs {flop_vs_ce[name]:5.2f}x)"
        if name in vs_at:
            line += f"  {vs_at[name]['step']:5.2f}x its AT baseline"
        print(line)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
