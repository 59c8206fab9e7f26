"""``export_model``: checkpoint -> verified deploy directory (docs/deploy-manifest.md).

Pipeline: load (matmul phase) -> deploy module (constants folded) -> ONNX -> export-safety
checks -> parity gate against the checkpoint in PyTorch -> optional INT8 / FP16 variants ->
TensorRT compatibility report -> optional TensorRT engine -> manifest. Everything is written
into a hidden temporary folder beside ``out_dir`` and renamed onto it only when every step
passed, so a failed gate leaves no model under the normal name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .parity import DEFAULT_ATOL, DEFAULT_MIN_DICE, ParityError, ParityResult


class ExportError(RuntimeError):
    """Bad input or a failed export step; the message says what was expected."""


@dataclass
class ExportResult:
    """What :func:`export_model` produced and measured."""

    out_dir: Path
    manifest_path: Path
    onnx_path: Path
    manifest: dict[str, Any]
    parity: dict[str, ParityResult]  # precision -> figures against the checkpoint in PyTorch
    ops: dict[str, int]  # FP32 graph: op type -> node count
    folding: dict[str, Any]  # what the deploy module folded and the FLOPs it saves
    trt_report: Any = None  # mrdl_export.trt_report.CompatibilityReport
    int8_path: Path | None = None
    fp16_path: Path | None = None
    engine_path: Path | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # artefact file name -> bytes
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    atan2_check: dict[str, float] = field(default_factory=dict)


def _prepare_out_dir(out_dir: Path, *, force: bool) -> Path:
    """Refuse an existing non-empty ``out_dir`` without ``force``; return a fresh temp dir beside it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output {out_dir} exists and is not a folder; choose a folder path for --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"output folder {out_dir} already exists and is not empty; pass --force to replace it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    except OSError as exc:
        raise ExportError(f"cannot write into {out_dir.parent}: {exc.strerror or exc}; choose a writable --out") from exc


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished temp folder onto ``out_dir``, replacing an old one only after success."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(ckpt: str | Path, out_dir: str | Path, *, data: Path | None = None, int8: bool = False,
                 calib_data: Path | None = None, fp16: bool = False, trt: bool = False, force: bool = False,
                 opset: int = 20, max_batch: int = 16, atol: float = DEFAULT_ATOL,
                 min_dice: float = DEFAULT_MIN_DICE, parity_images: int = 8, expected_config: str | None = None,
                 exporter: str = "dynamo", progress: bool = False) -> ExportResult:
    """Export the checkpoint ``ckpt`` to the deploy directory ``out_dir`` and verify it.

    ``data``: dataset root (LViT layout) or folder of images for the parity gate (default: the
    synthetic set). ``atol`` / ``min_dice``: the gate's limits on max |delta probability| and
    mean mask Dice agreement. ``expected_config``: refuse a checkpoint of another architecture.
    Raises :class:`ExportError` on bad input and :class:`ParityError` when the gate fails.
    """
    from mrdl.checkpoint import CheckpointError, load_checkpoint

    from .deploy import build_deploy_module, example_inputs
    from .manifest import ARTIFACT_NAMES, build_manifest, embed_manifest, file_sha256, write_manifest
    from .onnx_export import atan2_sign_check, export_onnx, op_counts
    from .parity import compare, load_images, onnx_probabilities, reference_probabilities, text_features_for

    if int8 or fp16 or trt:
        raise ExportError("INT8, FP16 and TensorRT variants are not available in this build yet")
    if max_batch < 1:
        raise ExportError(f"max_batch must be >= 1, got {max_batch}")
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        model, checkpoint = load_checkpoint(ckpt, expected_config=expected_config, phase="matmul")
        reference, _ = load_checkpoint(ckpt)  # the checkpoint as trained (its own phase implementation)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    config = checkpoint.config
    tmp = _prepare_out_dir(out_dir, force=force)
    try:
        timings["load"] = time.perf_counter() - start
        mark = time.perf_counter()
        deploy, folding = build_deploy_module(model)
        timings["deploy_module"] = time.perf_counter() - mark

        mark = time.perf_counter()
        onnx_path = export_onnx(deploy, example_inputs(model), tmp / ARTIFACT_NAMES["fp32"], opset=opset,
                                exporter=exporter)
        atan2 = atan2_sign_check(opset=opset, exporter=exporter, workdir=tmp)
        timings["onnx_export"] = time.perf_counter() - mark

        mark = time.perf_counter()
        images, source = load_images(size=config.model.image_size, data=data, count=parity_images)
        inputs = [images] + ([text_features_for(config, len(images))] if config.model.fusion == "addition" else [])
        expected = reference_probabilities(reference, inputs)
        parity = {"fp32": compare(expected, onnx_probabilities(onnx_path, inputs), source=source)}
        timings["parity"] = time.perf_counter() - mark
        if not parity["fp32"].passes(atol=atol, min_dice=min_dice):
            p = parity["fp32"]
            raise ParityError(f"parity gate failed for {ckpt}: max |delta| {p.max_abs_diff:.3g} (limit {atol:g}), "
                              f"mask Dice agreement {p.dice_agreement:.4f} (limit {min_dice:g}) on {p.images} "
                              f"{source} images; no model was written")

        artifacts = {"fp32": ARTIFACT_NAMES["fp32"]}
        manifest = build_manifest(config, checkpoint_path=ckpt, checkpoint_sha256=file_sha256(ckpt),
                                  artifacts=artifacts, opset=opset, max_batch=max_batch,
                                  parity={k: v.to_dict() for k, v in parity.items()},
                                  extra={"folding": folding.to_dict()})
        for name in artifacts.values():
            embed_manifest(tmp / name, manifest)
        write_manifest(tmp / "model.json", manifest)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        import onnx

        ops = op_counts(onnx.load(str(onnx_path)))
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    timings["total"] = time.perf_counter() - start
    return ExportResult(out_dir=out_dir, manifest_path=out_dir / "model.json", onnx_path=out_dir / onnx_path.name,
                        manifest=manifest, parity=parity, ops=ops, folding=folding.to_dict(), sizes=sizes,
                        timings=timings, atan2_check=atan2)
