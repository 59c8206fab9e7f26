"""Checkpoints round-trip bit-exactly and refuse damaged or foreign files."""

from __future__ import annotations

import pytest
import torch

from mrdl.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint


def test_round_trip_is_bit_exact(tiny_model, tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model, provenance={"dataset": "synthetic", "step": 7})
    model, ckpt = load_checkpoint(path)
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    assert ckpt.provenance["step"] == 7 and ckpt.provenance["dataset"] == "synthetic"
    assert ckpt.config == tiny_model.config
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_truncated_checkpoint_fails_clearly(tiny_model, tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(path)


def test_flipped_bytes_fail_the_digest(tiny_model, tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(path)


def test_foreign_file_is_not_ours(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not an mrdl checkpoint"):
        read_checkpoint(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_other_config_is_refused(tiny_model, tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    with pytest.raises(CheckpointError, match="architecture differs"):
        load_checkpoint(path, expected_config="small")


def test_phase_override_keeps_weights(tiny_model, tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    model, _ = load_checkpoint(path, phase="matmul")
    assert model.config.model.phase == "matmul"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = tiny_model.eval()(x).logits, model.eval()(x).logits
    assert torch.allclose(a, b, atol=1e-4)
