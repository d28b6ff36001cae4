"""CAM metrics on hand-built maps and models: IoU, sparsity, peakiness, ERF, cam_quality."""

import math

import pytest
import torch
from torch import nn

from robustfeat.bench import plan
from robustfeat.data import load_dataset
from robustfeat.data.base import ImageDataset
from robustfeat.interpret.cam import class_maps, positives_mask
from robustfeat.interpret.erf import erf_distance, erf_map, erf_value
from robustfeat.interpret.metrics import (
    cam_peakiness,
    cam_quality,
    cam_sparsity,
    iou_summary,
    localization_iou,
    negative_peakiness,
    positive_peakiness,
)
from robustfeat.methods import create_method
from robustfeat.models import create_model


def test_localization_iou_hand_computed():
    maps = torch.tensor([[[0.9, 0.6], [0.3, 0.0]]])
    mask = torch.tensor([[[True, True], [True, False]]])
    ious = localization_iou(maps, mask, [0.25, 0.5, 0.75])
    assert ious[:, 0].tolist() == pytest.approx([1.0, 2 / 3, 1 / 3])
    empty = localization_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool), [0.5])
    assert empty.item() == 1.0


def test_iou_summary_best_and_fixed_threshold():
    ious = torch.tensor([[0.2, 0.4], [0.9, 0.7], [0.1, 0.1]])
    out = iou_summary(ious, [0.25, 0.5, 0.75], fixed=0.75)
    assert out["iou_best"] == pytest.approx(0.8)
    assert out["iou_best_threshold"] == 0.5
    assert out["iou_fixed"] == pytest.approx(0.1)


def test_sparsity_is_the_l1_norm_over_the_map_size():
    maps = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])
    assert cam_sparsity(maps).tolist() == [0.5, 0.0]


def test_negative_peakiness_hand_computed():
    cams = torch.tensor(
        [[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]]]
    )
    scores = cams.mean((2, 3))  # 2.5, 0.5, 1.0
    positives = torch.tensor([[True, False, False]])
    assert negative_peakiness(cams, scores, positives, 1).item() == 0.0  # flat class 2 first
    assert negative_peakiness(cams, scores, positives, 2).item() == pytest.approx(0.75)
    assert positive_peakiness(cams, positives).item() == pytest.approx(1.5)  # 4 - 2.5


def test_cam_peakiness_ratio_is_negative_over_positive_per_sample():
    torch.manual_seed(0)
    model = create_model("test_cnn", num_classes=3).eval()
    data = ImageDataset(
        torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8),
        torch.arange(6) % 3,
        3,
        ["a", "b", "c"],
    )
    result = cam_peakiness(model, data, n=5, k=2, batch_size=2)
    x, y = data.float_images(slice(0, 5)), data.labels[:5]
    with torch.no_grad():
        maps, logits = class_maps(model, x), model(x)
    positives = positives_mask(y, 3)
    pos, neg = positive_peakiness(maps, positives), negative_peakiness(maps, logits, positives, 2)
    assert result["n"] == 5 and result["k"] == 2
    assert result["positive"] == pytest.approx(float(pos.mean()), rel=1e-5)
    assert result["negative"] == pytest.approx(float(neg.mean()), rel=1e-5)
    assert result["ratio"] == pytest.approx(float((neg / pos).mean()), rel=1e-5)


class _BoxSum(nn.Module):
    """Output map = 3x3 box sum of the input summed over colour channels (zero padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        nn.init.ones_(self.conv.weight)

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_maps(x).mean((2, 3))


def _spike_erf(ones: int, total: int) -> float:
    """mean |z| of a vector of ``ones`` ones and zeros elsewhere (unbiased std)."""
    mean = ones / total
    std = math.sqrt((ones * (1 - mean) ** 2 + (total - ones) * mean**2) / (total - 1))
    return (ones * (1 - mean) + (total - ones) * mean) / (total * std)


def test_erf_distance_hand_computed_on_a_box_filter():
    x = torch.rand(2, 3, 8, 8)
    values = erf_distance(_BoxSum(), x)
    total = 3 * 8 * 8
    center, corner = _spike_erf(27, total), _spike_erf(12, total)  # 3x3 vs 2x2 pixels x 3
    assert values["center"].tolist() == pytest.approx([center] * 2, rel=1e-5)
    assert values["corner"].tolist() == pytest.approx([corner] * 2, rel=1e-5)
    assert values["distance"].tolist() == pytest.approx([center - corner] * 2, rel=1e-5)
    raw = erf_distance(_BoxSum(), x, normalize="none")
    assert raw["center"][0].item() == pytest.approx(27 / total)
    assert raw["corner"][0].item() == pytest.approx(12 / total)
    picture = erf_map(_BoxSum(), x, "corner")
    assert picture[0, :2, :2].tolist() == [[3.0, 3.0], [3.0, 3.0]] and picture[0].sum() == 12


def test_erf_value_is_scale_free_and_bounded():
    grad = torch.randn(4, 3, 16, 16)
    assert torch.allclose(erf_value(grad), erf_value(1000 * grad), atol=1e-5)
    assert (erf_value(grad) <= 1).all()


def test_erf_of_a_staged_model_uses_the_last_stage_features():
    model = create_model("test_cnn", num_classes=3).train()
    values = erf_distance(model, torch.rand(2, 3, 32, 32))
    assert values["center"].shape == (2,) and (values["center"] > 0).all()
    assert model.training  # eval mode only during the measurement


class _MaskReader(nn.Module):
    """Class 0's map is the image's red channel, class 1's the green one."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x[:, :2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_maps(x).mean((2, 3))


def test_cam_quality_of_perfect_maps():
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 1:5] = True
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    images[:, 0][masks] = 255  # red = the object
    data = ImageDataset(images, torch.zeros(4, dtype=torch.long), 2, ["a", "b"], masks=masks)
    out = cam_quality(_MaskReader(), data, n=None, batch_size=3)
    assert out["n"] == 4 and out["localized"] == 4 and out["source"] == "cam"
    assert out["iou_best"] == pytest.approx(1.0)
    assert out["iou_fixed"] == pytest.approx(1.0)
    assert out["sparsity_l1"] == pytest.approx(16 / 64)
    assert out["neg_peakiness"] == 0.0  # green channel is empty
    assert out["accuracy"] == 1.0
    assert out["erf_center"] > 0 and "erf_distance" in out


def test_cam_quality_on_shapes_for_cam_top_gap_and_grad_cam():
    data = load_dataset("shapes", "test", n_test=12)
    model = create_model("test_cnn", num_classes=10)
    cam = cam_quality(model, data, n=8, erf=False)
    assert cam["source"] == "cam" and cam["map_size"] == [8, 8]
    assert 0 <= cam["iou_fixed"] <= cam["iou_best"] <= 1
    grad = cam_quality(model, data, n=8, source="gradcam", erf=False)
    assert grad["source"] == "gradcam" and "neg_peakiness" in grad
    topgap = create_method("topgap", create_model("test_cnn", 10), width=4)
    out = cam_quality(topgap, data, n=8, erf=False)
    assert out["map_size"] == [32, 32]


def test_shapes_cam_recipe_plans_every_cell(tmp_path):
    rows = plan("shapes-cam", results_dir=tmp_path)
    cells = {row.cell.name: row.cell for row in rows}
    assert len(cells) == 16 and len(rows) == 16  # one seed per cell
    assert cells["small_topgap_k32"].overrides["data_args"]["size_range"] == [0.2, 0.3]
    assert cells["spurious_hnc_kd"].args == {"variant": "kd"}
