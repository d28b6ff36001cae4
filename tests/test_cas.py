import pytest
import torch
import torch.nn.functional as F

from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.nn import ActivationSuppress


def small_cas(**options):
    torch.manual_seed(0)
    return create_method("cas", create_model("resnet20", num_classes=10, width=4), **options)


def test_mask_is_the_weight_row_of_the_label_in_training_and_of_the_prediction_in_eval():
    torch.manual_seed(0)
    layer = ActivationSuppress(4, 3)
    z = torch.rand(2, 4, 3, 3)
    y = torch.tensor([2, 0])
    w, b = layer.head.weight.detach(), layer.head.bias.detach()
    logits = z.mean((2, 3)) @ w.T + b
    layer.train()
    out, head = layer(z, y)
    torch.testing.assert_close(out, z * w[y][:, :, None, None])
    torch.testing.assert_close(head, logits)
    layer.eval()
    out, _ = layer(z, y)  # labels are ignored in evaluation
    torch.testing.assert_close(out, z * w[logits.argmax(1)][:, :, None, None])


def test_head_weights_learn_through_the_mask():
    layer = ActivationSuppress(4, 3).train()
    z = torch.rand(2, 4, 3, 3)
    out, _ = layer(z, torch.tensor([1, 1]))
    out.sum().backward()  # ignores the head logits: the gradient comes through the mask
    grad = layer.head.weight.grad
    assert grad[1].abs().sum() > 0 and not grad[0].any() and not grad[2].any()


def test_loss_equals_the_official_cas_loss_at_the_same_positions_as_cifs():
    method = small_cas().train()
    assert method.positions == ["stage3.1", "stage3.2"]
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    out = method(x, y)
    with torch.no_grad():
        logits, probes = method.forward_with_probes(x, y)
    ce = [F.cross_entropy(t, y).item() for t in (logits, *probes)]
    # official CAS: CE + beta * mean_l CE_l with beta = 2 (= 3 * Eq. 3 at beta = 2)
    assert out["loss"].item() == pytest.approx(ce[0] + 2 * (ce[1] + ce[2]) / 2, rel=1e-5)


def test_attack_losses_are_the_beta_sweep_without_exact_variants():
    method = small_cas().eval()
    losses = method.attack_losses()
    assert "ce_beta2" in losses and "cw_probe1" in losses
    assert not any(name.startswith("exact") for name in losses)
    x, y = torch.rand(3, 3, 32, 32), torch.randint(0, 10, (3,))
    with torch.no_grad():
        _, (p1, _) = method.forward_with_probes(x)
        torch.testing.assert_close(
            losses["ce_probe1"](x, y), F.cross_entropy(p1, y, reduction="none")
        )
