"""load_run: rebuild a Method from a run directory (config.yaml + safetensors weights)."""

from __future__ import annotations

import pytest
import torch
import yaml

from robustfeat import io
from robustfeat.config import make_config
from robustfeat.errors import CheckpointError
from robustfeat.methods import create_method
from robustfeat.models import create_model
from robustfeat.runs import infer_num_classes, load_run, read_run_config, run_info


def make_run(tmp_path, num_classes=7, metadata=None, where="weights.safetensors"):
    cfg = make_config(
        {"model": "resnet20", "model_args": {"width": 4}, "method": "ce", "data": "shapes"}
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    torch.manual_seed(3)
    model = create_model(
        "resnet20", num_classes, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5), width=4
    )
    method = create_method("ce", model)
    io.save_tensors(tmp_path / where, method.state_dict(), metadata=metadata)
    return cfg, method.eval()


def test_load_run_restores_outputs_and_normalization(tmp_path):
    cfg, original = make_run(tmp_path)
    loaded = load_run(tmp_path)
    assert not loaded.training
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval_model()(x), original.eval_model()(x))
    assert loaded.model.normalize.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert read_run_config(tmp_path) == cfg
    info = run_info(cfg, tmp_path)
    assert info["method"] == "ce" and info["model"] == "resnet20" and "git_sha" in info


def test_num_classes_from_weights_metadata_or_argument(tmp_path):
    cfg, _ = make_run(tmp_path, num_classes=5, metadata={"num_classes": "5"})
    assert load_run(tmp_path).num_classes == 5
    assert load_run(tmp_path, num_classes=5).num_classes == 5
    with pytest.raises(CheckpointError, match="does not fit"):
        load_run(tmp_path, num_classes=6)
    tensors = io.load_tensors(tmp_path / "weights.safetensors")
    assert infer_num_classes(cfg, tensors) == 5


def test_checkpoint_fallback_and_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.yaml"):
        load_run(tmp_path)
    make_run(tmp_path, where="checkpoints/step-000000010/weights.safetensors")
    io.write_json(tmp_path / "state.json", {"step": 10, "checkpoint": "checkpoints/step-000000010"})
    assert load_run(tmp_path).num_classes == 7  # an unfinished run: its latest checkpoint
    (tmp_path / "state.json").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_run(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        load_run(tmp_path)
