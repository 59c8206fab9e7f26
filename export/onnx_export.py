"""Deploy module -> one self-contained, checked, shape-inferred, constant-folded ONNX file.

Exporter choice (measured on the ``tiny`` and ``base`` deploy modules with torch 2.14):

* ``dynamo`` (``torch.onnx.export(..., dynamo=True)``, the default here): exports the whole
  model at opset 20 with a symbolic ``batch`` axis that onnxruntime runs at any batch, and its
  onnxscript optimiser folds constants and removes dead nodes (448 nodes for ``tiny``). Every
  op it emits (Conv, MatMul, LayerNormalization, Gelu, Resize, Atan, Where, ...) is in the
  TensorRT 10 ONNX parser's table; no DFT, no Random*.
* ``torchscript`` (``dynamo=False``): fails on this model. Under tracing with a dynamic batch
  axis ``tokens.shape`` yields tensors, and ``Reconstruct`` computes the token grid side with
  ``round(num_tokens ** 0.5)``, which a traced tensor does not support. Working around it would
  mean changing the model code for one exporter, so we keep the exporter that takes the model
  as written. ``exporter="torchscript"`` stays selectable to re-run the comparison.

Constant folding uses onnx's own tooling (the onnxscript optimiser behind
``ONNXProgram.optimize``), not onnxruntime's offline optimiser: the latter's saved graph adds
nodes (460 vs 448) and imports onnxruntime-only domains that TensorRT does not parse.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch
from torch import nn

MAX_OPSET = 20  # TensorRT 10's ONNX parser covers opsets 9..20
EXPORTERS = ("dynamo", "torchscript")
FORBIDDEN_OPS = {"DFT", "STFT", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                 "Multinomial", "Bernoulli"}
COMPLEX_TYPES = {14, 15}  # onnx.TensorProto.COMPLEX64, COMPLEX128


class ExportSafetyError(RuntimeError):
    """An exported graph that a deployment target cannot run as intended."""


def input_names(num_inputs: int) -> list[str]:
    """Graph input names: ``image`` and, under addition fusion, ``text_features``."""
    return ["image", "text_features"][:num_inputs]


def export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, *, opset: int = MAX_OPSET,
                exporter: str = "dynamo") -> Path:
    """Export ``module`` to ``path`` (one file, dynamic batch axis), then check and infer shapes."""
    import onnx

    if opset > MAX_OPSET:
        raise ValueError(f"opset {opset} is above {MAX_OPSET}, the newest TensorRT 10 parses")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    names = input_names(len(inputs))
    path = Path(path)
    module = module.eval()
    with torch.no_grad():
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


class _Atan2Probe(nn.Module):
    def forward(self, imag: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        from mrdl.phase import atan2_export_safe

        return atan2_export_safe(imag, real)


def atan2_sign_check(*, opset: int = MAX_OPSET, exporter: str = "dynamo", workdir: Path) -> dict[str, float]:
    """Export the phase's atan2 with the same exporter and run it in onnxruntime at its edge cases.

    Returns the onnxruntime values at (Im, Re) = (+0, -1), (-0, -1), (0, 0), (1, 0), (-1, 0);
    raises :class:`ExportSafetyError` unless they are +pi, +pi, 0, pi/2, -pi/2 (torch.angle's
    conventions; a naive atan/where decomposition gives -pi at Im = -0).
    """
    import numpy as np
    import onnxruntime as ort

    imag = torch.tensor([0.0, -0.0, 0.0, 1.0, -1.0, 0.5])
    real = torch.tensor([-1.0, -1.0, 0.0, 0.0, 0.0, -0.5])
    path = Path(workdir) / "atan2_probe.onnx"
    probe = _Atan2Probe()
    with torch.no_grad():
        if exporter == "dynamo":
            program = torch.onnx.export(probe, (imag, real), input_names=["imag", "real"], output_names=["angle"],
                                        opset_version=opset, dynamo=True, verbose=False)
            program.save(str(path))
        else:
            torch.onnx.export(probe, (imag, real), str(path), input_names=["imag", "real"], output_names=["angle"],
                              opset_version=opset, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"imag": imag.numpy(), "real": real.numpy()})[0]
    path.unlink()
    expected = np.array([math.pi, math.pi, 0.0, math.pi / 2, -math.pi / 2, 3 * math.pi / 4], dtype=np.float32)
    if not np.allclose(got, expected, atol=1e-6):
        raise ExportSafetyError(f"exported atan2 gives {got.tolist()} at (Im, Re) = (+0,-1), (-0,-1), (0,0), "
                                f"(1,0), (-1,0), (0.5,-0.5); expected {expected.tolist()}")
    labels = ["(+0,-1)", "(-0,-1)", "(0,0)", "(1,0)", "(-1,0)", "(0.5,-0.5)"]
    return {label: float(value) for label, value in zip(labels, got)}
