"""Training-step time of TENET (and AugMix-JSD, and the data-side augmentations) vs CE.

    PYTHONPATH=src python benchmarks/step_time_tenet.py [--data zip:../shared/data/cifar10-jpeg.zip]
        [--batch 128] [--repeats 7] [--compile]

One process, one model architecture (ResNet-20, same initial weights for every method), the same
CIFAR-10 batches, the cpu recipe's precision (bf16 autocast) and channels_last. A step is what
the trainer does: zero_grad, forward of the method, backward, SGD step, ``after_step``. The
methods alternate within each round, in reverse order every other round (shared machine: load
hits all alike); after two warm-up rounds the median over ``--repeats`` rounds is reported:

- ``ce``: the CE baseline;
- ``tenet_active``: TENET on a step where it is active, on every sample of the batch
  (``correct_only=False``: the worst case; the default uses only the correctly classified ones);
- ``tenet_inactive``: TENET on a step where it is not active (before ``start_step``);
- ``tenet_schedule``: TENET's default schedule past its start (active every 3rd step), the mean
  step time over one 3-step cycle (amortized), again on every sample;
- ``tenet_eval_features``: active, with the official extra eval-mode feature pass;
- ``augmix_jsd``: AugMix views made in the step + a 3B forward (reference);
- ``cutout`` / ``random_erasing`` / ``augmix``: the data-side transform of one batch alone
  (what ``--set augment=...`` adds to any method's step).
Goals (issue 6): TENET <= 2.0x CE when active, <= 1.35x amortized. Writes
benchmarks/results/step_time_tenet.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from robustfeat import io
from robustfeat.data import prepare_data
from robustfeat.data.augment import create_augment
from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.provenance import provenance
from robustfeat.train import autocast_context

METHODS: dict[str, tuple[str, dict]] = {
    "ce": ("ce", {}),
    "tenet_active": ("tenet", {"start_step": 0, "every": 1, "correct_only": False}),
    "tenet_inactive": ("tenet", {"correct_only": False}),
    "tenet_schedule": ("tenet", {"correct_only": False}),
    "tenet_eval_features": (
        "tenet",
        {"start_step": 0, "every": 1, "correct_only": False, "features": "eval"},
    ),
    "augmix_jsd": ("augmix_jsd", {}),
}


def make_step(method: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cycle: int) -> Callable:
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    method.train()

    def step() -> None:
        for _ in range(cycle):
            optimizer.zero_grad(set_to_none=True)
            with autocast_context("bf16", torch.device("cpu")):
                out = method(x, y)
            out["loss"].backward()
            optimizer.step()
            method.after_step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="zip:../shared/data/cifar10-jpeg.zip")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone nodes")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "step_time_tenet.json")
    )
    args = parser.parse_args()

    data = prepare_data(args.data)
    x = (data.train.images[: args.batch].float() / 255).contiguous(
        memory_format=torch.channels_last
    )
    y = data.train.labels[: args.batch]
    torch.manual_seed(0)
    base = create_model("resnet20", data.num_classes, mean=data.mean, std=data.std)
    steps: dict[str, Callable] = {}
    cycles: dict[str, int] = {}
    for label, (name, opts) in METHODS.items():
        method = create_method(name, copy.deepcopy(base), **opts)
        method.to(memory_format=torch.channels_last)
        if label == "tenet_schedule":
            method.steps_done.fill_(method.start_step)  # past the start: active, off, off, ...
        if args.compile:
            for module in method.compile_targets():
                module.compile()
        cycles[label] = method.every if label == "tenet_schedule" else 1
        steps[label] = make_step(method, x, y, cycles[label])
    generator = torch.Generator().manual_seed(0)
    for name in ("cutout", "random_erasing", "augmix"):
        transform = create_augment(name, mean=data.mean)
        steps[name] = lambda transform=transform: transform(x, generator)
        cycles[name] = 1

    for _ in range(2):  # warm-up (and compilation)
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for round_ in range(args.repeats):
        order = list(steps.items())
        for label, fn in order[:: 1 if round_ % 2 == 0 else -1]:  # no position bias
            start = time.perf_counter()
            fn()
            times[label].append((time.perf_counter() - start) / cycles[label])
    median = {label: statistics.median(t) for label, t in times.items()}
    ratios = {label: median[label] / median["ce"] for label in median}
    for label in steps:
        print(f"{label:20s} {median[label] * 1e3:8.1f} ms/step  {ratios[label]:5.2f}x CE")
    record = {
        "benchmark": "step_time_tenet",
        "config": {
            "model": "resnet20",
            "data": args.data,
            "batch": args.batch,
            "precision": "bf16 autocast",
            "channels_last": True,
            "compile": args.compile,
            "repeats": args.repeats,
            "timing": "median wall time per optimizer step, methods interleaved per round",
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
        },
        "seconds_per_step": median,
        "all_seconds": times,
        "ratio_to_ce": ratios,
        "goals": {"tenet_active": 2.0, "tenet_schedule": 1.35},
        "note": "2-core machine shared with other jobs: absolute numbers are noisy",
        **provenance(),
    }
    io.write_json(Path(args.out), record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
