import json

import pytest
import torch

from robustfeat.data.base import ImageDataset
from robustfeat.errors import ConfigError
from robustfeat.interpret.channels import (
    activation_frequency,
    channel_activation_analysis,
    penultimate_activations,
    plot_channel_activations,
)
from robustfeat.methods import create_method
from robustfeat.models import create_model


def test_activation_frequency_counts_channels_above_one_percent_of_the_sample_max():
    acts = torch.tensor([[1.0, 0.005, 0.02], [0.0, 2.0, 0.03]])
    # thresholds 0.01 and 0.02: sample 0 activates channels 0, 2; sample 1 channels 1, 2
    assert activation_frequency(acts).tolist() == [0.5, 0.5, 1.0]
    assert activation_frequency(acts, threshold=0.5).tolist() == [0.5, 0.5, 0.0]


def test_penultimate_activations_are_what_the_classifier_pools():
    torch.manual_seed(0)
    model = create_model("test_cnn", num_classes=10).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        acts = penultimate_activations(model, x)
        torch.testing.assert_close(model.fc(acts), model(x))


@pytest.fixture(scope="module")
def tiny_set():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(24) % 3
    return ImageDataset(images, labels, 3, ["a", "b", "c"], name="tiny")


@pytest.mark.parametrize("method_name", ["ce", "cifs"])
def test_analysis_orders_channels_by_the_class_weights_and_compares_natural_and_pgd(
    tiny_set, tmp_path, method_name
):
    torch.manual_seed(0)
    method = create_method(method_name, create_model("test_cnn", num_classes=3))
    result = channel_activation_analysis(method, tiny_set, 1, steps=3, n=6)
    json.dumps(result)  # JSON-ready
    weights = method.model.fc.weight[1].detach()
    assert result["channel_order"] == torch.argsort(weights, descending=True).tolist()
    assert result["weights_sorted"] == sorted(result["weights_sorted"], reverse=True)
    assert result["n"] == 6 and result["class_name"] == "b" and result["layer"] == "stage3.0"
    nat, adv = result["natural"], result["adversarial"]
    peak = max(max(nat["magnitude"]), max(adv["magnitude"]))
    assert peak == pytest.approx(1.0)
    scale = max(max(nat["magnitude_raw"]), max(adv["magnitude_raw"]))
    assert nat["magnitude"][0] * scale == pytest.approx(nat["magnitude_raw"][0])
    assert all(0 <= f <= 1 for f in nat["frequency"] + adv["frequency"])
    assert adv["accuracy"] <= nat["accuracy"]
    assert len(nat["magnitude"]) == method.model.fc.in_features
    path = plot_channel_activations(result, tmp_path / "fig" / "channels.png")
    assert path.stat().st_size > 1000


def test_bad_class_index_is_a_config_error(tiny_set):
    with pytest.raises(ConfigError, match="class_index"):
        channel_activation_analysis(create_model("test_cnn", num_classes=3), tiny_set, 3)
