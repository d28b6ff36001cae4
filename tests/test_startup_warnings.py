"""A method that cannot act in a run says so before training (issue 32, items 4-5): TENET whose
schedule never starts within the run's steps; CAM losses on class maps under 4x4."""

from __future__ import annotations

import pytest

from robustfeat.data import prepare_data
from robustfeat.interpret.cam import class_map_size
from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.train import train


@pytest.mark.parametrize(("start_step", "every"), [(500, 3), (0, 3), (1, 1), (7, 5), (10, 5)])
def test_tenet_first_active_step_is_the_first_step_its_schedule_fires(start_step, every):
    method = create_method(
        "tenet", create_model("test_cnn", num_classes=5), start_step=start_step, every=every
    ).train()
    fired = []
    for done in range(0, start_step + 2 * every):
        method.steps_done.fill_(done)
        if method.active():
            fired.append(done + 1)  # the 1-based number of the step about to run
    assert method.first_active_step() == fired[0]


def test_tenet_warns_when_its_schedule_never_starts_within_the_run():
    method = create_method("tenet", create_model("test_cnn", num_classes=5))
    (line,) = method.startup_warnings(300, (3, 32, 32))
    assert "first step is 501" in line and "300 steps" in line and "plain CE" in line
    assert method.startup_warnings(501, (3, 32, 32)) == []


def test_cam_methods_warn_when_their_class_maps_are_under_4x4():
    model = create_model("resnet20", num_classes=4, width=4)
    hnc = create_method("hnc", model)
    # ResNet-20's last stage is at stride 4: 8-px images give 2x2 CAMs, 32-px ones 8x8
    assert class_map_size(hnc.eval_model(), (3, 8, 8)) == (2, 2)
    (line,) = hnc.startup_warnings(100, (3, 8, 8))
    assert line.startswith("hnc: the class maps are 2x2 for (3, 8, 8) images")
    assert hnc.startup_warnings(100, (3, 32, 32)) == []
    # Top-GAP classifies from its FPN map at stage 1's resolution: 8x8 on 8-px images
    topgap = create_method("topgap", create_model("resnet20", num_classes=4, width=4), k=4)
    assert class_map_size(topgap.eval_model(), (3, 8, 8)) == (8, 8)
    assert topgap.startup_warnings(100, (3, 8, 8)) == []


def test_the_trainer_prints_the_methods_warnings_before_training(
    tmp_path, capsys, tiny_resnet_config
):
    data = prepare_data("shapes", n_train=64, n_test=32, image_size=8)
    cfg = tiny_resnet_config(method="hnc")
    train(cfg, tmp_path / "run", data=data)
    err = capsys.readouterr().err
    assert "warning: hnc: the class maps are 2x2" in " ".join(err.split())
