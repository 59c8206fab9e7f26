"""Precision variants of an exported FP32 model: INT8 QDQ and FP16.

INT8: onnxruntime static quantization in QDQ format, calibrated on dataset images (MinMax by
default; Percentile and Entropy through ``calib_method``), with one of two recipes
(:data:`INT8_TARGETS`):

* ``onnxruntime`` (default), for onnxruntime's CPU kernels: unsigned INT8 activations with
  asymmetric ranges, signed per-channel symmetric weights, and every op between the convolutions
  quantized too (Add, Mul, Concat, MaxPool, Resize, Sigmoid, the shape ops), so that onnxruntime
  fuses the QDQ pairs into QLinearConv / QLinearMatMul / QLinearAdd / QLinearConcat / QLinearMul
  and activations stay 8-bit between layers. Unsigned activations because u8 x s8 is onnxruntime's
  fast integer GEMM on x86 and s8 x s8 has no fast kernel there. Relu stays in the graph
  (``QDQKeepRemovableActivations``) so that any node can be turned back to FP32 afterwards
  (:func:`keep_float`); onnxruntime drops it when it fuses the following QuantizeLinear. Once the
  FP32 islands are chosen, :func:`finish_int8` quantizes straight into those Relus' parameters and
  gives each Concat's inputs its output's parameters, so that onnxruntime neither requantizes in
  float nor through QLinearConcat's lookup tables (:mod:`mrdl_export.qdq_graph`).
* ``tensorrt``: signed INT8 with symmetric activations and weights (every zero point 0, as
  TensorRT requires for QDQ graphs) on the compute ops only (Conv, ConvTranspose, MatMul, Gemm);
  TensorRT fuses the element-wise ops itself.

Always FP32: the phase spectrum (its DFT matrices hold exact zeros that INT8 rounding would smear,
turning the phase of near-zero bins into noise) and the attention's activation x activation MatMuls
(no weight to quantize per channel, a sliver of the compute). Excluding the phase's nodes is not
enough: onnxruntime rewires every consumer of a quantized tensor to the dequantized copy, so
:func:`keep_float` points excluded nodes back at the float tensors. What else stays FP32 is chosen
by ``keep_fp32``: model scopes (:data:`MODEL_SCOPES`) or blocks (:func:`model_blocks`, e.g.
``decoder.up1``) by hand, or ``auto``, the fewest blocks that keep task accuracy within the gate
(:mod:`mrdl_export.mixed_precision`).

FP16: onnxruntime's float16 converter with FP32 inputs/outputs kept (casts at the borders) and the
normalisation layers and the phase spectrum kept in FP32 for the same reason.

The measurements behind these choices (GEMM rates, SQNR of the phase, accuracy and speed of each
recipe) are in docs/measurements.md.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .qdq_graph import (COMPUTE_OPS, MODEL_SCOPES, excluded_nodes, fold_relu_requantize, keep_float, model_blocks,
                        phase_nodes, portable_qdq, share_concat_params)

QUANTIZED_OPS = COMPUTE_OPS  # the tensorrt recipe's ops (kept under its old name)
# Ops whose QDQ pairs onnxruntime's CPU provider fuses into integer kernels or drops (data movement).
ONNXRUNTIME_OPS = COMPUTE_OPS + ["Add", "Mul", "Concat", "MaxPool", "Resize", "Relu", "Sigmoid", "AveragePool",
                                 "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Slice", "Split", "Gather", "Where"]
NORMALISATION_OPS = ["LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization"]
AUTO = "auto"
KEEP_FP32 = (AUTO,)  # default: the sensitivity search picks the FP32 blocks (mrdl_export.mixed_precision)
KEEP_CHOICES = (AUTO, *MODEL_SCOPES)
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
DEFAULT_CALIBRATION = "minmax"


@dataclass(frozen=True)
class Int8Recipe:
    """How one INT8 target quantizes: activation type and symmetry, and the ops given QDQ pairs."""

    activations: str  # "uint8" or "int8"
    symmetric_activations: bool
    ops: tuple[str, ...]
    note: str
    int8_swaps: bool = False  # quantize a graph with mrdl_export.swaps.swap_for_int8 applied, not model.onnx
    integer_rewrites: bool = False  # finish_int8: Concat parameters shared, Relu requantization folded


    def describe(self) -> str:
        kind = "symmetric" if self.symmetric_activations else "asymmetric"
        return f"{kind} {self.activations} activations, symmetric per-channel int8 weights"


INT8_TARGETS = {
    "onnxruntime": Int8Recipe("uint8", False, tuple(ONNXRUNTIME_OPS),
                              "onnxruntime CPU integer kernels (u8 x s8), element-wise and shape ops quantized",
                              int8_swaps=True, integer_rewrites=True),
    "tensorrt": Int8Recipe("int8", True, tuple(COMPUTE_OPS),
                           "TensorRT explicit quantization: zero points 0, compute ops only"),
    "openvino": Int8Recipe("uint8", True, tuple(COMPUTE_OPS),
                           "NNCF post-training quantization for OpenVINO's CPU (its hardware rules choose the ops; "
                           "fast bias correction; mrdl_export.openvino_export)"),
}
DEFAULT_INT8_TARGET = "onnxruntime"


@dataclass
class Int8Model:
    """What :func:`quantize_int8` wrote: the target, and which nodes stayed FP32 and why."""

    path: Path
    target: str
    fp32_nodes: dict[str, list[str]]  # reason (phase, activation_matmul, kept) -> node names
    kept: list[str] = field(default_factory=list)  # the scopes / blocks kept in FP32
    rewrites: dict[str, int] = field(default_factory=dict)  # finish_int8's counts

    def to_dict(self) -> dict:
        recipe = INT8_TARGETS[self.target]
        return {"target": self.target, "recipe": recipe.describe(), "quantized_ops": list(recipe.ops),
                "note": recipe.note, "fp32_kept": list(self.kept),
                "fp32_nodes": {reason: len(names) for reason, names in self.fp32_nodes.items()},
                "rewrites": dict(self.rewrites)}


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


def check_int8_options(*, calib_method: str, keep_fp32: tuple[str, ...], target: str = DEFAULT_INT8_TARGET) -> None:
    """Raise ValueError naming the accepted values when an INT8 option is not one of them."""
    if calib_method not in CALIBRATION_METHODS:
        raise ValueError(f"calib_method must be one of {', '.join(CALIBRATION_METHODS)}, got {calib_method!r}")
    if target not in INT8_TARGETS:
        raise ValueError(f"int8 target must be one of {', '.join(INT8_TARGETS)}, got {target!r}")
    if target == "openvino" and calib_method != DEFAULT_CALIBRATION:
        raise ValueError(f"calib_method {calib_method!r} applies to the onnxruntime and tensorrt recipes; the openvino "
                         "target calibrates with NNCF's own range estimators: leave it at its default")
    unknown = [scope for scope in keep_fp32 if scope.split(".", 1)[0] not in MODEL_SCOPES and scope != AUTO]
    if unknown:
        raise ValueError(f"keep_fp32 scopes must be among {', '.join(KEEP_CHOICES)} (or a block of one, such as "
                         f"decoder.up1), got {', '.join(unknown)}")
    if AUTO in keep_fp32 and len(keep_fp32) > 1:
        raise ValueError(f"keep_fp32 '{AUTO}' cannot be combined with scopes, got {', '.join(keep_fp32)}")


def quantize_full(fp32_path: Path, calibration_inputs: list[np.ndarray], *, calib_method: str = DEFAULT_CALIBRATION,
                  target: str = DEFAULT_INT8_TARGET, exclude: set[str] = frozenset()):
    """The INT8 QDQ ModelProto of ``fp32_path`` by ``target``'s recipe, with the phase spectrum, the
    activation x activation MatMuls and ``exclude`` in FP32 (reading float tensors); and the FP32 model."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(ImageCalibrationReader, CalibrationDataReader):
        pass

    if target == "openvino":
        from .openvino_export import quantize_nncf

        return quantize_nncf(fp32_path, calibration_inputs, exclude=set(exclude))
    recipe = INT8_TARGETS[target]
    fp32 = onnx.load(str(fp32_path))
    always = excluded_nodes(fp32)
    float_nodes = {name for names in always.values() for name in names} | set(exclude)
    names = [i.name for i in fp32.graph.input]
    method = getattr(CalibrationMethod, CALIBRATION_METHODS[calib_method])
    activations = QuantType.QUInt8 if recipe.activations == "uint8" else QuantType.QInt8
    # No quant_pre_process: its symbolic shape inference gives up on the dynamic batch axis, and
    # export_onnx already ran onnx's shape inference and folded constants.
    root = logging.getLogger()  # onnxruntime.quantization advises on the root logger; keep errors only
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="mrdl-int8-") as folder:
            tmp = Path(folder) / "qdq.onnx"
            quantize_static(str(fp32_path), str(tmp), Reader(calibration_inputs, names), quant_format=QuantFormat.QDQ,
                            activation_type=activations, weight_type=QuantType.QInt8, per_channel=True,
                            op_types_to_quantize=list(recipe.ops), nodes_to_exclude=sorted(float_nodes),
                            calibrate_method=method,
                            extra_options={"ActivationSymmetric": recipe.symmetric_activations,
                                           "WeightSymmetric": True, "QDQKeepRemovableActivations": True})
            quantized = onnx.load(str(tmp))
    finally:
        root.setLevel(level)
    keep_float(quantized, fp32, float_nodes)
    portable_qdq(quantized)
    return quantized, fp32


def finish_int8(model, target: str) -> dict[str, int]:
    """The last rewrites of an INT8 model, once its FP32 islands are chosen (they remove the Q/DQ nodes and
    Relus that :func:`keep_float` rewires): for recipes with ``integer_rewrites``, each Concat's inputs
    quantized with its output's parameters, then each requantization into a Relu folded. Both round once
    where the graph rounded twice. Returns how many of each; ``model`` is changed in place."""
    if not INT8_TARGETS[target].integer_rewrites:
        return {}
    shared = share_concat_params(model)  # first: a folded Relu's zero point 0 must not be retargeted
    return {"concat_params_shared": len(shared), "relu_requantize_folded": fold_relu_requantize(model)}


def save_model(model, out_path: Path) -> Path:
    """Write ``model`` to ``out_path`` atomically, weights inside the file."""
    import onnx

    from mrdl_runtime.atomic import atomic_path

    with atomic_path(out_path) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return out_path


def quantize_int8(fp32_path: Path, out_path: Path, calibration_inputs: list[np.ndarray], *,
                  calib_method: str = DEFAULT_CALIBRATION, keep_fp32: tuple[str, ...] = (),
                  target: str = DEFAULT_INT8_TARGET) -> Path:
    """Write the INT8 QDQ model of ``fp32_path`` to ``out_path``, calibrated on ``calibration_inputs``.

    ``calib_method``: one of :data:`CALIBRATION_METHODS`; ``target``: one of :data:`INT8_TARGETS`;
    ``keep_fp32``: model scopes (:data:`MODEL_SCOPES`) or blocks (``decoder.up1``) left in FP32
    besides the phase spectrum and activation x activation MatMuls (``auto`` is the exporter's:
    :func:`mrdl_export.mixed_precision.search_fp32_blocks`).
    """
    return quantize_int8_model(fp32_path, out_path, calibration_inputs, calib_method=calib_method,
                               keep_fp32=keep_fp32, target=target).path


def quantize_int8_model(fp32_path: Path, out_path: Path, calibration_inputs: list[np.ndarray], *,
                        calib_method: str = DEFAULT_CALIBRATION, keep_fp32: tuple[str, ...] = (),
                        target: str = DEFAULT_INT8_TARGET) -> Int8Model:
    """:func:`quantize_int8` with what stayed FP32 and why (:class:`Int8Model`)."""
    check_int8_options(calib_method=calib_method, keep_fp32=tuple(keep_fp32), target=target)
    if AUTO in keep_fp32:
        raise ValueError("keep_fp32 'auto' needs the sensitivity search: use mrdl_export.mixed_precision")
    import onnx

    check_blocks(onnx.load(str(fp32_path), load_external_data=False), keep_fp32)  # before minutes of calibration
    quantized, fp32 = quantize_full(fp32_path, calibration_inputs, calib_method=calib_method, target=target)
    excluded = excluded_nodes(fp32, keep_fp32=tuple(keep_fp32))
    keep_float(quantized, fp32, set(excluded["kept"]))
    rewrites = finish_int8(quantized, target)
    save_model(quantized, out_path)
    return Int8Model(path=out_path, target=target, fp32_nodes=excluded, kept=list(keep_fp32), rewrites=rewrites)


def check_blocks(fp32, keep_fp32: tuple[str, ...]) -> None:
    """Raise ValueError when a block named in ``keep_fp32`` is not one of the graph's blocks."""
    blocks = set(model_blocks(fp32)) | set(MODEL_SCOPES)
    unknown = [name for name in keep_fp32 if name not in blocks]
    if unknown:
        raise ValueError(f"keep_fp32: no block {', '.join(unknown)} in this model; its blocks are "
                         f"{', '.join(sorted(blocks))}")


def convert_fp16(fp32_path: Path, out_path: Path) -> Path:
    """Write the FP16 model of ``fp32_path``: FP32 IO, normalisations and phase spectrum in FP32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    from onnxruntime.transformers.onnx_model import OnnxModel

    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=NORMALISATION_OPS,
                                    node_block_list=phase_nodes(model))
    OnnxModel(half).topological_sort()  # the converter appends its border casts out of order
    onnx.checker.check_model(half)
    return save_model(half, out_path)
