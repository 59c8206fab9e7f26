"""Precision variants of an exported FP32 model: INT8 QDQ and FP16.

INT8: onnxruntime static quantization in QDQ format, calibrated (MinMax) on dataset images,
signed INT8 with symmetric activations and per-channel symmetric weights, so every
Q/DQ zero point is 0, as TensorRT requires for QDQ graphs. The phase spectrum (the DFT as
matmuls with cos/sin matrices, then atan2) stays FP32: the DFT sums N products per output
and its matrices hold exact zeros that INT8 rounding would smear, which turns the phase of
near-zero bins into noise.

FP16: onnxruntime's float16 converter with FP32 inputs/outputs kept (casts at the borders),
normalisation layers (LayerNormalization, BatchNormalization) and the phase spectrum
blocked in FP32 for the same reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

QUANTIZED_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]  # compute-bound ops; TensorRT fuses the rest
NORMALISATION_OPS = ["LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization"]


def phase_nodes(model) -> list[str]:
    """Names of the nodes that compute the phase spectrum (dynamo name scope ``frequency_prompt.phase``)."""
    names = []
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes" and "frequency_prompt.phase" in prop.value:
                names.append(node.name)
    return names


class ImageCalibrationReader:
    """onnxruntime CalibrationDataReader over preprocessed images, ``batch`` images per feed."""

    def __init__(self, inputs: list[np.ndarray], names: list[str], *, batch: int = 4) -> None:
        self.feeds = [{name: x[start:start + batch] for name, x in zip(names, inputs)}
                      for start in range(0, len(inputs[0]), batch)]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        feed = self.feeds[self.position]
        self.position += 1
        return feed

    def rewind(self) -> None:
        self.position = 0


def quantize_int8(fp32_path: Path, out_path: Path, calibration_inputs: list[np.ndarray]) -> Path:
    """Write the INT8 QDQ model of ``fp32_path`` to ``out_path``, calibrated on ``calibration_inputs``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(ImageCalibrationReader, CalibrationDataReader):
        pass

    model = onnx.load(str(fp32_path))
    excluded = phase_nodes(model)
    names = [i.name for i in model.graph.input]
    # No quant_pre_process: its symbolic shape inference gives up on the dynamic batch axis, and
    # export_onnx already ran onnx's shape inference and folded constants.
    root = logging.getLogger()  # onnxruntime.quantization advises on the root logger; keep errors only
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(fp32_path), str(out_path), Reader(calibration_inputs, names), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=excluded,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    finally:
        root.setLevel(level)
    return out_path


def convert_fp16(fp32_path: Path, out_path: Path) -> Path:
    """Write the FP16 model of ``fp32_path``: FP32 IO, normalisations and phase spectrum in FP32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from mrdl.checkpoint import atomic_path

    model = onnx.load(str(fp32_path))
    from onnxruntime.transformers.onnx_model import OnnxModel

    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=NORMALISATION_OPS,
                                    node_block_list=phase_nodes(model))
    OnnxModel(half).topological_sort()  # the converter appends its border casts out of order
    onnx.checker.check_model(half)
    with atomic_path(out_path) as tmp:
        onnx.save_model(half, str(tmp), save_as_external_data=False)
    return out_path
