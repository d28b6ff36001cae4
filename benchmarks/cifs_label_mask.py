"""How much a trained CIFS / CAS net's final prediction leans on the label inside its mask.

    PYTHONPATH=src python benchmarks/cifs_label_mask.py --run RUN_DIR [--run ...] [--n 1000]

Both methods build their channel mask in training from the true label (CIFS: the top-1 of the
relevance classes, Sec. 3.2; CAS: the head's weight row of the label) and at inference from the
probe's own prediction. The training loss the final classifier sees is therefore computed with
a label-informed mask. For each run this evaluates the final logits on the same images, model in
eval mode (BN running statistics), with the two masks:

- ``inference``: the mask from the probes' predictions (what every evaluation measures),
- ``true_label``: the mask layers switched to training behaviour and given the true labels,

on ``--n`` clean training images and ``--n`` clean test images (fixed random subsets, seed 0),
plus each probe's own accuracy. A large gap means the final head learnt to read the label off
the mask, so its training loss says little about its accuracy at test time. Writes
benchmarks/results/cifs_label_mask.json with the config, the machine and the git SHA.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from robustfeat import io
from robustfeat.data import load_dataset
from robustfeat.data.loader import iterate_batches
from robustfeat.methods.cifs import ProbedChannelMethod
from robustfeat.provenance import provenance
from robustfeat.runs import load_run, read_run_config


@contextmanager
def label_masks(method: ProbedChannelMethod) -> Iterator[None]:
    """Mask layers in training behaviour (labels drive the mask), the rest of the net in eval."""
    layers = [node.layer for node in method.probed]
    for layer in layers:
        layer.train()
    try:
        yield
    finally:
        for layer in layers:
            layer.eval()


@torch.no_grad()
def accuracies(method: ProbedChannelMethod, dataset: Any, batch: int = 250) -> dict[str, float]:
    """Final-logit accuracy with the inference and the true-label mask, each probe's accuracy,
    and the fraction of images whose final prediction equals each probe's."""
    correct: dict[str, float] = {}
    for x, y in iterate_batches(dataset, batch):
        # relevances are gradients of the probe, taken in closed form: no autograd needed
        logits, probes = method.forward_with_probes(x)
        with label_masks(method):
            label_logits, _ = method.forward_with_probes(x, y)
        final = logits.argmax(1)
        hits = {
            "inference": final == y,
            "true_label": label_logits.argmax(1) == y,
            **{f"probe{i}": p.argmax(1) == y for i, p in enumerate(probes, 1)},
            # how often the final prediction is the probe's own top-1
            **{f"final_equals_probe{i}": p.argmax(1) == final for i, p in enumerate(probes, 1)},
        }
        for name, hit in hits.items():
            correct[name] = correct.get(name, 0.0) + hit.sum().item()
    return {name: value / len(dataset) for name, value in correct.items()}


def subset(dataset: Any, n: int) -> Any:
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n]
    return dataset.subset(index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="a CIFS or CAS run dir")
    parser.add_argument("--n", type=int, default=1000, help="images per split")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "cifs_label_mask.json")
    )
    args = parser.parse_args()

    runs = {}
    for run in args.run:
        method = load_run(run)
        if not isinstance(method, ProbedChannelMethod):
            parser.error(f"{run}: not a CIFS or CAS run (method {type(method).__name__})")
        cfg = read_run_config(run)
        key = "/".join(Path(run).parts[-3:])  # recipe/cell/seed
        runs[key] = {
            "method": cfg.method,
            "at": cfg.at,
            "seed": cfg.seed,
            **{
                split: accuracies(method, subset(load_dataset(cfg.data, split), args.n))
                for split in ("train", "test")
            },
        }
        print(key, runs[key])
    record = {
        "benchmark": "cifs_label_mask",
        "config": {
            "n_per_split": args.n,
            "subset_seed": 0,
            "inputs": "clean images, no augmentation; model in eval mode",
            "torch_threads": torch.get_num_threads(),
        },
        "runs": runs,
        **provenance(),
    }
    io.write_json(Path(args.out), record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
