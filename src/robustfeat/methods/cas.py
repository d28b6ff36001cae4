"""CAS: channel-wise activation suppressing (Bai et al. 2021, ICLR), the CIFS paper's baseline.

After each chosen node a linear head on GAP features predicts the class; the features are
multiplied channel-wise by the head's weight row of the true label (training) or of the head's
own prediction (evaluation) (``robustfeat.nn.ActivationSuppress``). As in the CIFS comparison
(the CIFS code's ``CAS_L4``, matching the official CAS ResNet-18 whose layer4 blocks both carry a
CAS head), the layers sit at the same positions as CIFS (default "P1-P2", the last two residual
blocks) and the loss is the same Eq. (3) with beta = 2; with ``loss_scale = 3`` this equals the
official CAS loss ``CE + beta * mean_l CE_l``. ``attack_losses`` gives the same beta_atk sweep as
CIFS; the CIFS paper (Table B.3) shows CAS breaking when the attacker weighs the first CAS head
alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..models.base import StagedModel
from ..nn.channel_select import ActivationSuppress
from ._registry import register_method
from .cifs import ATTACK_BETAS, ProbedChannelMethod, resolve_positions


@register_method
class CAS(ProbedChannelMethod):
    """CAS (Bai et al. 2021). Options: ``positions`` ("P1-P2", "P1", "P2" or node names),
    ``beta`` (2), ``loss_scale`` (3), ``attack_betas``, ``attack_cw``."""

    name = "cas"

    def __init__(
        self,
        model: StagedModel,
        positions: str | list[str] = "P1-P2",
        beta: float = 2.0,
        loss_scale: float = 3.0,
        attack_betas: Sequence[float | str] = ATTACK_BETAS,
        attack_cw: bool = True,
    ) -> None:
        layers = {
            node: ActivationSuppress(model.feature_info[node].channels, model.num_classes)
            for node in resolve_positions(model, positions)
        }
        super().__init__(model, layers, beta, loss_scale, attack_betas, attack_cw)
