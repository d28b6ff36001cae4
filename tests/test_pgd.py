"""The FGSM / PGD core: invariants (ball, box, dtype, modes) and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustfeat.adversarial.pgd import fgsm, pgd, random_init
from robustfeat.errors import ConfigError
from robustfeat.losses import ce_loss, cw_loss, dlr_loss
from robustfeat.runtime import gaussian_like, model_mode


class Linear(nn.Module):
    """logits = W · flatten(x) + b with fixed weights (gradients known in closed form)."""

    def __init__(self, weight: list[list[float]], bias: list[float] | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight))
        self.bias = nn.Parameter(torch.tensor(bias or [0.0] * len(weight)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


class ModeSpy(nn.Module):
    """Records the ``training`` flag of itself and of a nested BN each forward."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(classes))
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, self.body[1].training))
        return self.head(self.body(x))


def tiny_net(channels: int, classes: int, dtype: torch.dtype) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, classes),
    )
    return net.to(dtype)


def dist(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    d = (x_adv - x).flatten(1).double()
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


# ------------------------------------------------------------------ invariants, fuzzed
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 4),
    channels=st.integers(1, 3),
    size=st.integers(2, 7),
    eps=st.floats(0.0, 0.6),
    norm=st.sampled_from(["linf", "l2"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    steps=st.integers(1, 4),
    restarts=st.integers(1, 3),
    early_stop=st.booleans(),
    loss=st.sampled_from(["ce", "cw", "dlr"]),
)
def test_pgd_stays_in_ball_and_box(
    batch, channels, size, eps, norm, dtype, steps, restarts, early_stop, loss
):
    torch.manual_seed(batch * 100 + size)
    model = tiny_net(channels, 3, dtype)
    x = torch.rand(batch, channels, size, size, dtype=dtype)
    x[0, 0, 0, 0] = 0.0  # pixels on the box boundary
    x[-1, -1, -1, -1] = 1.0
    y = torch.randint(0, 3, (batch,))
    x_adv = pgd(
        model,
        x,
        y,
        eps=eps,
        steps=steps,
        norm=norm,
        restarts=restarts,
        early_stop=early_stop,
        loss=loss,
    )
    assert x_adv.shape == x.shape and x_adv.dtype == dtype
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    tol = 4 * torch.finfo(dtype).eps
    assert (dist(x_adv, x, norm) <= eps + tol).all()
    assert not x_adv.requires_grad


@settings(max_examples=15, deadline=None)
@given(eps=st.floats(1e-3, 0.5), norm=st.sampled_from(["linf", "l2"]))
def test_random_init_in_ball(eps, norm):
    x = torch.rand(8, 3, 5, 5)
    delta = random_init(x, eps, norm, torch.Generator().manual_seed(1))
    assert (dist(x + delta, x, norm) <= eps + 1e-6).all()
    assert (x + delta).min() >= -1e-7 and (x + delta).max() <= 1 + 1e-7


def test_bfloat16_model_and_inputs():
    model = tiny_net(3, 3, torch.bfloat16)
    x = torch.rand(4, 3, 6, 6).to(torch.bfloat16)
    x_adv = pgd(model, x, torch.tensor([0, 1, 2, 0]), eps=8 / 255, steps=3)
    assert x_adv.dtype == torch.bfloat16
    assert (dist(x_adv, x, "linf") <= 8 / 255 + 2 * torch.finfo(torch.bfloat16).eps).all()


# ------------------------------------------------------------------ hand-computed cases
def test_fgsm_linear_model_matches_closed_form():
    # logits = x (identity W); for y=0 the CE gradient is (p0 - 1, p1): sign (-1, +1)
    model = Linear([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[[[0.5, 0.5]]], [[[0.02, 0.99]]]])
    x_adv = fgsm(model, x, torch.tensor([0, 0]), eps=0.1)
    torch.testing.assert_close(
        x_adv, torch.tensor([[[[0.4, 0.6]]], [[[0.0, 1.0]]]])
    )  # clipped to the box


def test_pgd_linear_model_reaches_optimal_vertex_and_l2_direction():
    # logit margin z1 - z0 = (w1 - w0) · x; the worst case in the ball is x + eps * sign(w1 - w0)
    model = Linear([[0.0, 0.0, 0.0], [2.0, -1.0, 0.5]])
    x = torch.full((1, 1, 1, 3), 0.5)
    y = torch.tensor([0])
    x_inf = pgd(model, x, y, eps=0.1, steps=20, step_size=0.02, random_start=False)
    torch.testing.assert_close(x_inf, x + 0.1 * torch.tensor([1.0, -1.0, 1.0]).view(1, 1, 1, 3))
    x_l2 = pgd(model, x, y, eps=0.2, steps=20, step_size=0.05, norm="l2", random_start=False)
    w = torch.tensor([2.0, -1.0, 0.5])
    torch.testing.assert_close(x_l2, x + 0.2 * (w / w.norm()).view(1, 1, 1, 3), atol=1e-6, rtol=0)


def test_cw_loss_hand_computed():
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    y = torch.tensor([0, 1])
    torch.testing.assert_close(cw_loss(logits, y), torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(cw_loss(logits, y, kappa=1.5), torch.tensor([1.5, -1.0]))


def test_dlr_loss_hand_computed_and_scale_invariant():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [3.0, 1.0, 0.0, -1.0]])
    y = torch.tensor([0, 2])
    expected = torch.tensor([-(3 - 1) / 3, (3 - 0) / 3])
    torch.testing.assert_close(dlr_loss(logits, y), expected)
    torch.testing.assert_close(dlr_loss(100 * logits + 7, y), expected)
    with pytest.raises(ConfigError):
        dlr_loss(torch.zeros(1, 2), torch.tensor([0]))


def _step_model() -> nn.Module:
    # two classes; class 1 wins once the single pixel exceeds 0.55
    return Linear([[0.0], [10.0]], [0.0, -5.5])


def test_early_stop_freezes_at_first_fooling_iterate():
    x = torch.full((1, 1, 1, 1), 0.5)
    y = torch.tensor([0])
    common = dict(eps=0.3, steps=10, step_size=0.02, random_start=False)
    last = pgd(_step_model(), x, y, **common)
    first = pgd(_step_model(), x, y, early_stop=True, **common)
    assert last.item() == pytest.approx(0.70, abs=1e-6)  # ten steps of 0.02
    assert first.item() == pytest.approx(0.56, abs=1e-6)  # fooled after three steps, then frozen


def test_early_stop_drops_finished_samples_from_the_batch():
    model = _step_model()
    sizes = []
    model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    x = torch.tensor([0.5, 0.2]).view(
        2, 1, 1, 1
    )  # the first is fooled after 3 steps, the second never
    pgd(
        model,
        x,
        torch.tensor([0, 0]),
        eps=0.1,
        steps=6,
        step_size=0.02,
        random_start=False,
        early_stop=True,
    )
    assert sizes == [2, 2, 2, 2, 1, 1]


def test_early_stop_compact_matches_masked():
    model = tiny_net(3, 4, torch.float32)  # no BN: train and eval forwards agree
    x, y = torch.rand(16, 3, 6, 6), torch.randint(0, 4, (16,))
    kw = dict(eps=16 / 255, steps=8, early_stop=True)
    compact = pgd(model, x, y, mode="eval", generator=torch.Generator().manual_seed(3), **kw)
    masked = pgd(model, x, y, mode="train", generator=torch.Generator().manual_seed(3), **kw)
    torch.testing.assert_close(compact, masked)


class Threshold(nn.Module):
    """Zero-gradient model: class 1 iff the mean pixel exceeds 0.5 (after rounding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x.flatten(1).mean(1) > 0.5).float()
        return torch.stack([1 - score, score], 1) + 0 * x.flatten(1)[:, :1]


def test_restarts_keep_the_first_fooling_start():
    # With zero gradients PGD never moves: success depends only on the random start, so the
    # expected result can be rebuilt from the same generator draws.
    model = Threshold()
    x = torch.full((64, 1, 1, 4), 0.49)
    y = torch.zeros(64, dtype=torch.long)
    eps = 0.03
    x_adv = pgd(
        model, x, y, eps=eps, steps=2, restarts=3, generator=torch.Generator().manual_seed(7)
    )

    gen = torch.Generator().manual_seed(7)
    expected = x.clone()
    todo = torch.arange(64)
    for run in range(3):
        start = x[todo] + random_init(x[todo], eps, "linf", gen)
        expected[todo] = start
        hit = start.flatten(1).mean(1) > 0.5
        if run < 2:
            todo = todo[~hit]
    torch.testing.assert_close(x_adv, expected)
    once = pgd(
        model, x, y, eps=eps, steps=2, restarts=1, generator=torch.Generator().manual_seed(7)
    )
    fooled = lambda z: (z.flatten(1).mean(1) > 0.5).sum().item()  # noqa: E731
    assert fooled(x_adv) > fooled(once) > 0


def test_targeted_reaches_target():
    torch.manual_seed(0)
    model = Linear(torch.randn(3, 12).tolist())
    x = torch.rand(32, 3, 2, 2)
    target = torch.randint(0, 3, (32,))
    x_adv = pgd(model, x, target, eps=1.0, steps=50, step_size=0.05, targeted=True)
    assert (model(x_adv).argmax(1) == target).float().mean() > 0.95


def test_objective_equals_named_loss():
    model = tiny_net(3, 4, torch.float32)
    x, y = torch.rand(8, 3, 6, 6), torch.randint(0, 4, (8,))
    a = pgd(model, x, y, eps=0.05, steps=4, generator=torch.Generator().manual_seed(0))
    b = pgd(
        model,
        x,
        y,
        eps=0.05,
        steps=4,
        objective=lambda xa, yy: ce_loss(model(xa), yy),
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(a, b)


def test_objective_with_early_stop_judges_the_model_logits():
    x = torch.full((1, 1, 1, 1), 0.5)
    model = _step_model()
    x_adv = pgd(
        model,
        x,
        torch.tensor([0]),
        eps=0.3,
        steps=10,
        step_size=0.02,
        random_start=False,
        early_stop=True,
        objective=lambda xa, yy: xa.flatten(1)[:, 0],
    )
    assert x_adv.item() == pytest.approx(0.56, abs=1e-6)


def test_nan_gradients_never_make_nan_images():
    class NaNGrad(nn.Module):
        def forward(self, x):
            h = torch.sqrt(x - x)  # gradient of sqrt at 0 is inf -> NaN after the chain rule
            return torch.stack([h.flatten(1).sum(1), -h.flatten(1).sum(1)], 1)

    x = torch.rand(4, 1, 2, 2)
    x_adv = pgd(NaNGrad(), x, torch.zeros(4, dtype=torch.long), eps=0.1, steps=3)
    assert torch.isfinite(x_adv).all()


def test_generator_makes_attacks_reproducible():
    model = tiny_net(3, 4, torch.float32)
    x, y = torch.rand(8, 3, 6, 6), torch.randint(0, 4, (8,))
    a = pgd(model, x, y, eps=0.05, steps=3, generator=torch.Generator().manual_seed(5))
    b = pgd(model, x, y, eps=0.05, steps=3, generator=torch.Generator().manual_seed(5))
    c = pgd(model, x, y, eps=0.05, steps=3, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_eps_zero_and_empty_batch_return_input():
    model = tiny_net(3, 4, torch.float32)
    x = torch.rand(3, 3, 4, 4)
    assert torch.equal(pgd(model, x, torch.zeros(3, dtype=torch.long), eps=0.0), x)
    empty = torch.rand(0, 3, 4, 4)
    assert pgd(model, empty, torch.zeros(0, dtype=torch.long), eps=0.1).shape == empty.shape


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(eps=-0.1),
        dict(eps=math.nan),
        dict(eps=0.1, norm="l1"),
        dict(eps=0.1, steps=0),
        dict(eps=0.1, restarts=0),
        dict(eps=0.1, step_size=0.0),
        dict(eps=0.1, loss="hinge"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        pgd(
            tiny_net(3, 4, torch.float32),
            torch.rand(1, 3, 4, 4),
            torch.zeros(1, dtype=torch.long),
            **kwargs,
        )


# ------------------------------------------------------------------ modes
@pytest.mark.parametrize("mode,expected", [("eval", (False, False)), ("train", (True, True))])
@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_model_mode_used_and_restored(mode, expected, attack):
    model = ModeSpy()
    model(torch.rand(2, 3, 4, 4))  # materialise the lazy layer
    model.train()
    model.body[1].eval()  # a nested module in its own mode must come back as it was
    before = [m.training for m in model.modules()]
    model.seen.clear()
    x, y = torch.rand(4, 3, 4, 4), torch.randint(0, 4, (4,))
    if attack == "pgd":
        pgd(model, x, y, eps=0.1, steps=2, mode=mode, restarts=2)
    else:
        fgsm(model, x, y, eps=0.1, mode=mode)
    assert set(model.seen) == {expected}
    assert [m.training for m in model.modules()] == before


def test_keep_mode_and_restore_on_error():
    model = ModeSpy()
    model(torch.rand(2, 3, 4, 4))
    model.eval()
    model.body.train()
    before = [m.training for m in model.modules()]
    model.seen.clear()
    pgd(
        model,
        torch.rand(2, 3, 4, 4),
        torch.zeros(2, dtype=torch.long),
        eps=0.1,
        steps=1,
        mode="keep",
    )
    assert set(model.seen) == {(False, True)}

    def boom(x_adv, y):
        raise RuntimeError("objective failed")

    with pytest.raises(RuntimeError):
        pgd(
            model,
            torch.rand(2, 3, 4, 4),
            torch.zeros(2, dtype=torch.long),
            eps=0.1,
            objective=boom,
            mode="train",
        )
    assert [m.training for m in model.modules()] == before
    with pytest.raises(ConfigError), model_mode(model, "inference"):
        pass


def test_gaussian_like_samples_contiguous_noise_of_the_tensors_shape():
    x = torch.zeros(4, 3, 5, 6).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(7)
    noise = gaussian_like(x, torch.float64)
    assert noise.shape == x.shape and noise.dtype == torch.float64
    assert noise.is_contiguous()  # not channels_last: randn_like's slow element-wise path
    torch.manual_seed(7)
    assert torch.equal(noise, torch.randn(4, 3, 5, 6, dtype=torch.float64))
    assert gaussian_like(x.half()).dtype == torch.float16
