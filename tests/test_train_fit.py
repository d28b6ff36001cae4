"""Train fit (results["train"]): accuracy on the un-augmented training images, in eval mode,
and memorisation of injected label noise (issue 30)."""

import json

import torch
from torch import nn

from robustfeat.data import prepare_data
from robustfeat.data.base import ImageDataset
from robustfeat.evaluate import train_fit
from robustfeat.runs import load_run
from robustfeat.train import train


class PixelClassifier(nn.Module):
    """Predicts the class written in pixel (0, 0, 0); records the mode it was called in."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(()))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        cls = (x[:, 0, 0, 0] * 255).round().long()
        return nn.functional.one_hot(cls, self.num_classes).float() + self.anchor


def dataset(predicted: list[int], labels: list[int], clean: list[int] | None) -> ImageDataset:
    images = torch.zeros(len(predicted), 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(predicted, dtype=torch.uint8)
    return ImageDataset(
        images=images,
        labels=torch.tensor(labels),
        num_classes=3,
        class_names=["a", "b", "c"],
        clean_labels=None if clean is None else torch.tensor(clean),
    )


def test_train_fit_is_eval_mode_accuracy_against_the_training_labels():
    model = PixelClassifier(3).train()
    fit = train_fit(model, dataset([0, 1, 2, 2, 0], [0, 1, 2, 1, 1], None), batch_size=2)
    assert fit["accuracy"] == 3 / 5 and fit["n"] == 5
    assert "memorised" not in fit
    assert model.modes and not any(model.modes)  # every batch in eval mode
    assert model.training  # and the mode is restored


def test_train_fit_measures_memorisation_of_noisy_labels():
    # 6 images: labels 2, 3 and 5 are wrong (noisy != clean). The model predicts the noisy label
    # on images 2 and 3 (memorised) and the true one on image 5.
    predicted = [0, 1, 2, 0, 1, 2]
    noisy = [0, 1, 2, 0, 1, 0]
    clean = [0, 1, 1, 2, 1, 2]
    fit = train_fit(PixelClassifier(3), dataset(predicted, noisy, clean))
    assert fit["accuracy"] == 5 / 6  # against the labels it was trained on
    assert fit["accuracy_true_labels"] == 4 / 6
    assert fit["mislabelled"] == 3 / 6
    assert fit["memorised"] == 2 / 3


def test_a_training_run_records_its_train_fit_beside_test_accuracy(tmp_path, tiny_resnet_config):
    data = prepare_data("shapes", n_train=128, n_test=64, label_noise=0.5)
    results = train(tiny_resnet_config(), tmp_path / "run", data=data)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["train"] == results["train"]
    fit = saved["train"]
    assert fit["n"] == 128
    assert fit["mislabelled"] == data.train.meta["label_noise"]["realized_rate"]
    # the same weights, re-measured by hand on the un-augmented training images
    model = load_run(tmp_path / "run").eval_model()
    with torch.no_grad():
        logits = model(data.train.images.float() / 255)
    expected = (logits.argmax(1) == data.train.labels).float().mean().item()
    assert abs(fit["accuracy"] - expected) < 1e-6
