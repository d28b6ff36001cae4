"""ALFA and L-ALFA: adversarial feature augmentation ("ALFA: Adversarial Feature Augmentation for
Enhanced Image Recognition", anonymous ICLR 2021 submission, later A-FAN by Chen et al.).

ALFA trains on the clean batch and, for each chosen *site* (a node's output, or a normalization
layer's output inside a block), on the features at that site pushed by a PGD perturbation found in
feature space (Eq. 3-4). L-ALFA scales each site's perturbation by a learned magnitude eta_i, with
an l1 penalty and a projection of eta after each optimizer step (Eq. 5, Algorithm 1).

How a step runs (sites are perturbed *separately*, one perturbation and one forward each, as in
Eq. 3's sum of maxima and the official L-ALFA code), in the official order (``bn_order=
"official"``, the default):

1. per site, in order: a clean forward up to the site without gradient (the features where its
   suffix starts), then delta by ``steps`` sign-gradient ascent steps of size ``alpha`` on the CE
   of the logits computed from the site through the rest of the net (``run_from``); the features
   are detached, so the gradient stops at the perturbed layer; ``eps`` (None: unbounded, the
   paper's setting) bounds delta in L∞, ``random_init`` starts uniformly in that ball;
2. per site, the adversarial forward from the site with delta (L-ALFA: ``eta_i * delta``): L_at;
3. the clean forward of the whole net, last, so that each step's last BatchNorm running-statistics
   update comes from the clean batch, as in the official code (the weights' gradients do not
   depend on the order; the eval-mode statistics do).

``bn_order="clean_first"`` (the behaviour before issue 27, not official) runs the clean forward
first, keeping the features where the suffixes start, and every site reuses that prefix: one
clean prefix forward fewer per site, but the running statistics end each step on the perturbed
features.

Facts from the official code (VITA-Group/CV_A-FAN, ``Classification/``), where the paper is silent,
all defaults here:

- the model is in train mode while crafting: BN statistics see the adversarial features
  (``bn_mode="train"``; ``"eval"`` uses the running statistics instead);
- the loss is the *mean* of the clean and adversarial CE, ``(CE_clean + mean_i CE_at_i) / 2``:
  ``normalize=True`` computes ``(L_std + lam * mean_i L_at_i) / (1 + lam)``, which is that for the
  default ``lam=1``; ``normalize=False`` is Eq. (3) literally, ``L_std + lam * sum_i L_at_i``;
- the clean features are detached before they are perturbed, so L_at trains only the layers after
  the site (``detach_prefix=True``; ``False`` also back-propagates L_at into the prefix, as Eq. (3)
  read as a function of Theta^(i) suggests; its adversarial forwards then follow the clean one,
  whose prefix graph they need). At ALFA's default site, the last block's output (the paper's
  Tables 1-3), the suffix is only GAP + fc, so crafting costs almost nothing;
- no random start, no clipping (eps unbounded);
- L-ALFA's sites: 9, the stem and eight block outputs of ResNet-56s, the last block ("Block 9")
  included: ``granularity="official"`` (the default; mapped to other nets by relative depth, see
  ``official_sites``);
- L-ALFA: eta has its own SGD with lr 0.01, constant (no warm-up, no decay: the trainer leaves
  the group out of its schedule, ``eta_schedule=False``; ``True`` scales it like every group),
  no weight decay and the trainer's momentum; gamma = 1, PGD-3 with alpha = 1/255, and the
  perturbation is crafted without eta and scaled afterwards (Eq. 5 would craft at
  f + eta * delta: the same sign steps while eta > 0, but an eta of 0 would then get no gradient
  and stay 0).

Every remaining deliberate difference from the official code:

- eta starts at ones (the paper's Algorithm 1, ``eta_init=1.0``); the official code starts at
  1/r (``eta_init=1/9`` for its 9 sites);
- eta's projection: the official code projects onto the hyperplane {1'eta = 1}
  (``eta_constraint="hyperplane"``). The paper projects onto P "by the bisection method (Wang et
  al. 2019b)", the projection onto the probability simplex {eta >= 0, 1'eta = 1} of that paper (a
  hyperplane needs no bisection), so the default is ``"simplex"`` with our bisection. On the
  simplex, ||eta||_1 = 1 after each projection, and the projection is invariant to the uniform
  shift the l1 gradient adds while eta > 0: the penalty only acts on entries that reach zero
  (and, on the hyperplane, below zero);
- eta's SGD is a parameter group of the trainer's optimizer, so it has the trainer's momentum
  and Nesterov setting (official: its own SGD, momentum 0.9, no Nesterov);
- the official ALFA script's default site is the first stage's output (``--perturb_idx 13``,
  "layer1" in its run script); the paper's tables perturb the last block, our default;
- layer sites (``granularity="layer"``, Table 9's dim 20) are not in the official code: a
  ``FeatureSlot`` adds the perturbation after the normalization layer; the optimizer, the
  schedule (the official 200-iteration warm-up and 50/150 decay are the recipe's) and the data
  pipeline are the trainer's.

Granularity (Table 9 on ResNet-18: dim(eta) = 4, 9, 20) maps onto the stage contract as
``"stage"``: each stage's output (4 on ResNet-18, 3 on ResNet-20), ``"block"``: the stem and
every block output, i.e. after each skip connection (9 on ResNet-18, 10 on ResNet-20; pre-activation
nets add their final BN-ReLU node), ``"layer"``: every normalization layer's output inside the stem
and the blocks, i.e. the normalized feature after each convolution of a post-activation net (20 on
ResNet-18: 17 convolutions + 3 projection shortcuts; 19 on ResNet-20). ``"official"``: the
official code's 9 sites on ResNet-56, the nodes at the same relative depths elsewhere (every node
of ResNet-18, i.e. ``"block"``; 9 of ResNet-20's 10). Per-layer sites sit inside a
block, so they are ``FeatureSlot`` wrappers and their suffix is the rest of the net from the
block's input. Every site can also be named directly: ``nodes=["stage3.2", "stage2.1.conv2.1"]``.

Precision: under bf16 autocast the crafted perturbation stays float32, and the sum with the
features is float32; the next convolution rounds its input to bf16, which keeps the perturbation
only on average (a step of 0.5/255 is below bf16's spacing for features above ~0.5).
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import reads
from ..errors import ConfigError, check
from ..models.base import StagedModel
from ..nn.feature_slot import FeatureSlot
from ..runtime import model_mode
from ._base import Method
from ._registry import register_method

GRANULARITIES = ("official", "stage", "block", "layer")
BN_MODES = ("train", "eval")
BN_ORDERS = ("official", "clean_first")
# The official L-ALFA sites on ResNet-56s (main_learnable.py's perturb_idx_list 4, 8, ..., 31 of
# its flat layer list, minus the 4 layers before the first block): node indices out of 27 blocks.
OFFICIAL_SITE_DEPTHS = (0, 4, 7, 10, 14, 17, 20, 24, 27)
OFFICIAL_SITE_BLOCKS = 27
ETA_CONSTRAINTS = ("simplex", "hyperplane")
NORM_LAYERS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


# ------------------------------------------------------------------ the paper's equations
def feature_pgd_step(
    delta: torch.Tensor, grad: torch.Tensor, alpha: float, eps: float | None
) -> torch.Tensor:
    """One ascent step of Eq. (4): ``delta + alpha * sgn(grad)``, projected onto the L∞ ball of
    radius ``eps`` (``None``: unbounded, plain sign-gradient ascent as in the paper's runs)."""
    delta = delta + alpha * grad.sign()
    return delta if eps is None else delta.clamp(-eps, eps)


def alfa_loss(
    loss_std: torch.Tensor, losses_at: torch.Tensor, lam: float, normalize: bool
) -> torch.Tensor:
    """The objective of Eq. (3): ``L_std + lam * sum_i L_at_i`` (``normalize=False``), or the
    official code's weighted mean ``(L_std + lam * mean_i L_at_i) / (1 + lam)`` (``True``; the
    mean of clean and adversarial CE for lam = 1). ``losses_at``: one scalar per site."""
    if normalize:
        return (loss_std + lam * losses_at.mean()) / (1.0 + lam)
    return loss_std + lam * losses_at.sum()


def project_simplex(v: torch.Tensor, tol: float = 1e-12) -> torch.Tensor:
    """Euclidean projection onto the probability simplex {w >= 0, 1'w = 1} by bisection
    (Algorithm 1, line 5; the bisection of Wang et al. 2019b): the projection is
    ``max(v - mu, 0)`` with the threshold mu solving ``sum_i max(v_i - mu, 0) = 1``, a decreasing
    function of mu that is >= 1 at ``min(v) - 1/r`` and 0 at ``max(v)``."""
    w = v.detach().double().flatten()
    lo, hi = w.min() - 1.0 / w.numel(), w.max()
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if (w - mid).clamp_min(0).sum() > 1:
            lo = mid
        else:
            hi = mid
    return (w - (lo + hi) / 2).clamp_min(0).view_as(v).to(v.dtype)


def project_hyperplane(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto {w : 1'w = 1} (the official L-ALFA code): subtract the mean
    excess ``(1'v - 1) / r`` from every entry."""
    return v - (v.sum() - 1) / v.numel()


PROJECTIONS = {"simplex": project_simplex, "hyperplane": project_hyperplane}


# ------------------------------------------------------------------ perturbation sites
@dataclass(frozen=True)
class Site:
    """Where a perturbation is added: ``name``; the node whose output the suffix starts from
    (``resume``; None: the input image); the wrapper that adds it inside a block (``slot``; None:
    it is added to ``resume``'s output)."""

    name: str
    resume: str | None
    slot: FeatureSlot | None


@dataclass(frozen=True)
class _Layer:
    node_index: int
    node_module: nn.Module
    path: str  # inside the node module
    module: nn.Module


def _layer_modules(model: StagedModel) -> dict[str, _Layer]:
    """Every submodule inside the stem and the blocks by full name (``<node>.<path>``), except
    the inside of a ``FeatureSlot`` (the slot stands for its layer)."""
    layers = {}
    for index, (node, node_module) in enumerate(model._nodes):
        slots: list[str] = []
        for path, module in node_module.named_modules():
            if not path or any(path.startswith(s + ".") for s in slots):
                continue
            if isinstance(module, FeatureSlot):
                slots.append(path)
            layers[f"{node}.{path}"] = _Layer(index, node_module, path, module)
    return layers


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, FeatureSlot):
        module = module.inner
    return isinstance(module, NORM_LAYERS)


def official_sites(model: StagedModel) -> list[str]:
    """The official L-ALFA code's 9 sites at their relative depths: node round(d · (N - 1) / 27)
    for each official depth d, N the number of nodes (stem + blocks), duplicates dropped. Exactly
    the official ones on ResNet-56 (stem, stage1.3, stage1.6, stage2.0, stage2.4, stage2.7,
    stage3.1, stage3.5, stage3.8); 9 of 10 nodes on ResNet-20 (all but stage2.0), every node
    (stem + 8 blocks) on ResNet-18; nets with fewer than 9 nodes get all of them."""
    names = model.node_names
    last = len(names) - 1
    # round half up in integers: floor(d · last / 27 + 1/2)
    picks = sorted(
        {
            (2 * d * last + OFFICIAL_SITE_BLOCKS) // (2 * OFFICIAL_SITE_BLOCKS)
            for d in OFFICIAL_SITE_DEPTHS
        }
    )
    return [names[i] for i in picks]


def granularity_sites(model: StagedModel, granularity: str) -> list[str]:
    """Site names of a granularity: ``official`` (the official L-ALFA code's 9 sites, see
    ``official_sites``) or, as Table 9, ``stage`` outputs, ``block`` outputs (stem + every block:
    after each skip connection) or ``layer`` (every normalization layer inside them)."""
    check(granularity in GRANULARITIES, f"granularity must be one of {GRANULARITIES}")
    if granularity == "official":
        return official_sites(model)
    if granularity == "stage":
        return [model.node_of_stage(s) for s in model.stage_names[1:]]
    if granularity == "block":
        return model.node_names
    names = [name for name, layer in _layer_modules(model).items() if _is_norm(layer.module)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no normalization layers to perturb")
    return names


def resolve_sites(model: StagedModel, names: list[str]) -> list[Site]:
    """Sites for node / stage names (a stage means its last block) and layer names inside a
    node (``"stage3.2.conv1.1"``); layers get a ``FeatureSlot`` wrapper (inserted in place)."""
    nodes = model.node_names
    layers = _layer_modules(model)
    sites: list[Site] = []
    for name in names:
        if name in nodes or name in model.stage_names:
            node = nodes[model.resolve_node(name)]
            sites.append(Site(node, node, None))
        elif name in layers:
            layer = layers[name]
            slot = layer.module
            if not isinstance(slot, FeatureSlot):
                parent_path, _, attr = layer.path.rpartition(".")
                slot = FeatureSlot(layer.module)
                setattr(layer.node_module.get_submodule(parent_path), attr, slot)
            resume = nodes[layer.node_index - 1] if layer.node_index > 0 else None
            sites.append(Site(name, resume, slot))
        else:
            examples = [n for n, layer in layers.items() if _is_norm(layer.module)][:3]
            raise ConfigError(
                f"unknown perturbation site {name!r}; valid: stages {model.stage_names}, nodes "
                f"{nodes}, or a layer inside a node such as {examples}"
            )
    seen = [s.name for s in sites]
    duplicated = sorted({n for n in seen if seen.count(n) > 1})
    check(not duplicated, f"perturbation sites given more than once: {duplicated}")
    return sites


def _as_list(nodes: str | list[str] | None) -> list[str] | None:
    if nodes is None or isinstance(nodes, list):
        return nodes
    if isinstance(nodes, str):
        return [nodes]
    raise ConfigError(f"nodes must be a node name or a list of them, got {nodes!r}")


# ------------------------------------------------------------------ methods
class FeaturePerturbation(Method):
    """Clean CE plus the CE at perturbed features of each site (Eq. 3's composition); subclasses
    say how the perturbation is made (``_perturbation``)."""

    def __init__(
        self,
        model: StagedModel,
        nodes: str | list[str] | None,
        granularity: str | None,
        lam: float,
        normalize: bool,
        detach_prefix: bool,
        bn_order: str = "clean_first",
    ) -> None:
        super().__init__(model)
        check(bn_order in BN_ORDERS, f"bn_order must be one of {BN_ORDERS}, got {bn_order!r}")
        names = _as_list(nodes)
        check(
            names is None or granularity is None,
            "give either nodes or granularity, not both",
        )
        check(lam >= 0, f"lam must be >= 0, got {lam}")
        if granularity is not None:
            names = granularity_sites(model, granularity)
        self.sites = resolve_sites(model, names or [model.node_names[-1]])
        self.lam = float(lam)
        self.normalize = bool(normalize)
        self.detach_prefix = bool(detach_prefix)
        self.bn_order = bn_order

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

    def compile_targets(self) -> list[nn.Module]:
        """The whole backbone only when every site is the last node (the PGD's suffix is the
        head alone). A suffix through BatchNorm layers runs eagerly (``run_from``): autograd
        saves those layers' running statistics, and the compiled clean forward that follows
        (``bn_order="official"``) updates them with an in-place copy that bumps their version,
        so the backward fails ("modified by an inplace operation"; L-ALFA's nine sites, the
        converged cpu recipe). Eager costs ~2% of the step on this CPU (step_profile.json)."""
        last = self.model.node_names[-1]
        return [self.model] if all(s.name == last for s in self.sites) else []

    @abc.abstractmethod
    def _perturbation(
        self, site: Site, start: torch.Tensor, clean: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """The perturbation of ``site`` (shape of ``clean``, float32); ``start`` is the output of
        ``site.resume`` (or the input image) the suffix runs from."""

    def _scaled(self, index: int, delta: torch.Tensor) -> torch.Tensor:
        return delta

    def _suffix(self, site: Site, start: torch.Tensor) -> torch.Tensor:
        return self.model(start) if site.resume is None else self.model.run_from(site.resume, start)

    def _perturbed_logits(
        self, site: Site, start: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """Logits with ``delta`` added at ``site``, computed from ``start`` (the output of
        ``site.resume``, or the input image)."""
        if site.slot is None:
            return self._suffix(site, start + delta)
        site.slot.delta = delta
        try:
            return self._suffix(site, start)
        finally:
            site.slot.delta = None

    def _clean_forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor]]:
        """One forward: logits, the outputs of the resume nodes, each site's clean feature."""
        resumes = sorted(
            {s.resume for s in self.sites if s.resume is not None}, key=self.model.resolve_node
        )
        slots = [s.slot for s in self.sites if s.slot is not None]
        for slot in slots:
            slot.record = True
        try:
            if resumes:
                starts = dict(self.model.forward_features(x, nodes=resumes))
                logits = self.model.run_from(resumes[-1], starts[resumes[-1]])
            else:
                starts, logits = {}, self.model(x)
        finally:
            for slot in slots:
                slot.record = False
        clean = []
        for site in self.sites:
            if site.slot is None:
                clean.append(starts[site.name])
            else:
                clean.append(site.slot.recorded)
                site.slot.recorded = None
        return logits, starts, clean

    def _site_prefix(self, site: Site, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The official code's clean forward for one site, without gradient: the output of
        ``site.resume`` (or the image) and the clean feature at the site. A layer site runs on
        through the node that holds its slot, to record the feature there."""
        with torch.no_grad():
            if site.slot is None:
                start = self.model.forward_features(x, nodes=[site.name])[site.name]
                return start, start
            names = self.model.node_names
            holder = names[0 if site.resume is None else names.index(site.resume) + 1]
            site.slot.record = True
            try:
                feats = self.model.forward_features(x, nodes=[*filter(None, [site.resume]), holder])
            finally:
                site.slot.record = False
            clean, site.slot.recorded = site.slot.recorded, None
            return self._start(site, x, feats), clean

    @staticmethod
    def _start(site: Site, x: torch.Tensor, starts: dict[str, torch.Tensor]) -> torch.Tensor:
        return x if site.resume is None else starts[site.resume]

    def _adversarial_loss(
        self, site: Site, start: torch.Tensor, delta: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        if self.detach_prefix:
            start = start.detach()
        return F.cross_entropy(self._perturbed_logits(site, start, delta), y)

    def _official_order(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The official loop: per site a clean prefix forward (no gradient) and the PGD; then
        the adversarial forwards; the clean forward last, so that BN running statistics end each
        step on the clean batch. With ``detach_prefix=False`` (not official) the clean forward
        comes before the adversarial ones, which need its prefix's graph."""
        crafted = []
        for index, site in enumerate(self.sites):
            start, clean = self._site_prefix(site, x)
            crafted.append((start, self._scaled(index, self._perturbation(site, start, clean, y))))
        logits = None
        if not self.detach_prefix:
            logits, starts, _ = self._clean_forward(x)
            crafted = [
                (self._start(site, x, starts), delta)
                for site, (_, delta) in zip(self.sites, crafted, strict=True)
            ]
        losses_at = [
            self._adversarial_loss(site, start, delta, y)
            for site, (start, delta) in zip(self.sites, crafted, strict=True)
        ]
        if logits is None:
            logits = self.model(x)
        return logits, [delta for _, delta in crafted], losses_at

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.bn_order == "official":
            logits, deltas, losses_at = self._official_order(x, y)
        else:  # one clean forward first, its prefix reused by every site
            logits, starts, clean = self._clean_forward(x)
            deltas, losses_at = [], []
            for index, site in enumerate(self.sites):
                start = self._start(site, x, starts)
                deltas.append(self._scaled(index, self._perturbation(site, start, clean[index], y)))
                losses_at.append(self._adversarial_loss(site, start, deltas[-1], y))
        norms = [delta.detach().flatten(1).norm(dim=1).mean() for delta in deltas]
        loss_std = F.cross_entropy(logits, y)
        loss_at = torch.stack(losses_at)
        return {
            "loss": alfa_loss(loss_std, loss_at, self.lam, self.normalize),
            "logits": logits,
            "loss_ce": loss_std,
            "loss_at": loss_at.mean(),
            "delta_l2": torch.stack(norms).mean(),
        }


@register_method
class ALFA(FeaturePerturbation):
    """ALFA (Eq. 3-4): PGD in feature space at each site, default the last block's output with
    PGD-5 and alpha = 0.5/255 (the paper's ResNet-20s setting, Table 2). See the module docstring
    for every option's source."""

    name = "alfa"

    def __init__(
        self,
        model: StagedModel,
        nodes: str | list[str] | None = None,
        granularity: str | None = None,
        steps: int = 5,
        alpha: float = 0.5 / 255,
        eps: float | None = None,
        random_init: bool = False,
        lam: float = 1.0,
        normalize: bool = True,
        bn_mode: str = "train",
        detach_prefix: bool = True,
        bn_order: str = "official",
    ) -> None:
        super().__init__(model, nodes, granularity, lam, normalize, detach_prefix, bn_order)
        check(isinstance(steps, int) and steps >= 1, f"steps must be an int >= 1, got {steps!r}")
        check(alpha > 0, f"alpha must be > 0 (feature units, e.g. 0.5/255), got {alpha}")
        check(eps is None or eps > 0, f"eps must be > 0 or None (unbounded), got {eps}")
        check(not random_init or eps is not None, "random_init needs eps (the init radius)")
        check(bn_mode in BN_MODES, f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        self.steps = steps
        self.alpha = float(alpha)
        self.eps = None if eps is None else float(eps)
        self.random_init = bool(random_init)
        self.bn_mode = bn_mode

    def _perturbation(
        self, site: Site, start: torch.Tensor, clean: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Eq. (4) iterated ``steps`` times from zero (or a uniform start in the eps-ball)."""
        start = start.detach()
        delta = torch.zeros_like(clean, dtype=torch.float32)
        if self.random_init:
            delta.uniform_(-self.eps, self.eps)
        with torch.enable_grad(), model_mode(self.model, self.bn_mode):
            for _ in range(self.steps):
                delta.requires_grad_(True)
                logits = self._perturbed_logits(site, start, delta)
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, delta)
                delta = feature_pgd_step(delta.detach(), grad, self.alpha, self.eps)
        return delta


@register_method
class LALFA(ALFA):
    """L-ALFA (Eq. 5, Algorithm 1): ALFA with a learned magnitude eta_i per site, an l1 penalty
    ``gamma * ||eta||_1`` and a projection of eta after each optimizer step. Defaults: the
    official L-ALFA code's 9 sites (``granularity="official"``, dim(eta) = 9 as in Table 8; see
    ``official_sites``), PGD-3, alpha = 1/255, gamma = 1, eta lr 0.01 constant (outside the
    training schedule); eta starts at ones (the paper; official: 1/r, ``eta_init=1/r``).
    ``granularity="stage"`` (the default before issue 27) perturbs one site per stage instead,
    far cheaper: every site's PGD runs through the rest of the net."""

    name = "lalfa"

    def __init__(
        self,
        model: StagedModel,
        nodes: str | list[str] | None = None,
        granularity: str | None = None,
        steps: int = 3,
        alpha: float = 1.0 / 255,
        eps: float | None = None,
        random_init: bool = False,
        lam: float = 1.0,
        normalize: bool = True,
        bn_mode: str = "train",
        detach_prefix: bool = True,
        bn_order: str = "official",
        gamma: float = 1.0,
        eta_init: float = 1.0,
        eta_lr: float | None = 0.01,
        eta_schedule: bool = False,
        eta_constraint: str = "simplex",
    ) -> None:
        if nodes is None and granularity is None:
            granularity = "official"
        super().__init__(
            model,
            nodes,
            granularity,
            steps,
            alpha,
            eps,
            random_init,
            lam,
            normalize,
            bn_mode,
            detach_prefix,
            bn_order,
        )
        check(gamma >= 0, f"gamma must be >= 0, got {gamma}")
        check(eta_lr is None or eta_lr > 0, f"eta_lr must be > 0 or None (the base lr): {eta_lr}")
        check(
            eta_constraint in ETA_CONSTRAINTS,
            f"eta_constraint must be one of {ETA_CONSTRAINTS}, got {eta_constraint!r}",
        )
        self.gamma = float(gamma)
        self.eta_lr = eta_lr
        self.eta_schedule = bool(eta_schedule)
        self.eta_constraint = eta_constraint
        self.eta = nn.Parameter(torch.full((len(self.sites),), float(eta_init)))

    def _scaled(self, index: int, delta: torch.Tensor) -> torch.Tensor:
        return self.eta[index] * delta

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(x, y)
        out["loss_l1"] = self.gamma * self.eta.abs().sum()
        out["loss"] = out["loss"] + out["loss_l1"]
        return out

    def param_groups(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        """eta in its own group: lr ``eta_lr`` (None: the base lr), no weight decay, kept out of
        the trainer's lr schedule (``fixed_lr``) unless ``eta_schedule``."""
        rest = [p for p in self.parameters() if p.requires_grad and p is not self.eta]
        eta_group = {
            **base,
            "params": [self.eta],
            "weight_decay": 0.0,
            "fixed_lr": not self.eta_schedule,
        }
        if self.eta_lr is not None:
            eta_group["lr"] = self.eta_lr
        return [{"params": rest, **base}, eta_group]

    def after_step(self) -> None:
        """Algorithm 1, line 5: project eta onto the constraint set."""
        with torch.no_grad():
            self.eta.copy_(PROJECTIONS[self.eta_constraint](self.eta))

    def epoch_log(self) -> dict[str, Any]:
        return {"eta": dict(zip(self.site_names, self.eta.detach().tolist(), strict=True))}


# ------------------------------------------------------------------ eta over training (Fig. 4)
def eta_history(metrics: str | Path) -> tuple[list[int], dict[str, list[float]]]:
    """Epochs and each site's eta per epoch, from a run's ``metrics.jsonl`` (or the run dir)."""
    path = Path(metrics)
    if path.is_dir():
        path = path / "metrics.jsonl"
    epochs: list[int] = []
    history: dict[str, list[float]] = {}
    for line in reads.read_text(path, reads.MAX_LOG_BYTES).splitlines():
        record = json.loads(line) if line.strip() else {}
        if "eta" not in record:
            continue
        epochs.append(record["epoch"])
        for site, value in record["eta"].items():
            history.setdefault(site, []).append(value)
    if not epochs:
        raise ConfigError(f"{path} has no eta records (is it an L-ALFA run?)")
    return epochs, history


def plot_eta(metrics: str | Path, out: str | Path) -> Path:
    """Fig. 4: each site's eta over the epochs of an L-ALFA run, the last site (the last block)
    drawn thick and black; written to ``out`` (any matplotlib format by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, history = eta_history(metrics)
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(history)
    for name in names:
        last = name == names[-1]
        ax.plot(
            epochs,
            history[name],
            label=name,
            color="black" if last else None,
            linewidth=2.5 if last else 1.0,
            marker="o" if len(epochs) < 30 else None,
            markersize=3,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("eta (perturbation magnitude)")
    ax.set_title("L-ALFA: learned eta per site")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
