"""mrdl_export end to end on the tiny config: both fusion modes, the graph's export safety, the phase
sign check, the manifest, INT8/FP16 variants in onnxruntime. The distribution-fusion export is
conftest's ``variants_export`` (shared with other test files), the addition one is made here; each
takes seconds on CPU."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow  # each export takes seconds of CPU


@pytest.fixture(scope="module")
def addition_export(tmp_path_factory, tiny_config, tiny_prompt_features):
    from mrdl.checkpoint import save_checkpoint
    from mrdl.model import create_model
    from mrdl_export import export_model

    root = tmp_path_factory.mktemp("export_addition")
    model = create_model(tiny_config, prompt_features=tiny_prompt_features, seed=0, fusion="addition")
    return export_model(save_checkpoint(root / "tiny_add.safetensors", model), root / "deploy", parity_images=4)


def _run(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def test_distribution_export_writes_the_manifest_contract(variants_export):
    result = variants_export
    files = sorted(p.name for p in result.out_dir.iterdir())
    assert files == ["model.fp16.onnx", "model.int8.onnx", "model.json", "model.onnx"]
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["format"] == "mrdl-deploy/2" and manifest["fusion"] == "distribution"
    assert re.fullmatch(r"[0-9a-f]{32}", manifest["export_id"])
    files_by_key = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
    for key, name in files_by_key.items():  # each record describes the published file
        data = (result.out_dir / name).read_bytes()
        assert manifest["artifacts"][key] == {"file": name, "bytes": len(data),
                                              "sha256": hashlib.sha256(data).hexdigest(), "precision": key}
    assert manifest["precision"] == "fp32" and manifest == result.manifest
    assert manifest["inputs"] == [{"name": "image", "shape": ["batch", 3, 64, 64], "dtype": "float32"}]
    assert manifest["outputs"][0]["shape"] == ["batch", 1, 64, 64]
    assert manifest["postprocessing"]["activation"] == "sigmoid"
    assert manifest["versions"]["opset"] == 20
    assert len(manifest["source_checkpoint"]["sha256"]) == 64
    assert set(manifest["parity"]) == {"fp32", "int8", "fp16"}
    assert manifest["training_phase_parity"]["phase"] == "fft"  # the checkpoint's own phase, measured too
    assert result.training_phase_parity.dice_agreement > 0.99
    from mrdl_export.manifest import read_embedded_manifest

    for key, name in files_by_key.items():  # same export, the file's own precision, no self-hash
        embedded = read_embedded_manifest(result.out_dir / name)
        assert embedded["export_id"] == manifest["export_id"] and embedded["precision"] == key
        assert embedded["artifacts"] == {k: {"file": n, "precision": k} for k, n in files_by_key.items()}
    assert not list(result.out_dir.parent.glob(".deploy.*")), "temporary folders were left behind"


def test_graph_is_export_safe_and_folded(variants_export):
    from mrdl_export.onnx_export import opset_version

    model = onnx.load(str(variants_export.onnx_path))
    ops = {node.op_type for node in model.graph.node}
    assert opset_version(model) <= 20
    assert not ops & {"DFT", "STFT", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}
    assert [i.name for i in model.graph.input] == ["image"]  # the text branch is gone
    assert not [p for p in model.graph.initializer if p.name.startswith(("text_projection", "learnable_features",
                                                                         "vision_embedding"))]
    assert not any(node.domain not in ("", "ai.onnx") for node in model.graph.node)
    assert not model.graph.initializer[0].external_data  # one self-contained file
    folding = variants_export.folding
    assert folding["flops_deploy"] < folding["flops_full"] and len(folding["folded"]) == 3
    assert variants_export.trt_report.compatible("10.x")


def test_exported_phase_has_torch_angle_sign(variants_export):
    checks = variants_export.phase_check
    assert checks["(0,N/2) Re<0 Im=-0"] == pytest.approx(math.pi, abs=1e-6)
    assert checks["(N/2,0) Re<0 Im=-0"] == pytest.approx(math.pi, abs=1e-6)
    assert checks["origin Re>0"] == pytest.approx(0.0, abs=1e-6)


def test_dynamic_batch_matches_pytorch(variants_export):
    from mrdl.checkpoint import load_checkpoint

    model, _ = load_checkpoint(variants_export.manifest["source_checkpoint"]["path"])
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(images).logits).numpy()
    got = _run(variants_export.onnx_path, {"image": images.numpy()})
    assert got.shape == (3, 1, 64, 64)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    fp32 = variants_export.parity["fp32"]
    assert fp32.max_abs_diff < 1e-4 and fp32.dice_agreement == 1.0 and fp32.source == "synthetic"


def test_int8_qdq_runs_in_onnxruntime_with_symmetric_weights(variants_export):
    from onnx import numpy_helper

    model = onnx.load(str(variants_export.int8_path))
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    weight_zero_points = [constants[n.input[2]] for n in model.graph.node  # the default (onnxruntime) recipe:
                          if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[0] in constants
                          and constants[n.input[0]].dtype == np.int8]  # symmetric int8 weights, uint8 activations
    assert weight_zero_points and not any(z.any() for z in weight_zero_points)
    images = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    probabilities = _run(variants_export.int8_path, {"image": images})
    assert probabilities.shape == (2, 1, 64, 64) and np.isfinite(probabilities).all()
    assert variants_export.parity["int8"].max_abs_diff < 0.1


def test_fp16_keeps_float32_io_and_norms(variants_export):
    model = onnx.load(str(variants_export.fp16_path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    norm_weights = [init for init in model.graph.initializer if "norm" in init.name and init.name.endswith("weight")]
    assert norm_weights and all(init.data_type == onnx.TensorProto.FLOAT for init in norm_weights)
    assert variants_export.parity["fp16"].dice_agreement > 0.95


def test_addition_export_takes_text_features(addition_export):
    model = onnx.load(str(addition_export.onnx_path))
    assert [i.name for i in model.graph.input] == ["image", "text_features"]
    assert addition_export.manifest["inputs"][1]["shape"] == ["batch", 77, 32]
    assert addition_export.folding["folded"] == []
    rng = np.random.default_rng(0)
    feed = {"image": rng.random((2, 3, 64, 64), dtype=np.float32),
            "text_features": rng.standard_normal((2, 77, 32)).astype(np.float32)}
    assert _run(addition_export.onnx_path, feed).shape == (2, 1, 64, 64)
    assert addition_export.parity["fp32"].max_abs_diff < 1e-4


def test_phase_sign_check_catches_a_wrong_sign_decomposition(tmp_path, monkeypatch):
    import mrdl.phase
    from mrdl.phase import FrequencyPromptEncoder
    from mrdl_export.onnx_export import ExportSafetyError, export_onnx, phase_sign_check

    class PhaseOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.frequency_prompt = FrequencyPromptEncoder(in_channels=3, channels=4, image_size=16, phase="matmul")

        def forward(self, image):
            return self.frequency_prompt(image)

    image = (torch.rand(1, 3, 16, 16),)
    good = export_onnx(PhaseOnly(), image, tmp_path / "good.onnx")
    assert phase_sign_check(good)["(0,N/2) Re<0 Im=-0"] == pytest.approx(math.pi)

    def wrong_sign_atan2(imag, real):  # Im = +-0 with Re < 0 lands on -pi
        base = torch.atan(imag / torch.where(real == 0, torch.ones_like(real), real))
        return torch.where(real < 0, torch.where(imag > 0, base + math.pi, base - math.pi), base)

    monkeypatch.setattr(mrdl.phase, "atan2_export_safe", wrong_sign_atan2)
    bad = export_onnx(PhaseOnly(), image, tmp_path / "bad.onnx")
    with pytest.raises(ExportSafetyError, match="wrong atan2 convention"):
        phase_sign_check(bad)
