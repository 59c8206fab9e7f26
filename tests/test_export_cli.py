"""The mrdl-export command through click's CliRunner: success, the failing parity gate, each bad input
and the exit codes (0 ok, 1 failure, 2 usage, 3 TensorRT/GPU missing)."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _invoke(*args: str):
    from mrdl_apps.export import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_the_options():
    from mrdl_apps.cli import main as mrdl_main

    result = CliRunner().invoke(mrdl_main, ["export", "--help"])
    assert result.exit_code == 0
    for option in ("--ckpt", "--int8", "--calib-data", "--fp16", "--trt", "--trt-check", "--min-batch",
                   "--opt-batch", "--max-batch", "--workspace", "--timing-cache", "--force", "--atol", "--min-dice",
                   "--print"):
        assert option in result.output


@pytest.mark.slow
def test_export_succeeds_and_prints_the_summary(tiny_checkpoint, tmp_path):
    out = tmp_path / "deploy"
    result = _invoke("--ckpt", tiny_checkpoint, "--out", out, "--parity-images", "2", "--trt-check", "--print")
    assert result.exit_code == 0, result.output
    artifacts = json.loads((out / "model.json").read_text())["artifacts"]
    assert list(artifacts) == ["fp32"] and artifacts["fp32"]["file"] == "model.onnx"
    for text in ("parity vs PyTorch", "TensorRT 10.x: compatible", "FLOPs per image", "ops ("):
        assert text in result.output
    again = _invoke("--ckpt", tiny_checkpoint, "--out", out)
    assert again.exit_code == 1 and "--force" in again.output


@pytest.mark.slow
def test_perturbed_model_fails_the_gate_and_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    import mrdl_export.deploy as deploy

    original = deploy.build_deploy_module

    def perturbed(model):
        module, report = original(model)
        with torch.no_grad():
            module.decoder.head.bias += 0.5  # shifts every logit: probabilities move, masks flip
        return module, report

    monkeypatch.setattr(deploy, "build_deploy_module", perturbed)
    result = _invoke("--ckpt", tiny_checkpoint, "--out", tmp_path / "deploy", "--parity-images", "2")
    assert result.exit_code == 1
    assert "parity gate failed" in result.output
    assert list(tmp_path.iterdir()) == []  # neither the deploy folder nor a temporary one


def _corrupt_copy(ckpt, path):
    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 0xFF  # a flipped bit in the tensor bytes
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case", ["missing", "not_safetensors", "not_ours", "corrupt", "other_config"])
def test_bad_checkpoints_exit_1_with_a_clear_message(case, tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file

    ckpt, extra, expected = tiny_checkpoint, [], ""
    if case == "missing":
        ckpt, expected = tmp_path / "nope.safetensors", "does not exist"
    elif case == "not_safetensors":
        ckpt, expected = tmp_path / "text.safetensors", "not a readable safetensors file"
        ckpt.write_text("hello")
    elif case == "not_ours":
        ckpt, expected = tmp_path / "other.safetensors", "not an mrdl checkpoint"
        save_file({"weight": torch.zeros(2)}, str(ckpt))
    elif case == "corrupt":
        ckpt, expected = _corrupt_copy(tiny_checkpoint, tmp_path / "corrupt.safetensors"), "corrupt"
    else:
        extra, expected = ["--config", "small"], "differs from the expected 'small'"
    result = _invoke("--ckpt", ckpt, "--out", tmp_path / "deploy", *extra)
    assert result.exit_code == 1
    assert expected in result.output
    assert not (tmp_path / "deploy").exists()


def test_unwritable_out_exits_1(tiny_checkpoint, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = _invoke("--ckpt", tiny_checkpoint, "--out", blocker / "deploy")
    assert result.exit_code == 1 and "cannot write into" in result.output


def test_bad_batch_profile_and_usage_errors(tiny_checkpoint, tmp_path):
    result = _invoke("--ckpt", tiny_checkpoint, "--out", tmp_path / "d", "--min-batch", "8", "--max-batch", "4")
    assert result.exit_code == 1 and "min <= opt <= max" in result.output
    assert _invoke("--out", tmp_path / "d").exit_code == 2  # --ckpt missing: click usage error


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_trt_without_tensorrt_exits_3_with_one_line(tiny_checkpoint, tmp_path):
    result = _invoke("--ckpt", tiny_checkpoint, "--out", tmp_path / "deploy", "--trt")
    assert result.exit_code == 3
    assert result.output.strip().count("\n") == 0 and "TensorRT is not installed" in result.output
    assert not (tmp_path / "deploy").exists()


def test_missing_data_folder_exits_1_before_exporting(tiny_checkpoint, tmp_path):
    result = _invoke("--ckpt", tiny_checkpoint, "--out", tmp_path / "deploy", "--data", tmp_path / "no_such_dir")
    assert result.exit_code == 1 and "is not a folder" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _invoke("--ckpt", tiny_checkpoint, "--out", tmp_path / "deploy", "--int8", "--calib-data", empty)
    assert result.exit_code == 1 and "no images" in result.output


def test_engine_version_reaches_both_runtimes(tiny_checkpoint, tmp_path, monkeypatch):
    """With a stand-in TensorRT, the engine's version lands where mrdl_runtime (and the C++ runtime) read it."""
    from types import SimpleNamespace

    from mrdl_export import export_model, tensorrt_build
    from mrdl_runtime.backends import tensorrt_version
    from mrdl_runtime.manifest import load_manifest

    def fake_build(onnx_path, engine_path, shapes, options, *, trt):
        engine_path.write_bytes(b"serialized engine")
        return {"file": engine_path.name, "tensorrt_version": trt.__version__, "precision": options.precision}

    monkeypatch.setattr(tensorrt_build, "load_tensorrt", lambda: SimpleNamespace(__version__="10.9.0.34"))
    monkeypatch.setattr(tensorrt_build, "detect_gpu", lambda: {"name": "stand-in GPU"})
    monkeypatch.setattr(tensorrt_build, "build_engine", fake_build)
    result = export_model(tiny_checkpoint, tmp_path / "deploy", trt=True, parity_images=2)
    assert result.manifest["artifacts"]["tensorrt"] == {"file": "model.engine", "bytes": len(b"serialized engine"),
                                                         "sha256": hashlib.sha256(b"serialized engine").hexdigest(),
                                                         "precision": "fp32"}
    assert result.manifest["versions"]["tensorrt"] == "10.9.0.34"
    assert tensorrt_version(load_manifest(tmp_path / "deploy")) == "10.9.0.34"
