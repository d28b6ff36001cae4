"""AdvProp: dual BN routing (aux for adversarial batches, main for clean and evaluation)."""

import pytest
import torch
from torch import nn

from robustfeat.errors import ConfigError
from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.nn import DualBatchNorm2d, aux_bn, convert_dual_bn


def bn_stats(model, route):
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    return [getattr(m, route).running_mean.clone() for m in duals]


def changed(before, after):
    return [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]


def test_convert_swaps_every_bn_and_keeps_the_function():
    model = create_model("test_cnn", num_classes=5).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert convert_dual_bn(model) == n_bn == 7
    assert convert_dual_bn(model) == 0  # idempotent
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    assert len(duals) == 7 and duals[0].main is not duals[0].aux
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_aux_context_routes_and_restores_even_on_error():
    model = create_model("test_cnn", num_classes=5)
    convert_dual_bn(model)
    model.train()
    x = torch.rand(8, 3, 32, 32)
    main0, aux0 = bn_stats(model, "main"), bn_stats(model, "aux")
    with aux_bn(model):
        model(x)
    assert not any(changed(main0, bn_stats(model, "main")))
    assert all(changed(aux0, bn_stats(model, "aux")))
    with pytest.raises(RuntimeError), aux_bn(model):
        raise RuntimeError("boom")
    assert not any(m.use_aux for m in model.modules() if isinstance(m, DualBatchNorm2d))


def test_advprop_step_uses_aux_for_adversarial_and_main_for_clean():
    model = create_model("test_cnn", num_classes=5)
    method = create_method("advprop", model, eps=4 / 255, steps=2, step_size=2 / 255).train()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 5, (8,))
    routes = []
    first = next(m for m in model.modules() if isinstance(m, DualBatchNorm2d))
    handle = first.register_forward_hook(lambda m, i, o: routes.append(m.use_aux))
    out = method(x, y)
    handle.remove()
    # 2 PGD steps + the adversarial forward on aux (plus pgd's final success check), then clean
    assert routes[-1] is False and all(routes[:-1]) and len(routes) >= 3
    assert out["loss"].item() == pytest.approx((out["loss_ce"] + out["loss_adv"]).item())
    out["loss"].backward()
    aux_grad = first.aux.weight.grad
    main_grad = first.main.weight.grad
    assert aux_grad is not None and aux_grad.abs().sum() > 0
    assert main_grad is not None and main_grad.abs().sum() > 0


def test_eval_model_never_touches_the_auxiliary_bn():
    model = create_model("test_cnn", num_classes=5)
    method = create_method("advprop", model)
    method.train()
    method(torch.rand(8, 3, 32, 32), torch.randint(0, 5, (8,)))  # a step fills both routes
    aux_before, main_before = bn_stats(model, "aux"), bn_stats(model, "main")
    eval_model = method.eval_model()
    eval_model.train()  # even in train mode, evaluation forwards only update the main BN
    eval_model(torch.rand(8, 3, 32, 32))
    assert not any(changed(aux_before, bn_stats(model, "aux")))
    assert all(changed(main_before, bn_stats(model, "main")))
    eval_model.eval()
    first = model.stem[0][1]
    conv_out = torch.randn(4, first.main.num_features, 6, 6)
    with torch.no_grad():
        assert torch.equal(first(conv_out), first.main(conv_out))
        assert not torch.equal(first(conv_out), first.aux(conv_out))


def test_advprop_option_errors():
    with pytest.raises(ConfigError, match="eps"):
        create_method("advprop", create_model("test_cnn", num_classes=5), eps=0)
