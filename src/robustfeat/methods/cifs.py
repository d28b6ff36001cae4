"""CIFS: channel-wise importance-based feature selection (Yan et al. 2021, ICML).

CIFS layers (``robustfeat.nn.ChannelSelect``) are inserted after chosen backbone nodes; each has a
probe whose top-k relevances decide a non-negative channel mask (Eqs. 1-2). The model and the
probes are trained jointly with the adaptive loss of Eq. (3), usually inside adversarial training
(``--at pgd_at``), where examples are crafted against the same joint loss.

Positions (Sec. 4.1, App. E.3): "P1" is the last residual block, "P2" the one before; the default
"P1-P2" uses both, with a linear probe at the last CIFS layer and MLP probes before it (App. E.4).
On ResNet-20 that is stage3.1 (MLP) and stage3.2 (linear). A block is a node containing a
convolution, so the closing BN-ReLU node of pre-activation nets (e.g. preact_resnet18's stage4.2)
is skipped; the official WRN code instead puts its linear probe after that BN-ReLU and its MLP
probe (hidden 240) on the last block's pre-activated input: node names such as
``positions=[stage3.2, stage3.4]`` (WRN-28-10) come close to that placement.

Facts from the official code (HanshuYAN/CIFS) beyond the paper: the training loss is
``(CE + beta / |I| * sum_l CE_l) * 3 / (1 + beta)``, i.e. ``loss_scale * l_beta`` with
``loss_scale = 3`` (exposed); adversarial examples are crafted with the whole net in eval
mode (so masks use the probes' own top-k, no labels) against the joint loss with the training
beta; the probes learn through the mask (``create_graph``) but the mask's relevance is computed
on a detached copy of the features. ``CAS`` (methods/cas.py) shares this file's machinery
with a different layer.

Adaptive attacks (``attack_losses``, App. B.1 / Table B.3): the joint loss with the attacker's
beta_atk in {0.1, 1, 2, 10, 100, inf} (inf: the probe term only) and each probe alone, with CE and
with the CW margin (kappa 50, as the official evaluation); beta_atk = 0 is the plain attack on the
final logits, which every suite already runs. With ``attack_exact`` CIFS adds CE objectives at
beta_atk in {0, 2, inf} whose gradient also flows through the masks into the features (the
official attack cuts it there); a sound evaluation takes the worst case over both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError, check
from ..losses import ce_loss, cw_loss
from ..models.base import StagedModel
from ..nn.channel_select import IMGFS, PROBES, ChannelSelect
from ._base import AttackLoss, Method
from ._registry import register_method

INF = float("inf")
#: beta_atk of the paper's sweep (Sec. 4.1) without 0, the plain attack on the final logits
ATTACK_BETAS = (0.1, 1.0, 2.0, 10.0, 100.0, INF)
#: beta_atk of the exact-gradient objectives
EXACT_BETAS = (0.0, 2.0, INF)
#: CW margin cap of the official evaluation (relu(z_y - max_other + 50))
CW_KAPPA = 50.0
POSITION_PRESETS = ("P1", "P2", "P1-P2")
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cw(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return cw_loss(logits, y, CW_KAPPA)


ATTACK_KINDS: dict[str, PerSampleLoss] = {"ce": ce_loss, "cw": _cw}


# ------------------------------------------------------------------ equations
def combine_losses(
    final_loss: torch.Tensor, probe_losses: Sequence[torch.Tensor], beta: float
) -> torch.Tensor:
    """l_beta, Eq. (3) of Yan et al. 2021, from per-sample losses of the final prediction and of
    each probe: ``final / (1 + beta) + beta / ((1 + beta) |I|) * sum_l probe_l``;
    ``beta = inf`` keeps the probe term only (the attacker's beta_atk = inf)."""
    probes = torch.stack(list(probe_losses)).mean(0)
    if beta == INF:
        return probes
    return (final_loss + beta * probes) / (1.0 + beta)


def joint_loss(
    final_logits: torch.Tensor,
    probe_logits: Sequence[torch.Tensor],
    y: torch.Tensor,
    beta: float,
    loss: PerSampleLoss = ce_loss,
) -> torch.Tensor:
    """Per-sample l_beta (Eq. 3) with ``loss`` (CE, or the CW margin for attacks) on the final
    and the probe logits."""
    return combine_losses(loss(final_logits, y), [loss(p, y) for p in probe_logits], beta)


# ------------------------------------------------------------------ model surgery
def conv_nodes(model: StagedModel) -> list[str]:
    """Nodes that contain a convolution (residual blocks, stem), in forward order."""
    return [
        name
        for name, module in model._nodes
        if any(isinstance(m, nn.Conv2d) for m in module.modules())
    ]


def resolve_positions(model: StagedModel, positions: str | Sequence[str]) -> list[str]:
    """Node names, in forward order, for ``"P1"`` (last block), ``"P2"`` (the block before),
    ``"P1-P2"`` (both), or explicit node / stage names."""
    if isinstance(positions, str) and positions in POSITION_PRESETS:
        blocks = conv_nodes(model)
        check(
            len(blocks) >= 2,
            f"{type(model).__name__} has fewer than two convolutional nodes for {positions}",
        )
        preset = {"P1": [blocks[-1]], "P2": [blocks[-2]], "P1-P2": blocks[-2:]}
        return preset[positions]
    names = [positions] if isinstance(positions, str) else list(positions)
    check(
        len(names) > 0 and all(isinstance(n, str) for n in names),
        f"positions must be one of {POSITION_PRESETS} or a list of node names, got {positions!r}",
    )
    index = sorted({model.resolve_node(n) for n in names})
    check(len(index) == len(names), f"positions name the same node twice: {names}")
    return [model.node_names[i] for i in index]


class ProbedNode(nn.Module):
    """A backbone node followed by a channel-selection layer ``layer(z, target) -> (z', logits)``.

    The owning method sets ``target`` (labels) and ``record`` (a list collecting probe logits)
    around a forward; both are None otherwise, so the node is a plain x -> features module.
    """

    def __init__(self, block: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.layer = layer
        self.target: torch.Tensor | None = None
        self.record: list[torch.Tensor] | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z, logits = self.layer(self.block(h), self.target)
        if self.record is not None:
            self.record.append(logits)
        return z


def insert_after(model: StagedModel, node: str, layer: nn.Module) -> ProbedNode:
    """Replace node ``node`` of ``model`` by ``ProbedNode(node, layer)`` (in place)."""
    if node == "stem":
        model.stem = wrapped = ProbedNode(model.stem, layer)
    elif node in model.stages:
        model.stages[node] = wrapped = ProbedNode(model.stages[node], layer)
    else:
        stage, _, index = node.rpartition(".")
        blocks = model.stages[stage]
        blocks[int(index)] = wrapped = ProbedNode(blocks[int(index)], layer)
    return wrapped


def _betas(values: Sequence[float | str]) -> tuple[float, ...]:
    try:
        betas = tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"attack_betas must be a list of numbers (or inf), got {values!r}"
        ) from err
    check(all(b >= 0 for b in betas), f"attack_betas must be >= 0, got {list(values)}")
    return betas


# ------------------------------------------------------------------ shared method
class ProbedChannelMethod(Method):
    """Channel-selection layers with probe heads after some nodes, the Eq. (3) loss, and the
    beta_atk sweep of adaptive attacks. Subclasses build the layers (CIFS, CAS)."""

    #: whether the layers can pass attack gradients through the mask (``exact_gradient``)
    exact_capable: ClassVar[bool] = False
    #: add the exact-gradient objectives to ``attack_losses`` (exact-capable layers only)
    attack_exact: bool = False

    def __init__(
        self,
        model: StagedModel,
        layers: dict[str, nn.Module],
        beta: float,
        loss_scale: float,
        attack_betas: Sequence[float | str],
        attack_cw: bool,
    ) -> None:
        super().__init__(model)
        check(0 <= beta < INF, f"beta must be finite and >= 0, got {beta}")
        check(0 < loss_scale < INF, f"loss_scale must be finite and > 0, got {loss_scale}")
        self.beta, self.loss_scale = float(beta), float(loss_scale)
        self.attack_betas = _betas(attack_betas)
        self.attack_cw = bool(attack_cw)
        self.positions = list(layers)
        self.probed = [insert_after(model, node, layer) for node, layer in layers.items()]

    # ------------------------------------------------------------- forward
    @contextmanager
    def routing(
        self, target: torch.Tensor | None, exact: bool = False
    ) -> Iterator[list[torch.Tensor]]:
        """Route labels to the layers and collect their probe logits during one forward."""
        record: list[torch.Tensor] = []
        for node in self.probed:
            node.target, node.record = target, record
            if self.exact_capable:
                node.layer.exact_gradient = exact
        try:
            yield record
        finally:
            for node in self.probed:
                node.target, node.record = None, None
                if self.exact_capable:
                    node.layer.exact_gradient = False

    def forward_with_probes(
        self, x: torch.Tensor, target: torch.Tensor | None = None, exact: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final logits and the probes' logits (forward order). Labels count in training only."""
        with self.routing(target, exact) as record:
            logits = self.model(x)
        return logits, list(record)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, probes = self.forward_with_probes(x, y)
        final_loss = ce_loss(logits, y)
        probe_losses = [ce_loss(p, y) for p in probes]
        loss = self.loss_scale * combine_losses(final_loss, probe_losses, self.beta).mean()
        out = {"loss": loss, "logits": logits, "loss_ce": final_loss.detach().mean()}
        for i, (p, p_loss) in enumerate(zip(probes, probe_losses, strict=True), 1):
            out[f"loss_probe{i}"] = p_loss.detach().mean()
            out[f"acc_probe{i}"] = (p.detach().argmax(1) == y).float().mean()
        return out

    def adversarial_objective(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training objective per sample (Eq. 3 with the training beta), as the official
        code crafts its training examples."""
        logits, probes = self.forward_with_probes(x_adv, y)
        return self.loss_scale * joint_loss(logits, probes, y, self.beta)

    # ------------------------------------------------------------- attacks
    def _objective(
        self, kind: str, beta: float | None, probe: int | None, exact: bool
    ) -> AttackLoss:
        loss = ATTACK_KINDS[kind]

        def objective(x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits, probes = self.forward_with_probes(x_adv, y, exact)
            if probe is not None:
                return loss(probes[probe], y)
            return joint_loss(logits, probes, y, beta, loss)

        return objective

    def attack_losses(self) -> dict[str, AttackLoss]:
        """``<ce|cw>_beta<b>``: the joint loss with beta_atk = b; ``<ce|cw>_probe<i>``: the i-th
        layer's probe alone (Table B.3's inf-i, only with several layers); ``exact_ce_beta<b>``:
        CE objectives differentiated through the masks (CIFS)."""
        kinds = ["ce", "cw"] if self.attack_cw else ["ce"]
        out: dict[str, AttackLoss] = {}
        for kind in kinds:
            for beta in self.attack_betas:
                out[f"{kind}_beta{beta:g}"] = self._objective(kind, beta, None, False)
            if len(self.probed) > 1:
                for i in range(len(self.probed)):
                    out[f"{kind}_probe{i + 1}"] = self._objective(kind, None, i, False)
        if self.exact_capable and self.attack_exact:
            for beta in EXACT_BETAS:
                out[f"exact_ce_beta{beta:g}"] = self._objective("ce", beta, None, True)
        return out

    def compile_targets(self) -> list[nn.Module]:
        """Nothing, for now: with the closed-form relevance the probed network does compile (one
        graph, equal losses; a one-off check on a loaded machine: 1.95 s vs 2.45 s eager per
        FGSM-RS step at batch 128), but its cold compile took ~8 min there, so it stays eager
        until a quiet-machine measurement shows the trade."""
        return []


@register_method
class CIFS(ProbedChannelMethod):
    """CIFS (Yan et al. 2021). Options: ``positions`` ("P1-P2", "P1", "P2" or node names),
    ``probe`` ("auto": linear at the last layer, MLP before; "linear"; "mlp"), ``probe_hidden``
    (128; the official WRN code uses 240),
    ``imgf`` ("softmax", "sigmoid", "softplus"), ``alpha`` (sigmoid 10 / softplus 5 when None),
    ``temperature`` (softmax T=1), ``top_k`` (2), ``mask_scale`` (1), ``label_mask`` (True: the
    true label is the top-1 relevance class in training, Sec. 3.2; False: the probe's top-k as at
    inference), ``beta`` (2, App. E.1), ``loss_scale`` (3, official code), ``attack_betas``,
    ``attack_cw``, ``attack_exact``."""

    name = "cifs"
    exact_capable = True

    def __init__(
        self,
        model: StagedModel,
        positions: str | list[str] = "P1-P2",
        probe: str = "auto",
        probe_hidden: int = 128,
        imgf: str = "softmax",
        alpha: float | None = None,
        temperature: float = 1.0,
        top_k: int = 2,
        mask_scale: float = 1.0,
        label_mask: bool = True,
        beta: float = 2.0,
        loss_scale: float = 3.0,
        attack_betas: Sequence[float | str] = ATTACK_BETAS,
        attack_cw: bool = True,
        attack_exact: bool = True,
    ) -> None:
        check(probe in ("auto", *PROBES), f"probe must be auto, linear or mlp, got {probe!r}")
        check(imgf in IMGFS, f"imgf must be one of {IMGFS}, got {imgf!r}")
        nodes = resolve_positions(model, positions)

        def layer(node: str) -> ChannelSelect:
            kind = probe if probe != "auto" else ("linear" if node == nodes[-1] else "mlp")
            return ChannelSelect(
                model.feature_info[node].channels,
                model.num_classes,
                probe=kind,
                hidden=probe_hidden,
                imgf=imgf,
                alpha=alpha,
                temperature=temperature,
                top_k=top_k,
                mask_scale=mask_scale,
                label_mask=label_mask,
            )

        layers = {node: layer(node) for node in nodes}
        super().__init__(model, layers, beta, loss_scale, attack_betas, attack_cw)
        self.attack_exact = bool(attack_exact)
