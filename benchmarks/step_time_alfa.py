"""Training-step time of ALFA (and its baselines) relative to CE: same model, batch, optimizer.

    PYTHONPATH=src python benchmarks/step_time_alfa.py [--batch 128] [--repeats 9]
        [--bf16 | --both-precisions] [--threads N] [--methods ce alfa ...] [--out PATH]

One step = the method's forward, backward, an SGD step and ``after_step`` (what the trainer does,
without data loading). Each method gets its own copy of one ResNet-20 (width 16) and one fixed
batch of random images; the methods alternate within every round (after two warm-up rounds) so
load from other jobs on the shared machine hits all of them alike (the order rotates each round);
the median per method is reported with its quartiles and its ratio to CE. ``--bf16`` adds bf16
autocast and channels_last, as the cpu recipe; ``--both-precisions`` times each method both ways
side by side (``NAME@bf16``: what bf16 costs on this CPU, native or emulated). Writes
benchmarks/results/step_time_alfa.json with the config, the CPU's capability and the git SHA.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from pathlib import Path

import torch

from robustfeat import io
from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.provenance import provenance
from robustfeat.runtime import native_cpu_bf16

METHODS: dict[str, dict] = {
    "ce": {},
    "alfa": {},  # PGD-5 at the last block's output (resnet20: stage3.2), alpha 0.5/255
    "alfa_stage3.1": {"nodes": ["stage3.1"]},  # suffix = the last block + head
    "lalfa_stage": {"granularity": "stage"},  # 3 sites, PGD-3
    # the official code's 9 sites and η (1/r on the hyperplane); the cpu-converged recipe's
    # lalfa_stage cell is the 3-site one with that η
    "lalfa": {"eta_init": 1 / 9, "eta_constraint": "hyperplane"},
    "feature_noise": {},
    "moex": {"p": 1.0},  # every batch exchanged (the default p = 0.25 costs less)
    "advprop": {},  # PGD-1 with the auxiliary BN
}


def make_step(name: str, options: dict, model: torch.nn.Module, x, y, bf16: bool):
    method = create_method(name.split("_stage")[0], copy.deepcopy(model), **options)
    if bf16:
        method.to(memory_format=torch.channels_last)
    method.train()
    optimizer = torch.optim.SGD(
        method.param_groups({"lr": 0.01, "weight_decay": 5e-4}), lr=0.01, momentum=0.9
    )

    def step() -> None:
        context = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
        with context:
            out = method(x, y)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        method.after_step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--both-precisions", action="store_true")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "step_time_alfa.json")
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    variants = [False, True] if args.both_precisions else [args.bf16]
    steps = {
        f"{n}@bf16" if bf16 and args.both_precisions else n: make_step(
            n, METHODS[n], model, x_cl if bf16 else x, y, bf16
        )
        for n in args.methods
        for bf16 in variants
    }
    times: dict[str, list[float]] = {n: [] for n in steps}
    names = list(steps)
    for round_ in range(args.repeats + 2):
        shift = round_ % len(names)  # rotate the order: no method always runs first
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    ce = statistics.median(times["ce"]) if "ce" in times else None
    results = {}
    for name, values in times.items():
        median = statistics.median(values)
        ratio = median / ce if ce else None
        q1, _, q3 = statistics.quantiles(values, n=4)
        results[name] = {
            "options": METHODS[name.split("@")[0]],
            "median_s": median,
            "quartiles_s": [q1, q3],
            "ratio_to_ce": ratio,
            "all_s": values,
        }
        spread = f"(quartiles {q1 * 1000:.0f}-{q3 * 1000:.0f})"
        print(
            f"{name:16s} {median * 1000:8.1f} ms/step {spread}"
            + (f"  {ratio:5.2f}x CE" if ratio else "")
        )
    record = {
        "benchmark": "step_time_alfa",
        "config": {
            "model": "resnet20 (width 16)",
            "batch": args.batch,
            "repeats": args.repeats,
            "warmup_rounds": 2,
            "precision": " and ".join(
                "bf16 autocast + channels_last" if bf16 else "fp32" for bf16 in variants
            ),
            "timing": "median wall time of forward+backward+SGD step, methods interleaved in a "
            "rotating order",
            "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_cpu_bf16": native_cpu_bf16(),
        },
        "results": results,
        "note": "2-core machine shared with other jobs: absolute numbers are noisy",
        **provenance(),
    }
    io.write_json(Path(args.out), record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
