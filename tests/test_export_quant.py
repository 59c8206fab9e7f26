"""INT8 quantization rules on the tiny config: which nodes stay FP32 (phase spectrum, activation x
activation MatMuls, the kept scopes), that excluded nodes read float tensors, symmetric zero points,
the QDQ model in onnxruntime, and option validation in the library and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow  # conftest's variants_export exports the tiny model (seconds of CPU)


@pytest.fixture(scope="module")
def tiny_onnx(variants_export):
    """The seeded tiny model's FP32 graph (matmul phase, deploy module), exported once per session in
    conftest; shared, so the tests write their INT8 files elsewhere."""
    return variants_export.onnx_path


@pytest.fixture(scope="module")
def calibration():
    return [np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)]


@pytest.fixture(scope="module")
def int8_default(tiny_onnx, calibration, tmp_path_factory):
    from mrdl_export.quantize import quantize_int8

    out = tmp_path_factory.mktemp("quant") / "int8.onnx"
    return onnx.load(str(quantize_int8(tiny_onnx, out, calibration)))


def _weights(model) -> set[str]:
    return {init.name for init in model.graph.initializer}


def _nodes(model) -> dict:
    return {node.name: node for node in model.graph.node}


def _reads_dequantized(model, node) -> bool:
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    return any(producers.get(name) == "DequantizeLinear" for name in node.input)


def test_exclusion_rules_pick_phase_attention_and_decoder(tiny_onnx):
    from mrdl_export.quantize import excluded_nodes, node_scope

    model = onnx.load(str(tiny_onnx))
    nodes, weights = _nodes(model), _weights(model)
    excluded = excluded_nodes(model, keep_fp32=("decoder",))
    assert excluded["phase"] and all("frequency_prompt.phase" in node_scope(nodes[n]) for n in excluded["phase"])
    assert any(nodes[n].op_type == "MatMul" for n in excluded["phase"])
    attention = excluded["activation_matmul"]
    assert attention and all(nodes[n].op_type == "MatMul" and not set(nodes[n].input) & weights for n in attention)
    assert all(".attn" in node_scope(nodes[n]) for n in attention)
    assert excluded["kept"] and all("'decoder'" in node_scope(nodes[n]) for n in excluded["kept"])
    assert {"Conv"} <= {nodes[n].op_type for n in excluded["kept"]}
    everything = {n for names in excluded.values() for n in names}
    weight_ops = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Conv") and set(n.input) & weights
                  and "'decoder'" not in node_scope(n) and "frequency_prompt.phase" not in node_scope(n)]
    assert weight_ops and not everything & set(weight_ops)
    assert excluded_nodes(model)["kept"] == []


def test_int8_quantizes_weight_ops_and_leaves_excluded_nodes_float(tiny_onnx, int8_default):
    from mrdl_export.quantize import excluded_nodes

    excluded = excluded_nodes(onnx.load(str(tiny_onnx)), keep_fp32=("decoder",))
    nodes = _nodes(int8_default)
    for name in (n for names in excluded.values() for n in names):
        assert not _reads_dequantized(int8_default, nodes[name]), name
    phase_inputs = {name for n in excluded["phase"] for name in nodes[n].input}
    assert "image" in phase_inputs  # the DFT reads the float image, not its INT8 copy
    fp32_nodes = _nodes(onnx.load(str(tiny_onnx)))
    quantized = [n for n in fp32_nodes if fp32_nodes[n].op_type in ("Conv", "MatMul")
                 and n not in {x for names in excluded.values() for x in names}]
    assert quantized and all(_reads_dequantized(int8_default, nodes[n]) for n in quantized)


def test_int8_runs_in_onnxruntime_with_zero_points_all_zero(tiny_onnx, int8_default):
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in int8_default.graph.initializer}
    qdq = [n for n in int8_default.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [constants[n.input[2]] for n in qdq if len(n.input) > 2]
    assert qdq and len(zero_points) == len(qdq) and not any(z.any() for z in zero_points)
    images = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
    run = lambda model: ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"image": images})[0]
    int8, fp32 = run(int8_default), run(onnx.load(str(tiny_onnx)))
    assert int8.shape == fp32.shape == (2, 1, 64, 64) and np.isfinite(int8).all()
    assert np.abs(int8 - fp32).max() < 0.1


def test_keep_nothing_quantizes_the_decoder_and_percentile_calibrates(tiny_onnx, calibration, tmp_path):
    from mrdl_export.quantize import excluded_nodes, node_scope, quantize_int8

    model = onnx.load(str(quantize_int8(tiny_onnx, tmp_path / "all.onnx", calibration, keep_fp32=(),
                                        calib_method="percentile")))
    decoder_convs = [n for n in model.graph.node if n.op_type == "Conv" and "'decoder'" in node_scope(n)]
    assert decoder_convs and all(_reads_dequantized(model, n) for n in decoder_convs)
    nodes = _nodes(model)
    excluded = excluded_nodes(onnx.load(str(tiny_onnx)))
    assert not any(_reads_dequantized(model, nodes[n]) for n in excluded["phase"] + excluded["activation_matmul"])


def test_bad_int8_options_are_refused_with_the_accepted_values(tiny_onnx, calibration, tmp_path):
    from mrdl_export import export_model
    from mrdl_export import ExportError
    from mrdl_export.quantize import quantize_int8

    with pytest.raises(ValueError, match="minmax, entropy, percentile"):
        quantize_int8(tiny_onnx, tmp_path / "x.onnx", calibration, calib_method="kl")
    with pytest.raises(ValueError, match="vision_encoder, cross_modality, frequency_prompt, decoder.*head"):
        quantize_int8(tiny_onnx, tmp_path / "x.onnx", calibration, keep_fp32=("head",))
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ExportError, match="calib_method"):  # refused before the checkpoint is read
        export_model(tmp_path / "missing.safetensors", tmp_path / "out", int8=True, calib_method="kl")


def test_cli_int8_options(tmp_path):
    from click.testing import CliRunner

    from mrdl_apps.export import main

    base = ["--ckpt", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "out"), "--int8"]
    result = CliRunner().invoke(main, [*base, "--calib-method", "kl"])
    assert result.exit_code == 2 and "minmax" in result.output
    result = CliRunner().invoke(main, [*base, "--int8-keep-fp32", "none", "--int8-keep-fp32", "decoder"])
    assert result.exit_code == 2 and "'none' cannot be combined" in result.output
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert "--calib-method" in help_text and "--int8-keep-fp32" in help_text
