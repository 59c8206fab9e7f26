"""Graph rewrites the OpenVINO runner applies to an INT8 model before compiling it: the same function in
ops that OpenVINO's CPU plugin runs faster. Both undo layout changes that the export writes for ONNX
Runtime, which cancels them against its channels-last integer convolutions, while OpenVINO runs them as
generic Transposes of whole feature maps. Measured on the trained ``small`` INT8 model (2 cores, AVX-512
VNNI; docs/measurements.md): about 5 % each. In float graphs they are not applied (measured slower or
unchanged there). The runner reports what it rewrote (``OpenVinoRunner.rewrites``).

:func:`depth_to_space` is exact (bit-identical probabilities, tested). The export writes a kernel ==
stride ``ConvTranspose`` (``mrdl_export.swaps.ConvTransposeAsConv``) as a 1x1 Conv to ``k*k*C``
channels, then Transpose to NHWC, Reshape to ``(B*H, W, k, k*C)``, Transpose of the middle axes,
Reshape to ``(B, k*H, k*W, C)``. That is ``DepthToSpace`` (blocks first: input channel ``(a*k + b)*C + o``
goes to pixel ``(k*h + a, k*w + b)`` of channel ``o``) followed by one Transpose to NHWC.

:func:`channel_layer_norm` is exact in arithmetic, not in rounding. The channel LayerNorm
(``mrdl.layers.ChannelLayerNorm``) is written as Transpose to NHWC, LayerNorm over the last axis,
Transpose back; the rewrite normalizes over axis 1 of the NCHW map with the weight and bias as
``(1, C, 1, 1)``, and both Transposes go. OpenVINO sums the mean and variance in another order then,
so a probability can move by float rounding, and by one output quantization step where a value sat on
a step's edge: tested against the graph as written at the parity gate, and the C++ runtime rewrites alike
(bit-identical to this one).

In an INT8 graph each step is followed by its quantize/dequantize pair (``FakeQuantize``, ``Convert``,
``Convert``, ``Subtract``, ``Multiply`` once OpenVINO has read the QDQ ONNX; matched as that whole shape,
scalars only, so that no other op is ever stepped over). A pair with per-tensor (scalar) ranges
acts element by element, so it commutes with any rearrangement. Transpose and Reshape move values
without changing them, and when every pair along a chain quantizes to one grid, dropping the pairs
inside it leaves every value as it was (re-quantizing a value on its own grid is the identity).
"""

from __future__ import annotations

import numpy as np

def _only_consumer(node):
    targets = list(node.output(0).get_target_inputs())
    return targets[0].get_node() if len(targets) == 1 and node.get_output_size() == 1 else None


def _pair(node) -> list | None:
    """When ``node`` starts a per-tensor quantize/dequantize pair as OpenVINO reads QuantizeLinear +
    DequantizeLinear (FakeQuantize, Convert to the integer type, Convert back, Subtract of the zero point
    (where not 0), Multiply by the scale; every parameter a constant scalar, each node the only consumer of
    the one before), the pair's nodes; else None. Nothing else is ever stepped over: a Multiply that is not
    a dequantization is a step of its own."""
    if node is None or node.get_type_name() != "FakeQuantize" or not _per_tensor(node):
        return None
    nodes = [node]
    for expected in ("Convert", "Convert"):
        nodes.append(_only_consumer(nodes[-1]))
        if nodes[-1] is None or nodes[-1].get_type_name() != expected:
            return None
    current = _only_consumer(nodes[-1])
    if current is not None and current.get_type_name() == "Subtract" and _per_tensor(current):
        nodes.append(current)
        current = _only_consumer(current)
    if current is None or current.get_type_name() != "Multiply" or not _per_tensor(current):
        return None
    return [*nodes, current]


def _next_step(node):
    """The node after ``node`` and the quantize/dequantize pair that may follow it (each the only consumer of
    the one before); None where something else follows, or more than one consumer."""
    current = _only_consumer(node)
    pair = _pair(current)
    return _only_consumer(pair[-1]) if pair else current


def _constant(node, index: int) -> np.ndarray | None:
    """Input ``index`` of ``node`` when it is a constant (also through a Convert, or a Range of constants, as
    OpenVINO's ONNX reader writes zero points and reduction axes), else None."""
    source = node.input_value(index).get_node()
    if source.get_type_name() == "Convert":
        source = source.input_value(0).get_node()
    if source.get_type_name() == "Constant":
        return np.asarray(source.get_data())
    if source.get_type_name() == "Range":
        bounds = [source.input_value(i).get_node() for i in range(3)]
        if all(bound.get_type_name() == "Constant" for bound in bounds):
            start, stop, step = (np.asarray(bound.get_data()).item() for bound in bounds)
            return np.arange(start, stop, step) if step else None
    return None


def _per_tensor(node) -> bool:
    """Whether every input of ``node`` after its data is a constant scalar (a quantize/dequantize node then
    acts element by element, whatever the layout)."""
    for index in range(1, node.get_input_size()):
        values = _constant(node, index)
        if values is None or values.size != 1:
            return False
    return True


def _permutation(node) -> list[int] | None:
    values = _constant(node, 1)
    return None if values is None else [int(v) for v in values.reshape(-1)]


def _is_transpose(node, permutation: list[int]) -> bool:
    return node is not None and node.get_type_name() == "Transpose" and _permutation(node) == permutation


def _grid(node) -> list[np.ndarray] | None:
    """A FakeQuantize's input and output ranges (its four constant inputs), or None when one is not constant."""
    ranges = [_constant(node, index) for index in range(1, 5)]
    return None if any(r is None for r in ranges) else ranges


def _same_grid(first, last) -> bool:
    """Whether every FakeQuantize from ``first`` up to the one right after ``last`` quantizes to one grid, so
    that the ones inside the chain may go (a float graph has none)."""
    grids, node = [], first
    while node is not last:  # the single-consumer path that _next_step walked
        node = _only_consumer(node)
        if node.get_type_name() == "FakeQuantize":
            grids.append(_grid(node))
    after = _only_consumer(last)
    if _pair(after):
        grids.append(_grid(after))
    if any(grid is None for grid in grids):
        return False
    return all(all(np.array_equal(a, b) for a, b in zip(grid, grids[0])) for grid in grids)


def _static(dimension) -> int | None:
    return dimension.get_length() if dimension.is_static else None


def depth_to_space(model) -> int:
    """Replace each channels-last one-tap ConvTranspose rearrangement in ``model`` (an ``openvino.Model``,
    changed in place) by ``DepthToSpace`` + one Transpose; returns how many were replaced. A chain whose
    shapes do not say it is exactly that rearrangement is left alone."""
    from openvino import opset13 as ops

    replaced = 0
    for first in list(model.get_ordered_ops()):
        if not _is_transpose(first, [0, 2, 3, 1]):
            continue
        chain = [first]
        while len(chain) < 4 and (step := _next_step(chain[-1])) is not None:
            chain.append(step)
        if len(chain) != 4 or chain[1].get_type_name() != "Reshape" or chain[3].get_type_name() != "Reshape":
            continue
        middle, last = chain[2], chain[3]
        if not _is_transpose(middle, [0, 2, 1, 3]) or not _same_grid(first, last):
            continue
        source, result = first.get_input_partial_shape(0), last.get_output_partial_shape(0)
        if any(shape.rank.is_dynamic or shape.rank.get_length() != 4 for shape in (source, result)):
            continue
        channels_in, height, width = (_static(source[i]) for i in (1, 2, 3))
        channels_out, out_height, out_width = (_static(result[i]) for i in (3, 1, 2))
        if None in (channels_in, height, width, channels_out, out_height, out_width) or channels_out == 0:
            continue
        k = out_height // height if height else 0
        if k < 2 or out_height != k * height or out_width != k * width or channels_in != k * k * channels_out:
            continue
        # The first Reshape's output pins the rows merged with the batch: (B*H, W, k, k*C).
        merged = middle.get_input_partial_shape(0)
        if (merged.rank.is_dynamic or merged.rank.get_length() != 4
                or [_static(merged[i]) for i in (1, 2, 3)] != [width, k, k * channels_out]):
            continue
        spread = ops.depth_to_space(first.input_value(0), "blocks_first", k)
        channels_last = ops.transpose(spread, ops.constant(np.array([0, 2, 3, 1], dtype=np.int64)))
        last.output(0).replace(channels_last.output(0))
        replaced += 1
    return replaced


def channel_layer_norm(model) -> int:
    """Replace each Transpose to NHWC -> (per-tensor quantize/dequantize) -> MVN over the last axis ->
    Multiply (weight) -> Add (bias) -> Transpose to NCHW in ``model`` (changed in place) by the same
    normalization over axis 1 of the NCHW map; returns how many were replaced."""
    from openvino import opset13 as ops

    replaced = 0
    for first in list(model.get_ordered_ops()):
        if not _is_transpose(first, [0, 2, 3, 1]):
            continue
        node = _only_consumer(first)
        pairs = _pair(node) or []
        norm = _only_consumer(pairs[-1]) if pairs else node
        scale = norm and _only_consumer(norm)
        shift = scale and _only_consumer(scale)
        last = shift and _only_consumer(shift)
        if (not _is_transpose(last, [0, 3, 1, 2])
                or [n.get_type_name() for n in (norm, scale, shift)] != ["MVN", "Multiply", "Add"]):
            continue
        axes = _constant(norm, 1)
        source = first.get_input_partial_shape(0)
        if (axes is None or [int(a) for a in axes.reshape(-1)] not in ([3], [-1]) or source.rank.is_dynamic
                or source.rank.get_length() != 4):
            continue
        channels = _static(source[1])
        weight, bias = _constant(scale, 1), _constant(shift, 1)
        if channels is None or weight is None or bias is None or weight.size != channels or bias.size != channels:
            continue
        if pairs:  # the pairs now act on the NCHW map
            pairs[0].input(0).replace_source_output(first.input_value(0))
            for pair in pairs:
                pair.validate_and_infer_types()
            normalized_input = pairs[-1].output(0)
        else:
            normalized_input = first.input_value(0)
        attributes = norm.get_attributes()
        out = ops.mvn(normalized_input, ops.constant(np.array([1], dtype=np.int64)), attributes["normalize_variance"],
                      attributes["eps"], attributes["eps_mode"])
        out = ops.multiply(out, ops.constant(weight.reshape(1, channels, 1, 1)))
        out = ops.add(out, ops.constant(bias.reshape(1, channels, 1, 1)))
        last.output(0).replace(out.output(0))
        replaced += 1
    if replaced:
        model.validate_nodes_and_infer_types()
    return replaced


REWRITES = {"depth_to_space": depth_to_space, "channel_layer_norm": channel_layer_norm}  # in the order applied


def rewrite_int8(model) -> dict[str, int]:
    """Every rewrite of :data:`REWRITES` on ``model`` (in place): rewrite name -> places rewritten."""
    return {name: rewrite(model) for name, rewrite in REWRITES.items()}
