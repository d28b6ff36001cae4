"""TENET's CFG grouping: our batched ``channel_grouping`` vs a per-sample reference loop.

    PYTHONPATH=src python benchmarks/tenet_grouping.py [--batch 128] [--repeats 3] [--quick]

``reference_grouping`` below follows the structure of the official code (CFG/Group.py of
LinusWu/TENET_Training): a Python loop over the samples, and per k-means iteration a loop over the
groups that averages the members, measures the distance of every channel to the mean and snaps the
centre to the nearest channel not yet taken. It is written here (not in the library) as the
reference that the tests compare the library against: the same algorithm with the same
deterministic rules (an empty group moves to the lowest-index free channel, ties to the lowest
index, distinct centres, converged samples stop, the groups of the last assignment step are
returned), so both return identical groupings. It computes distances directly,
Σ(x - c)², where the library expands them into matrix products.

Timed (median of ``--repeats`` rounds, ``--sweep-repeats`` in the channel sweep; the batched
version is warmed up first; the two alternate within a round):
1. B = ``--batch`` maps from the node TENET uses on ResNet-20 (stage2: 32 channels of 16x16) of
   ``shapes`` images through an untrained ResNet-20; also how many samples' groupings agree in
   float32 (the two distance formulas round differently, so exact near-ties may break apart);
2. grouping time vs the number of channels (16 ... 512, 16x16 maps, ReLU'd Gaussian features).
Writes benchmarks/results/tenet_grouping.json (config, machine, git SHA).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from robustfeat import io
from robustfeat.data import prepare_data
from robustfeat.methods.tenet import TIE_RTOL, channel_grouping, random_centres
from robustfeat.models import create_model
from robustfeat.provenance import provenance

GROUPS = 6


def _first_near_min(dist: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Along the last dim: the lowest index within TIE_RTOL · scale of the smallest distance."""
    near = dist <= dist.min(dim=-1, keepdim=True).values + TIE_RTOL * scale
    return near.int().argmax(dim=-1)


def reference_grouping(
    maps: torch.Tensor, init: torch.Tensor, max_iter: int = 50, tol: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """CFG one sample at a time, one group at a time (the official code's loop structure)."""
    assigns, centres = [], []
    for sample in range(maps.shape[0]):
        x = maps[sample] if maps.dtype == torch.float64 else maps[sample].float()
        sq = x.square().sum(dim=1)
        chosen = init[sample].tolist()

        def nearest(chosen: list[int], x: torch.Tensor = x, sq: torch.Tensor = sq) -> torch.Tensor:
            dist = (x[:, None, :] - x[chosen][None, :, :]).square().sum(dim=2)  # (C, K)
            return _first_near_min(dist, sq[:, None] + sq[chosen][None, :])

        for _ in range(max_iter):
            assign = nearest(chosen)
            snapped: list[int] = []
            for group in range(len(chosen)):
                members = x[assign == group]
                if len(members):
                    mean = members.mean(dim=0)
                    to_mean = (x - mean).square().sum(dim=1)
                    to_mean[snapped] = float("inf")  # distinct centres
                    snapped.append(int(_first_near_min(to_mean, sq + mean.square().sum())))
                else:  # empty: the lowest-index channel not taken
                    snapped.append(min(set(range(len(x))) - set(snapped)))
            shift = sum(
                float((x[new] - x[old]).square().sum().sqrt())
                for new, old in zip(snapped, chosen, strict=True)
            )
            chosen = snapped
            if shift**2 < tol:
                break
        assigns.append(assign)  # to the centres before the last update (official)
        centres.append(torch.tensor(chosen))
    return torch.stack(assigns), torch.stack(centres)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function; they alternate within each round (shared machine).
    Only the batched version is warmed up (the loop has nothing to warm up and is slow)."""
    fns["batched"]()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def resnet20_maps(batch: int) -> torch.Tensor:
    """stage2 outputs (B, 32, 256) of an untrained ResNet-20 (train-mode BN) on shapes images."""
    data = prepare_data("shapes", n_train=batch, n_test=16)
    model = create_model("resnet20", num_classes=data.num_classes)
    with torch.no_grad():
        x = data.train.images[:batch].float() / 255
        return model.forward_features(x, nodes=["stage2"])["stage2"].flatten(2)


def compare(maps: torch.Tensor, repeats: int) -> dict[str, float]:
    init = random_centres(maps.shape[0], maps.shape[1], GROUPS)
    times = interleaved(
        {
            "batched": lambda: channel_grouping(maps, init),
            "per_sample_loop": lambda: reference_grouping(maps, init),
        },
        repeats,
    )
    ours, _ = channel_grouping(maps, init)
    ref, _ = reference_grouping(maps, init)
    return {
        "channels": maps.shape[1],
        "batched_s": times["batched"],
        "per_sample_loop_s": times["per_sample_loop"],
        "speedup": times["per_sample_loop"] / times["batched"],
        "samples_agreeing": float((ours == ref).all(dim=1).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep-repeats", type=int, default=1, help="rounds per sweep point")
    parser.add_argument("--quick", action="store_true", help="channel sweep up to 128 only")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "tenet_grouping.json")
    )
    args = parser.parse_args()
    torch.manual_seed(0)

    resnet = compare(resnet20_maps(args.batch), args.repeats)
    print(
        f"resnet20 stage2, B={args.batch}: batched {resnet['batched_s'] * 1e3:.1f} ms, "
        f"per-sample loop {resnet['per_sample_loop_s'] * 1e3:.1f} ms, "
        f"speed-up {resnet['speedup']:.1f}x, agreeing samples {resnet['samples_agreeing']:.3f}"
    )
    sweep = []
    for channels in (16, 32, 64, 128) if args.quick else (16, 32, 64, 128, 256, 512):
        maps = torch.randn(args.batch, channels, 256).relu()
        row = compare(maps, args.sweep_repeats)
        sweep.append(row)
        print(
            f"C={channels:4d}: batched {row['batched_s'] * 1e3:8.1f} ms, per-sample loop "
            f"{row['per_sample_loop_s'] * 1e3:8.1f} ms, speed-up {row['speedup']:6.1f}x, "
            f"agreeing {row['samples_agreeing']:.3f}"
        )
    record = {
        "benchmark": "tenet_grouping",
        "config": {
            "batch": args.batch,
            "groups": GROUPS,
            "max_iter": 50,
            "tol": 1e-4,
            "repeats": args.repeats,
            "sweep_repeats": args.sweep_repeats,
            "timing": "median wall time, the two implementations interleaved per round",
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
        },
        "resnet20_stage2": resnet,
        "channel_sweep_16x16": sweep,
        "note": "2-core machine shared with other jobs: absolute numbers are noisy",
        **provenance(),
    }
    io.write_json(Path(args.out), record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
