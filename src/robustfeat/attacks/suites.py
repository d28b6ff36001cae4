"""Evaluation suites as data: which attacks, on which subset, with which checks.

A suite is a ``Suite`` record in ``SUITES`` (``list_suites()``); the evaluator interprets it.
Attack parameters are pixel units of [0, 1] images. Choices not fixed by a paper, in one place:

- ``standard``: PGD-20 and PGD-100 use step 2/255 (eps/4), the most common CIFAR setting
  (Madry et al.'s released evaluation, TENET, ALFA); CW-30 keeps the papers' eps/10.
  Evaluation PGD uses early stopping at the first fooling iterate (never weaker).
- the eps sweep (gradient-masking check) runs PGD-20 with step 2.5 * eps / 20 (Madry et al.'s
  rule) at 1, 2, 4, 8, 16, 32 /255 and at ``LARGE_EPS`` = 0.5: from every image the attacker can
  reach the uniform mid-grey image, so the same image for every class -- a sound model cannot
  keep more than a few percent accuracy there (threshold in ``checks``).
- ``paper-*`` suites report the last PGD iterate, as the papers do (``early_stop=False``).
- the worst case combines the attacks of the suite's main threat model: the norm and eps of its
  first attack (other eps values, e.g. HNC's FGSM sweep, are reported but not combined).
- every attack gets its own seed (derived from its label), so "more steps / restarts must not
  raise accuracy" compares independent runs and has teeth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError, UnknownNameError

EPS = 8 / 255
LARGE_EPS = 0.5


@dataclass(frozen=True)
class AttackSpec:
    label: str  # unique within a suite, e.g. "pgd20"
    attack: str  # registry name
    params: dict[str, Any] = field(default_factory=dict)
    subset: Literal["n", "n_aa"] = "n"  # the attacked subset: first n (or n_aa) of the permutation


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    attacks: tuple[AttackSpec, ...] = ()
    # white-box templates attacked with each of the method's attack_losses()
    adaptive: tuple[AttackSpec, ...] = ()
    sweep: tuple[float, ...] = ()  # eps values of the PGD-20 gradient-masking sweep (+ LARGE_EPS)
    sweep_steps: int = 20
    gradient_check: bool = False
    topk: tuple[int, ...] = (1,)
    per_class: bool = False
    corruptions: bool = False
    cam: bool = False  # CAM quality (IoU, sparsity, peakiness, ERF) when the data has masks
    n_cam: int = 1000
    labels: Literal["true", "predicted"] = "true"  # "predicted": robust = prediction unchanged
    n: int | None = None  # default size of the attacked subset (None: the whole test set)
    n_aa: int = 500  # default AutoAttack subset (a prefix of the attacked subset)
    n_sweep: int = 500  # eps-sweep subset (a prefix of the attacked subset)


def _pgd(label: str, steps: int, step: float, eps: float = EPS, **kw: Any) -> AttackSpec:
    return AttackSpec(label, "pgd", {"eps": eps, "steps": steps, "step_size": step, **kw})


FGSM = AttackSpec("fgsm", "fgsm", {"eps": EPS})
CW30 = AttackSpec("cw30", "cw", {"eps": EPS, "steps": 30, "step_size": EPS / 10})
LAST = {"early_stop": False}  # the papers' PGD: the last iterate
AA = AttackSpec("autoattack", "autoattack", {"eps": EPS}, subset="n_aa")
SWEEP = (1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255)

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("clean", "clean accuracy on the whole test set"),
        Suite(
            "shapes",
            "shapes experiments: clean and per-class accuracy, CAM quality against the object "
            "masks (localisation IoU, L1 sparsity, negative-CAM peakiness, ERF distance)",
            per_class=True,
            cam=True,
        ),
        Suite(
            "quick",
            "demo scale, seconds on a tiny model: FGSM and PGD-10 at 8/255, the method's adaptive "
            "losses with PGD-10, a small eps sweep and the gradient checks",
            attacks=(FGSM, _pgd("pgd10", 10, 2 / 255)),
            adaptive=(_pgd("pgd10", 10, 2 / 255),),
            sweep=(2 / 255, 8 / 255, 32 / 255),
            sweep_steps=10,
            gradient_check=True,
            topk=(1, 2, 3),
            n=200,
            n_aa=0,
            n_sweep=100,
        ),
        Suite(
            "standard",
            "cpu scale: clean on the full test set; FGSM, PGD-20, CW-30, PGD-100, PGD-20 x3 "
            "restarts "
            "at 8/255 on n; AutoAttack (standard) on n_aa; the method's adaptive losses; "
            "top-1/2/3; "
            "per-class; generated CIFAR-10-C; eps sweep and gradient checks",
            attacks=(
                FGSM,
                _pgd("pgd20", 20, 2 / 255),
                CW30,
                _pgd("pgd100", 100, 2 / 255),
                _pgd("pgd20x3", 20, 2 / 255, restarts=3),
                AA,
            ),
            adaptive=(_pgd("pgd20", 20, 2 / 255),),
            sweep=SWEEP,
            gradient_check=True,
            topk=(1, 2, 3),
            per_class=True,
            corruptions=True,
            n=1000,
            n_aa=500,
            n_sweep=500,
        ),
        Suite(
            "paper-cifs",
            "CIFS (Yan et al. 2021, App. B.1): FGSM, PGD-20, CW-30, PGD-100 at 8/255 with step "
            "eps/10, "
            "AutoAttack on a subset, the beta_atk sweep via attack_losses for each attack, "
            "top-1/2/3 "
            "(Table 4), per-class robust accuracy (Fig. A.1)",
            attacks=(
                FGSM,
                _pgd("pgd20", 20, EPS / 10, **LAST),
                AttackSpec("cw30", "cw", {**CW30.params, **LAST}),
                _pgd("pgd100", 100, EPS / 10, **LAST),
                AA,
            ),
            adaptive=(
                FGSM,
                _pgd("pgd20", 20, EPS / 10, **LAST),
                _pgd("pgd100", 100, EPS / 10, **LAST),
            ),
            gradient_check=True,
            topk=(1, 2, 3),
            per_class=True,
            n_aa=2000,
        ),
        Suite(
            "paper-tenet",
            "TENET (Wu et al.), Tables 5-6: FGSM 8/255, PGD-7 4/255 and PGD-100 8/255 with step "
            "2/255, "
            "CIFAR-10-C mCE",
            attacks=(
                FGSM,
                _pgd("pgd7_4", 7, 2 / 255, eps=4 / 255, **LAST),
                _pgd("pgd100", 100, 2 / 255, **LAST),
            ),
            corruptions=True,
        ),
        Suite(
            "paper-hnc",
            "HNC (Sun et al. 2020), Table 5: FGSM at eps 0.05, 0.1, 0.2, 0.3 (read as pixel units "
            "of "
            "[0, 1] images; the paper does not say) and at 8/255",
            attacks=(
                FGSM,
                *(AttackSpec(f"fgsm_{e}", "fgsm", {"eps": e}) for e in (0.05, 0.1, 0.2, 0.3)),
            ),
        ),
        Suite(
            "paper-topgap",
            "Top-GAP (CIFAR-10, Table 4 / Sec. 4.3): robust = prediction unchanged; FGSM, PGD-20 "
            "and "
            "PGD-50 at 8/255 with Foolbox's LinfPGD step (eps/30, random start), APGD-CE with 20 "
            "iterations, Square (5000 queries) and AutoAttack on a subset",
            attacks=(
                FGSM,
                _pgd("pgd20", 20, EPS / 30, **LAST),
                _pgd("pgd50", 50, EPS / 30, **LAST),
                AttackSpec("apgd_ce20", "apgd_ce", {"eps": EPS, "steps": 20}, subset="n_aa"),
                AttackSpec("square", "square", {"eps": EPS}, subset="n_aa"),
                AA,
            ),
            labels="predicted",
        ),
        Suite(
            "paper-topgap-large",
            "Top-GAP on large images (Table 3): robust = prediction unchanged; FGSM and PGD-40 at "
            "1/255 (Foolbox's LinfPGD, step eps/30)",
            attacks=(
                AttackSpec("fgsm", "fgsm", {"eps": 1 / 255}),
                _pgd("pgd40", 40, 1 / 255 / 30, eps=1 / 255, **LAST),
            ),
            labels="predicted",
        ),
        Suite(
            "topgap-extra",
            "Top-GAP's extra attacks (Table 4 / Sec. 4.3) with true labels, to combine with "
            "standard: PGD-50 (step 2/255), APGD-CE with 20 iterations and Square (5000 "
            "queries) on the AutoAttack subset",
            attacks=(
                _pgd("pgd50", 50, 2 / 255),
                AttackSpec("apgd_ce20", "apgd_ce", {"eps": EPS, "steps": 20}, subset="n_aa"),
                AttackSpec("square", "square", {"eps": EPS}, subset="n_aa"),
            ),
        ),
        Suite(
            "paper-alfa",
            "ALFA (Qin et al.), robustness paragraph: PGD-20 at 8/255 with step 2/255",
            attacks=(_pgd("pgd20", 20, 2 / 255, **LAST),),
        ),
    )
}


def _union(specs: list[AttackSpec]) -> tuple[AttackSpec, ...]:
    """Attacks by label, the first suite's version of a label winning."""
    seen: dict[str, AttackSpec] = {}
    for spec in specs:
        seen.setdefault(spec.label, spec)
    return tuple(seen.values())


def combine(suites: list[Suite]) -> Suite:
    """One suite running every attack of several (``standard+paper-tenet``).

    The first suite fixes the main threat model (worst case), the subset sizes and the label
    mode; later suites add the attacks whose labels are new, eps-sweep points, top-k, per-class
    and corruptions.
    """
    first = suites[0]
    modes = {s.labels for s in suites}
    if len(modes) > 1:
        raise ConfigError(f"suites {[s.name for s in suites]} mix label modes {sorted(modes)}")
    return Suite(
        name="+".join(s.name for s in suites),
        description=" + ".join(s.description for s in suites),
        attacks=_union([a for s in suites for a in s.attacks]),
        adaptive=_union([a for s in suites for a in s.adaptive]),
        sweep=tuple(sorted({e for s in suites for e in s.sweep})),
        sweep_steps=first.sweep_steps,
        gradient_check=any(s.gradient_check for s in suites),
        topk=tuple(sorted({k for s in suites for k in s.topk})),
        per_class=any(s.per_class for s in suites),
        corruptions=any(s.corruptions for s in suites),
        cam=any(s.cam for s in suites),
        n_cam=first.n_cam,
        labels=first.labels,
        n=first.n,
        n_aa=first.n_aa,
        n_sweep=first.n_sweep,
    )


def get_suite(name: str) -> Suite:
    """A suite by name, or several joined with ``+`` (see ``combine``)."""
    parts = name.split("+")
    unknown = [p for p in parts if p not in SUITES]
    if unknown:
        raise UnknownNameError(
            f"unknown evaluation suite {unknown[0]!r}; valid: {', '.join(SUITES)} "
            "(or several joined with +, e.g. standard+paper-tenet)"
        )
    return SUITES[name] if len(parts) == 1 else combine([SUITES[p] for p in parts])


def list_suites() -> list[str]:
    return list(SUITES)
