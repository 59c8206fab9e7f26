"""Deploy module -> one self-contained, checked, shape-inferred, constant-folded ONNX file.

Exporter choice (compared on the ``tiny`` and ``base`` deploy modules with torch 2.14):

* ``dynamo`` (``torch.onnx.export(..., dynamo=True)``, the default here): exports the whole
  model at opset 20 with a symbolic ``batch`` axis that onnxruntime runs at any batch, and its
  onnxscript optimiser folds constants and removes dead nodes. Every
  op it emits (Conv, MatMul, LayerNormalization, Gelu, Resize, Atan, Where, ...) is in the
  TensorRT 10 ONNX parser's table; no DFT, no Random*.
* ``torchscript`` (``dynamo=False``): fails on this model. Under tracing with a dynamic batch
  axis ``tokens.shape`` yields tensors, and ``Reconstruct`` computes the token grid side with
  ``round(num_tokens ** 0.5)``, which a traced tensor does not support. Working around it would
  mean changing the model code for one exporter, so we keep the exporter that takes the model
  as written. ``exporter="torchscript"`` stays selectable to re-run the comparison.

Opsets 18..20 only: the dynamo exporter emits opset-18 ops (Reduce*/Split take their axes as inputs)
and reaches an older opset only through onnx's version converter, which fails on this graph
(``axes_input_to_attribute``: "No initializer or constant input"). That converter's warnings, a
full traceback among them, are muted during the export; :func:`check_export_safe` reports the
opset the graph really imports in one line.

Constant folding uses onnx's own tooling (the onnxscript optimiser behind
``ONNXProgram.optimize``), not onnxruntime's offline optimiser: the latter's saved graph adds
nodes and imports onnxruntime-only domains that TensorRT does not parse (node counts in
docs/measurements.md).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from mrdl_runtime.errors import MrdlError

if TYPE_CHECKING:
    import torch
    from torch import nn

MIN_OPSET = 18  # the dynamo exporter's own opset; onnx's version converter cannot take this graph below it
MAX_OPSET = 20  # TensorRT 10's ONNX parser covers opsets 9..20
EXPORTERS = ("dynamo", "torchscript")
FORBIDDEN_OPS = {"DFT", "STFT", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                 "Multinomial", "Bernoulli"}
COMPLEX_TYPES = {14, 15}  # onnx.TensorProto.COMPLEX64, COMPLEX128


class ExportSafetyError(MrdlError, RuntimeError):
    """An exported graph that a deployment target cannot run as intended."""


def input_names(num_inputs: int) -> list[str]:
    """Graph input names: ``image`` and, under addition fusion, ``text_features``."""
    return ["image", "text_features"][:num_inputs]


def export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, *, opset: int = MAX_OPSET,
                exporter: str = "dynamo") -> Path:
    """Export ``module`` to ``path`` (one file, dynamic batch axis), then check and infer shapes."""
    import onnx
    import torch

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {opset}: {MAX_OPSET} is the newest "
                         f"TensorRT 10 parses, {MIN_OPSET} the oldest this model exports to")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    names = input_names(len(inputs))
    path = Path(path)
    module = module.eval()
    with torch.no_grad(), _quiet_version_converter():
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(module, inputs, input_names=names, output_names=["probabilities"],
                                        opset_version=opset, dynamo=True, verbose=False,
                                        dynamic_shapes={name: {0: batch} for name in names})
            program.optimize()  # constant folding + dead-node removal (onnxscript optimiser)
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(module, inputs, str(path), input_names=names, output_names=["probabilities"],
                              opset_version=opset, dynamo=False,
                              dynamic_axes={name: {0: "batch"} for name in [*names, "probabilities"]})
    model = onnx.load(str(path))
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path), save_as_external_data=False)
    check_export_safe(model, opset=opset)
    return path


@contextmanager
def _quiet_version_converter() -> Iterator[None]:
    """Mute onnxscript's version converter, which logs a failed conversion as a warning with a traceback."""
    logger = logging.getLogger("onnxscript.version_converter")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def opset_version(model) -> int:
    """The default-domain (ai.onnx) opset a model imports."""
    return max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def op_counts(model) -> dict[str, int]:
    """Node count per op type (``domain::Op`` for non-default domains), most frequent first."""
    counts = Counter(f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
                     for node in model.graph.node)
    return dict(counts.most_common())


def check_export_safe(model, *, opset: int = MAX_OPSET) -> None:
    """Refuse graphs with DFT/STFT, random ops, complex tensors or an opset above ``opset``."""
    found = sorted(set(op_counts(model)) & FORBIDDEN_OPS)
    if found:
        raise ExportSafetyError(f"exported graph contains {found}; export with the 'matmul' phase in eval mode")
    version = opset_version(model)
    if version > opset:
        raise ExportSafetyError(f"exported graph imports opset {version}, above the requested {opset}")
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    complex_values = [v.name for v in values if v.type.tensor_type.elem_type in COMPLEX_TYPES]
    if complex_values:
        raise ExportSafetyError(f"exported graph has complex tensors {complex_values[:5]}; TensorRT has no complex type")


def phase_tensor_name(model) -> str:
    """Name of the phase-spectrum tensor in a dynamo export (last node scoped under ``frequency_prompt.phase``)."""
    for node in reversed(model.graph.node):
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes" and "frequency_prompt.phase" in prop.value:
                return node.output[0]
    raise ExportSafetyError("cannot find the phase spectrum in the graph (no node scoped under "
                            "'frequency_prompt.phase'); the sign check needs a dynamo export")


def phase_sign_check(onnx_path: Path) -> dict[str, float]:
    """Run the exported graph's phase spectrum in onnxruntime where atan2's sign conventions matter.

    The sub-graph image -> phase is cut out of the exported file and fed an image whose DFT has
    Re < 0 and Im = -0 exactly at known bins (channel 0: x = (1 - (-1)^w) / 2 -> bin (0, N/2);
    channel 1 the same along h -> bin (N/2, 0)) and Re > 0 at the origin. torch.angle gives +pi
    there and 0 at the origin; a plain atan/where decomposition gives -pi for Im = -0.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    phase_name = phase_tensor_name(model)
    image_input = next(i for i in model.graph.input if i.name == "image")
    size = image_input.type.tensor_type.shape.dim[3].dim_value
    sub = onnx.utils.Extractor(model).extract_model(["image"], [phase_name])
    alternating = (1.0 - (-1.0) ** np.arange(size)) / 2.0  # (N,): 0, 1, 0, 1, ...
    image = np.zeros((1, 3, size, size), dtype=np.float32)
    image[0, 0] = alternating[None, :]
    image[0, 1] = alternating[:, None]
    image[0, 2] = 0.25
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    phase = session.run(None, {"image": image})[0][0]  # (3, N, N)
    half = size // 2
    got = {"(0,N/2) Re<0 Im=-0": float(phase[0, 0, half]), "(N/2,0) Re<0 Im=-0": float(phase[1, half, 0]),
           "origin Re>0": float(phase[2, 0, 0])}
    expected = {"(0,N/2) Re<0 Im=-0": math.pi, "(N/2,0) Re<0 Im=-0": math.pi, "origin Re>0": 0.0}
    wrong = {k: v for k, v in got.items() if abs(v - expected[k]) > 1e-5}
    if wrong:
        raise ExportSafetyError(f"the exported phase spectrum has the wrong atan2 convention: {wrong}, expected "
                                f"+pi where Im = -0 and Re < 0 and 0 at the origin")
    return got
