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
    relevance_summary,
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


def test_adaptive_attack_loss_crafts_the_adversarial_data_on_the_methods_objective(tiny_set):
    torch.manual_seed(0)
    cas = create_method("cas", create_model("test_cnn", num_classes=3))
    plain = channel_activation_analysis(cas, tiny_set, 1, steps=3, n=6)
    probe = channel_activation_analysis(cas, tiny_set, 1, steps=3, n=6, attack_loss="ce_probe1")
    assert plain["attack"]["loss"] == "ce" and probe["attack"]["loss"] == "ce_probe1"
    for key in ("accuracy", "magnitude_raw", "frequency"):  # the natural side is attack-free
        assert probe["natural"][key] == plain["natural"][key]
    assert probe["adversarial"]["magnitude_raw"] != plain["adversarial"]["magnitude_raw"]
    with pytest.raises(ConfigError, match="ce_beta2"):  # lists the valid names
        channel_activation_analysis(cas, tiny_set, 1, steps=3, attack_loss="nope")
    ce = create_method("ce", create_model("test_cnn", num_classes=3))
    with pytest.raises(ConfigError, match="none"):
        channel_activation_analysis(ce, tiny_set, 1, steps=3, attack_loss="ce_beta2")


def test_bad_class_index_is_a_config_error(tiny_set):
    with pytest.raises(ConfigError, match="class_index"):
        channel_activation_analysis(create_model("test_cnn", num_classes=3), tiny_set, 3)


def test_relevance_summary_averages_positive_and_negative_weight_channels():
    weights = [0.5, 0.2, 0.0, -0.1, -0.4]  # PR: first two, NR: last two, the zero in neither
    summary = relevance_summary(weights, {"adv": [1.0, 0.5, 9.0, 0.2, 0.4]})
    assert summary["adv"]["pr"] == pytest.approx(0.75)
    assert summary["adv"]["nr"] == pytest.approx(0.3)
    assert relevance_summary([1.0], {"x": [2.0]})["x"] == {"pr": 2.0, "nr": None}


def test_channels_cli_writes_numbers_plots_and_a_report_figure_index(tmp_path, capsys):
    from robustfeat.cli import main
    from robustfeat.config import make_config
    from robustfeat.report.build import load_external_figures
    from robustfeat.train import train

    cfg = make_config(
        {
            "model": "test_cnn",
            "method": "cifs",
            "data": "shapes",
            "data_args": {"n_train": 64, "n_test": 40},
            "batch_size": 32,
            "steps": 2,
            "progress": False,
        }
    )
    train(cfg, tmp_path / "cifs" / "seed0")  # the bench layout: <cell>/seed<k>
    out = tmp_path / "channels"
    args = [
        "channels",
        str(tmp_path / "cifs" / "seed0"),
        "--n",
        "3",
        "--steps",
        "2",
        "-o",
        str(out),
    ]
    # a class that is not in the data: one clear error, nothing written
    assert main([*args, "--class", "zebra"]) == 2
    assert "valid: " in capsys.readouterr().err and not out.exists()
    assert main([*args, "--class", "1", "--class", "0"]) == 0
    err = capsys.readouterr().err  # progress off a terminal: plain lines, one per class here
    assert "channels class 1 3/3 (100%)" in err and "channels class 0 3/3 (100%)" in err
    result = json.loads((out / "cifs-seed0-class1.json").read_text())
    assert result["class_index"] == 1 and result["n"] == 3
    summary = result["relevance_summary"]
    assert set(summary) == {
        "natural_magnitude",
        "natural_frequency",
        "adversarial_magnitude",
        "adversarial_frequency",
    }
    figures = load_external_figures(out)["CIFS"]
    assert [f.id for f in figures] == ["ext-cifs-seed0-class1", "ext-cifs-seed0-class0"]
    assert "PGD-2" in figures[0].caption


def _png_size(path):
    header = path.read_bytes()[16:24]  # IHDR width, height
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


def test_cams_cli_draws_the_same_images_for_every_run(tmp_path, capsys):
    from robustfeat.cli import main
    from robustfeat.config import make_config
    from robustfeat.report.build import load_external_figures
    from robustfeat.train import train

    runs = []
    for method in ("ce", "hnc"):
        cfg = make_config(
            {
                "model": "test_cnn",
                "method": method,
                "data": "shapes",
                "data_args": {"n_train": 64, "n_test": 40},
                "batch_size": 32,
                "steps": 2,
                "progress": False,
            }
        )
        train(cfg, tmp_path / method)
        runs.append(str(tmp_path / method))
    out = tmp_path / "cams"
    assert main(["cams", *runs, "--k", "10", "-o", str(out)]) == 2  # shapes has 10 classes
    assert "--k must be in [1, 9]" in capsys.readouterr().err and not out.exists()
    assert main(["cams", runs[0], runs[0], "-o", str(out)]) == 2  # the same name twice
    assert "duplicate figure names" in capsys.readouterr().err and not out.exists()
    assert main(["cams", *runs, "--n", "3", "--k", "2", "--n-metric", "20", "-o", str(out)]) == 0
    peaks = json.loads((out / "peakiness.json").read_text())
    assert set(peaks["runs"]) == {"ce", "hnc"} and peaks["runs"]["ce"]["n"] == 20
    assert peaks["runs"]["hnc"]["k"] == 2 and len(peaks["run_dirs"]) == 2
    assert "git_sha" in peaks["provenance"]
    figures = load_external_figures(out)["CAM"]
    assert [f.id for f in figures] == ["ext-ce-cams", "ext-hnc-cams"]
    # 3 rows (images) x (image + positive + 2 negatives) columns at 1.6 x 1.7 in, 120 dpi
    assert _png_size(out / "ce-cams.png") == (round(1.6 * 4 * 120), round(1.7 * 3 * 120))
