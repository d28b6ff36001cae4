"""Channel-wise activation analysis (Yan et al. 2021, Figs. 1 and 3, App. A.1).

For one class: the penultimate features (the last node's output, i.e. what the linear classifier
sees after global average pooling; for CIFS/CAS nets the masked features) of the test samples of
that class, natural and adversarial (PGD-20), reduced per channel to

- the mean activation magnitude over samples, normalised by the largest absolute value of both
  curves (one constant for natural and adversarial, so the two stay comparable; the raw values
  are kept in the JSON as well), and
- the activation frequency: the fraction of samples in which the channel exceeds 1% of that
  sample's largest channel activation (App. A.1's threshold),

with the channels ordered by the classifier's weights for the class, in descending order (the
weights indicate channel relevances, Sec. 3.1). ``channel_activation_analysis`` returns the
numbers as a JSON-ready dict, with ``relevance_summary``: the means over positively-relevant
(PR, weight > 0) and negatively-relevant (NR, weight < 0) channels -- the paper's claim in
numbers (App. A.2: adversarial data activate NR channels more, CIFS suppresses NR and promotes
PR channels); ``plot_channel_activations`` draws the paper's three panels.

The PGD-20 default follows the CIFS evaluation (eps 8/255, step eps/10, no random start, CE on
the final logits). ``attack_loss`` names one of the method's ``attack_losses()`` to craft the
adversarial data with instead: CE on the final logits is masked for CAS (its class-cat PGD-20
accuracy, 0.45, exceeded its natural 0.34 in our cpu run), so its plain-PGD picture would show
the features of examples that are not adversarial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..adversarial.pgd import pgd
from ..data.base import ImageDataset
from ..data.loader import iterate_batches
from ..errors import ConfigError, check
from ..methods._base import Method
from ..models.base import StagedModel
from ..progress import progress_task
from ..runtime import model_mode

THRESHOLD = 0.01


def penultimate_activations(model: StagedModel, x: torch.Tensor) -> torch.Tensor:
    """Channel-wise activations (N, C): the last node's output, globally average-pooled."""
    last = model.node_names[-1]
    return model.forward_features(x, nodes=[last])[last].float().mean(dim=(2, 3))


def activation_frequency(acts: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Per channel, the fraction of samples whose activation magnitude exceeds ``threshold``
    times that sample's largest channel magnitude (App. A.1)."""
    magnitude = acts.abs()
    limit = threshold * magnitude.amax(dim=1, keepdim=True)
    return (magnitude > limit).float().mean(dim=0)


def relevance_summary(
    weights_sorted: list[float], curves: dict[str, list[float]]
) -> dict[str, dict[str, float | None]]:
    """Per curve (aligned with ``weights_sorted``), its mean over the PR channels (weight > 0)
    and over the NR channels (weight < 0); None when a group is empty."""
    weights = torch.tensor(weights_sorted)
    groups = {"pr": weights > 0, "nr": weights < 0}
    return {
        name: {
            group: float(torch.tensor(values)[mask].mean()) if mask.any() else None
            for group, mask in groups.items()
        }
        for name, values in curves.items()
    }


def _unwrap(method_or_model: Method | StagedModel) -> tuple[StagedModel, torch.nn.Module]:
    """The staged backbone (features, classifier) and the x -> logits module attacks use."""
    if isinstance(method_or_model, Method):
        return method_or_model.model, method_or_model.eval_model()
    if isinstance(method_or_model, StagedModel):
        return method_or_model, method_or_model
    raise ConfigError(
        f"channel analysis needs a Method or a StagedModel, got {type(method_or_model).__name__}"
    )


def _attack_objective(method_or_model: Method | StagedModel, name: str | None) -> Any:
    """The named adaptive objective of the method (None: CE on the final logits)."""
    if name is None:
        return None
    losses = method_or_model.attack_losses() if isinstance(method_or_model, Method) else {}
    check(
        name in losses,
        f"attack loss {name!r} is not one of this method's attack losses; valid: "
        f"{', '.join(losses) or 'none (attack the final logits: leave it unset)'}",
    )
    return losses[name]


def channel_activation_analysis(
    method_or_model: Method | StagedModel,
    data: ImageDataset,
    class_index: int,
    *,
    eps: float = 8 / 255,
    steps: int = 20,
    step_size: float | None = None,
    n: int | None = None,
    batch_size: int = 200,
    threshold: float = THRESHOLD,
    attack_loss: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Figs. 1/3 numbers for class ``class_index`` over its samples in ``data`` (the first ``n``
    of them if given): channel order, sorted classifier weights, and for natural and adversarial
    data the normalised and raw mean magnitudes, the activation frequencies and the accuracy.
    ``attack_loss``: PGD on that objective of the method's ``attack_losses()`` (whole method in
    eval mode) rather than CE on the final logits. ``progress``: a progress display of the
    attacked images."""
    check(
        0 <= class_index < data.num_classes,
        f"class_index must be in [0, {data.num_classes}), got {class_index}",
    )
    model, attacked = _unwrap(method_or_model)
    objective = _attack_objective(method_or_model, attack_loss)
    index = (data.labels == class_index).nonzero().flatten()
    if n is not None:
        index = index[:n]
    check(index.numel() > 0, f"no samples of class {class_index} in {data.name or 'the data'}")
    step_size = eps / 10 if step_size is None else step_size
    device = next(model.parameters()).device
    natural, adversarial, correct_nat, correct_adv = [], [], 0, 0
    label = f"channels class {class_index}"
    with (
        model_mode(method_or_model, "eval"),
        model_mode(attacked, "eval"),
        progress_task(label, index.numel(), enabled=progress) as advance,
    ):
        for x, y in iterate_batches(data.subset(index), batch_size, device):
            x_adv = pgd(
                attacked,
                x,
                y,
                eps=eps,
                steps=steps,
                step_size=step_size,
                objective=objective,
                random_start=False,
                mode="eval",
            )
            with torch.no_grad():
                for images, store in ((x, natural), (x_adv, adversarial)):
                    store.append(penultimate_activations(model, images).cpu())
                correct_nat += int((attacked(x).argmax(1) == y).sum())
                correct_adv += int((attacked(x_adv).argmax(1) == y).sum())
            advance(x.shape[0])
    weights = model.get_classifier().weight[class_index].detach().float().cpu()
    order = torch.argsort(weights, descending=True)
    acts = {"natural": torch.cat(natural), "adversarial": torch.cat(adversarial)}
    means = {kind: a.abs().mean(0) for kind, a in acts.items()}
    scale = max(float(m.max()) for m in means.values()) or 1.0
    count = index.numel()
    result = {
        "class_index": class_index,
        "class_name": data.class_names[class_index] if data.class_names else str(class_index),
        "n": count,
        "layer": model.node_names[-1],
        "attack": {
            "name": "pgd",
            "eps": eps,
            "steps": steps,
            "step_size": step_size,
            "loss": attack_loss or "ce",
        },
        "threshold": threshold,
        "channel_order": order.tolist(),
        "weights_sorted": weights[order].tolist(),
        **{
            kind: {
                "accuracy": (correct_nat if kind == "natural" else correct_adv) / count,
                "magnitude": (means[kind][order] / scale).tolist(),
                "magnitude_raw": means[kind][order].tolist(),
                "frequency": activation_frequency(acts[kind], threshold)[order].tolist(),
            }
            for kind in acts
        },
    }
    result["relevance_summary"] = relevance_summary(
        result["weights_sorted"],
        {
            f"{kind}_{curve}": result[kind][curve]
            for kind in acts
            for curve in ("magnitude", "frequency")
        },
    )
    return result


def plot_channel_activations(result: dict[str, Any], path: str | Path) -> Path:
    """The paper's three panels (magnitude, sorted weights, frequency vs channel rank) as an
    image file (format from the suffix, e.g. .png or .pdf)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rank = range(len(result["channel_order"]))
    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    for kind, color in (("natural", "tab:blue"), ("adversarial", "tab:red")):
        label = f"{kind} (acc {result[kind]['accuracy']:.2f})"
        axes[0].bar(rank, result[kind]["magnitude"], color=color, alpha=0.5, width=1.0, label=label)
        axes[2].bar(rank, result[kind]["frequency"], color=color, alpha=0.5, width=1.0, label=label)
    axes[1].bar(rank, result["weights_sorted"], color="gray", width=1.0)
    axes[0].set_ylabel("magnitude")
    axes[1].set_ylabel("fc weight")
    axes[2].set_ylabel("frequency")
    axes[2].set_xlabel(f"channel (sorted by the class's fc weight), layer {result['layer']}")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"class {result['class_name']}: natural vs PGD-{result['attack']['steps']}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
