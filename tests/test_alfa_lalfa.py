"""L-ALFA: eta (Eq. 5), its projection (Algorithm 1), parameter groups, logging, Fig. 4 plot."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustfeat.config import make_config
from robustfeat.errors import ConfigError
from robustfeat.methods import create_method
from robustfeat.methods.alfa import eta_history, plot_eta, project_hyperplane, project_simplex
from robustfeat.models import create_model
from robustfeat.train import build_optimizer, lr_factor, set_learning_rates


def sort_projection(v: torch.Tensor) -> torch.Tensor:
    """Exact simplex projection by sorting (Duchi et al. 2008), the reference."""
    u, _ = torch.sort(v.double(), descending=True)
    cumulative = u.cumsum(0)
    j = torch.arange(1, v.numel() + 1, dtype=torch.float64)
    rho = int((u - (cumulative - 1) / j > 0).nonzero().max())
    theta = (cumulative[rho] - 1) / (rho + 1)
    return (v.double() - theta).clamp_min(0)


def test_simplex_projection_hand_computed():
    # sorted u = (1, 0.4, -1): rho = 2, theta = (1.4 - 1) / 2 = 0.2 -> (0.8, 0.2, 0)
    got = project_simplex(torch.tensor([0.4, 1.0, -1.0]))
    assert torch.allclose(got, torch.tensor([0.2, 0.8, 0.0]), atol=1e-9)
    assert torch.allclose(project_simplex(torch.ones(4)), torch.full((4,), 0.25))
    assert torch.allclose(project_simplex(torch.tensor([5.0, 0.0])), torch.tensor([1.0, 0.0]))
    assert project_simplex(torch.tensor([0.3])).item() == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=20))
def test_bisection_matches_the_sort_based_exact_projection(values):
    v = torch.tensor(values, dtype=torch.float64)
    got = project_simplex(v)
    assert torch.allclose(got, sort_projection(v), atol=1e-9)
    assert got.min() >= 0 and got.sum().item() == pytest.approx(1.0, abs=1e-9)


def test_hyperplane_projection_hand_computed():
    got = project_hyperplane(torch.tensor([1.0, 2.0, 3.0]))  # excess (6 - 1) / 3 = 5/3
    assert torch.allclose(got, torch.tensor([-2 / 3, 1 / 3, 4 / 3]))


def tiny():
    return create_model("test_cnn", num_classes=5)


@pytest.mark.parametrize("constraint", ["simplex", "hyperplane"])
def test_eta_stays_on_the_constraint_set_after_sgd_steps(constraint):
    method = create_method(
        "lalfa", tiny(), granularity="block", eta_constraint=constraint, eta_lr=0.5, steps=1
    ).train()
    assert method.site_names == ["stem", "stage1.0", "stage2.0", "stage3.0"]  # one per block
    assert torch.equal(method.eta.detach(), torch.ones(4))  # the paper's eta_0
    groups = method.param_groups({"lr": 0.1, "weight_decay": 5e-4})
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 5, (8,))
    history = []
    for _ in range(4):
        out = method(x, y)
        assert out["loss"].item() == pytest.approx(
            ((out["loss_ce"] + out["loss_at"]) / 2 + out["loss_l1"]).item()
        )
        optimizer.zero_grad()
        out["loss"].backward()
        assert method.eta.grad.abs().sum() > 0
        optimizer.step()
        method.after_step()
        eta = method.eta.detach()
        assert eta.sum().item() == pytest.approx(1.0, abs=1e-6)
        if constraint == "simplex":
            assert eta.min() >= 0
        history.append(eta.clone())
    assert not torch.allclose(history[0], history[-1])  # eta is learned


def test_eta_has_its_own_parameter_group():
    method = create_method("lalfa", tiny(), eta_lr=0.02)
    # default: the official sites by relative depth, every node of the 4-node test net
    assert method.site_names == ["stem", "stage1.0", "stage2.0", "stage3.0"]
    model_group, eta_group = method.param_groups({"lr": 0.1, "weight_decay": 5e-4})
    assert eta_group["params"] == [method.eta]
    assert eta_group["lr"] == 0.02 and eta_group["weight_decay"] == 0.0
    assert eta_group["fixed_lr"] and not model_group.get("fixed_lr")
    assert model_group["lr"] == 0.1 and model_group["weight_decay"] == 5e-4
    assert all(p is not method.eta for p in model_group["params"])
    assert len(model_group["params"]) == len(list(method.model.parameters()))
    base_lr = create_method("lalfa", tiny(), eta_lr=None).param_groups({"lr": 0.1})[1]
    assert base_lr["lr"] == 0.1


@pytest.mark.parametrize("eta_schedule", [False, True])
def test_eta_lr_stays_constant_under_the_trainer_schedule(eta_schedule):
    """Issue 27, item 7: the official eta optimizer has a constant lr 0.01 (no warm-up, no
    decay). Under paper-alfa's schedule (warm-up over the first 200 of 78200 steps, /10 at
    epochs 50 and 150 of 200) the model's lr at step 0 is 0.1 / 200 = 5e-4 and after the
    second decay 1e-3; eta keeps 0.01 (``eta_schedule=True``: scaled like the model's)."""
    cfg = make_config(
        {
            "model": "test_cnn",
            "data": "shapes",
            "method": "lalfa",
            "method_args": {"eta_schedule": eta_schedule},
            "lr": 0.1,
            "schedule": "multistep",
            "milestones": [0.25, 0.75],
            "warmup": 200 / 78200,
        }
    )
    method = create_method("lalfa", tiny(), eta_schedule=eta_schedule)
    optimizer = build_optimizer(method, cfg)
    model_group, eta_group = optimizer.param_groups
    for step, model_lr in [(0, 0.1 / 200), (78199, 0.1 / 100)]:
        set_learning_rates(optimizer, lr_factor(step, 78200, cfg))
        assert model_group["lr"] == pytest.approx(model_lr)
        assert eta_group["lr"] == pytest.approx(model_lr / 10 if eta_schedule else 0.01)


def test_eta_scales_the_perturbation_and_init_is_configurable():
    method = create_method("lalfa", tiny(), nodes=["stage2.0", "stage3.0"], eta_init=0.5)
    assert torch.equal(method.eta.detach(), torch.full((2,), 0.5))
    delta = torch.ones(2, 3)
    assert torch.equal(method._scaled(1, delta), 0.5 * delta)
    with torch.no_grad():
        method.eta.copy_(torch.tensor([1.0, 0.0]))
    out = method.train()(torch.rand(8, 3, 32, 32), torch.randint(0, 5, (8,)))
    assert out["loss_l1"].item() == pytest.approx(1.0)  # gamma = 1 times ||eta||_1


def test_epoch_log_and_eta_plot(tmp_path):
    method = create_method("lalfa", tiny(), granularity="stage")
    logged = method.epoch_log()
    assert logged == {"eta": {"stage1.0": 1.0, "stage2.0": 1.0, "stage3.0": 1.0}}
    records = [{"step": 5, "epoch": 0, "loss": 1.0}]
    for epoch, last in enumerate([0.4, 0.6, 0.9], start=1):
        rest = (1 - last) / 2
        eta = {"stage1.0": rest, "stage2.0": rest, "stage3.0": last}
        records.append({"epoch": epoch, "step": 10 * epoch, "eta": eta})
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    epochs, history = eta_history(tmp_path)
    assert epochs == [1, 2, 3]
    assert history["stage3.0"] == [0.4, 0.6, 0.9]
    assert list(history) == ["stage1.0", "stage2.0", "stage3.0"]
    out = plot_eta(path, tmp_path / "fig" / "eta.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "ce.jsonl").write_text(json.dumps(records[0]) + "\n")
    with pytest.raises(ConfigError, match="no eta records"):
        eta_history(tmp_path / "ce.jsonl")


def test_lalfa_option_errors():
    with pytest.raises(ConfigError, match="eta_constraint"):
        create_method("lalfa", tiny(), eta_constraint="ball")
    with pytest.raises(ConfigError, match="gamma"):
        create_method("lalfa", tiny(), gamma=-1)


def test_sites_before_batchnorm_train_with_compile_on():
    """Regression: L-ALFA's sites before BN layers crashed the first backward under
    ``compile: true`` (the compiled clean forward bumped running statistics the eager PGD
    suffixes had saved). Done as the trainer does: compile every target, then steps."""
    torch.manual_seed(0)
    method = create_method("lalfa", tiny(), eta_init=0.25, eta_constraint="hyperplane")
    method.train()
    for module in method.compile_targets():
        module.compile()
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for _ in range(2):
        method.zero_grad()
        method(x, y)["loss"].backward()
        assert method.eta.grad is not None and torch.isfinite(method.eta.grad).all()
    # a site at the last node leaves only the head after it: the backbone still compiles
    assert create_method("alfa", tiny()).compile_targets() != []
