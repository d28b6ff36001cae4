import os
import pickle
import stat

import pytest
import torch

from robustfeat import io
from robustfeat.errors import CheckpointError


def test_tensors_roundtrip_and_no_temp_files_left(tmp_path):
    t = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    io.save_tensors(tmp_path / "w.safetensors", t)
    back = io.load_tensors(tmp_path / "w.safetensors")
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["b"], t["b"])
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_truncated_file_is_a_checkpoint_error(tmp_path):
    io.save_tensors(tmp_path / "w.safetensors", {"a": torch.ones(100)})
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        io.load_tensors(tmp_path / "w.safetensors")


def test_nan_weights_refused(tmp_path):
    nan = {"a": torch.tensor([1.0, float("nan")])}
    io.save_tensors(tmp_path / "w.safetensors", nan, check_finite=False)  # written elsewhere
    with pytest.raises(CheckpointError, match="NaN"):
        io.load_tensors(tmp_path / "w.safetensors")


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_malicious_pickle_is_refused_without_executing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(_Boom(), protocol=2))
    with pytest.raises(CheckpointError, match="pickle"):
        io.load_tensors(tmp_path / "evil.safetensors")
    assert not (tmp_path / "PWNED").exists()


def test_state_dict_mismatch_is_explained(tmp_path):
    small, big = torch.nn.Linear(2, 3), torch.nn.Linear(2, 4)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*\(4, 2\) vs model \(3, 2\)"):
        io.load_state_into(small, big.state_dict(), "ckpt")


def test_json_is_strict_and_nan_becomes_null(tmp_path):
    io.write_json(
        tmp_path / "r.json",
        {"x": float("nan"), "y": [1.0, float("inf")], "t": torch.tensor([1, 2])},
    )
    assert (tmp_path / "r.json").read_text().replace(" ", "").replace(
        "\n", ""
    ) == '{"x":null,"y":[1.0,null],"t":[1,2]}'


def test_optimizer_state_roundtrip():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.full((3,), 2.0)
    opt.step()
    tensors, rest = io.optimizer_to_tensors(opt)
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.SGD([q], lr=0.5, momentum=0.9)
    io.optimizer_from_tensors(opt2, tensors, rest)
    assert torch.equal(opt2.state[q]["momentum_buffer"], opt.state[p]["momentum_buffer"])
    assert opt2.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        io.atomic_write_bytes(tmp_path / "a.json", b"{}")
        io.save_tensors(tmp_path / "w.safetensors", {"x": torch.zeros(2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == mode
