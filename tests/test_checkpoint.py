"""Checkpoints round-trip bit-exactly and refuse damaged or foreign files."""

from __future__ import annotations

import pytest
import torch

from mrdl.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from helpers.checkpoints import rewritten_checkpoint


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




@pytest.mark.parametrize("value, dtype, message", [
    (float("inf"), torch.float32, "tensor 'decoder.head.weight' holds 1 inf or NaN value$"),
    (float("nan"), torch.float32, "tensor 'decoder.head.weight' holds 1 inf or NaN value$"),
    (1e300, torch.float64, r"tensor 'decoder.head.weight' holds 1 inf or NaN value \(as torch.float32\)$"),
])
def test_non_finite_weights_are_refused_by_name(tiny_model, tmp_path, value, dtype, message):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    weight = tiny_model.decoder.head.weight.detach().to(dtype).clone()
    weight.view(-1)[0] = value
    bad = rewritten_checkpoint(path, tmp_path / "bad.safetensors", tensors={"decoder.head.weight": weight})
    with pytest.raises(CheckpointError, match="is unusable: " + message.rstrip("$")) as caught:
        load_checkpoint(bad)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.uint8, torch.int32])
def test_non_floating_weights_are_refused_naming_the_expected_dtype(tiny_model, tmp_path, dtype):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    weight = (tiny_model.decoder.head.weight.detach() * 100).to(dtype)
    bad = rewritten_checkpoint(path, tmp_path / "bad.safetensors", tensors={"decoder.head.weight": weight})
    with pytest.raises(CheckpointError, match=f"tensor 'decoder.head.weight' has dtype {dtype}, expected torch.float32"):
        load_checkpoint(bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_precisions_are_cast_to_float32(tiny_model, tmp_path, dtype):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in tiny_model.state_dict().items()}
    model, _ = load_checkpoint(rewritten_checkpoint(path, tmp_path / "cast.safetensors", tensors=state))
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == tiny_model.state_dict()[name].dtype, name
        assert torch.equal(tensor, state[name].to(tensor.dtype)), name


@pytest.mark.parametrize("config, message", [
    ('{"model": 5}', "model must be a JSON object of settings, got 5"),
    ("[]", "a config must be a JSON object"),
    ('"tiny"', "a config must be a JSON object"),
    ('{"model": {"image_size": 1048576}}', r"model.image_size must be in \[32, 4096\], got 1048576"),
    ('{"model": {"base_width": 100000, "heads": 2}}', r"model.base_width must be in \[2, 512\]"),
    ('{"model": {"heads": 0}}', r"model.heads must be in \[1, 64\], got 0"),
    ('{"model": {"image_size": "64"}}', "model.image_size must be an integer, got '64'"),
    ('{"model": {"mlp_ratio": NaN}}', "model.mlp_ratio must be a finite number, got nan"),
    ('{"model": {"text": {"layers": 100000}}}', r"model.text.layers must be in \[1, 64\]"),
    ('{"model": {"text": []}}', "model.text must be a JSON object"),
    ('{"loss": {"kl_weight": true}}', "loss.kl_weight must be a finite number, got True"),
    ('{"train": null}', "train must be a JSON object"),
    ('{"name": 7}', "name must be a string"),
])
def test_malformed_config_is_refused_in_one_line(tiny_model, tmp_path, config, message):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    bad = rewritten_checkpoint(path, tmp_path / "bad.safetensors", config=config)
    with pytest.raises(CheckpointError, match="has an unreadable config: .*" + message) as caught:
        read_checkpoint(bad)
    assert "\n" not in str(caught.value)


def test_a_directory_is_not_a_checkpoint(tmp_path):
    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="is a directory; expected a .safetensors file"):
        read_checkpoint(folder)


def test_named_configs_are_within_the_limits():
    from mrdl.config import available_configs, load_config

    assert {"tiny", "small", "base"} <= set(available_configs())
    for name in available_configs():
        load_config(name)
