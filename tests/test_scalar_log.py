"""TensorBoard scalars beside metrics.jsonl (issue 32, item 7)."""

from __future__ import annotations

import json

import pytest

from robustfeat.data import prepare_data
from robustfeat.scalar_log import scalars
from robustfeat.train import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_scalars_are_every_number_of_a_record_by_tag():
    record = {"step": 7, "loss": 1.5, "lr": 0.1, "eta": {"s1": 0.25, "s3": 0.75}, "note": "x"}
    assert scalars(record) == {"loss": 1.5, "lr": 0.1, "eta/s1": 0.25, "eta/s3": 0.75}


def test_a_run_writes_its_log_records_as_tensorboard_scalars(tmp_path, tiny_resnet_config):
    data = prepare_data("shapes", n_train=128, n_test=32)
    cfg = tiny_resnet_config(epochs=2, log_every=2)
    train(cfg, tmp_path / "run", data=data)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "loss_ce", "train_acc", "lr", "img_per_s"} <= tags
    for tag in ("loss", "lr"):
        logged = [(r["step"], r[tag]) for r in records if tag in r]
        written = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in written] == [s for s, _ in logged]
        for (_, a), (_, b) in zip(written, logged, strict=True):
            assert a == pytest.approx(b, rel=1e-6)  # event files store float32
    # switched off: no event files
    train(tiny_resnet_config(epochs=2, tensorboard=False), tmp_path / "off", data=data)
    assert not (tmp_path / "off" / "tensorboard").exists()
