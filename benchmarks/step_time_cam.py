"""Training-step time of HNC and Top-GAP relative to CE, with the FLOPs each step implies.

    PYTHONPATH=src python benchmarks/step_time_cam.py [--batch 128] [--repeats 10]
        [--precision fp32|bf16] [--channels-last] [--widths 256 64]

Same model (ResNet-20, same initial weights), same batch (uniform random images, random labels),
one SGD step each = zero_grad + method forward + backward + optimizer step (+ after_step). The
methods alternate within every round (after warm-up rounds) so load from other jobs hits them
alike; the reported time is the median over rounds. FLOPs of one step (forward + backward) are
counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions), so the
ratio a method's *FLOPs* imply can be compared with its measured time ratio. Top-GAP runs twice
per head width: with the fused head (the default: the same function through composed
num_classes-filter kernels) and the plain one (the literal width-filter convolutions, whose FLOPs
are the paper head's). Goals (issue 5): HNC <= 1.10x CE; Top-GAP within 10% of its FLOP ratio.
Writes benchmarks/results/step_time_cam[_<precision>].json with the config, machine and git SHA.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from robustfeat import io
from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.provenance import provenance


def make_step(
    name: str, opts: dict[str, Any], x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> tuple[Callable[[], None], Any]:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    method = create_method(name, model, **opts)
    if args.channels_last:
        method.to(memory_format=torch.channels_last)
    method.train()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if args.precision == "bf16"
            else contextlib.nullcontext()
        )
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = method(x, y)
        out["loss"].backward()
        optimizer.step()
        method.after_step()

    return step, method


def step_flops(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    x = torch.rand(args.batch, 3, 32, 32)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    cells: dict[str, tuple[str, dict[str, Any]]] = {
        "ce": ("ce", {}),
        "hnc_mse": ("hnc", {"variant": "mse"}),
        "hnc_kd": ("hnc", {"variant": "kd"}),
    }
    for width in args.widths:  # fused head (default) and the literal width-filter convolutions
        cells[f"topgap_w{width}"] = ("topgap", {"width": width, "k": 64})
        cells[f"topgap_w{width}_plain"] = ("topgap", {"width": width, "k": 64, "fused_head": False})
    steps, flops, params = {}, {}, {}
    for label, (name, opts) in cells.items():
        steps[label], method = make_step(name, opts, x, y, args)
        flops[label] = step_flops(steps[label])
        params[label] = sum(p.numel() for p in method.parameters())
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(args.repeats):
        for label, step in steps.items():
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)

    base_time, base_flops = statistics.median(times["ce"]), flops["ce"]
    results = {}
    for label in steps:
        seconds = statistics.median(times[label])
        time_ratio, flop_ratio = seconds / base_time, flops[label] / base_flops
        results[label] = {
            "seconds_per_step": seconds,
            "all_seconds": times[label],
            "time_ratio_vs_ce": time_ratio,
            "gflops_per_step": flops[label] / 1e9,
            "flop_ratio_vs_ce": flop_ratio,
            "time_over_flop_ratio": time_ratio / flop_ratio,
            "parameters": params[label],
        }
        print(
            f"{label:20s} {seconds * 1e3:8.1f} ms/step  time x{time_ratio:5.2f}  "
            f"FLOPs x{flop_ratio:5.2f} ({flops[label] / 1e9:6.2f} GFLOP)  "
            f"time/FLOP ratio {time_ratio / flop_ratio:4.2f}  params {params[label]:,}"
        )
    record = {
        "benchmark": "step_time_cam",
        "config": {
            "model": "resnet20 (width 16), 10 classes",
            "batch": args.batch,
            "input": "32x32 uniform random images, random labels",
            "precision": args.precision,
            "channels_last": args.channels_last,
            "optimizer": "SGD momentum 0.9",
            "repeats": args.repeats,
            "warmup_rounds": args.warmup,
            "timing": "median wall time of one training step, methods interleaved per round",
            "flops": "torch.utils.flop_counter.FlopCounterMode, one step (forward + backward)",
            "cells": {label: {"method": n, "options": o} for label, (n, o) in cells.items()},
            "torch_threads": torch.get_num_threads(),
        },
        "results": results,
        "goals": {"hnc": "time ratio <= 1.10", "topgap": "time ratio within 10% of FLOP ratio"},
        "note": "2-core machine shared with other jobs: absolute numbers are noisy",
        **provenance(),
    }
    suffix = "" if args.precision == "fp32" and not args.channels_last else f"_{args.precision}"
    suffix += "_cl" if args.channels_last else ""
    out = Path(args.out or Path(__file__).parent / "results" / f"step_time_cam{suffix}.json")
    io.write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
