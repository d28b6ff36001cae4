"""Why Top-GAP diverges at the cpu recipe's learning rate, and what keeps it stable: the L1
penalty summed over the map (a scale problem), and the paper head itself at lr >= ~0.07 (an
optimisation problem of its two unnormalised linear layers, with or without L1).

    PYTHONPATH=src python benchmarks/topgap_stability.py [--steps 60] [--batch 128]
        [--configs sum-lam1 sum-lam0.05 mean-lam1 ...] [--schedule-steps 3900]

Configurations use one learning rate for everything (head_lr=1) unless they set head_lr.
Committed results: topgap_stability.json (cpu recipe schedule, L1 configurations) and
topgap_stability_fast_warmup.json (``--schedule-steps 200``: head and head_lr configurations).

For each configuration (Top-GAP options + precision) on real CIFAR-10 batches with ResNet-20:

1. the gradient of the CE part and of the lam * L1 part at initialisation, separately, on the
   1x1 class conv, the FPN laterals and the backbone (their norms and the L1 / CE ratio);
2. ``--steps`` SGD steps with the cpu recipe's optimizer and learning-rate schedule (SGD,
   nesterov momentum 0.9, wd 5e-4, lr 0.2 one-cycle with 15% warm-up over the recipe's 3900
   steps, so these are the first steps of a real run; ``--schedule-steps 200`` for the schedule
   of a 200-step run, which reaches lr 0.2 at step 30), logging per step the loss parts, max |X|,
   the class conv's weight norm and bias, the gradient norm, and the first non-finite step.

Writes ``--out`` (default benchmarks/results/topgap_stability.json): config, per-step logs,
machine, git SHA.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch

from robustfeat import io
from robustfeat.config import load_recipe, make_config
from robustfeat.data import prepare_data
from robustfeat.data.loader import BatchLoader
from robustfeat.data.transforms import default_train_augment
from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.provenance import provenance
from robustfeat.train import lr_factor

CIFAR = "zip:/work/shared/data/cifar10-jpeg.zip"
RECIPE_STEPS = 3900  # 10 epochs x 390 batches of 128: the schedule the cpu recipe runs
# head_lr=1 (one learning rate for everything) unless a config says otherwise: the first
# group is about the L1 term, the second about the head's learning rate.
CONFIGS: dict[str, dict[str, Any]] = {
    "sum-lam1": {"l1_norm": "sum", "lam": 1.0},
    "sum-lam0.05": {"l1_norm": "sum", "lam": 0.05},
    "sum-lam1-fp32": {"l1_norm": "sum", "lam": 1.0, "precision": "fp32"},
    "sum-lam1-warmup": {"l1_norm": "sum", "lam": 1.0, "lam_warmup": 585},
    "sum-lam1e-3": {"l1_norm": "sum", "lam": 1e-3},
    "mean-lam1": {"l1_norm": "mean", "lam": 1.0},
    "mean-lam10": {"l1_norm": "mean", "lam": 10.0},
    "mean-lam0.1": {"l1_norm": "mean", "lam": 0.1},
    "no-l1": {"l1": False},
    "mean-lam1-k64": {"lam": 1.0, "k": 64},
    "mean-lam1-w64": {"lam": 1.0, "width": 64},
    "mean-lam1-gap": {"lam": 1.0, "topgap": False},
    "mean-lam1-headlr0.1": {"lam": 1.0, "head_lr": 0.1},
    "no-l1-headlr0.1": {"l1": False, "head_lr": 0.1},
    "mean-lam1-k64-headlr0.1": {"lam": 1.0, "k": 64, "head_lr": 0.1},
    "mean-lam1-w64-headlr0.1": {"lam": 1.0, "width": 64, "head_lr": 0.1},
    "mean-lam10-headlr0.1": {"lam": 10.0, "head_lr": 0.1},
    "sum-lam0.05-headlr0.1": {"l1_norm": "sum", "lam": 0.05, "head_lr": 0.1},
    "sum-lam1e-3-headlr0.1": {"l1_norm": "sum", "lam": 1e-3, "head_lr": 0.1},
}


def grad_norm(params: list[torch.nn.Parameter]) -> float:
    grads = [p.grad.float().norm() ** 2 for p in params if p.grad is not None]
    return math.sqrt(float(sum(grads))) if grads else 0.0


def parameter_groups(method: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    net = method.model
    return {
        "class_conv": list(net.head.classifier.parameters()),
        "laterals": list(net.head.lateral.parameters()),
        "backbone": list(net.backbone.parameters()),
    }


def gradient_split(method: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast) -> dict:
    """Norms of d(CE)/dtheta and d(lam * L1)/dtheta per parameter group at the current weights."""
    out: dict[str, dict[str, float]] = {}
    groups = parameter_groups(method)
    for part in ("loss_ce", "loss_l1"):
        method.zero_grad(set_to_none=True)
        with autocast():
            parts = method(x, y)
        scale = method.current_lam() if part == "loss_l1" else 1.0
        (scale * parts[part]).backward()
        out[part] = {name: grad_norm(params) for name, params in groups.items()}
    method.zero_grad(set_to_none=True)
    out["l1_over_ce"] = {
        name: out["loss_l1"][name] / max(out["loss_ce"][name], 1e-30) for name in groups
    }
    return out


def run(name: str, options: dict[str, Any], data, args) -> dict[str, Any]:
    options = dict(options)
    precision = options.pop("precision", "bf16")
    cfg = make_config(load_recipe("cpu"), {"batch_size": args.batch})
    torch.manual_seed(0)
    model = create_model("resnet20", 10, mean=data.mean, std=data.std)
    options = {"k": args.k, "width": args.width, "head_lr": 1.0, **options}
    method = create_method("topgap", model, **options)
    method.to(memory_format=torch.channels_last).train()
    base = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    groups = method.param_groups(base)  # what the trainer builds (head_lr, ...)
    for group in groups:
        group["base_lr"] = group["lr"]
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )
    loader = BatchLoader(
        data.train, args.batch, augment=default_train_augment(), seed=0, device="cpu"
    )
    seen: dict[str, float] = {}

    def read_maps(module, inputs, output) -> None:  # reads X^(n+1), changes nothing
        seen["maps_absmax"] = float(output.detach().float().abs().max())

    method.model.head.register_forward_hook(read_maps)
    batches = loader.batches(0)
    x0, y0 = next(batches)
    record: dict[str, Any] = {
        "options": options,
        "precision": precision,
        "gradients_at_init": gradient_split(method, x0, y0, autocast),
        "steps": [],
        "first_nonfinite_step": None,
    }
    schedule_cfg = make_config(load_recipe("cpu"))
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        if step >= args.steps:
            break
        factor = lr_factor(step, args.schedule_steps, schedule_cfg)
        lr = cfg.lr * factor
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        optimizer.zero_grad(set_to_none=True)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            out = method(x, y)
        finite = bool(torch.isfinite(out["loss"]))
        entry = {
            "step": step,
            "lr": lr,
            "loss_ce": float(out["loss_ce"].detach()),
            "loss_l1": float(out["loss_l1"].detach()),
            "logits_absmax": float(out["logits"].detach().float().abs().max()),
        }
        if finite:
            out["loss"].backward()
            entry["grad_norm"] = grad_norm(list(method.parameters()))
            optimizer.step()
            method.after_step()
        classifier = method.model.head.classifier
        entry["class_conv_weight_norm"] = float(classifier.weight.detach().float().norm())
        entry["class_conv_bias_absmax"] = float(classifier.bias.detach().float().abs().max())
        entry["maps_absmax"] = seen["maps_absmax"]
        record["steps"].append(entry)
        print(
            f"{name:16s} step {step:3d} lr {lr:.4f} ce {entry['loss_ce']:.3g} "
            f"l1 {entry['loss_l1']:.3g} |X| {entry['maps_absmax']:.3g} "
            f"|W| {entry['class_conv_weight_norm']:.3g} |b| {entry['class_conv_bias_absmax']:.3g} "
            f"grad {entry.get('grad_norm', float('nan')):.3g}",
            flush=True,
        )
        if not finite or not math.isfinite(entry.get("grad_norm", float("nan"))):
            record["first_nonfinite_step"] = step
            break
    record["seconds"] = time.perf_counter() - start
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument(
        "--schedule-steps",
        type=int,
        default=RECIPE_STEPS,
        help="length of the one-cycle schedule the steps are taken from (the cpu recipe's 3900; "
        "200 = `-c cpu --steps 200`, whose warm-up reaches lr 0.2 at step 30)",
    )
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "topgap_stability.json")
    )
    args = parser.parse_args()
    data = prepare_data(CIFAR)
    results = {name: run(name, CONFIGS[name], data, args) for name in args.configs}
    io.write_json(
        Path(args.out),
        {
            "benchmark": "topgap_stability",
            "config": {
                "model": "resnet20",
                "data": CIFAR,
                "batch": args.batch,
                "steps": args.steps,
                "schedule": f"cpu recipe: SGD nesterov 0.9, wd 5e-4, lr 0.2 one-cycle, "
                f"warm-up 15% of {args.schedule_steps} steps (these are its first steps)",
                "channels_last": True,
                "compile": False,
            },
            "results": results,
            **provenance(),
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
