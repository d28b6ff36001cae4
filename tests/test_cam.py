"""Differentiable CAM, class maps of any model, CAM mode, Grad-CAM and the CAM figure."""

import sys

import pytest
import torch
from PIL import Image

from robustfeat.errors import ConfigError, MissingExtraError, RobustfeatError
from robustfeat.interpret.cam import (
    cam_from_features,
    class_activation_maps,
    class_maps,
    grad_cam,
    minmax_normalize,
    ranked_negatives,
    to_input_size,
)
from robustfeat.interpret.plots import cam_panel, save_cam_figure
from robustfeat.methods import create_method
from robustfeat.models import create_model


@pytest.mark.parametrize("name", ["test_cnn", "resnet20"])
def test_cam_after_gap_equals_the_logits(name):
    model = create_model(name, num_classes=7, **({"width": 4} if name == "resnet20" else {}))
    model.eval()
    x = torch.rand(3, 3, 32, 32)
    cams = class_activation_maps(model, x)
    assert cams.shape == (3, 7, 8, 8)
    assert torch.allclose(cams.mean((2, 3)), model(x), atol=1e-5)
    without_bias = class_activation_maps(model, x, bias=False)
    bias = model.get_classifier().bias
    assert torch.allclose(cams - without_bias, bias[None, :, None, None].expand_as(cams), atol=1e-6)


def test_cam_is_differentiable_into_the_backbone():
    model = create_model("test_cnn", num_classes=5)
    cams = class_activation_maps(model, torch.rand(2, 3, 32, 32))
    cams.pow(2).sum().backward()
    assert model.stem[0][0].weight.grad.abs().sum() > 0
    assert model.get_classifier().weight.grad.abs().sum() > 0


def test_cam_from_features_hand_computed():
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, 2 channels, 1, 2)
    fc = torch.nn.Linear(2, 1)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[10.0, 1.0]]))
        fc.bias.fill_(0.5)
    assert cam_from_features(features, fc).flatten().tolist() == [13.5, 24.5]


def test_class_maps_dispatch_top_gap_and_refuse_others():
    method = create_method("topgap", create_model("test_cnn", 4), width=4)
    net = method.eval_model()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(class_maps(net, x), net.class_maps(x))
    with pytest.raises(ConfigError, match="grad_cam"):
        class_maps(torch.nn.Conv2d(3, 4, 1), x)


def test_minmax_and_input_size():
    maps = torch.tensor([[[[1.0, 3.0], [5.0, 3.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    normed = minmax_normalize(maps)
    assert normed[0, 0].flatten().tolist() == [0.0, 0.5, 1.0, 0.5]
    assert normed[0, 1].abs().sum() == 0  # constant map -> zeros, no NaN
    assert to_input_size(maps, (6, 6)).shape == (1, 2, 6, 6)


def test_ranked_negatives_order_and_exclusion():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    positives = torch.tensor([[False, True, False, False]])
    assert ranked_negatives(scores, positives, 2).tolist() == [[3, 2]]
    assert ranked_negatives(scores, positives, 10).tolist() == [[3, 2, 0]]


def test_grad_cam_maps_restore_the_model_mode():
    model = create_model("test_cnn", num_classes=4).train()
    maps = grad_cam(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 3]))
    assert maps.shape == (2, 32, 32)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert model.training and all(m.training for m in model.modules())
    with pytest.raises(Exception, match="unknown Grad-CAM"):
        grad_cam(model, torch.rand(1, 3, 32, 32), method="magic")


def test_cam_panel_true_class_then_negatives_by_probability():
    model = create_model("test_cnn", num_classes=6).eval()
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 4, 5])
    maps, classes, probs = cam_panel(model, x, y, k=4)
    assert maps.shape == (3, 5, 32, 32)
    assert classes[:, 0].tolist() == y.tolist()
    assert all(int(y[i]) not in classes[i, 1:].tolist() for i in range(3))
    assert (probs[:, 1:-1] >= probs[:, 2:]).all()  # negatives ranked by probability
    full = model(x).softmax(1)
    assert torch.allclose(probs, full.gather(1, classes))


def test_cam_figure_png_has_one_row_per_image(tmp_path):
    model = create_model("test_cnn", num_classes=6)
    names = [f"class{i}" for i in range(6)]
    path = save_cam_figure(
        model, torch.rand(2, 3, 32, 32), torch.tensor([1, 2]), names, tmp_path / "f.png", k=4
    )
    with Image.open(path) as image:
        width, height = image.size
    assert width > 2.5 * height  # 2 rows of 6 panels (image, +, 4 negatives)


def test_grad_cam_without_the_cam_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # as if not installed
    model = create_model("resnet20", num_classes=10, width=4)
    with pytest.raises(MissingExtraError) as err:
        grad_cam(model, torch.rand(1, 3, 32, 32))
    assert isinstance(err.value, RobustfeatError)  # the CLI: one line, exit 2
    assert str(err.value) == (
        "Grad-CAM needs the optional package 'pytorch_grad_cam', not installed: "
        "pip install 'robustfeat[cam]'"
    )
