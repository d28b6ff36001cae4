"""Invariant fuzzing (hypothesis) of the parts every result rests on.

Attacks, through the public registry (``robustfeat.attacks``); test_attacks.py already fuzzes the
threat model (ball, box, dtype, mode and RNG discipline) on samples that start correct, so these
fuzz other properties: an attack never turns a misclassified sample into a correct one (robust
accuracy <= clean accuracy, per sample), it has no side effects on its inputs, the model's
parameters or their gradients (adversarial training crafts examples between backward passes),
and the deterministic ones treat samples independently of their place in the batch.

Data: batched augmentation keeps shape, dtype and range, takes its values from the image, and
is a function of the generator seed; the batch loader, which resume relies on, yields from
``start`` exactly the batches of a full epoch, and the ranks' slices add up to the whole batch.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from robustfeat.attacks import create_attack, list_attacks
from robustfeat.data.base import ImageDataset
from robustfeat.data.loader import BatchLoader
from robustfeat.data.transforms import (
    PADDING_MODES,
    Augment,
    RandomCrop,
    RandomHorizontalFlip,
    crop_at,
    flip_where,
)
from test_attacks import CHEAP  # the cheapest settings of each registered attack

FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLASSES = 5  # APGD-T / FAB-T need >= 4


def small_model(seed: int, channels: int = 3) -> nn.Module:
    """A random conv net with BatchNorm (eval mode: running statistics), any input size."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, CLASSES),
    )
    model[1].running_mean.uniform_(-0.2, 0.2)
    model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def attack_inputs(seed: int, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of which (with a random model) most start misclassified."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=generator)
    return x, torch.randint(0, CLASSES, (batch,), generator=generator)


def predictions_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


attack_cases = dict(
    name=st.sampled_from(list_attacks()),
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.01, 0.5),
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 12),
    size=st.sampled_from([8, 16]),  # torchattacks' L2 Square needs some sizes (see test_attacks)
)


@FUZZ
@given(**attack_cases)
def test_an_attack_never_corrects_a_misclassified_sample(name, norm, eps, seed, batch, size):
    model = small_model(seed)
    x, y = attack_inputs(seed, batch, size)
    x_adv = create_attack(name, eps=eps, norm=norm, seed=seed, **CHEAP.get(name, {}))(model, x, y)
    robust, clean = predictions_correct(model, x_adv, y), predictions_correct(model, x, y)
    assert not (robust & ~clean).any()  # robust => clean, sample by sample


@FUZZ
@given(**attack_cases)
def test_an_attack_has_no_side_effects(name, norm, eps, seed, batch, size):
    model = small_model(seed)
    x, y = attack_inputs(seed, batch, size)
    x_before, y_before = x.clone(), y.clone()
    frozen = model[0].bias
    frozen.requires_grad_(False)
    for p in model.parameters():  # gradients accumulated by a training step in progress
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    create_attack(name, eps=eps, norm=norm, seed=seed, **CHEAP.get(name, {}))(model, x, y)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert {k: p.grad is not None for k, p in model.named_parameters()} == {
        k: k in grads for k, _ in model.named_parameters()
    }
    assert all(torch.equal(p.grad, grads[k]) for k, p in model.named_parameters() if k in grads)
    assert not frozen.requires_grad and all(
        p.requires_grad for p in model.parameters() if p is not frozen
    )


DETERMINISTIC = {
    "fgsm": {},
    "pgd": {"steps": 4, "random_start": False},
    "cw": {"steps": 4, "random_start": False},
}


@FUZZ
@given(
    name=st.sampled_from(sorted(DETERMINISTIC)),
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.01, 0.5),
    seed=st.integers(0, 2**16),
    batch=st.integers(2, 10),
    early_stop=st.booleans(),
)
def test_deterministic_attacks_do_not_depend_on_the_batch_order(
    name, norm, eps, seed, batch, early_stop
):
    model = small_model(seed)
    x, y = attack_inputs(seed, batch, 8)
    options = dict(DETERMINISTIC[name], **({"early_stop": early_stop} if name != "fgsm" else {}))
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
    attack = create_attack(name, eps=eps, norm=norm, **options)
    x_adv = attack(model, x, y)
    x_adv_perm = attack(model, x[perm], y[perm])
    torch.testing.assert_close(x_adv_perm, x_adv[perm], atol=1e-6, rtol=0)


# ------------------------------------------------------------------ batched augmentation
images = st.tuples(
    st.integers(1, 6), st.sampled_from([1, 3]), st.integers(4, 12), st.integers(4, 12)
).map(lambda s: torch.rand(*s, generator=torch.Generator().manual_seed(sum(s))))


@FUZZ
@given(
    x=images,
    padding=st.integers(0, 4),
    mode=st.sampled_from(PADDING_MODES),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_augmentation_keeps_shape_range_and_values_and_is_a_function_of_the_seed(
    x, padding, mode, p, seed
):
    assume(mode != "reflect" or padding < min(x.shape[2:]))  # else a ConfigError (bad input)
    augment = Augment(RandomCrop(padding, mode, fill=0.0), RandomHorizontalFlip(p))
    out = augment(x, torch.Generator().manual_seed(seed))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    for image, source in zip(out, x, strict=True):  # values come from the image (or the fill)
        allowed = set(source.flatten().tolist()) | ({0.0} if mode == "constant" else set())
        assert set(image.flatten().tolist()) <= allowed
    again = augment(x, torch.Generator().manual_seed(seed))
    assert torch.equal(out, again)


@FUZZ
@given(x=images, padding=st.integers(1, 4), mode=st.sampled_from(PADDING_MODES))
def test_crop_at_the_centre_and_double_flip_are_identities(x, padding, mode):
    assume(mode != "reflect" or padding < min(x.shape[2:]))
    centre = torch.full((x.shape[0],), padding)
    assert torch.equal(crop_at(x, padding, centre, centre, mode), x)
    flags = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(x.numel())) < 0.5
    assert torch.equal(flip_where(flip_where(x, flags), flags), x)


@FUZZ
@given(x=images, shift=st.integers(0, 8), seed=st.integers(0, 2**31))
def test_a_crop_is_a_translation_of_the_padded_image(x, shift, seed):
    """Constant padding (fill 0) at offset (top, left): out[r, c] = x[r + top - p, c + left - p]."""
    padding = 4
    generator = torch.Generator().manual_seed(seed)
    top = torch.randint(0, 2 * padding + 1, (x.shape[0],), generator=generator)
    left = (top + shift) % (2 * padding + 1)
    out = crop_at(x, padding, top, left, "constant")
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    for i in range(x.shape[0]):
        window = padded[i, :, top[i] : top[i] + x.shape[2], left[i] : left[i] + x.shape[3]]
        assert torch.equal(out[i], window)


# ------------------------------------------------------------------ the batch loader (resume)
def tiny_dataset(n: int) -> ImageDataset:
    pixels = torch.arange(n * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8)
    return ImageDataset(pixels.view(n, 3, 4, 4), torch.arange(n) % 3, 3, ["a", "b", "c"])


@FUZZ
@given(
    n=st.integers(8, 40),
    batch_per_rank=st.integers(1, 4),
    world=st.sampled_from([1, 2, 4]),
    epoch=st.integers(0, 3),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_loader_resumes_mid_epoch_and_ranks_partition_the_batch(
    n, batch_per_rank, world, epoch, seed, data
):
    dataset, batch = tiny_dataset(n), batch_per_rank * world
    if batch > n:
        return
    augment = Augment(RandomCrop(1), RandomHorizontalFlip())

    def loader(rank: int = 0, size: int = 1) -> BatchLoader:
        return BatchLoader(dataset, batch, augment=augment, seed=seed, rank=rank, world_size=size)

    full = list(loader().batches(epoch))
    start = data.draw(st.integers(0, len(full)))
    resumed = list(loader().batches(epoch, start=start))
    assert len(resumed) == len(full) - start
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(resumed, full[start:], strict=True)
    )
    shards = [list(loader(rank, world).batches(epoch)) for rank in range(world)]
    for i, (x, y) in enumerate(full):
        assert torch.equal(torch.cat([s[i][0] for s in shards]), x)
        assert torch.equal(torch.cat([s[i][1] for s in shards]), y)
