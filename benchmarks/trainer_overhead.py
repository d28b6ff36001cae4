"""Framework overhead: the trainer's img/s vs a bare PyTorch loop doing the same work.

Same process, same model (ResNet-20 with its Normalize), batch, optimizer, per-iteration LR,
batched crop+flip augmentation from uint8 tensors, precision, channels_last and compile
settings. Each side runs ``--epochs`` epochs on ``--n`` random CIFAR-10 training images (as
many of each class); the first epoch (compilation, warm-up) is discarded and the rest are
timed. Sides alternate ``--repeats`` times and the medians are compared.

    PYTHONPATH=src python benchmarks/trainer_overhead.py --data zip:../shared/data/cifar10-jpeg.zip
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustfeat.config import load_recipe, make_config
from robustfeat.data import prepare_data
from robustfeat.data.base import ImageDataset
from robustfeat.data.splits import per_class_subset
from robustfeat.data.transforms import random_crop
from robustfeat.io import write_json
from robustfeat.models import create_model
from robustfeat.provenance import provenance
from robustfeat.train import autocast_context, lr_factor, train


def bare_loop(cfg, data, epochs: int) -> list[float]:
    """img/s per epoch of a plain loop: no Method, no metrics, no checkpoints, no seeding."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, data.num_classes, mean=data.mean, std=data.std)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    images, labels = data.train.images, data.train.labels
    n, batch = len(labels), cfg.batch_size
    steps_per_epoch = n // batch
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    rates = []
    model.train()
    step = 0
    for _ in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(n)
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            x = images[idx].float().div_(255)
            x = random_crop(x, gen, cfg.crop_padding, cfg.padding_mode)  # same batched crop
            x = torch.where(
                (torch.rand(batch, generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(3), x
            )
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total, cfg)
            with autocast_context(cfg.precision, torch.device("cpu")):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        rates.append(steps_per_epoch * batch / (time.perf_counter() - start))
    return rates


def trainer_rates(cfg, data, epochs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as out:
        train(
            make_config(
                cfg.to_dict(), {"epochs": epochs, "progress": False, "eval_suite": "clean"}
            ),
            out,
            data=data,
        )
        records = [
            json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()
        ]
    return [r["img_per_s"] for r in records if "img_per_s" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="zip:../shared/data/cifar10-jpeg.zip")
    parser.add_argument("--recipe", default="cpu")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/trainer_overhead.json")
    args = parser.parse_args()

    cfg = make_config(load_recipe(args.recipe), {"data": args.data, "seed": 0})
    full = prepare_data(cfg.data)
    # class-balanced random subsets: the zip's files are sorted by class, so its first n images
    # would hold one or two classes
    gen = torch.Generator().manual_seed(0)
    per_class = args.n // full.num_classes
    train_subset: ImageDataset = full.train.subset(
        per_class_subset(full.train.labels, per_class, gen)
    )
    data = type(full)(
        train=train_subset,
        val=None,
        test=full.test.subset(per_class_subset(full.test.labels, 500 // full.num_classes, gen)),
        num_classes=full.num_classes,
        mean=full.mean,
        std=full.std,
    )
    bare, ours = [], []
    for _ in range(args.repeats):
        bare += bare_loop(cfg, data, args.epochs)[1:]
        ours += trainer_rates(cfg, data, args.epochs)[1:]
    result = {
        "schema": "robustfeat.trainer_overhead/1",
        "setting": {
            "recipe": args.recipe,
            "model": cfg.model,
            "batch_size": cfg.batch_size,
            "precision": cfg.precision,
            "channels_last": cfg.channels_last,
            "compile": cfg.compile,
            "images_per_epoch": args.n,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "load_average_1min_at_end": os.getloadavg()[0],  # how busy the machine was
        },
        "bare_img_per_s": bare,
        "trainer_img_per_s": ours,
        "trainer_vs_bare_loop": statistics.median(ours) / statistics.median(bare),
        **provenance(),
    }
    write_json(Path(args.out), result)
    print(
        json.dumps(
            {k: result[k] for k in ("bare_img_per_s", "trainer_img_per_s", "trainer_vs_bare_loop")}
        )
    )


if __name__ == "__main__":
    main()
