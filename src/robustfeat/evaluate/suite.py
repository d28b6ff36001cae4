"""Running an evaluation suite (``robustfeat.attacks.suites``) on a method or model into a results
dict (``records.py`` holds its schema).

``evaluate(method_or_model, data, suite, n=...)`` runs: clean accuracy on the whole test set;
each attack on the first ``n`` (AutoAttack: ``n_aa``) samples of a fixed seeded permutation of
the test set; the method's adaptive losses; the per-sample worst case over the suite's main
threat model; gradient-masking checks (flags); common corruptions; distribution-shift sets.
Eps is in pixel units of [0, 1] images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import io
from ..attacks import checks
from ..attacks.adaptive import adaptive_attacks, worst_case
from ..attacks.base import Attack, create_attack
from ..attacks.suites import LARGE_EPS, AttackSpec, Suite, get_suite
from ..data.base import ImageDataset
from ..data.loader import iterate_batches
from ..errors import ConfigError
from ..methods._base import Method
from ..progress import progress_task
from ..runtime import model_mode
from .accuracy import (
    as_eval_model,
    clean_accuracy,
    fraction,
    model_device,
    per_class_accuracy,
    predict,
    topk_correct,
)
from .records import SCHEMA


def _summary(
    correct: dict[str, torch.Tensor], y: torch.Tensor, dataset: ImageDataset, suite: Suite
) -> dict[str, Any]:
    out: dict[str, Any] = {"accuracy": fraction(correct["1"]), "n": int(y.numel())}
    if suite.topk != (1,):
        out["topk"] = {k: fraction(v) for k, v in correct.items()}
    if suite.per_class:
        out["per_class"] = per_class_accuracy(correct["1"], y, dataset.class_names)
    return out


# ------------------------------------------------------------------ progress
class Progress:
    """A progress display per evaluation part (``progress.progress_task``), or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def task(self, label: str, total: int) -> contextlib.AbstractContextManager[Any]:
        return progress_task(label, total, enabled=self.enabled)


# ------------------------------------------------------------------ running one attack
@dataclasses.dataclass
class AttackRecord:
    correct: dict[str, torch.Tensor]  # k -> bool (n,) label in top-k on x_adv
    stages: dict[str, torch.Tensor]  # composite attacks: stage -> bool (n,) robust after it
    seconds: float


def run_attack(
    model: nn.Module,
    attack: Attack,
    dataset: ImageDataset,
    batch_size: int,
    ks: tuple[int, ...],
    progress: Progress,
    label: str,
) -> AttackRecord:
    """Attack every sample of ``dataset`` (labels = the targets to keep) in batches."""
    device = model_device(model)
    correct: dict[str, list[torch.Tensor]] = {str(k): [] for k in ks}
    stages: dict[str, list[torch.Tensor]] = {}
    start = time.perf_counter()
    with progress.task(label, len(dataset)) as advance:
        for x, y in iterate_batches(dataset, batch_size, device):
            out = attack.run(model, x, y)
            with torch.no_grad(), model_mode(model, "eval"):
                logits = model(out.x_adv).float()
            for k, v in topk_correct(logits, y, ks).items():
                correct[k].append(v.cpu())
            for k, v in out.stages.items():
                stages.setdefault(k, []).append(v.cpu())
            advance(x.shape[0])
    return AttackRecord(
        {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.bool) for k, v in correct.items()},
        {k: torch.cat(v) for k, v in stages.items()},
        time.perf_counter() - start,
    )


def label_seed(seed: int, label: str) -> int:
    """A per-attack seed: independent random starts for different attacks, reproducible."""
    return (seed * 1_000_003 + int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)) % (2**31)


# ------------------------------------------------------------------ the evaluator
@dataclasses.dataclass
class Evaluation:
    model: nn.Module
    method: Method | None
    test: ImageDataset
    suite: Suite
    n: int
    n_aa: int
    batch_size: int
    seed: int
    progress: Progress
    flags: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    correct: dict[str, torch.Tensor] = dataclasses.field(
        default_factory=dict
    )  # label -> top-1 (prefix)
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    clean_correct: torch.Tensor | None = None  # top-1 on clean images vs the targets, test order

    def permutation(self) -> torch.Tensor:
        """The fixed seeded order of the test set whose prefixes the attacks run on."""
        return torch.randperm(len(self.test), generator=torch.Generator().manual_seed(self.seed))

    def clean_on_subset(self, size: int) -> torch.Tensor:
        """Clean top-1 correctness on the first ``size`` samples of the permutation."""
        assert self.clean_correct is not None
        return self.clean_correct[self.permutation()[:size]]

    def subset(self, size: int, targets: torch.Tensor) -> ImageDataset:
        """The first ``size`` samples of the fixed permutation, labelled with the attack targets."""
        perm = self.permutation()[:size]
        sub = self.test.subset(perm)
        return dataclasses.replace(sub, labels=targets[perm])

    def attack(
        self,
        spec_label: str,
        attack: Attack,
        dataset: ImageDataset,
        kind: str,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        rec = run_attack(
            self.model, attack, dataset, self.batch_size, self.suite.topk, self.progress, spec_label
        )
        summary = _summary(rec.correct, dataset.labels, dataset, self.suite)
        entry = {
            "label": spec_label,
            **attack.describe(),
            "kind": kind,
            **summary,
            "seconds": rec.seconds,
            **(extra or {}),
        }
        if rec.stages:
            entry["stages"] = {k: fraction(v) for k, v in rec.stages.items()}
        self.correct[spec_label] = rec.correct["1"]
        self.records.append(entry)
        return entry

    def make_attack(self, spec: AttackSpec) -> Attack:
        return create_attack(
            spec.attack, **{"seed": label_seed(self.seed, spec.label), **spec.params}
        )


def evaluate(
    method_or_model: Method | nn.Module,
    data: Any,
    suite: str | Suite = "clean",
    n: int | None = None,
    run: dict[str, Any] | None = None,
    *,
    n_aa: int | None = None,
    batch_size: int = 250,
    seed: int = 0,
    corruptions_dir: str | Path | None = None,
    n_corruptions: int = 1000,
    corruption_reference: Mapping[str, list[float]] | None = None,
    shift: Mapping[str, ImageDataset] | None = None,
    progress: bool = True,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate on ``data`` (the test ``ImageDataset``, or anything with a ``.test`` split) with
    ``suite`` and return the results dict (see the module docstring); write it to ``out`` if given.

    ``n``: size of the attacked subset (default: the suite's; clean accuracy always uses the whole
    test set); ``n_aa``: AutoAttack / slow-attack subset (a prefix of it); ``seed``: the subset
    permutation and the attacks' random starts; ``corruptions_dir``: released CIFAR-10-C /
    CIFAR-100-C ``.npy`` files (else generated on ``n_corruptions`` test images);
    ``corruption_reference``: per-corruption reference errors (e.g. AlexNet's) for the
    ImageNet-style normalised mCE; ``shift``: extra named test sets (distribution shift).
    """
    start = time.perf_counter()
    spec = get_suite(suite) if isinstance(suite, str) else suite
    test = getattr(data, "test", data)
    if not isinstance(test, ImageDataset):
        raise ConfigError(
            f"evaluate needs an ImageDataset (or splits with .test), got {type(data).__name__}"
        )
    if len(test) == 0:
        raise ConfigError("the test set is empty")
    for name, value in (("n", n), ("n_aa", n_aa)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    model = as_eval_model(method_or_model)
    method = method_or_model if isinstance(method_or_model, Method) else None
    n_eff = min(len(test), n if n is not None else (spec.n or len(test)))
    if n_eff == 0 and (spec.attacks or spec.adaptive):
        raise ConfigError(
            f"n=0 attacks no image, so suite {spec.name!r} would report no robust accuracy; "
            "use n >= 1, or the clean suite for clean accuracy alone"
        )
    n_aa_eff = min(n_eff, n_aa if n_aa is not None else spec.n_aa)
    ev = Evaluation(
        model, method, test, spec, n_eff, n_aa_eff, batch_size, seed, Progress(progress)
    )

    results: dict[str, Any] = {
        "schema": SCHEMA,
        "run": run or {},
        "suite": spec.name,
        "suite_description": spec.description,
    }
    # ---- clean, on the whole test set
    t0 = time.perf_counter()
    logits = predict(model, test, batch_size)
    clean_correct = topk_correct(logits, test.labels, spec.topk)
    results["clean"] = {
        **_summary(clean_correct, test.labels, test, spec),
        "seconds": time.perf_counter() - t0,
    }
    targets = logits.argmax(1) if spec.labels == "predicted" else test.labels
    ev.clean_correct = logits.argmax(1) == targets
    results["labels"] = spec.labels

    # ---- attacks on the fixed subsets
    subsets = {"n": ev.subset(n_eff, targets), "n_aa": ev.subset(n_aa_eff, targets)}
    results["subsets"] = {"seed": seed, "n": n_eff, "n_aa": n_aa_eff}
    for attack_spec in spec.attacks:
        dataset = subsets[attack_spec.subset]
        if len(dataset):
            ev.attack(attack_spec.label, ev.make_attack(attack_spec), dataset, "standard")

    # ---- adaptive attacks from the method's own losses
    losses = method.attack_losses() if method is not None else {}
    if losses and spec.adaptive and n_eff:
        table = []
        for template in spec.adaptive:
            params = {
                "attack": template.attack,
                **template.params,
                "seed": label_seed(seed, template.label),
            }
            for loss_name, attack in adaptive_attacks(method, params).items():
                label = f"{template.label}[{loss_name}]"
                entry = ev.attack(
                    label, attack, subsets["n"], "adaptive", {"template": template.label}
                )
                table.append(
                    {"template": template.label, "loss": loss_name, "accuracy": entry["accuracy"]}
                )
        results["adaptive"] = {"losses": list(losses), "table": table}

    # ---- worst case over the main threat model
    results["worst_case"] = _worst_case(ev, results)

    # ---- gradient-masking checks
    results["checks"] = _run_checks(ev, subsets["n"])
    ev.flags += checks.comparison_checks(ev.records)
    results["attacks"] = ev.records

    # ---- common corruptions
    if spec.corruptions:
        from ..corruptions import evaluate_corruptions

        results["corruptions"] = evaluate_corruptions(
            model,
            test,
            n=n_corruptions,
            source_dir=corruptions_dir,
            seed=seed,
            batch_size=batch_size,
            reference=corruption_reference,
            progress=ev.progress.enabled,
        )
    # ---- CAM quality against ground-truth object masks (shapes, mosaics)
    if spec.cam and test.masks is not None:
        from ..interpret.metrics import cam_quality

        results["cam"] = cam_quality(method_or_model, test, n=spec.n_cam)
    # ---- distribution shift
    if shift:
        results["shift"] = {}
        for name, dataset in shift.items():
            acc = clean_accuracy(model, dataset, batch_size)
            results["shift"][name] = {
                "accuracy": acc,
                "n": len(dataset),
                "drop": results["clean"]["accuracy"] - acc,
            }

    results["flags"] = ev.flags
    results["seconds"] = time.perf_counter() - start
    if out is not None:
        io.write_json(Path(out), results)
    return results


def _worst_case(ev: Evaluation, results: dict[str, Any]) -> dict[str, Any]:
    """Per-sample minimum over the attacks of the suite's main threat model (the norm and eps of
    its first attack) and the clean prediction (a sample counts as robust only if it is also
    classified right unattacked, so the worst case never exceeds clean accuracy on the same
    samples, ``clean_accuracy``); headline on the samples every such attack ran on (the
    AutoAttack subset when it ran), plus the larger subset without the slow attacks."""
    if not ev.records:
        clean = results["clean"]
        return {"accuracy": clean["accuracy"], "n": clean["n"], "attack": "clean"}
    main = (ev.records[0]["norm"], round(ev.records[0]["eps"], 9))
    members = {
        r["label"]: ev.correct[r["label"]]
        for r in ev.records
        if (r["norm"], round(r["eps"], 9)) == main and r["n"] > 0
    }
    smallest = min(len(v) for v in members.values())
    clean = ev.clean_on_subset(smallest)
    out = {
        **worst_case({k: v[:smallest] & clean for k, v in members.items()}),
        "clean_accuracy": fraction(clean),
        "norm": main[0],
        "eps": main[1],
    }
    largest = max(len(v) for v in members.values())
    if largest > smallest:
        clean = ev.clean_on_subset(largest)
        wide = {k: v & clean for k, v in members.items() if len(v) == largest}
        out["larger_subset"] = {k: worst_case(wide)[k] for k in ("accuracy", "n", "attack")}
        out["larger_subset"]["clean_accuracy"] = fraction(clean)
    return out


def _run_checks(ev: Evaluation, dataset: ImageDataset) -> dict[str, Any]:
    spec = ev.suite
    found: dict[str, Any] = {}
    if spec.gradient_check and len(dataset):
        x, y = next(
            iter(
                iterate_batches(
                    dataset.subset(torch.arange(min(len(dataset), 256))),
                    256,
                    model_device(ev.model),
                )
            )
        )
        found["outputs"], flags = checks.output_checks(ev.model, x)
        ev.flags += flags
        found["gradients"], flags = checks.gradient_checks(ev.model, x, y)
        ev.flags += flags
    if spec.sweep and len(dataset):
        size = min(len(dataset), spec.n_sweep)
        sub = dataset.subset(torch.arange(size))
        t0 = time.perf_counter()
        points = []
        for eps in (*spec.sweep, LARGE_EPS):
            label = f"sweep_eps{eps:.4f}"
            attack = create_attack(
                "pgd",
                eps=eps,
                steps=spec.sweep_steps,
                step_size=2.5 * eps / spec.sweep_steps,
                seed=label_seed(ev.seed, label),
            )
            rec = run_attack(ev.model, attack, sub, ev.batch_size, (1,), ev.progress, label)
            points.append({"eps": eps, "accuracy": fraction(rec.correct["1"])})
        found["eps_sweep"] = {
            "attack": f"pgd{spec.sweep_steps}",
            "step_size": "2.5*eps/steps",
            "n": size,
            "points": points,
            "seconds": time.perf_counter() - t0,
        }
        ev.flags += checks.sweep_checks(points, size, LARGE_EPS)
    return found
