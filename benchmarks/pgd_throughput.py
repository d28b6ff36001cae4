"""Throughput of our PGD-20 vs torchattacks' PGD-20: same model, batch, eps, step, steps.

    PYTHONPATH=src python benchmarks/pgd_throughput.py [--run RUN_DIR] [--batch 128] [--repeats 3]

Both attacks run L∞ PGD with a random start, eps 8/255, step 2/255, 20 steps, on the same
batch, model in eval mode; the timed quantity is the wall time of one attack call (median of
``--repeats`` rounds after one warm-up round; the attacks alternate within each round so load
from other jobs hits them alike), reported as images per second. Ours is timed twice:
last iterate (``early_stop=False``, the same work as torchattacks) and with early stopping
(our evaluation default, which drops fooled samples from the batch; its speed depends on the
model, so it is only meaningful for a trained one, ``--run``). Writes
benchmarks/results/pgd_throughput.json with the config, the machine and the git SHA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchattacks

from robustfeat import io
from robustfeat.adversarial.pgd import pgd
from robustfeat.models import create_model
from robustfeat.provenance import provenance
from robustfeat.runs import load_run

EPS, STEP, STEPS = 8 / 255, 2 / 255, 20


def interleaved(fns: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each call, the attacks alternating within every round (after one warm-up
    round), so load from other jobs on a shared machine hits all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run directory (default: an untrained ResNet-20)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "pgd_throughput.json")
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.run:
        model = load_run(args.run).eval_model().eval()
        source = f"run {args.run}"
    else:
        model = create_model("resnet20", num_classes=10).eval()
        source = "untrained resnet20"
    x = torch.rand(args.batch, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own predictions: every sample starts correct

    ta_pgd = torchattacks.PGD(model, eps=EPS, alpha=STEP, steps=STEPS, random_start=True)
    attacks: dict[str, Callable[[], torch.Tensor]] = {
        "torchattacks_pgd20": lambda: ta_pgd(x, y),
        "ours_pgd20_last_iterate": lambda: pgd(model, x, y, eps=EPS, steps=STEPS, step_size=STEP),
        "ours_pgd20_early_stop": lambda: pgd(
            model, x, y, eps=EPS, steps=STEPS, step_size=STEP, early_stop=True
        ),
    }
    times = interleaved(attacks, args.repeats)
    results = {}
    for name, fn in attacks.items():
        seconds = statistics.median(times[name])
        x_adv = fn()
        with torch.no_grad():
            acc = (model(x_adv).argmax(1) == y).float().mean().item()
        results[name] = {
            "seconds_per_batch": seconds,
            "all_seconds": times[name],
            "images_per_second": args.batch / seconds,
            "accuracy_on_own_predictions": acc,
        }
        rate = args.batch / seconds
        print(f"{name:26s} {rate:8.1f} img/s  ({seconds:.2f} s / batch)  acc {acc:.3f}")
    ratio = (
        results["ours_pgd20_last_iterate"]["images_per_second"]
        / results["torchattacks_pgd20"]["images_per_second"]
    )
    print(f"ours / torchattacks (same work): {ratio:.2f}x")
    record = {
        "benchmark": "pgd_throughput",
        "config": {
            "model": source,
            "batch": args.batch,
            "eps": EPS,
            "step_size": STEP,
            "steps": STEPS,
            "norm": "linf",
            "random_start": True,
            "repeats": args.repeats,
            "timing": "median wall time, attacks interleaved per round",
            "inputs": "uniform random images, labels = the model's clean predictions",
            "torch_threads": torch.get_num_threads(),
        },
        "results": results,
        "ratio_ours_last_iterate_vs_torchattacks": ratio,
        # other jobs on the machine make absolute numbers noisy: record how busy it was
        "load_average_1min_at_end": os.getloadavg()[0],
        **provenance(),
    }
    io.write_json(Path(args.out), record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
