"""Gradient-masking checks (Athalye et al. 2018; Carlini et al. 2019; AutoAttack's checks).

Each check returns named flags ``{"name", "detail", "values"}`` with the numbers behind them;
the evaluator writes every flag into results.json -- never silent. Comparisons between attacks
allow ``tolerance(n) = max(1%, 3/n)`` of slack, since independent random starts differ by a few
samples.

Flags: ``randomized_model``, ``probability_outputs``, ``zero_gradients``, ``nan_gradients``,
``accuracy_not_monotonic_in_eps``, ``not_broken_at_large_eps``, ``pgd_weaker_than_fgsm``,
``more_steps_raised_accuracy``, ``more_restarts_raised_accuracy``,
``black_box_beats_white_box``, ``adaptive_attack_stronger``.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from ..losses import ce_loss, cw_loss
from ..runtime import model_mode

LARGE_EPS_MAX_ACCURACY = 0.05
ZERO_GRADIENT_MAX_FRACTION = 0.01
WHITE_BOX = ("pgd", "cw", "apgd_ce", "apgd_t", "fab_t", "autoattack")


def tolerance(n: int) -> float:
    return max(0.01, 3.0 / max(n, 1))


def flag(name: str, detail: str, **values: Any) -> dict[str, Any]:
    return {"name": name, "detail": detail, "values": values}


# ------------------------------------------------------------------ model-level checks
@torch.no_grad()
def output_checks(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Randomness of the eval-mode forward, and outputs that look like probabilities."""
    with model_mode(model, "eval"):
        a, b = model(x).float(), model(x).float()
    max_diff = ((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)).max().item()
    looks_like_probs = bool(
        a.min() >= -1e-5 and a.max() <= 1 + 1e-5 and ((a.sum(1) - 1).abs() < 1e-4).all()
    )
    stats = {
        "repeat_forward_max_rel_diff": max_diff,
        "outputs_look_like_probabilities": looks_like_probs,
    }
    flags = []
    if max_diff > 1e-4:
        flags.append(
            flag(
                "randomized_model",
                "two eval-mode forwards of the same batch differ: "
                "a randomized defence needs EOT attacks",
                max_rel_diff=max_diff,
            )
        )
    if looks_like_probs:
        flags.append(
            flag(
                "probability_outputs",
                "the model outputs probabilities, not logits: "
                "softmax saturation can hide gradients",
                n=x.shape[0],
            )
        )
    return stats, flags


def gradient_checks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Input-gradient statistics of the CE and CW losses on a batch (eval mode)."""
    stats: dict[str, Any] = {"n": int(x.shape[0])}
    flags = []
    with model_mode(model, "eval"):
        for name, fn in (("ce", ce_loss), ("cw", cw_loss)):
            x_in = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(model(x_in), y).sum(), x_in)
            flat = grad.flatten(1).double()
            finite = torch.isfinite(flat).all(1)
            norms = flat.nan_to_num(0.0).norm(dim=1)
            stats[name] = {
                "fraction_zero": (norms == 0).double().mean().item(),
                "fraction_nonfinite": (~finite).double().mean().item(),
                "median_l1_norm": flat.nan_to_num(0.0).abs().sum(1).median().item(),
            }
    zero = {k: stats[k]["fraction_zero"] for k in ("ce", "cw")}
    if max(zero.values()) > ZERO_GRADIENT_MAX_FRACTION:
        flags.append(
            flag(
                "zero_gradients",
                f"input gradients are exactly zero for "
                f"{zero['ce']:.1%} (CE) / {zero['cw']:.1%} (CW) of samples: gradient attacks "
                "cannot move them",
                fraction_zero_ce=zero["ce"],
                fraction_zero_cw=zero["cw"],
            )
        )
    nonfinite = {k: stats[k]["fraction_nonfinite"] for k in ("ce", "cw")}
    if max(nonfinite.values()) > 0:
        flags.append(flag("nan_gradients", "input gradients contain NaN / inf", **nonfinite))
    return stats, flags


# ------------------------------------------------------------------ attack-comparison checks
def sweep_checks(sweep: list[dict[str, float]], n: int, large_eps: float) -> list[dict[str, Any]]:
    """Robust accuracy must not rise with eps and must reach ~0 at ``large_eps``."""
    flags = []
    tol = tolerance(n)
    points = sorted(sweep, key=lambda p: p["eps"])
    rises = [(a, b) for a, b in itertools.pairwise(points) if b["accuracy"] > a["accuracy"] + tol]
    if rises:
        a, b = rises[0]
        flags.append(
            flag(
                "accuracy_not_monotonic_in_eps",
                f"PGD accuracy rose from {a['accuracy']:.3f} at eps {a['eps']:.4f} to "
                f"{b['accuracy']:.3f} at eps {b['eps']:.4f} (tolerance {tol:.3f})",
                sweep=points,
                tolerance=tol,
            )
        )
    large = [p for p in points if abs(p["eps"] - large_eps) < 1e-9]
    if large and large[0]["accuracy"] > LARGE_EPS_MAX_ACCURACY:
        flags.append(
            flag(
                "not_broken_at_large_eps",
                f"accuracy {large[0]['accuracy']:.3f} under PGD at eps {large_eps} (every "
                f"image can reach mid-grey); expected <= {LARGE_EPS_MAX_ACCURACY}",
                eps=large_eps,
                accuracy=large[0]["accuracy"],
            )
        )
    return flags


def _threat(rec: dict[str, Any]) -> tuple[str, float]:
    return rec["norm"], round(rec["eps"], 9)


def comparison_checks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Compare attack records (dicts with name, label, norm, eps, steps, loss, restarts, accuracy,
    n, stages) within each threat model."""
    flags = []
    by_threat: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for rec in records:
        by_threat.setdefault(_threat(rec), []).append(rec)
    for group in by_threat.values():
        fgsm = [r for r in group if r["name"] == "fgsm" and r.get("kind") != "adaptive"]
        white = [r for r in group if r["name"] in WHITE_BOX and r.get("kind") != "adaptive"]
        for f in fgsm:
            for w in white:
                if w["name"] in ("pgd", "cw") and w["accuracy"] > f["accuracy"] + tolerance(
                    min(w["n"], f["n"])
                ):
                    flags.append(
                        flag(
                            "pgd_weaker_than_fgsm",
                            f"{w['label']} accuracy {w['accuracy']:.3f} > FGSM {f['accuracy']:.3f}",
                            pgd=w["label"],
                            pgd_accuracy=w["accuracy"],
                            fgsm_accuracy=f["accuracy"],
                        )
                    )
        pgds = [r for r in group if r["name"] == "pgd" and r.get("kind") != "adaptive"]
        for a, b in itertools.permutations(pgds, 2):
            if a["loss"] != b["loss"] or b["accuracy"] <= a["accuracy"] + tolerance(
                min(a["n"], b["n"])
            ):
                continue
            for more, fixed in (("steps", "restarts"), ("restarts", "steps")):
                if a[fixed] == b[fixed] and b[more] > a[more]:
                    flags.append(
                        flag(
                            f"more_{more}_raised_accuracy",
                            f"{b['label']} ({b[more]} {more}) accuracy {b['accuracy']:.3f} > "
                            f"{a['label']} ({a[more]} {more}) {a['accuracy']:.3f}",
                            fewer=a["label"],
                            more=b["label"],
                        )
                    )
        flags += _black_box_flags(group)
        adaptive = [r for r in group if r.get("kind") == "adaptive"]
        standard = [r for r in white + fgsm if r["n"] > 0]
        if adaptive and standard:
            best_adaptive = min(adaptive, key=lambda r: r["accuracy"])
            best_standard = min(standard, key=lambda r: r["accuracy"])
            if best_adaptive["accuracy"] < best_standard["accuracy"] - tolerance(
                best_adaptive["n"]
            ):
                flags.append(
                    flag(
                        "adaptive_attack_stronger",
                        f"adaptive {best_adaptive['label']} "
                        f"({best_adaptive['accuracy']:.3f}) beats "
                        f"every standard attack (best {best_standard['label']} "
                        f"{best_standard['accuracy']:.3f}): robustness to standard attacks "
                        "overstates the defence",
                        adaptive=best_adaptive["label"],
                        standard=best_standard["label"],
                    )
                )
    return flags


def _black_box_flags(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flags = []
    white = [r for r in group if r["name"] in WHITE_BOX and r["name"] != "autoattack"]
    for sq in (r for r in group if r["name"] == "square"):
        if white:
            best = min(white, key=lambda r: r["accuracy"])
            if sq["accuracy"] < best["accuracy"] - tolerance(min(sq["n"], best["n"])):
                flags.append(
                    flag(
                        "black_box_beats_white_box",
                        f"Square {sq['accuracy']:.3f} < best white-box {best['label']} "
                        f"{best['accuracy']:.3f}",
                        square=sq["accuracy"],
                        white_box=best["accuracy"],
                    )
                )
    for aa in (r for r in group if r["name"] == "autoattack" and "square" in r.get("stages", {})):
        stages = aa["stages"]
        before = min(v for k, v in stages.items() if k != "square")
        if stages["square"] < before - max(0.002, 0.5 / max(aa["n"], 1)):  # AutoAttack's check
            flags.append(
                flag(
                    "black_box_beats_white_box",
                    f"inside AutoAttack, Square lowered the accuracy left by APGD/FAB from "
                    f"{before:.3f} to {stages['square']:.3f}",
                    before=before,
                    after=stages["square"],
                )
            )
    return flags
