"""Training-step time of CIFS (and CAS) vs CE, with and without adversarial training.

    PYTHONPATH=src python benchmarks/step_time_cifs.py [--batch 128] [--repeats 15] [--threads 1]
        [--precision bf16] [--schemes none fgsm_rs pgd_at] [--pgd-steps 3]

One step is what the trainer does per batch: ``for out in scheme.steps(method, x, y): zero_grad;
out["loss"].backward(); optimizer.step()`` (SGD, momentum 0.9), on ResNet-20 (the cpu recipe's
backbone) with channels_last and the given autocast precision, on one random batch. For every
scheme the methods alternate within each round (after two warm-up rounds) so load from other jobs
hits them alike; the reported times are medians over rounds of the wall time and of the process CPU
time (with one thread the CPU time is the better measure on a machine shared with other jobs), and
the ratios are method / CE with the same scheme. The issue's goal: CIFS+AT step <= 1.05 x AT step.
Writes
benchmarks/results/step_time_cifs.json with the config, the machine and the git SHA.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from robustfeat import io
from robustfeat.adversarial.schemes import create_scheme
from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.provenance import provenance
from robustfeat.train import autocast_context


def make_step(
    method_name: str, scheme_name: str, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> Callable[[], None]:
    torch.manual_seed(0)
    method = create_method(method_name, create_model(args.model, num_classes=10))
    method.to(memory_format=torch.channels_last).train()
    options = {"steps": args.pgd_steps} if scheme_name == "pgd_at" else {}
    scheme = create_scheme(None if scheme_name == "none" else scheme_name, **options)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    device = torch.device("cpu")

    def step() -> None:
        with autocast_context(args.precision, device):
            for out in scheme.steps(method, x, y):
                optimizer.zero_grad(set_to_none=True)
                out["loss"].backward()
                optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--methods", nargs="+", default=["ce", "cifs", "cas"])
    parser.add_argument("--schemes", nargs="+", default=["none", "fgsm_rs", "pgd_at"])
    parser.add_argument("--pgd-steps", type=int, default=3, dest="pgd_steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "step_time_cifs.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))

    results: dict[str, dict[str, dict[str, float | list[float]]]] = {}
    for scheme in args.schemes:
        steps = {m: make_step(m, scheme, x, y, args) for m in args.methods}
        wall: dict[str, list[float]] = {m: [] for m in steps}
        cpu: dict[str, list[float]] = {m: [] for m in steps}
        for round_ in range(args.repeats + 2):
            for name, step in steps.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                step()
                if round_ >= 2:  # two warm-up rounds
                    wall[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
        base_wall, base_cpu = statistics.median(wall["ce"]), statistics.median(cpu["ce"])
        results[scheme] = {}
        for name in steps:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            results[scheme][name] = {
                "wall_seconds_per_step": w,
                "cpu_seconds_per_step": c,
                "wall_ratio_vs_ce": w / base_wall,
                "cpu_ratio_vs_ce": c / base_cpu,
                "all_wall_seconds": wall[name],
                "all_cpu_seconds": cpu[name],
            }
            print(
                f"{scheme:8s} {name:5s} wall {w * 1000:8.1f} ms x{w / base_wall:.3f}   "
                f"cpu {c * 1000:8.1f} ms x{c / base_cpu:.3f}  (vs ce)"
            )
    record = {
        "benchmark": "step_time_cifs",
        "config": {
            "model": args.model,
            "batch": args.batch,
            "precision": args.precision,
            "channels_last": True,
            "compile": False,
            "pgd_at_steps": args.pgd_steps,
            "repeats": args.repeats,
            "timing": "median wall and process CPU time of one training step, methods "
            "interleaved per round",
            "torch_threads": torch.get_num_threads(),
        },
        "results": results,
        "note": "2-core machine shared with other jobs: absolute numbers are noisy",
        **provenance(),
    }
    io.write_json(Path(args.out), record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
