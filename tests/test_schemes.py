import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustfeat.adversarial.pgd import random_init
from robustfeat.adversarial.schemes import (
    FAT,
    FGSMRS,
    PGDAT,
    TRADES,
    FreeAT,
    create_scheme,
    kl_per_sample,
    linf_ascent,
    list_schemes,
    pixels,
)
from robustfeat.config import make_config
from robustfeat.data import prepare_data
from robustfeat.errors import ConfigError
from robustfeat.methods import create_method
from robustfeat.methods.ce import CE
from robustfeat.models import create_model
from robustfeat.models.base import StagedModel
from robustfeat.runtime import model_mode
from robustfeat.train import train

EPS = 8 / 255
CRAFTED = ["pgd_at", "fgsm_rs", "trades", "fat"]


class TinyNet(StagedModel):
    """1x1 conv -> ReLU -> GAP -> linear, no BN: logits computable by hand."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1, bias=False)
        self.stages = nn.ModuleDict({"stage1": nn.Sequential(nn.ReLU())})
        self.fc = nn.Linear(4, classes)


def tiny_logits(net: TinyNet, x: torch.Tensor) -> torch.Tensor:
    w = net.stem.weight[:, :, 0, 0]
    h = torch.relu(torch.einsum("oc,nchw->nohw", w, x))
    return h.mean((2, 3)) @ net.fc.weight.T + net.fc.bias


class Spy(CE):
    """CE that records what it is trained on and the mode it crafts in."""

    def __init__(self, model: StagedModel) -> None:
        super().__init__(model)
        self.trained_on: list[torch.Tensor] = []
        self.crafting_modes: set[bool] = set()

    def forward(self, x, y):
        if x.requires_grad:
            x.retain_grad()
        self.trained_on.append(x)
        return super().forward(x, y)

    def adversarial_objective(self, x_adv, y):
        self.crafting_modes |= {m.training for m in self.modules()}
        return super().adversarial_objective(x_adv, y)


def run_steps(scheme, method, x, y, lr=0.0):
    """What the trainer does with a scheme's loss dicts."""
    optimizer = torch.optim.SGD(method.parameters(), lr=lr)
    outs = []
    for out in scheme.steps(method, x, y):
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        outs.append(out)
    return outs


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


# ------------------------------------------------------------------ every scheme
@pytest.mark.parametrize("name", [*CRAFTED, "free_at"])
def test_examples_stay_in_the_ball_and_box_and_mode_is_set_then_restored(name, device):
    method = Spy(create_model("test_cnn", num_classes=10)).to(device)
    method.train()
    method.model.stages["stage2"].eval()  # a submodule in its own mode must get it back
    x, y = (t.to(device) for t in batch())
    x[0] = 0.0  # box corners: projection must clip
    x[1] = 1.0
    scheme = create_scheme(name, **({"steps": 3} if name in ("pgd_at", "trades", "fat") else {}))
    run_steps(scheme, method, x, y)
    if name == "trades":  # trained on the clean batch; x_adv only enters the KL term
        with model_mode(method, "eval"):
            method.trained_on = [scheme.craft(method, x)]
    moved = 0.0
    for x_adv in method.trained_on:
        assert (x_adv - x).abs().max() <= scheme.eps + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        moved = max(moved, (x_adv - x).abs().max().item())
    assert moved > 0.5 * scheme.eps
    if name in ("pgd_at", "fgsm_rs", "fat"):
        assert method.crafting_modes == {scheme.mode == "train"}
    assert method.training and not method.model.stages["stage2"].training
    assert method.model.stages["stage3"].training


def test_default_modes_follow_the_papers_code():
    modes = {name: create_scheme(name).mode for name in [*CRAFTED, "free_at"]}
    assert modes == {
        "pgd_at": "eval",
        "fgsm_rs": "train",
        "trades": "eval",
        "fat": "eval",
        "free_at": "train",
    }
    assert sorted(list_schemes()) == sorted([*CRAFTED, "free_at"])


# (TRADES x CIFS is left out: a barely trained CIFS net's final softmax hardly depends on the
# input, so its KL is at float32 noise level; the pair is covered through the trainer below.)
@pytest.mark.parametrize(
    ("name", "method_name"),
    [(n, m) for n in CRAFTED for m in ("ce", "cifs") if (n, m) != ("trades", "cifs")],
)
def test_crafted_examples_raise_the_training_objective(name, method_name, device):
    torch.manual_seed(1)
    method = create_method(method_name, create_model("test_cnn", num_classes=10)).to(device)
    method.train()
    x, y = (t.to(device) for t in batch(16))
    # a few clean steps so the model is not at chance (FAT stops on misclassified samples)
    opt = torch.optim.SGD(method.parameters(), lr=0.05)
    for _ in range(10):
        opt.zero_grad()
        method(x, y)["loss"].backward()
        opt.step()
    scheme = create_scheme(name, **({"tau": 3} if name == "fat" else {}))
    with model_mode(method, scheme.mode):
        if name == "trades":
            x_adv = scheme.craft(method, x)
        else:
            x_adv, _ = scheme.craft(method, x, y)
    with torch.no_grad():
        if name == "trades":  # TRADES maximises KL(f(x) || f(x_adv)), crafted in eval mode
            method.eval()
            p_clean = method.eval_model()(x).softmax(1)
            start = x + 0.001 * torch.randn_like(x)
            clean = kl_per_sample(p_clean, method.eval_model()(start)).mean()
            adv = kl_per_sample(p_clean, method.eval_model()(x_adv)).mean()
            assert adv > 100 * clean
        else:  # the training loss, same weights, train mode
            clean, adv = method(x, y)["loss"], method(x_adv, y)["loss"]
            assert adv > clean + 0.1


# ------------------------------------------------------------------ paper details
def test_fgsm_rs_is_one_step_of_1_25_eps_from_a_uniform_start():
    torch.manual_seed(0)
    net = TinyNet()
    method = Spy(net)
    scheme = FGSMRS()
    assert scheme.step_size == pytest.approx(1.25 * EPS) and scheme.mode == "train"
    x = torch.rand(6, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(5)
    run_steps(scheme, method, x, y)
    x_adv = method.trained_on[0].detach()
    torch.manual_seed(5)
    start = random_init(x, EPS, "linf")
    assert start.abs().max() <= EPS and start.abs().max() > 0.9 * EPS
    d = start.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(tiny_logits(net, x + d), y, reduction="sum"), d)[0]
    expected = (x + (start + 1.25 * EPS * grad.sign()).clamp(-EPS, EPS)).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected)


def test_trades_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():  # steeper logits and a large eps: a KL far above float32 rounding
        net.stem.weight.mul_(3)
    method = Spy(net)
    method.train()
    scheme = TRADES(beta=6.0, steps=3, eps=0.5)
    x = torch.rand(5, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 1, 0])
    torch.manual_seed(3)
    (out,) = run_steps(scheme, method, x, y)
    # the scheme trains the method on x and evaluates eval_model() on x_adv: recover x_adv
    torch.manual_seed(3)
    x_adv = scheme.craft(method, x)
    logits, logits_adv = tiny_logits(net, x), tiny_logits(net, x_adv)
    p, q = logits.softmax(1), logits_adv.softmax(1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    ce = -logits.log_softmax(1)[torch.arange(5), y].mean()
    assert out["loss_trades_kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((ce + 6.0 * kl).item(), rel=1e-5)
    assert out["loss_natural"].item() == pytest.approx(ce.item(), rel=1e-5)
    reverse = (q * (q.log() - p.log())).sum(1).mean()
    assert abs(reverse - kl) > 1e-3 * kl  # the direction KL(f(x) || f(x_adv)) is checked
    # crafting maximises the KL: far above its value at the 0.001-Gaussian start
    start_kl = kl_at(net, x, x + 0.001 * torch.randn_like(x))
    assert kl > 10 * start_kl


def kl_at(net, x, x_adv):
    p, q = tiny_logits(net, x).softmax(1), tiny_logits(net, x_adv).softmax(1)
    return (p * (p.log() - q.log())).sum(1).mean()


@pytest.mark.parametrize("tau", [0, 1, 2])
def test_fat_stops_each_sample_tau_steps_after_its_first_misclassification(tau):
    # channel 0 moves +0.1 per step (objective = its sum); channel 1 holds a per-sample
    # threshold; the prediction is wrong (class 1) once channel 0 exceeds the threshold.
    thresholds = torch.tensor([0.25, 0.05, 0.95])
    x = torch.zeros(3, 2, 1, 1)
    x[:, 1, 0, 0] = thresholds
    y = torch.zeros(3, dtype=torch.long)

    def predict(xa):
        return torch.stack([xa[:, 1, 0, 0], xa[:, 0, 0, 0]], dim=1)

    x_adv, taken = linf_ascent(
        lambda xa, _y: xa[:, 0].sum((1, 2)),
        x,
        y,
        torch.zeros_like(x),
        eps=1.0,
        steps=8,
        step_size=0.1,
        predict=predict,
        tau=tau,
    )
    # first misclassified iterate: after 3 steps (0.3 > 0.25) and after 1 step (0.1 > 0.05)
    assert taken.tolist() == [3 + tau, 1 + tau, 8]
    torch.testing.assert_close(
        x_adv[:, 0, 0, 0], torch.tensor([0.3, 0.1, 0.8]) + 0.1 * torch.tensor([tau, tau, 0])
    )
    torch.testing.assert_close(x_adv[:, 1], x[:, 1])  # zero gradient: the threshold stays


def test_fat_logs_its_mean_steps_and_spends_fewer_than_pgd():
    torch.manual_seed(0)
    method = create_method("ce", create_model("test_cnn", num_classes=10))
    x, y = batch(16)
    (out,) = run_steps(FAT(tau=0, steps=5), method, x, y)
    assert 0 <= out["fat_steps"].item() < 5  # an untrained net misclassifies most samples


def test_free_at_carries_the_perturbation_over_replays_and_batches():
    torch.manual_seed(0)
    method = Spy(TinyNet(classes=3))
    scheme = FreeAT(eps=EPS, replays=3)
    assert scheme.step_size == EPS and scheme.replays == 3
    x1 = 0.25 + 0.5 * torch.rand(4, 3, 4, 4)  # interior: clipping to [0, 1] is inactive
    x2 = 0.25 + 0.5 * torch.rand(4, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 0])
    run_steps(scheme, method, x1, y, lr=0.1)
    run_steps(scheme, method, x2, y, lr=0.1)
    inputs = method.trained_on
    assert len(inputs) == 6
    deltas = [inp.detach() - base for inp, base in zip(inputs, [x1] * 3 + [x2] * 3, strict=True)]
    torch.testing.assert_close(deltas[0], torch.zeros_like(x1))  # starts at zero
    for i in range(5):  # replay i+1 (and the next batch's first replay) continues from replay i
        expected = (deltas[i] + EPS * inputs[i].grad.sign()).clamp(-EPS, EPS)
        torch.testing.assert_close(deltas[i + 1], expected, atol=1e-6, rtol=0)
    assert deltas[3].abs().max() > 0  # carried across batches, not reset


def test_free_at_restarts_when_the_batch_shape_changes():
    scheme = FreeAT(replays=1)
    method = Spy(TinyNet())
    run_steps(scheme, method, torch.rand(4, 3, 4, 4), torch.zeros(4, dtype=torch.long))
    x = torch.rand(4, 3, 5, 5)
    run_steps(scheme, method, x, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(method.trained_on[-1].detach(), x)


# ------------------------------------------------------------------ options
def test_options_are_validated_with_clear_errors():
    bad = [
        ("pgd_at", {"eps": -0.1}, "eps"),
        ("pgd_at", {"steps": 0}, "steps"),
        ("pgd_at", {"mode": "inference"}, "mode"),
        ("fgsm_rs", {"step_size": "ten"}, "step_size"),
        ("trades", {"beta": -1}, "beta"),
        ("fat", {"tau": -1}, "tau"),
        ("fat", {"omega": -0.1}, "omega"),
        ("free_at", {"replays": 0}, "replays"),
        ("free_at", {"mode": "eval"}, "mode"),
        ("pgd_at", {"epsilon": 0.1}, "epsilon"),
    ]
    for name, options, word in bad:
        with pytest.raises(ConfigError, match=word):
            create_scheme(name, **options)
    assert pixels("8/255", "eps") == pytest.approx(8 / 255)
    assert PGDAT(eps="4/255").step_size == pytest.approx(1 / 255)
    assert PGDAT(eps=0.0).eps == 0.0


# ------------------------------------------------------------------ through the trainer
@pytest.fixture(scope="module")
def tiny_data():
    return prepare_data("shapes", n_train=64, n_test=32)


@pytest.mark.parametrize("method_name", ["ce", "cifs", "cas"])
@pytest.mark.parametrize("name", [*CRAFTED, "free_at"])
def test_schemes_compose_with_methods_through_the_trainer(tmp_path, tiny_data, method_name, name):
    at_args = {"steps": 2} if name in ("pgd_at", "trades", "fat") else {}
    if name == "free_at":
        at_args = {"replays": 2}
    cfg = make_config(
        {
            "model": "test_cnn",
            "data": "shapes",
            "method": method_name,
            "at": name,
            "at_args": at_args,
            "batch_size": 16,
            "steps": 4,
            "log_every": 1,
            "progress": False,
        }
    )
    results = train(cfg, tmp_path / "run", data=tiny_data)
    assert 0.0 <= results["clean"]["accuracy"] <= 1.0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == (2 if name == "free_at" else 4)  # Free-AT: budget / replays
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    last = records[-1]
    assert math.isfinite(last["loss"])
    expected = {"trades": "loss_trades_kl", "fat": "fat_steps"}.get(name, "loss_ce")
    assert expected in last
    if method_name != "ce":
        assert {"loss_probe1", "loss_probe2"} <= set(last)
