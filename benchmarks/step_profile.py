"""Where a ResNet-20 CE training step spends its time on this CPU, and what runs it faster.

One step is the trainer's own (``Trainer._train_step``: forward, cross-entropy, backward, SGD
step) plus the loader's batch (uint8 gather, float conversion, crop and flip). Settings are
overrides of the ``cpu`` recipe (batch 128, bf16 autocast, channels_last, torch.compile); the
baseline is that recipe as its committed results were trained, two threads.

- **Throughput, in one process**: every setting keeps its own model, optimizer and loader; after
  warm-up they run ``--steps`` steps each in a rotating order every round, so load from other
  processes hits them alike. A ratio is the median over rounds of the round's own ratio to the
  baseline. One-thread settings also record the thread's CPU time, which other processes'
  load does not inflate (preemption is not counted).
- **Profile**: ``torch.profiler`` over ``--profile-steps`` steps of each setting; every event's
  self time goes to the operator class of its outermost operator (``aten::`` op or inductor
  kernel): convolution forward / backward, BatchNorm (inductor's BatchNorm kernels include the
  ReLU / residual add fused into them), other operators (elementwise, loss, pooling, copies),
  optimizer, data (loader and augmentation); "framework" is the self time of the wrappers
  around them (autograd engine, compiled-graph calls).
- **Side by side**: the total img/s of two one-thread processes running at once vs one
  two-thread process (how a benchmark matrix can use the two cores), alternating ``--rounds``
  times; its ratio is the top-level ``throughput_ratio_vs_baseline`` (the new settings: two
  one-thread processes, each with the recommended step settings).

The images are random uint8 CIFAR-sized tensors: a step's cost does not depend on pixel values.

    PYTHONPATH=src python benchmarks/step_profile.py --quick   # baseline vs new, a few minutes
    PYTHONPATH=src python benchmarks/step_profile.py           # + eager/fp32/batch/thread cells
    PYTHONPATH=src python benchmarks/step_profile.py --full    # eager/compiled x bf16/fp32 x
                                                               # batch 128/256/512 x 1/2 threads
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from robustfeat import io
from robustfeat.config import load_recipe, make_config
from robustfeat.data.base import ImageDataset
from robustfeat.data.splits import DataSplits
from robustfeat.provenance import provenance
from robustfeat.train import RunningMetrics, Trainer, build_optimizer

RESULTS = Path(__file__).parent / "results"
BASELINE = {"threads": 2}  # the cpu recipe as committed, on both cores
# the recommended step settings (each run one thread, two processes side by side)
NEW: dict[str, Any] = {"threads": 1}
DATA_MARK = "step_profile::data"
CLASSES = (
    "conv_fwd",
    "conv_bwd",
    "batchnorm",
    "other_ops",
    "optimizer",
    "data",
    "framework",
)
Step = Callable[[], int]


def synthetic_data(n: int, seed: int = 0) -> DataSplits:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    train = ImageDataset(images, labels, 10, [str(k) for k in range(10)], name="random")
    return DataSplits(train, None, train, 10, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])


def setting_name(setting: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items()) or "baseline"


def make_step(setting: dict[str, Any], data: DataSplits, workdir: Path) -> Step:
    """The trainer's step under ``setting`` (config overrides + ``threads``): a callable that
    draws the next batch, trains on it and returns its size."""
    overrides = {k: v for k, v in setting.items() if k != "threads"}
    cfg = make_config(
        load_recipe("cpu"),
        {"data": "shapes", "progress": False, "eval_suite": "clean", "device": "cpu", **overrides},
    )
    trainer = Trainer.create(cfg, workdir, data=data)
    loader = trainer.loader()
    optimizer = build_optimizer(trainer.method, cfg)
    if cfg.compile:
        for module in trainer.method.compile_targets():
            module.compile()
    trainer.method.train()
    forward = trainer._forward_module()
    total = 10**9  # lr schedule far from its end: the step count does not matter for speed

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for epoch in itertools.count():
            yield from loader.batches(epoch)

    stream = batches()
    counter = itertools.count()

    def step() -> int:
        torch.set_num_threads(setting.get("threads", 2))
        with record_function(DATA_MARK):
            x, y = next(stream)
        metrics = RunningMetrics()
        trainer._train_step(forward, optimizer, None, x, y, next(counter), total, metrics)
        return x.shape[0]

    return step


def outermost_op(chain: list[str]) -> str | None:
    """The outermost operator (``aten::`` op or inductor kernel) in an event's name chain."""
    ops = [n for n in chain if n.startswith(("aten::", "graph_", "cpp_fused", "mkldnn::"))]
    return ops[-1] if ops else None


def op_class(chain: list[str]) -> str:
    """Operator class of an event from its name chain (itself first, then its ancestors)."""
    if DATA_MARK in chain:
        return "data"
    if any(name.startswith("Optimizer.") for name in chain):
        return "optimizer"
    outer = outermost_op(chain)
    if outer is None:
        return "framework"
    outer = outer.lower()
    if outer.startswith(("graph_", "cpp_fused")):  # an inductor kernel: named by its origins
        return "batchnorm" if "batch_norm" in outer else "other_ops"
    if "conv" in outer:  # aten::conv2d, convolution, convolution_backward, mkldnn_...
        return "conv_bwd" if "backward" in outer else "conv_fwd"
    if "batch_norm" in outer:
        return "batchnorm"
    return "other_ops"


def profile_step(step: Step, steps: int, top: int = 8) -> dict[str, Any]:
    """ms per step by operator class (profiler self time), the ``top`` outermost operators by
    ms per step, and the wall time of the profiled steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        images = sum(step() for _ in range(steps))
        wall = time.perf_counter() - start
    per_class: dict[str, float] = defaultdict(float)
    per_op: dict[str, float] = defaultdict(float)
    for event in prof.events():
        chain, node = [], event
        while node is not None:
            chain.append(node.name)
            node = node.cpu_parent
        ms = event.self_cpu_time_total / 1e3 / steps
        per_class[op_class(chain)] += ms
        per_op[outermost_op(chain) or "(framework)"] += ms
    total = sum(per_class.values())
    return {
        "ms_per_step": {k: per_class.get(k, 0.0) for k in CLASSES},
        "share": {k: per_class.get(k, 0.0) / total for k in CLASSES},
        "top_ops_ms_per_step": dict(sorted(per_op.items(), key=lambda kv: -kv[1])[:top]),
        "profiled_wall_ms_per_step": wall * 1e3 / steps,
        "images_per_step": images // steps,
    }


def timed(step: Step, steps: int, threads: int) -> tuple[float, float | None]:
    """(img/s wall, img/s per thread CPU time when one thread) over ``steps`` steps."""
    wall, cpu = time.perf_counter(), time.thread_time()
    images = sum(step() for _ in range(steps))
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    return images / wall, (images / cpu if threads == 1 else None)


def quartiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2]}


def in_process(
    settings: list[dict[str, Any]], data: DataSplits, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Interleaved throughput and the profile of every setting (settings[0] is the baseline;
    ``NEW`` must be among them)."""
    with tempfile.TemporaryDirectory() as tmp:
        steps = [make_step(s, data, Path(tmp) / f"run{i}") for i, s in enumerate(settings)]
        for step in steps:  # compile, warm up
            for _ in range(args.warmup):
                step()
        walls: list[list[float]] = [[] for _ in settings]
        cpus: list[list[float]] = [[] for _ in settings]
        for r in range(args.rounds):
            order = list(range(len(settings)))
            order = order[r % len(order) :] + order[: r % len(order)]
            for i in order:
                wall, cpu = timed(steps[i], args.steps, settings[i].get("threads", 2))
                walls[i].append(wall)
                if cpu is not None:
                    cpus[i].append(cpu)
        profiles = [profile_step(step, args.profile_steps) for step in steps]
    one_thread = cpus[settings.index(NEW)]
    out = []
    for i, setting in enumerate(settings):
        ratios = [w / ref for w, ref in zip(walls[i], walls[0], strict=True)]
        row = {
            "setting": setting,
            "img_per_s": walls[i],
            "img_per_s_median": statistics.median(walls[i]),
            "ratio_vs_baseline": quartiles(ratios),
            "profile": profiles[i],
        }
        if cpus[i]:
            row["img_per_cpu_s"] = cpus[i]
            row["img_per_cpu_s_median"] = statistics.median(cpus[i])
            # per-core speed, immune to preemption: vs the cpu recipe's step on one thread
            cpu_ratios = [c / ref for c, ref in zip(cpus[i], one_thread, strict=True)]
            row["cpu_ratio_vs_one_thread_baseline"] = quartiles(cpu_ratios)
        if "method" in setting:  # vs CE with the same settings
            ce = cpus[settings.index({k: v for k, v in setting.items() if k != "method"})]
            row["cpu_ratio_vs_ce"] = quartiles([c / r for c, r in zip(cpus[i], ce, strict=True)])
        out.append(row)
    return out


# ------------------------------------------------------------------ side-by-side processes
def worker(setting: dict[str, Any], warmup: int, seconds: float) -> None:
    """Warm up, print "ready", then for each "go" line on stdin train ``seconds`` and print the
    img/s as JSON (ends at EOF)."""
    torch.set_num_threads(setting.get("threads", 2))
    with tempfile.TemporaryDirectory() as tmp:
        step = make_step(setting, synthetic_data(2048), Path(tmp) / "run")
        for _ in range(warmup):
            step()
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() != "go":
                break
            start, images = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                images += step()
            print(json.dumps({"img_per_s": images / (time.perf_counter() - start)}), flush=True)


def spawn(setting: dict[str, Any], args: argparse.Namespace) -> subprocess.Popen:
    command = [sys.executable, __file__, "--worker", json.dumps(setting)]
    command += ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    env = {**os.environ, "OMP_NUM_THREADS": str(setting.get("threads", 2))}
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # skip whatever precedes "ready" (compiler messages)
        if line.strip() == "ready":
            return proc
    raise RuntimeError(f"worker {setting} ended before it was ready (exit {proc.wait()})")


def run_round(procs: list[subprocess.Popen]) -> float:
    """Total img/s of ``procs`` trained at the same time."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return sum(json.loads(proc.stdout.readline())["img_per_s"] for proc in procs)  # type: ignore[union-attr]


def side_by_side(args: argparse.Namespace) -> dict[str, Any]:
    pair = [spawn(NEW, args), spawn(NEW, args)]
    single = [spawn(BASELINE, args)]
    pairs, singles, loads = [], [], []
    try:
        for r in range(args.rounds):
            for group in (pair, single) if r % 2 == 0 else (single, pair):
                rate = run_round(group)
                (pairs if group is pair else singles).append(rate)
            loads.append(os.getloadavg()[0])
    finally:
        for proc in pair + single:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait()
    ratios = [p / s for p, s in zip(pairs, singles, strict=True)]
    return {
        "new": {"processes": 2, **NEW},
        "baseline": {"processes": 1, **BASELINE},
        "seconds_per_round": args.seconds,
        "new_total_img_per_s": pairs,
        "baseline_img_per_s": singles,
        "ratio": quartiles(ratios),
        "load_average_1min_per_round": loads,
    }


def grid(mode: str) -> list[dict[str, Any]]:
    """Settings measured in one process beside the baseline (listed first)."""
    if mode == "quick":
        return [BASELINE, NEW]
    if mode == "full":  # BASELINE and NEW come first: the product starts with the recipe's
        recipe = {"compile": True, "precision": "bf16", "batch_size": 128}
        cells = itertools.product((True, False), ("bf16", "fp32"), (128, 256, 512), (2, 1))
        return [
            {"threads": t} | {k: v for k, v in zip(recipe, values, strict=True) if v != recipe[k]}
            for *values, t in cells
        ]
    return [
        BASELINE,
        NEW,
        {"threads": 1, "compile": False},
        {"threads": 1, "precision": "fp32"},
        {"threads": 1, "channels_last": False},
        {"threads": 1, "batch_size": 256},
        {"threads": 1, "batch_size": 512},
        # the method hot spots of the overhead table (issue 28, item 3), eager as there (CIFS's
        # step is eager in the trainer too: it has no compile targets)
        {"threads": 1, "compile": False, "method": "cifs"},
        {"threads": 1, "compile": False, "method": "topgap"},
        {"threads": 1, "compile": False, "method": "lalfa"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="baseline and new settings only")
    size.add_argument("--full", action="store_true", help="the whole grid (long)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="steps per setting per round")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--profile-steps", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0, help="side-by-side round length")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "step_profile.json")
    args = parser.parse_args()
    # inductor kernels record their names for the profiler (a check of a flag when not profiling)
    torch._inductor.config.cpp.enable_kernel_profile = True
    if args.worker:
        worker(json.loads(args.worker), args.warmup, args.seconds)
        return
    mode = "quick" if args.quick else "full" if args.full else "default"
    load_start = os.getloadavg()
    cells = in_process(grid(mode), synthetic_data(4096), args)
    sbs = side_by_side(args)
    result = {
        "schema": "robustfeat.step_profile/1",
        "throughput_ratio_vs_baseline": sbs["ratio"]["median"],
        "mode": mode,
        "options": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
        "model": "resnet20",
        "method": "ce",
        "recipe": "cpu",
        "load_average_at_start": list(load_start),
        "load_average_at_end": list(os.getloadavg()),
        "side_by_side": sbs,
        "in_process": cells,
        **provenance(),
    }
    io.write_json(args.out, result)
    print(json.dumps({"throughput_ratio_vs_baseline": result["throughput_ratio_vs_baseline"]}))


if __name__ == "__main__":
    main()
