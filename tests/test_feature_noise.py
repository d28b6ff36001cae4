"""Gaussian feature noise (ALFA's Table 7 baseline): sigma, sites, loss composition."""

import pytest
import torch

from robustfeat.errors import ConfigError
from robustfeat.methods import create_method
from robustfeat.models import create_model


def test_noise_has_the_configured_sigma_and_is_fresh_each_call():
    model = create_model("test_cnn", num_classes=5)
    method = create_method("feature_noise", model, sigma=0.05)
    assert method.site_names == ["stage3.0"]  # the last block, as ALFA
    clean = torch.zeros(64, 32, 8, 8)
    site = method.sites[0]
    noise = method._perturbation(site, clean, clean, torch.zeros(64, dtype=torch.long))
    assert noise.shape == clean.shape and noise.dtype == torch.float32
    assert noise.std().item() == pytest.approx(0.05, rel=0.02)
    assert abs(noise.mean().item()) < 0.002
    again = method._perturbation(site, clean, clean, torch.zeros(64, dtype=torch.long))
    assert not torch.equal(noise, again)
    assert create_method("feature_noise", model).sigma == pytest.approx(1 / 255)


def test_noise_training_step_composes_like_alfa():
    model = create_model("test_cnn", num_classes=5)
    method = create_method("feature_noise", model, nodes="stage2.0", sigma=0.5).train()
    out = method(torch.rand(8, 3, 32, 32), torch.randint(0, 5, (8,)))
    assert out["loss"].item() == pytest.approx((out["loss_ce"] + out["loss_at"]).item() / 2)
    assert out["loss_at"].item() != pytest.approx(out["loss_ce"].item())
    # per-sample L2 norm of N(0, 0.5^2) noise over 16 * 16 * 16 features: about 0.5 * sqrt(4096)
    assert out["delta_l2"].item() == pytest.approx(0.5 * 4096**0.5, rel=0.05)
    out["loss"].backward()


def test_noise_option_errors():
    model = create_model("test_cnn", num_classes=5)
    with pytest.raises(ConfigError, match="sigma"):
        create_method("feature_noise", model, sigma=0)
    with pytest.raises(ConfigError, match="unknown option"):
        create_method("feature_noise", model, alpha=0.1)
