"""ALFA and L-ALFA: adversarial feature augmentation ("ALFA: Adversarial Feature Augmentation for
Enhanced Image Recognition", anonymous ICLR 2021 submission, later A-FAN by Chen et al.).

ALFA trains on the clean batch and, for each chosen *site* (a node's output, or a normalization
layer's output inside a block), on the features at that site pushed by a PGD perturbation found in
feature space (Eq. 3-4). L-ALFA scales each site's perturbation by a learned magnitude eta_i, with
an l1 penalty and a projection of eta after each optimizer step (Eq. 5, Algorithm 1).

How a step runs (one clean forward, then per site; sites are perturbed *separately*, one
perturbation and one forward each, as in Eq. 3's sum of maxima and the official L-ALFA code):

1. clean forward once, keeping the features where the suffixes start (``forward_features`` up to
   the deepest one, then ``run_from`` to the logits): the prefix is never recomputed;
2. craft delta by ``steps`` sign-gradient ascent steps of size ``alpha`` on the CE of the logits
   computed from the site through the rest of the net (``run_from``); the features are detached,
   so the gradient stops at the perturbed layer; ``eps`` (None: unbounded, the paper's setting)
   bounds delta in L∞, ``random_init`` starts uniformly in that ball;
3. the adversarial forward from the site with delta (L-ALFA: ``eta_i * delta``) gives L_at.

Facts from the official code (VITA-Group/CV_A-FAN, ``Classification/``), where the paper is silent:

- the model is in train mode while crafting: BN statistics see the adversarial features
  (``bn_mode="train"``; ``"eval"`` uses the running statistics instead);
- the loss is the *mean* of the clean and adversarial CE, ``(CE_clean + mean_i CE_at_i) / 2``:
  ``normalize=True`` computes ``(L_std + lam * mean_i L_at_i) / (1 + lam)``, which is that for the
  default ``lam=1``; ``normalize=False`` is Eq. (3) literally, ``L_std + lam * sum_i L_at_i``;
- the clean features are detached before they are perturbed, so L_at trains only the layers after
  the site (``detach_prefix=True``; ``False`` also back-propagates L_at into the prefix, as Eq. (3)
  read as a function of Theta^(i) suggests). At the default site, the last block's output, the
  suffix is only GAP + fc, so crafting costs almost nothing;
- no random start, no clipping (eps unbounded); ResNet-56s perturbation sites of L-ALFA are block
  outputs, the last block's output ("Block 9") included;
- L-ALFA: eta starts at 1/r (the paper: ones, ``eta_init=1.0`` here), has its own SGD with lr 0.01
  and no weight decay (here: its own parameter group, ``eta_lr``; the trainer's schedule scales it
  like every group), gamma = 1, PGD-3 with alpha = 1/255, and the perturbation is crafted without
  eta and scaled afterwards (Eq. 5 would craft at f + eta * delta: the same sign steps while
  eta > 0, but an eta of 0 would then get no gradient and stay 0);
- the official projection is onto the hyperplane {1'eta = 1} (``eta_constraint="hyperplane"``).
  The paper projects onto P "by the bisection method (Wang et al. 2019b)", the projection onto the
  probability simplex {eta >= 0, 1'eta = 1} of that paper (a hyperplane needs no bisection), so
  the default is ``"simplex"`` with our bisection. On the simplex, ||eta||_1 = 1 after each
  projection, and the projection is invariant to the uniform shift the l1 gradient adds while
  eta > 0: the penalty only acts on entries that reach zero (and, on the hyperplane, below zero).

Granularity (Table 9 on ResNet-18: dim(eta) = 4, 9, 20) maps onto the stage contract as
``"stage"``: each stage's output (4 on ResNet-18, 3 on ResNet-20), ``"block"``: the stem and
every block output, i.e. after each skip connection (9 on ResNet-18, 10 on ResNet-20; pre-activation
nets add their final BN-ReLU node), ``"layer"``: every normalization layer's output inside the stem
and the blocks, i.e. the normalized feature after each convolution of a post-activation net (20 on
ResNet-18: 17 convolutions + 3 projection shortcuts; 19 on ResNet-20). Per-layer sites sit inside a
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

from ..adversarial.pgd import model_mode
from ..errors import ConfigError, check
from ..models.base import StagedModel
from ..nn.feature_slot import FeatureSlot
from ._base import Method
from ._registry import register_method

GRANULARITIES = ("stage", "block", "layer")
BN_MODES = ("train", "eval")
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


def granularity_sites(model: StagedModel, granularity: str) -> list[str]:
    """Site names of a granularity (Table 9): ``stage`` outputs, ``block`` outputs (stem + every
    block: after each skip connection) or ``layer`` (every normalization layer inside them)."""
    check(granularity in GRANULARITIES, f"granularity must be one of {GRANULARITIES}")
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
    ) -> None:
        super().__init__(model)
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

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

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

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, starts, clean = self._clean_forward(x)
        loss_std = F.cross_entropy(logits, y)
        losses_at, norms = [], []
        for index, (site, clean_feature) in enumerate(zip(self.sites, clean, strict=True)):
            start = x if site.resume is None else starts[site.resume]
            delta = self._scaled(index, self._perturbation(site, start, clean_feature, y))
            if self.detach_prefix:
                start = start.detach()
            losses_at.append(F.cross_entropy(self._perturbed_logits(site, start, delta), y))
            norms.append(delta.detach().flatten(1).norm(dim=1).mean())
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
    ) -> None:
        super().__init__(model, nodes, granularity, lam, normalize, detach_prefix)
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
    ``gamma * ||eta||_1`` and a projection of eta after each optimizer step. Defaults: one site
    per stage (dim(eta) = 4 on ResNet-18, 3 on ResNet-20; Table 9 finds per-stage and per-block
    sites both adequate, and per-stage sites cost far less: every site's PGD runs through the rest
    of the net; Table 8 used ``granularity="block"``) and the official L-ALFA code's PGD-3,
    alpha = 1/255, gamma = 1, eta lr 0.01; eta starts at ones (the paper; official: 1/r)."""

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
        gamma: float = 1.0,
        eta_init: float = 1.0,
        eta_lr: float | None = 0.01,
        eta_constraint: str = "simplex",
    ) -> None:
        if nodes is None and granularity is None:
            granularity = "stage"
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
        )
        check(gamma >= 0, f"gamma must be >= 0, got {gamma}")
        check(eta_lr is None or eta_lr > 0, f"eta_lr must be > 0 or None (the base lr): {eta_lr}")
        check(
            eta_constraint in ETA_CONSTRAINTS,
            f"eta_constraint must be one of {ETA_CONSTRAINTS}, got {eta_constraint!r}",
        )
        self.gamma = float(gamma)
        self.eta_lr = eta_lr
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
        """eta in its own group: lr ``eta_lr`` (None: the base lr), no weight decay."""
        rest = [p for p in self.parameters() if p.requires_grad and p is not self.eta]
        eta_group = {**base, "params": [self.eta], "weight_decay": 0.0}
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
    for line in path.read_text().splitlines():
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
