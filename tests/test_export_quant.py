"""INT8 quantization rules on the tiny config: which nodes stay FP32 (phase spectrum, activation x
activation MatMuls, the kept scopes and blocks), that excluded nodes read float tensors and float
weights, the two recipes' zero points and types, integer kernels in onnxruntime's optimized graph,
the sensitivity search, the task-accuracy gate, and option validation in the library and the CLI."""

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
    return onnx.load(str(quantize_int8(tiny_onnx, out, calibration, keep_fp32=("decoder",))))


def _weights(model) -> set[str]:
    return {init.name for init in model.graph.initializer}


def _nodes(model) -> dict:
    return {node.name: node for node in model.graph.node}


def _reads_dequantized(model, node) -> bool:
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    return any(producers.get(name) == "DequantizeLinear" for name in node.input)


def test_exclusion_rules_pick_phase_attention_and_decoder(tiny_onnx):
    from mrdl_export.qdq_graph import excluded_nodes, node_scope

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
    from mrdl_export.qdq_graph import excluded_nodes

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


def _zero_points(model) -> dict[str, np.ndarray]:
    """Q/DQ node name -> its zero point."""
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return {n.name: constants[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}


def test_onnxruntime_recipe_u8_activations_symmetric_weights_integer_kernels(tiny_onnx, int8_default, tmp_path):
    weights = _weights(int8_default)
    zero_points = _zero_points(int8_default)
    nodes = _nodes(int8_default)
    weight_dq = [n for n in zero_points if nodes[n].op_type == "DequantizeLinear" and nodes[n].input[0] in weights
                 and zero_points[n].dtype == np.int8]
    assert weight_dq and not any(zero_points[n].any() for n in weight_dq)  # per-channel symmetric int8 weights
    activation_q = [n for n in zero_points if nodes[n].op_type == "QuantizeLinear"]
    assert activation_q and all(zero_points[n].dtype == np.uint8 for n in activation_q)
    assert any(zero_points[n].any() for n in activation_q)  # asymmetric ranges
    quantized_ops = {nodes[name].op_type for name in nodes if _reads_dequantized(int8_default, nodes[name])}
    assert {"Add", "Concat", "Conv", "MatMul"} <= quantized_ops  # element-wise ops between layers too
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    images = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
    int8 = ort.InferenceSession(int8_default.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]
    fp32 = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]
    assert int8.shape == fp32.shape == (2, 1, 64, 64) and np.isfinite(int8).all()
    assert np.abs(int8 - fp32).max() < 0.1
    fused = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearConcat"} <= fused


def test_tensorrt_recipe_has_all_zero_points_and_leaves_concat_float(tiny_onnx, calibration, tmp_path):
    from mrdl_export.qdq_graph import COMPUTE_OPS
    from mrdl_export.quantize import quantize_int8

    model = onnx.load(str(quantize_int8(tiny_onnx, tmp_path / "trt.onnx", calibration, target="tensorrt")))
    zero_points = _zero_points(model)
    assert zero_points and not any(z.any() for z in zero_points.values())
    assert {z.dtype for z in zero_points.values()} == {np.dtype(np.int8), np.dtype(np.int32)}  # int32: biases
    quantized_ops = {n.op_type for n in model.graph.node if _reads_dequantized(model, n)}
    compute_ops = {n.op_type for n in onnx.load(str(tiny_onnx)).graph.node} & set(COMPUTE_OPS)  # Conv, MatMul
    assert compute_ops <= quantized_ops and "Concat" not in quantized_ops  # no QLinearConcat etc.


def test_a_kept_block_gets_float_inputs_and_float_weights_back(tiny_onnx, calibration, tmp_path):
    from mrdl_export.qdq_graph import model_blocks
    from mrdl_export.quantize import quantize_int8

    fp32 = onnx.load(str(tiny_onnx))
    blocks = model_blocks(fp32)
    assert {"vision_encoder.inc", "decoder.up1", "decoder.head", "cross_modality.down_blocks.1"} <= set(blocks)
    assert not any("phase" in block for block in blocks)
    model = onnx.load(str(quantize_int8(tiny_onnx, tmp_path / "up1.onnx", calibration, keep_fp32=("decoder.up1",))))
    nodes, original = _nodes(model), _nodes(fp32)
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    weights = {init.name: numpy_helper.to_array(init) for init in fp32.graph.initializer}
    for name in blocks["decoder.up1"]:
        assert not _reads_dequantized(model, nodes[name]), name
        for given, expected in zip(nodes[name].input, original[name].input):
            if expected in weights:  # the FP32 weights, unrounded (under another name where the bias's DQ took it)
                np.testing.assert_array_equal(constants[given], weights[expected])
            else:
                assert given == expected
    up2_convs = [n for n in blocks["decoder.up2"] if original[n].op_type == "Conv"]  # its Relus are folded away
    assert up2_convs and all(_reads_dequantized(model, nodes[n]) for n in up2_convs)
    with pytest.raises(ValueError, match="no block decoder.up9.*decoder.up1"):
        quantize_int8(tiny_onnx, tmp_path / "x.onnx", calibration, keep_fp32=("decoder.up9",))


def test_search_ranks_every_block_and_keeps_those_that_help_in_order(tiny_onnx, calibration):
    from mrdl_export.mixed_precision import search_fp32_blocks
    from mrdl_export.qdq_graph import keep_float, model_blocks
    from mrdl_export.quantize import quantize_full

    quantized, fp32 = quantize_full(tiny_onnx, calibration)
    before = quantized.SerializeToString()
    images = [calibration[0][:2]]
    labels = (images[0][:, 0] > 0).astype(np.uint8)  # any fixed masks: the criterion below cannot be met
    model, result = search_fp32_blocks(quantized, fp32, images, labels, source="noise", max_drop_points=-10.0)
    assert quantized.SerializeToString() == before  # the fully quantized model is not changed
    assert {row["block"] for row in result.sensitivity} == set(model_blocks(fp32))
    gains = [row["gain"] for row in result.sensitivity]
    assert gains == sorted(gains, reverse=True)
    helpful = [row["block"] for row in result.sensitivity if row["gain"] > 0]
    assert result.kept == helpful and not result.satisfied and len(result.steps) == len(helpful)
    assert result.final.mean_abs_diff < result.all_int8.mean_abs_diff
    expected = onnx.ModelProto()
    expected.CopyFrom(quantized)
    keep_float(expected, fp32, {n for block in result.kept for n in model_blocks(fp32)[block]})
    assert model.SerializeToString() == expected.SerializeToString()
    _, easy = search_fp32_blocks(quantized, fp32, images, None, source="noise", max_drop_points=0.5)
    assert easy.satisfied and easy.kept == [] and easy.sensitivity == [] and "agreement" in easy.criterion


def test_keep_nothing_quantizes_the_decoder_and_percentile_calibrates(tiny_onnx, calibration, tmp_path):
    from mrdl_export.qdq_graph import excluded_nodes, node_scope
    from mrdl_export.quantize import quantize_int8

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
    with pytest.raises(ValueError, match="onnxruntime, tensorrt"):
        quantize_int8(tiny_onnx, tmp_path / "x.onnx", calibration, target="cpu")
    with pytest.raises(ValueError, match="'auto' needs the sensitivity search"):
        quantize_int8(tiny_onnx, tmp_path / "x.onnx", calibration, keep_fp32=("auto",))
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ExportError, match="calib_method"):  # refused before the checkpoint is read
        export_model(tmp_path / "missing.safetensors", tmp_path / "out", int8=True, calib_method="kl")
    with pytest.raises(ExportError, match="'auto' cannot be combined"):
        export_model(tmp_path / "missing.safetensors", tmp_path / "out", int8=True, int8_keep_fp32=("auto", "decoder"))


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


def test_ground_truth_from_an_lvit_split_synthetic_tiles_or_none(tmp_path):
    from PIL import Image

    from mrdl_export.parity import ground_truth, task_dice

    split = tmp_path / "root" / "Val_Folder"
    (split / "img").mkdir(parents=True)
    (split / "labelcol").mkdir()
    mask = np.zeros((40, 40), np.uint8)
    mask[:20] = 255
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(split / "img" / "a.png")
    Image.fromarray(mask).save(split / "labelcol" / "a.png")
    labels = ground_truth(tmp_path / "root", ["a.png"], size=8, splits=("Val",))
    assert labels.shape == (1, 8, 8) and labels[0, :4].all() and not labels[0, 4:].any()
    assert ground_truth(split / "img", ["a.png"], size=8, splits=("Val",)) is not None  # the img folder itself
    assert ground_truth(tmp_path / "root", ["b.png"], size=8, splits=("Val",)) is None  # an image without mask
    plain = tmp_path / "plain"
    plain.mkdir()
    assert ground_truth(plain, ["a.png"], size=8, splits=("Val",)) is None
    assert ground_truth(None, ["s0", "s1"], size=32, splits=("Val",)) is None  # synthetic tiles: no task
    probabilities = np.zeros((2, 1, 8, 8), np.float32)
    probabilities[0, 0, :4] = 0.9  # exact; the second predicts nothing against an empty and a full truth
    truth = np.stack([labels[0], np.zeros((8, 8), np.uint8)])
    np.testing.assert_allclose(task_dice(probabilities, truth), [1.0, 1.0])
    np.testing.assert_allclose(task_dice(probabilities, np.ones((2, 8, 8), np.uint8)), [2 * 32 / (32 + 64), 0.0])


def test_export_records_the_int8_recipe_search_and_task_accuracy(variants_export):
    record = variants_export.manifest["int8_quantization"]
    assert record["target"] == "onnxruntime" and "uint8" in record["recipe"]
    assert record["search"]["criterion"].endswith("(no ground truth)")  # synthetic tiles: agreement only
    assert record["fp32_kept"] == record["search"]["kept"]
    assert record["rewrites"]["concat_params_shared"] > 0 and record["rewrites"]["relu_requantize_folded"] > 0
    assert record["accuracy"] == {"measured": False, "reason": "the parity images (synthetic) have no ground truth masks"}
    assert variants_export.int8 == record


def test_a_task_accuracy_drop_beyond_the_limit_fails_the_gate(tmp_path):
    from types import SimpleNamespace

    from mrdl_export import ExportOptions, ParityError
    from mrdl_export.exporter import Exporter, _Reference

    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, :4] = 1
    fp32 = np.zeros((2, 1, 8, 8), np.float32)
    fp32[:, :, :4] = 0.9  # exact masks: Dice 1
    int8 = fp32.copy()
    int8[1, :, 4] = 0.9  # image 2 marks one row too many: Dice 2*32/(32+40) = 0.889
    reference = _Reference([np.zeros((2, 3, 8, 8), np.float32)], "labelled", fp32, labels=labels,
                           fp32_probabilities=fp32)
    job = SimpleNamespace(reference=reference, int8={}, ckpt=tmp_path / "x.safetensors", parity={})
    with pytest.raises(ParityError, match=r"INT8 accuracy gate failed.*5\.56 points \(limit 0\.5; mask agreement"):
        Exporter(ExportOptions(int8=True))._int8_gate(job, int8)
    assert job.int8["accuracy"]["drop_points"] == pytest.approx(100 * (1 - 64 / 72) / 2)
    Exporter(ExportOptions(int8=True, int8_max_dice_drop=6.0))._int8_gate(job, int8)  # within a looser limit
    assert job.int8["accuracy"]["passes"] and job.int8["accuracy"]["agreement"] == pytest.approx((1 + 64 / 72) / 2)
    reference.labels = None
    Exporter(ExportOptions(int8=True))._int8_gate(job, int8)
    assert job.int8["accuracy"] == {"measured": False,
                                    "reason": "the parity images (labelled) have no ground truth masks"}
