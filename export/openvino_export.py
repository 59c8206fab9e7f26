"""INT8 for OpenVINO: NNCF post-training quantization through the project's own accuracy gate.

``mrdl-export --int8 --int8-target openvino`` writes ``model.int8.onnx`` as NNCF quantizes it for
OpenVINO's CPU plugin (its hardware rules: which ops get FakeQuantize, symmetric per-channel
weights, activation ranges from the calibration images, fast bias correction), as a QDQ ONNX
file so it is hashed, embedded and verified like every artifact and runs on ONNX Runtime too.
Everything else is the ``onnxruntime`` recipe's path:

* the phase spectrum and the attention's activation x activation MatMuls stay FP32 (NNCF's
  ignored scope, then :func:`mrdl_export.qdq_graph.keep_float`, as for the other recipes);
* :func:`mrdl_export.qdq_graph.portable_qdq` runs on the result;
* the automatic mixed-precision search (:func:`mrdl_export.mixed_precision.search_fp32_blocks`)
  puts blocks back in FP32 until the criterion holds, and the export's INT8 gate
  (``--int8-max-dice-drop`` against ground truth) fails the export above it; both score the
  candidate **on OpenVINO** (:func:`openvino_probabilities`), the runtime this file is for;
* ``model.json`` reports it under ``int8_quantization`` with ``target: openvino``.

nncf and openvino are imported when used (``pip install 'mrdl[openvino]'``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ExportError

INSTALL = "pip install 'mrdl[openvino]'"


class OpenVinoExportError(ExportError):
    """NNCF or OpenVINO is missing, or cannot quantize / compile the model."""


def _import(name: str):
    try:
        return __import__(name)
    except ImportError as exc:
        raise OpenVinoExportError(f"--int8-target openvino needs {name}, which is not installed; {INSTALL}") from exc


def openvino_probabilities(path: Path | bytes, inputs: list[np.ndarray], *, batch: int = 4) -> np.ndarray:
    """Probabilities of an INT8 ONNX model (a file, or its bytes) on OpenVINO's CPU plugin, f32 hint, ``batch``
    images at a time, as :class:`mrdl_runtime.openvino_runner.OpenVinoRunner` runs it at precision int8: its
    graph rewrites (:func:`mrdl_runtime.openvino_rewrites.rewrite_int8`), compiled per static batch size."""
    from mrdl_runtime.openvino_rewrites import rewrite_int8

    ov = _import("openvino")
    core = ov.Core()
    model = core.read_model(path if isinstance(path, bytes) else Path(path).read_bytes())
    rewrite_int8(model)
    names = [port.get_any_name() for port in model.inputs]
    compiled: dict[int, object] = {}
    outputs = []
    for start in range(0, len(inputs[0]), batch):
        feed = [x[start:start + batch] for x in inputs]
        size = len(feed[0])
        if size not in compiled:
            static = model.clone()
            static.reshape({name: [size, *list(port.get_partial_shape())[1:]]
                            for name, port in zip(names, static.inputs)})
            try:
                compiled[size] = core.compile_model(static, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            except RuntimeError as exc:
                raise OpenVinoExportError(f"OpenVINO {ov.__version__} cannot compile the INT8 model: "
                                          f"{str(exc).strip().splitlines()[-1][:300]}") from None
        result = compiled[size](dict(zip(names, feed)))
        outputs.append(np.array(result["probabilities"], copy=True))
    return np.concatenate(outputs)


def probabilities_for(target: str) -> Callable[[Path | bytes, list[np.ndarray]], np.ndarray]:
    """How the search and the gate run an INT8 candidate of ``target``: on OpenVINO for ``openvino``,
    else on ONNX Runtime (:func:`mrdl_export.parity.onnx_probabilities`)."""
    if target == "openvino":
        return openvino_probabilities
    from .parity import onnx_probabilities

    return onnx_probabilities


def quantize_nncf(fp32_path: Path, calibration_inputs: list[np.ndarray], *, exclude: set[str] = frozenset(),
                  batch: int = 4):
    """(the INT8 QDQ ModelProto NNCF makes of ``fp32_path`` for OpenVINO's CPU, the FP32 ModelProto): the
    phase spectrum, the activation x activation MatMuls and ``exclude`` left in FP32."""
    import onnx

    from .qdq_graph import excluded_nodes, keep_float, portable_qdq

    nncf = _import("nncf")
    fp32 = onnx.load(str(fp32_path))
    always = excluded_nodes(fp32)
    float_nodes = {name for names in always.values() for name in names} | set(exclude)
    names = [i.name for i in fp32.graph.input]
    count = len(calibration_inputs[0])
    batches = [{name: x[start:start + batch] for name, x in zip(names, calibration_inputs)}
               for start in range(0, count, batch)]
    logging.getLogger("nncf").setLevel(logging.ERROR)  # NNCF reports every quantizer it does not add at INFO
    try:
        quantized = nncf.quantize(fp32, nncf.Dataset(batches), subset_size=count,
                                  ignored_scope=nncf.IgnoredScope(names=sorted(float_nodes), validate=False))
    except Exception as exc:  # NNCF raises its own and third-party errors; say which step failed
        raise OpenVinoExportError(f"NNCF {nncf.__version__} could not quantize {fp32_path}: "
                                  f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    keep_float(quantized, fp32, float_nodes)  # what NNCF's ignored scope still reads through Q/DQ
    portable_qdq(quantized)
    return quantized, fp32
