"""The training loop: the ``Trainer`` (data, model, method and scheme built from a config,
devices, bf16/AMP, channels_last, torch.compile, DDP), its steps, checkpoints and resume, the
NaN policy, and the final evaluation into results.json.

One step is ``for out in scheme.steps(method, x, y): out["loss"].backward(); optimizer.step()``;
everything the method returns besides ``loss``/``logits`` is logged. Reproducibility: the batch
order of epoch e and the augmentation of batch i derive from (seed, e, i), and the global RNG is
re-seeded from (seed, step, rank) before each step, so a run resumed from any checkpoint takes
exactly the steps an uninterrupted run takes (bit-identical weights on CPU).

Faults: checkpoints are written atomically (``rundir.save_checkpoint``); a resume drops what the
killed process left and takes the running epoch averages from the checkpoint, so even
metrics.jsonl matches an uninterrupted run. ``faults.fault_point`` lets the tests kill the
process at each window.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from .. import io
from ..adversarial.schemes import Scheme, create_scheme
from ..config import TrainConfig
from ..data import DataSplits, prepare_data
from ..data.augment import create_augment
from ..data.loader import BatchLoader
from ..data.transforms import Augment, default_train_augment
from ..errors import RobustfeatError
from ..evaluate import as_eval_model, evaluate, train_fit
from ..evaluate.multilabel import evaluate_multilabel
from ..faults import fault_point
from ..methods import Method, create_method
from ..models import create_model
from ..progress import progress_task
from ..provenance import provenance
from ..rundir import RunDir, load_checkpoint, save_checkpoint
from ..runs import data_metadata, default_shift_sets, run_info
from ..runtime import resolve_device, resolve_precision
from ..scalar_log import ScalarLog
from .distributed import Distributed, setup_distributed
from .metrics import MetricsLog, RunningMetrics
from .numerics import (
    autocast_context,
    deterministic_algorithms,
    emulated_bf16_warning,
    precision_segments,
    recorded_precision,
)
from .schedule import build_optimizer, lr_factor, set_learning_rates
from .selection import BestEpoch, selection_score


class TrainingDiverged(RobustfeatError):
    """A loss became NaN/inf; the last good checkpoint is kept. ``step`` (1-based), the loss
    parts at that step (``parts``) and the names of the non-finite ones (``nonfinite``) say
    where and which."""

    def __init__(
        self, message: str, step: int, parts: dict[str, float], nonfinite: list[str]
    ) -> None:
        super().__init__(message)
        self.step, self.parts, self.nonfinite = step, parts, nonfinite


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63)


def validate_names(cfg: TrainConfig) -> None:
    """Fail fast on an unknown model, method, scheme, dataset, augmentation or evaluation-suite
    name (the suite runs after training: a typo there must not cost the whole training run)."""
    from ..adversarial.schemes import SCHEMES
    from ..attacks.suites import get_suite
    from ..data import check_dataset_spec
    from ..methods import METHODS
    from ..models import MODELS

    if not cfg.model.startswith("timm/"):
        MODELS.get(cfg.model)
    METHODS.get(cfg.method)
    if cfg.at not in (None, "none"):
        SCHEMES.get(cfg.at)
    check_dataset_spec(cfg.data)
    if cfg.augment:
        create_augment(cfg.augment, **cfg.augment_args)  # name and options
    if cfg.eval_suite is not None:
        get_suite(cfg.eval_suite)


@dataclass
class Trainer:
    cfg: TrainConfig
    run: RunDir
    data: DataSplits
    method: Method
    scheme: Scheme
    device: torch.device
    dist: Distributed
    best: BestEpoch = field(default_factory=BestEpoch)

    @classmethod
    def create(
        cls,
        cfg: TrainConfig,
        out: str | Path,
        data: DataSplits | None = None,
        resume: bool = False,
    ) -> Trainer:
        device = resolve_device(cfg.device)
        distributed = setup_distributed(device)
        if device.type == "cuda":
            device = torch.device("cuda", distributed.local_rank)
            torch.cuda.set_device(device)
        validate_names(cfg)  # before any data is loaded or output written
        run = RunDir(Path(out))
        if data is None:
            data = prepare_data(
                cfg.data,
                samples_per_class=cfg.samples_per_class,
                label_noise=cfg.label_noise,
                label_noise_type=cfg.label_noise_type,
                val_fraction=cfg.val_fraction,
                test_fraction=cfg.test_fraction,
                seed=cfg.data_seed,
                **cfg.data_args,
            )
        torch.manual_seed(cfg.seed)  # model initialisation
        model = create_model(
            cfg.model, data.num_classes, mean=data.mean, std=data.std, **cfg.model_args
        )
        method = create_method(cfg.method, model, **cfg.method_args)
        scheme = create_scheme(cfg.at, **cfg.at_args)
        trainer = cls(cfg, run, data, method, scheme, device, distributed)
        # batch size vs data and world size, and the augmentation on one image: checked before
        # any output is written
        loader = trainer.loader()
        if loader.augment is not None:
            loader.augment(data.train.float_images(slice(0, 1)), torch.Generator())
        if distributed.main:
            run.prepare(resume)
        method.to(device)
        if cfg.channels_last:
            method.to(memory_format=torch.channels_last)
        return trainer

    # -------------------------------------------------------------- helpers
    @cached_property
    def precision(self) -> str:
        """The precision the training steps compute in (``auto`` resolved for the device)."""
        return resolve_precision(self.cfg.precision, self.device)

    def loader(self) -> BatchLoader:
        return BatchLoader(
            self.data.train,
            self.cfg.batch_size,
            shuffle=True,
            drop_last=True,
            augment=self.train_augment(),
            seed=self.cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            device=self.device,
            resident=self.cfg.loader == "device",
        )

    def train_augment(self) -> Augment:
        """Crop/flip, then the config's image-level augmentation (filled with the data mean)."""
        cfg = self.cfg
        steps = default_train_augment(cfg.crop_padding, cfg.padding_mode, cfg.flip).steps
        if cfg.augment:
            steps.append(create_augment(cfg.augment, mean=self.data.mean, **cfg.augment_args))
        return Augment(*steps)

    def total_steps(self, steps_per_epoch: int) -> int:
        budget = self.cfg.steps if self.cfg.steps is not None else self.cfg.epochs * steps_per_epoch
        return max(1, budget // self.scheme.replays)

    def _forward_module(self) -> nn.Module:
        if self.dist.joined:
            return nn.parallel.DistributedDataParallel(
                self.method,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        return self.method

    def _check_finite(self, out: dict[str, torch.Tensor], step: int) -> bool:
        """Whether the loss is finite (on every rank: ranks skip or stop together, since a rank
        that skipped the backward would leave the others waiting in the gradient all-reduce)."""
        finite = torch.isfinite(out["loss"]).all()
        if self.dist.joined:
            flag = finite.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag.bool()
        if finite:
            return True
        parts = {
            k: v.item()
            for k, v in out.items()
            if k != "logits" and isinstance(v, torch.Tensor) and v.numel() == 1
        }
        bad = [k for k, v in parts.items() if not math.isfinite(v) and k != "loss"] or ["loss"]
        if math.isfinite(parts["loss"]):  # the all-reduce says another rank saw it
            message = f"non-finite loss at step {step + 1} on another rank (here: {parts})"
        else:
            message = (
                f"non-finite loss at step {step + 1}: "
                f"{', '.join(f'{k}={parts[k]}' for k in bad)} (all parts: {parts})"
            )
        if self.cfg.nan_policy == "skip":
            self.console_log(f"[yellow]skipping batch[/]: {message}")
            return False
        kept = (
            f"the last good checkpoint is kept in {self.run.root}"
            if self.run.state.exists()
            else f"it diverged before the first checkpoint, so {self.run.root} has none"
        )
        raise TrainingDiverged(
            f"{message}; {kept}",
            step + 1,
            parts,
            bad,
        )

    def _finite_gradients(self, step: int) -> bool:
        """With ``nan_policy=skip``: whether every gradient is finite. A finite loss can still
        have NaN gradients (sqrt at 0); stepping on them makes every later loss NaN and every
        later batch skipped, and the weights written at the end NaN."""
        grads = [p.grad for p in self.method.parameters() if p.grad is not None]
        if not grads or torch.stack([torch.isfinite(g).all() for g in grads]).all():
            return True
        self.console_log(f"[yellow]skipping batch[/]: non-finite gradients at step {step + 1}")
        return False

    def console_log(self, message: str) -> None:
        if self.dist.main:
            from rich.console import Console

            Console(stderr=True).log(message)

    # -------------------------------------------------------------- main loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg, run = self.cfg, self.run
        loader = self.loader()
        steps_per_epoch = len(loader)
        total = self.total_steps(steps_per_epoch)
        optimizer = build_optimizer(self.method, cfg)
        step = 0
        state: dict[str, Any] = {}
        if resume and run.state.exists():
            run.check_resume_config(cfg)
            state, ckpt = load_checkpoint(run, self.method, optimizer)
            step = state["step"]
            self.best = BestEpoch(**state.get("best", {}))
            if self.dist.main:
                run.remove_stale(keep=ckpt)
                run.truncate_metrics(step)
            self.console_log(f"resumed {run.root} at step {step}/{total}")
        elif self.dist.main:
            run.reset()
            config_text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            io.atomic_write_bytes(run.config, config_text.encode())
            io.write_json(run.root / "provenance.json", provenance())
        if self.dist.main:
            for line in self.method.startup_warnings(total, self.data.train.image_shape):
                self.console_log(f"warning: {line}")
            slow = emulated_bf16_warning(self.precision, self.device)
            if slow:
                self.console_log(f"warning: {slow}")
        segments = precision_segments(state.get("precision_segments"), step, self.precision)
        if len(segments) > 1 and segments[-1]["from_step"] == step:
            self.console_log(
                f"warning: this run computed in {segments[-2]['precision']} up to step {step}; "
                f"precision {cfg.precision} is {self.precision} on this machine, so it goes on in "
                f"{self.precision} (results.json records both: run.precision_segments)"
            )
        if cfg.compile:
            for module in self.method.compile_targets():
                module.compile()
        tensorboard = ScalarLog(run.root, self.dist.main and cfg.tensorboard, step or None)
        log = MetricsLog(run.metrics, self.dist.main, tensorboard)
        forward = self._forward_module()
        scaler = (
            torch.amp.GradScaler("cuda")
            if self.precision == "amp" and self.device.type == "cuda"
            else None
        )
        if scaler is not None and isinstance(state.get("grad_scaler"), dict):
            scaler.load_state_dict(state["grad_scaler"])  # the loss scale goes on where it was
        train_seconds = float(state.get("train_seconds", 0.0))
        epoch_metrics = state.get("epoch_metrics")  # running averages of a mid-epoch checkpoint
        self.method.train()

        with self._progress(total, step) as advance:
            while step < total:
                epoch, index = divmod(step, steps_per_epoch)
                batches = loader.batches(epoch, start=index)
                metrics = (
                    RunningMetrics.from_state(epoch_metrics, self.device)
                    if epoch_metrics and index > 0
                    else RunningMetrics()
                )
                epoch_metrics = None
                epoch_start, epoch_images = time.perf_counter(), 0
                for x, y in batches:
                    if step >= total:
                        break
                    self._train_step(forward, optimizer, scaler, x, y, step, total, metrics)
                    epoch_images += x.shape[0] * self.dist.world_size
                    step += 1
                    advance(metrics)
                    if step % cfg.log_every == 0:
                        log.write(
                            {
                                "step": step,
                                "epoch": epoch,
                                **metrics.summary(),
                                "lr": optimizer.param_groups[0]["lr"],
                            }
                        )
                    at_epoch_end = step % steps_per_epoch == 0 or step == total
                    if at_epoch_end or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                        if self.device.type == "cuda":  # time the work, not its queueing
                            torch.cuda.synchronize(self.device)
                        seconds = time.perf_counter() - epoch_start
                        train_seconds += seconds
                        if at_epoch_end:
                            record = {
                                "epoch": epoch + 1,
                                "step": step,
                                **metrics.summary(),
                                "lr": optimizer.param_groups[0]["lr"],
                                "img_per_s": epoch_images / max(seconds, 1e-9),
                                "train_seconds": train_seconds,
                                **self.method.epoch_log(),
                                **self.select_epoch(),
                            }
                            log.write(record)
                            self.console_log(_epoch_line(record))
                        if self.dist.main:
                            save_checkpoint(
                                run,
                                self.method,
                                optimizer,
                                step,
                                {
                                    "total_steps": total,
                                    "train_seconds": train_seconds,
                                    "finished": step >= total,
                                    "epoch_metrics": None if at_epoch_end else metrics.state_dict(),
                                    "best": asdict(self.best),
                                    "precision_segments": segments,
                                    **(
                                        {}
                                        if scaler is None
                                        else {"grad_scaler": scaler.state_dict()}
                                    ),
                                },
                            )
                        if self.dist.joined:
                            dist.barrier()
                        epoch_start, epoch_images = time.perf_counter(), 0
        log.close()
        return self.finish(train_seconds, segments)

    def _train_step(
        self,
        forward: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        step: int,
        total: int,
        metrics: RunningMetrics,
    ) -> None:
        torch.manual_seed(step_seed(self.cfg.seed, step, self.dist.rank))
        set_learning_rates(optimizer, lr_factor(step, total, self.cfg))
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Skipping a batch also undoes what its forward did to buffers (BN running statistics).
        skipping = self.cfg.nan_policy == "skip"
        buffers = list(self.method.buffers()) if skipping else []
        good = [b.detach().clone() for b in buffers]
        with autocast_context(self.precision, self.device):
            for out in self.scheme.steps(self.method, x, y, forward=forward):
                optimizer.zero_grad(set_to_none=True)
                skip = not self._check_finite(out, step)
                if not skip:
                    fault_point("step", step + 1, self.dist.rank)
                    if scaler is not None:
                        scaler.scale(out["loss"]).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        out["loss"].backward()
                        skip = skipping and not self._finite_gradients(step)
                        if not skip:
                            optimizer.step()
                if skip:
                    metrics.skipped += 1
                    with torch.no_grad():
                        for buffer, value in zip(buffers, good, strict=True):
                            buffer.copy_(value)
                    continue
                self.method.after_step()
                metrics.add(out, y)
                good = [b.detach().clone() for b in buffers]

    def select_epoch(self) -> dict[str, float]:
        """Score the epoch just finished for ``select_best`` (main rank) and keep its weights
        when it is the best so far; the score for the epoch's log record."""
        criterion = self.cfg.select_best
        if criterion is None or not self.dist.main:
            return {}
        assert self.data.val is not None  # config validation requires val_fraction > 0
        score = selection_score(self.method, self.data.val, criterion)
        self.method.train()
        if self.best.update(score):
            io.save_tensors(self.run.best_weights, self.method.state_dict())
        return {f"val_{criterion}": score}

    @contextlib.contextmanager
    def _progress(self, total: int, start: int) -> Iterator[Any]:
        with progress_task("train", total, start, self.cfg.progress and self.dist.main) as step:

            def advance(metrics: RunningMetrics) -> None:
                if metrics.count % 10 == 0:
                    summary = metrics.summary()
                    loss, acc = summary.get("loss", float("nan")), summary.get("train_acc", 0.0)
                    step(info=f"loss {loss:.3f} acc {acc:.3f}")
                else:
                    step()

            yield advance

    def finish(self, train_seconds: float, segments: list[dict[str, Any]]) -> dict[str, Any]:
        """Save the final weights and evaluate the test split into results.json."""
        run, cfg = self.run, self.cfg
        if not self.dist.main:
            return {}
        io.save_tensors(run.weights, self.method.state_dict(), metadata=data_metadata(self.data))
        fault_point("final_weights")
        start = time.perf_counter()
        results = self.evaluate_test(shift=True)
        if not self.data.train.multilabel:
            with torch.compiler.set_stance("force_eager"):
                results["train"] = train_fit(as_eval_model(self.method), self.data.train)
        if cfg.select_best is not None:
            results["best_epoch"] = self.evaluate_best()
        results["run"]["precision"] = recorded_precision(segments)
        results["run"]["precision_segments"] = segments
        results["run"]["train_seconds"] = train_seconds
        results["run"]["eval_seconds"] = time.perf_counter() - start
        fault_point("eval")
        io.write_json(run.results, results)
        if not cfg.keep_checkpoint:  # a lean run directory: the final weights only
            run.drop_checkpoints()
        self.console_log(f"clean test accuracy {results['clean']['accuracy']:.4f} -> {run.results}")
        return results

    def evaluate_test(self, shift: bool, n_aa: int | None = None) -> dict[str, Any]:
        """The config's evaluation of the current weights on the test split (+ shift sets;
        ``n_aa`` overrides the config's AutoAttack subset, 0: none)."""
        cfg = self.cfg
        # Evaluate eager and in fp32 (no autocast is active here): attacks see exact gradients,
        # and the many eval shapes/modes do not trigger a recompilation of every node.
        with torch.compiler.set_stance("force_eager"):
            if self.data.test.multilabel:  # the attack suite assumes single labels
                return evaluate_multilabel(self.method, self.data.test, run=run_info(cfg))
            return evaluate(
                self.method,
                self.data.test,
                suite=cfg.eval_suite or "clean",
                n=cfg.eval_n,
                n_aa=cfg.eval_n_aa if n_aa is None else n_aa,
                shift=(default_shift_sets(cfg, len(self.data.test)) if shift else None) or None,
                run=run_info(cfg),
            )

    def evaluate_best(self) -> dict[str, Any]:
        """``results["best_epoch"]``: the selection record, and the test evaluation of the best
        epoch's weights when that is not the last epoch (``None``: the last is the best)."""
        assert self.data.val is not None
        best, path = self.best, self.run.best_weights
        entry: dict[str, Any] = {
            "criterion": self.cfg.select_best,
            "n_val": len(self.data.val),
            **asdict(best),
            "last_epoch": len(best.scores),
            "evaluation": None,
        }
        if best.epoch != len(best.scores):
            io.load_state_into(self.method, io.load_tensors(path), path)
            best_results = self.evaluate_test(shift=False, n_aa=0)
            entry["evaluation"] = {k: v for k, v in best_results.items() if k not in ("run",)}
            io.load_state_into(self.method, io.load_tensors(self.run.weights), self.run.weights)
        return entry


def _epoch_line(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}"]
    parts += [
        f"{k} {v:.4f}"
        for k, v in record.items()
        if k.startswith(("loss", "val_")) or k == "train_acc"
    ]
    parts.append(f"{record['img_per_s']:.0f} img/s")
    return "  ".join(parts)


def train(
    cfg: TrainConfig, out: str | Path, resume: bool = False, data: DataSplits | None = None
) -> dict[str, Any]:
    """Train ``cfg`` into run directory ``out`` (resuming from its last checkpoint if asked)."""
    with deterministic_algorithms(cfg.deterministic):
        trainer = Trainer.create(cfg, out, data, resume)
        try:
            return trainer.fit(resume=resume)
        finally:
            trainer.run.release()
            if trainer.dist.joined and dist.is_initialized():
                dist.destroy_process_group()
