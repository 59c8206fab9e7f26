"""Graph rewrites the OpenVINO runner applies to a read model before compiling it: the same function in
ops that OpenVINO's CPU plugin runs faster. Each is exact (a rearrangement written another way; the
masks and probabilities are bit-identical, tested) and reported by the runner.

:func:`depth_to_space` undoes, for OpenVINO, the channels-last form in which the export writes a
kernel == stride ``ConvTranspose`` (``mrdl_export.swaps.ConvTransposeAsConv``): a 1x1 Conv to
``k*k*C`` channels, then Transpose to NHWC, Reshape to ``(B*H, W, k, k*C)``, Transpose of the middle
axes, Reshape to ``(B, k*H, k*W, C)``. ONNX Runtime cancels those Transposes against its channels-last
integer convolutions; OpenVINO runs the first one as a slow generic uint8 Transpose with a layout
Reorder in front of it. The same result is ``DepthToSpace`` (blocks first: input channel
``(a*k + b)*C + o`` goes to pixel ``(k*h + a, k*w + b)`` of channel ``o``) followed by one Transpose to
NHWC, which OpenVINO runs with its own uint8 kernels: 5 % faster end to end on the INT8 model (2
cores, AVX-512 VNNI; docs/measurements.md). In float it is slower (5-8 % at f32 and bf16), so the
runner applies it to INT8 graphs only.

In an INT8 graph each step is followed by its quantize/dequantize pair (``FakeQuantize``, ``Convert``,
``Subtract``, ``Multiply`` once OpenVINO has read the QDQ ONNX). Transpose and Reshape move values
without changing them and the quantizer gives their outputs their inputs' scale and zero point, so
dropping the pairs inside the chain leaves every value as it was (re-quantizing a value on its own
grid is the identity); the pair after the last step stays.
"""

from __future__ import annotations

import numpy as np

# What OpenVINO's ONNX reader makes of a QuantizeLinear/DequantizeLinear pair: skipped when walking a chain.
QDQ_TYPES = frozenset({"FakeQuantize", "Convert", "Subtract", "Multiply"})


def _only_consumer(node):
    targets = list(node.output(0).get_target_inputs())
    return targets[0].get_node() if len(targets) == 1 and node.get_output_size() == 1 else None


def _next_step(node):
    """The node after ``node`` and its quantize/dequantize pair, when each has exactly one consumer."""
    current = _only_consumer(node)
    while current is not None and current.get_type_name() in QDQ_TYPES:
        current = _only_consumer(current)
    return current


def _permutation(node) -> list[int] | None:
    source = node.input_value(1).get_node()
    return [int(v) for v in source.get_vector()] if source.get_type_name() == "Constant" else None


def _grid(node) -> list[np.ndarray] | None:
    """A FakeQuantize's input and output ranges (its four constant inputs), or None when one is not constant."""
    ranges = []
    for index in range(1, 5):
        source = node.input_value(index).get_node()
        if source.get_type_name() != "Constant":
            return None
        ranges.append(np.asarray(source.get_data()))
    return ranges


def _same_grid(first, last) -> bool:
    """Whether every FakeQuantize from ``first`` up to the one right after ``last`` quantizes to one grid, so
    that the ones inside the chain may go (a float graph has none)."""
    grids, node = [], first
    while node is not last:  # the single-consumer path that _next_step walked
        node = _only_consumer(node)
        if node.get_type_name() == "FakeQuantize":
            grids.append(_grid(node))
    after = _only_consumer(last)
    if after is not None and after.get_type_name() == "FakeQuantize":
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
        if first.get_type_name() != "Transpose" or _permutation(first) != [0, 2, 3, 1]:
            continue
        chain = [first]
        while len(chain) < 4 and (step := _next_step(chain[-1])) is not None:
            chain.append(step)
        if [n.get_type_name() for n in chain[1:]] != ["Reshape", "Transpose", "Reshape"]:
            continue
        middle, last = chain[2], chain[3]
        if _permutation(middle) != [0, 2, 1, 3] or not _same_grid(first, last):
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
        if merged.rank.is_dynamic or merged.rank.get_length() != 4 or [_static(merged[i]) for i in (1, 2, 3)] != [width, k, k * channels_out]:
            continue
        spread = ops.depth_to_space(first.input_value(0), "blocks_first", k)
        channels_last = ops.transpose(spread, ops.constant(np.array([0, 2, 3, 1], dtype=np.int64)))
        last.output(0).replace(channels_last.output(0))
        replaced += 1
    return replaced
