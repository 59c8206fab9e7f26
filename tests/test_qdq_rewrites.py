"""finish_int8's rewrites of a QDQ graph (mrdl_export.qdq_graph): Concat inputs quantized with the
Concat output's parameters, and requantization into a Relu folded into one QuantizeLinear. Each
on a small hand-built graph, run by ONNX Runtime before and after: the same function, rounded once,
and the cases each rewrite must leave alone."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _model(nodes, inputs, outputs, params):
    """A model from nodes, float inputs/outputs of shape (2, C) given as {name: C}, and Q/DQ parameters
    {prefix: (scale, zero point, dtype)} stored as ``prefix_s`` / ``prefix_z``."""
    initializers = []
    for prefix, (scale, zero, dtype) in params.items():
        initializers += [numpy_helper.from_array(np.asarray(scale, np.float32), f"{prefix}_s"),
                         numpy_helper.from_array(np.asarray(zero, dtype), f"{prefix}_z")]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, c]) for n, c in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, c]) for n, c in outputs.items()], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _qdq(tensor: str, prefix: str, out: str) -> list:
    return [helper.make_node("QuantizeLinear", [tensor, f"{prefix}_s", f"{prefix}_z"], [f"{out}_q"], name=f"{out}_Q"),
            helper.make_node("DequantizeLinear", [f"{out}_q", f"{prefix}_s", f"{prefix}_z"], [out], name=f"{out}_DQ")]


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _quantize(x, scale, zero):
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _concat_model(*, relu_source: bool = False, extra_reader: bool = False, output_zero: int = 10):
    """a -> Q/DQ (pa) and b -> Gather -> Q/DQ (pb) into a Concat quantized with (pc); optionally ``a`` goes
    through a Relu first, or its dequantized tensor is also a graph output."""
    nodes = []
    source = "a"
    if relu_source:
        nodes.append(helper.make_node("Relu", ["a"], ["a_relu"], name="relu"))
        source = "a_relu"
    nodes += _qdq(source, "pa", "a_dq")
    nodes += _qdq("b", "pb", "b_dq")
    nodes.append(helper.make_node("Gather", ["b_dq", "index"], ["b_moved"], axis=1, name="gather"))
    nodes += _qdq("b_moved", "pb", "b_moved_dq")
    nodes.append(helper.make_node("Concat", ["a_dq", "b_moved_dq"], ["cat"], axis=1, name="cat"))
    nodes += _qdq("cat", "pc", "y")
    outputs = {"y": 7, **({"a_dq": 3} if extra_reader else {})}
    model = _model(nodes, {"a": 3, "b": 4}, outputs,
                   {"pa": (0.01, 0, np.uint8), "pb": (0.02, 0, np.uint8), "pc": (0.05, output_zero, np.uint8)})
    model.graph.initializer.append(numpy_helper.from_array(np.array([3, 2, 1, 0], np.int64), "index"))
    return model


def _params_of(model, name):
    node = next(n for n in model.graph.node if n.name == name)
    return node.input[1], node.input[2]


FEEDS = {"a": np.array([[0.5, 0.3, 1.7], [2.2, 0.04, 0.01]], np.float32),  # within each input's range
         "b": np.array([[0.1, 0.6, 1.3, 4.0], [0.0, 2.5, 0.2, 0.9]], np.float32)}


def test_concat_inputs_take_the_output_parameters_through_data_movement_ops():
    from mrdl_export.qdq_graph import share_concat_params

    model = _concat_model()
    before = _run(model, FEEDS)[0]
    assert share_concat_params(model) == ["cat"]
    for name in ("a_dq_Q", "a_dq_DQ", "b_dq_Q", "b_dq_DQ", "b_moved_dq_Q", "b_moved_dq_DQ"):
        assert _params_of(model, name) == ("pc_s", "pc_z")  # the Gather's pair too: it stays integer
    after = _run(model, FEEDS)[0]
    concatenated = np.concatenate([FEEDS["a"], FEEDS["b"][:, ::-1]], axis=1)
    np.testing.assert_allclose(after, _quantize(concatenated, 0.05, 10), atol=1e-6)  # rounded once
    np.testing.assert_allclose(after, before, atol=0.05 + 1e-6)  # at most one step from the twice-rounded
    assert not any(init.name in ("pa_s", "pa_z", "pb_s", "pb_z") for init in model.graph.initializer)
    assert share_concat_params(model) == []  # nothing left to change


def test_concat_inputs_with_another_reader_or_a_relu_fold_to_keep_stay_as_they_are():
    from mrdl_export.qdq_graph import share_concat_params

    model = _concat_model(extra_reader=True)  # a_dq is also a graph output: its values must not change
    assert share_concat_params(model) == ["cat"]  # the other input still changes
    assert _params_of(model, "a_dq_Q") == ("pa_s", "pa_z")
    assert _params_of(model, "b_moved_dq_Q") == ("pc_s", "pc_z")

    model = _concat_model(relu_source=True)  # the Relu folds into a zero point of 0 only: pc's is 10
    share_concat_params(model)
    assert _params_of(model, "a_dq_Q") == ("pa_s", "pa_z")
    model = _concat_model(relu_source=True, output_zero=0)  # with a zero point of 0 it may change
    share_concat_params(model)
    assert _params_of(model, "a_dq_Q") == ("pc_s", "pc_z")


def _relu_model(*, after_zero: int = 0, dtype=np.uint8, second_reader: bool = False):
    """x -> Q/DQ (px, zero point 128) -> Relu -> Q/DQ (pr) -> y; optionally the Relu's output is also read."""
    nodes = _qdq("x", "px", "x_dq") + [helper.make_node("Relu", ["x_dq"], ["r"], name="relu")] + _qdq("r", "pr", "y")
    outputs = {"y": 4}
    if second_reader:
        nodes.append(helper.make_node("Identity", ["r"], ["r_copy"]))
        outputs["r_copy"] = 4
    zero = 128 if dtype == np.uint8 else 0
    return _model(nodes, {"x": 4}, outputs, {"px": (0.03, zero, dtype), "pr": (0.02, after_zero, dtype)})


def test_requantization_into_a_relu_folds_into_one_quantize():
    from mrdl_export.qdq_graph import fold_relu_requantize

    x = np.array([[-1.0, -0.001, 0.013, 0.5], [1.2, 2.0, 0.0, -3.0]], np.float32)
    model = _relu_model()
    before = _run(model, {"x": x})[0]
    assert fold_relu_requantize(model) == 1
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "DequantizeLinear"]
    after = _run(model, {"x": x})[0]
    np.testing.assert_allclose(after, _quantize(np.maximum(x, 0), 0.02, 0), atol=1e-6)  # the Relu, rounded once
    np.testing.assert_allclose(after, before, atol=0.02 + 1e-6)
    assert fold_relu_requantize(model) == 0


@pytest.mark.parametrize("case", [{"after_zero": 3}, {"dtype": np.int8}, {"second_reader": True}])
def test_a_relu_that_a_quantize_cannot_replace_stays(case):
    from mrdl_export.qdq_graph import fold_relu_requantize

    model = _relu_model(**case)  # zero point not 0 / signed (0 does not clip) / another reader of the Relu
    assert fold_relu_requantize(model) == 0
    assert "Relu" in [n.op_type for n in model.graph.node]


def test_finish_int8_applies_to_the_onnxruntime_recipe_only():
    from mrdl_export.quantize import finish_int8

    model = _concat_model(relu_source=True, output_zero=0)
    assert finish_int8(model, "tensorrt") == {}
    assert finish_int8(model, "onnxruntime") == {"concat_params_shared": 1, "relu_requantize_folded": 0}
