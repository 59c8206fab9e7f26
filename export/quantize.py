"""Precision variants of an exported FP32 model: INT8 QDQ and FP16.

INT8: onnxruntime static quantization in QDQ format, calibrated on dataset images, signed
INT8 with symmetric activations and per-channel symmetric weights, so every Q/DQ zero point
is 0, as TensorRT requires for QDQ graphs. What stays FP32, and why (measured on trained
`small` checkpoints, INT8 vs FP32 onnxruntime masks on the 6 MoNuSeg Val images):

* The phase spectrum (the DFT as matmuls with cos/sin matrices, then atan2): the DFT sums N
  products per output and its matrices hold exact zeros that INT8 rounding would smear, which
  turns the phase of near-zero bins into noise. Excluding its nodes is not enough: onnxruntime
  rewires every consumer of a quantized tensor to the dequantized copy, so the phase read the
  INT8-rounded image (its first conv shares the input) and its first conv ran at 9.5 dB SQNR.
  :func:`read_float_inputs` points excluded nodes back at the float tensors (44.8 dB after).
* Activation x activation MatMuls (attention q.k^T and attn.v): no weight to quantize per
  channel, softmax probabilities in [0, 1] keep 7 bits under a symmetric scale, and at 196
  tokens they are a sliver of the compute.
* The decoder (``KEEP_FP32``, default ``("decoder",)``): the one change that reaches the 0.98
  Dice target. With it quantized, mask Dice agreement was 0.948 (worst image 0.77) on the
  text-fusion checkpoint and 0.979 on the no-text one; with it in FP32, 0.989 / 0.989 (worst
  0.982 / 0.984). No single up block is to blame: keeping any one of them, or the first conv
  and head, or the frequency encoder, in FP32 moved Dice by under 0.01. The error builds up
  layer by layer (worst image: SQNR 23 dB entering the decoder, 8 dB at the logits, while each
  tensor's own INT8 rounding stays above 22 dB), and a partly trained model whose probabilities
  sit near 0.5 on 6-19% of pixels turns it into flipped mask pixels. The decoder is half the
  MACs (`small`: 3.5 of 7.0 GMAC), so this trades speed for accuracy: on `base` at batch 1
  with 2 threads, INT8 ran 1.58x faster than FP32 onnxruntime with the decoder quantized and
  1.24x with it in FP32. ``keep_fp32=()`` quantizes it too.

Calibration: MinMax (default). Percentile 99.999 clipped ranges the decoder needs (Dice 0.934,
worse); Entropy gave the same figures as MinMax. Calibration images matter below 24: with the
decoder quantized, 8 images gave Dice 0.888 (worst image 0.41), 24 gave 0.948 and 48 (the 24
plus their mirror images) 0.947. ``calib_method`` selects among them for other checkpoints.

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
MODEL_SCOPES = ("vision_encoder", "cross_modality", "frequency_prompt", "decoder")  # MRDL's top-level modules
KEEP_FP32 = ("decoder",)  # default INT8 FP32 islands besides the phase; see the module docstring
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
DEFAULT_CALIBRATION = "minmax"


def node_scope(node) -> str:
    """The module path the dynamo exporter recorded for ``node`` ('' when absent)."""
    return next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")


def phase_nodes(model) -> list[str]:
    """Names of the nodes that compute the phase spectrum (dynamo name scope ``frequency_prompt.phase``)."""
    return [node.name for node in model.graph.node if "frequency_prompt.phase" in node_scope(node)]


def activation_matmuls(model) -> list[str]:
    """MatMul nodes with no initializer input: products of two activations (attention q.k^T, attn.v)."""
    weights = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and not any(name in weights for name in node.input)]


def scope_nodes(model, scopes: tuple[str, ...]) -> list[str]:
    """Quantizable nodes whose top-level module (``decoder``, ``vision_encoder``, ...) is in ``scopes``."""
    names = []
    for node in model.graph.node:
        parts = [p for p in node_scope(node).strip("[]").replace("'", "").split(", ") if p]
        if node.op_type in QUANTIZED_OPS and parts and parts[1 if parts[0] == "" else 0] in scopes:
            names.append(node.name)
    return names


def excluded_nodes(model, *, keep_fp32: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Nodes left in FP32, by reason: ``phase``, ``activation_matmul``, ``kept`` (``keep_fp32`` scopes)."""
    phase = phase_nodes(model)
    attention = [name for name in activation_matmuls(model) if name not in phase]
    kept = [name for name in scope_nodes(model, keep_fp32) if name not in phase and name not in attention]
    return {"phase": phase, "activation_matmul": attention, "kept": kept}


def read_float_inputs(model, names: set[str]) -> int:
    """Point the nodes ``names`` at the float tensors behind their Q->DQ inputs; drop unused Q/DQ.

    Returns how many inputs were rewired. The model is changed in place.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    float_source = {}  # DQ output -> the float tensor its Q quantized
    for node in model.graph.node:
        quantizer = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if quantizer is not None and quantizer.op_type == "QuantizeLinear":
            float_source[node.output[0]] = quantizer.input[0]
    rewired = 0
    for node in model.graph.node:
        if node.name in names:
            for index, tensor in enumerate(node.input):
                if tensor in float_source:
                    node.input[index] = float_source[tensor]
                    rewired += 1
    while True:
        used = {t for node in model.graph.node for t in node.input} | {o.name for o in model.graph.output}
        dead = [node for node in model.graph.node
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in node.output)]
        if not dead:
            return rewired
        for node in dead:
            model.graph.node.remove(node)


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


def check_int8_options(*, calib_method: str, keep_fp32: tuple[str, ...]) -> None:
    """Raise ValueError naming the accepted values when an INT8 option is not one of them."""
    if calib_method not in CALIBRATION_METHODS:
        raise ValueError(f"calib_method must be one of {', '.join(CALIBRATION_METHODS)}, got {calib_method!r}")
    unknown = [scope for scope in keep_fp32 if scope not in MODEL_SCOPES]
    if unknown:
        raise ValueError(f"keep_fp32 scopes must be among {', '.join(MODEL_SCOPES)}, got {', '.join(unknown)}")


def quantize_int8(fp32_path: Path, out_path: Path, calibration_inputs: list[np.ndarray], *,
                  calib_method: str = DEFAULT_CALIBRATION, keep_fp32: tuple[str, ...] = KEEP_FP32) -> Path:
    """Write the INT8 QDQ model of ``fp32_path`` to ``out_path``, calibrated on ``calibration_inputs``.

    ``calib_method``: one of :data:`CALIBRATION_METHODS`; ``keep_fp32``: top-level model scopes
    (:data:`MODEL_SCOPES`) left in FP32 besides the phase spectrum and activation x activation MatMuls.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from mrdl.checkpoint import atomic_path

    check_int8_options(calib_method=calib_method, keep_fp32=tuple(keep_fp32))

    class Reader(ImageCalibrationReader, CalibrationDataReader):
        pass

    model = onnx.load(str(fp32_path))
    excluded = excluded_nodes(model, keep_fp32=tuple(keep_fp32))
    float_nodes = {name for names in excluded.values() for name in names}
    names = [i.name for i in model.graph.input]
    method = getattr(CalibrationMethod, CALIBRATION_METHODS[calib_method])
    # No quant_pre_process: its symbolic shape inference gives up on the dynamic batch axis, and
    # export_onnx already ran onnx's shape inference and folded constants.
    root = logging.getLogger()  # onnxruntime.quantization advises on the root logger; keep errors only
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with atomic_path(out_path) as tmp:
            quantize_static(str(fp32_path), str(tmp), Reader(calibration_inputs, names), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=sorted(float_nodes),
                            calibrate_method=method,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
            quantized = onnx.load(str(tmp))
            read_float_inputs(quantized, float_nodes)
            onnx.save_model(quantized, str(tmp), save_as_external_data=False)
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
