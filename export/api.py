"""``export_model``: checkpoint -> verified deploy directory (docs/deploy-manifest.md).

Pipeline: load (matmul phase) -> deploy module (constants folded) -> ONNX -> export-safety
checks -> parity gate against the checkpoint in PyTorch -> optional INT8 / FP16 variants ->
TensorRT compatibility report -> optional TensorRT engine -> manifest (embedded into each ONNX
file, then every artifact hashed into ``model.json``). Everything is written into a hidden
temporary folder beside ``out_dir`` and renamed onto it only when every step passed, so a failed
gate leaves no model under the normal name (:mod:`mrdl_export.publish`).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .parity import DEFAULT_ATOL, DEFAULT_MIN_DICE, ParityError, ParityResult
from .quantize import DEFAULT_CALIBRATION, KEEP_FP32, check_int8_options


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
    phase_check: dict[str, float] = field(default_factory=dict)
    training_phase_parity: ParityResult | None = None  # FP32 ONNX vs the checkpoint's own (fft) phase


def _model_inputs(config, *, data: Path | None, count: int, **selection):
    """The graph's inputs for ``count`` images (``mrdl.data.sources.load_images``): [images] [+ stand-in text
    features]."""
    from mrdl.data.sources import load_images

    from .parity import text_features_for

    images = load_images(size=config.model.image_size, data=data, count=count, **selection)
    extra = [text_features_for(config, len(images))] if config.model.fusion == "addition" else []
    return [images.tensors, *extra], images.source


def _timed(timings: dict[str, float], name: str, function, *args, **kwargs):
    mark = time.perf_counter()
    value = function(*args, **kwargs)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - mark
    return value


def export_model(ckpt: str | Path, out_dir: str | Path, *, data: Path | None = None, int8: bool = False,
                 calib_data: Path | None = None, fp16: bool = False, trt: bool = False, force: bool = False,
                 opset: int = 20, max_batch: int = 16, atol: float = DEFAULT_ATOL,
                 min_dice: float = DEFAULT_MIN_DICE, parity_images: int = 8, calib_images: int = 32,
                 calib_method: str = DEFAULT_CALIBRATION, int8_keep_fp32: tuple[str, ...] = KEEP_FP32,
                 int8_min_dice: float | None = None, trt_check: bool = False, trt_precision: str | None = None,
                 min_batch: int = 1, opt_batch: int | None = None, workspace_mb: int = 2048,
                 timing_cache: Path | None = None, expected_config: str | None = None,
                 exporter: str = "dynamo", progress: bool = False) -> ExportResult:
    """Export the checkpoint ``ckpt`` to the deploy directory ``out_dir`` and verify it.

    ``data``: dataset root (LViT layout) or folder of images for the parity gate (default: the
    synthetic set). ``atol`` / ``min_dice``: the gate's limits on max |delta probability| and
    mean mask Dice agreement (FP32). ``int8``: INT8 QDQ variant calibrated on ``calib_images``
    images of ``calib_data`` (else ``data``, else synthetic) with ``calib_method`` (minmax,
    entropy, percentile), the model scopes ``int8_keep_fp32`` left in FP32 (default: the
    decoder; see :mod:`mrdl_export.quantize`); its parity is reported and gated
    only when ``int8_min_dice`` is given. ``fp16``: FP16 variant. ``trt_check``: fail when the
    TensorRT 10.x report flags an unsupported op. ``trt``: build a TensorRT engine of
    ``trt_precision`` (default: int8 if ``int8``, else fp16 if ``fp16``, else fp32) with batch
    profile ``min_batch``/``opt_batch``/``max_batch``. ``expected_config``: refuse a checkpoint
    of another architecture. ``force``: replace an existing mrdl deploy directory (never a folder
    holding the checkpoint, the image folders or other files; :mod:`mrdl_export.publish`).
    Raises :class:`ExportError` on bad input, a refused ``out_dir`` or a failed step,
    :class:`ParityError` when a gate fails and ``TensorRTUnavailable`` when ``trt`` is asked for
    on a machine without TensorRT or a GPU; nothing is left under ``out_dir`` in those cases, nor
    after KeyboardInterrupt.
    """
    import onnx
    from tqdm import tqdm

    from mrdl.checkpoint import CheckpointError, load_checkpoint
    from mrdl.data.sources import CALIBRATION_SPLITS, image_files
    from mrdl_runtime.manifest import ARTIFACT_FILES, MANIFEST_NAME, file_sha256

    from . import tensorrt_build
    from .deploy import build_deploy_module, example_inputs
    from .manifest import build_manifest, input_specs, write_deploy_manifest
    from .onnx_export import export_onnx, op_counts, phase_sign_check
    from .parity import compare, onnx_probabilities, reference_probabilities
    from .publish import check_out_dir, make_partial, publish, remove_leftovers
    from .quantize import convert_fp16, quantize_int8
    from .trt_report import check_graph, format_report

    if max_batch < 1 or parity_images < 1 or calib_images < 1:
        raise ExportError(f"max_batch, parity_images and calib_images must be >= 1, got {max_batch}, "
                          f"{parity_images}, {calib_images}")
    try:
        check_int8_options(calib_method=calib_method, keep_fp32=tuple(int8_keep_fp32))
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    precision = trt_precision or ("int8" if int8 else "fp16" if fp16 else "fp32")
    engine_options = tensorrt_build.EngineOptions(precision=precision, min_batch=min_batch, opt_batch=opt_batch,
                                                  max_batch=max_batch, workspace_mb=workspace_mb,
                                                  timing_cache=timing_cache)
    try:
        engine_options.validate()
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if trt:  # fail fast, before any work, on a machine that cannot build engines
        tensorrt_build.major_version(tensorrt_build.load_tensorrt())
        tensorrt_build.detect_gpu()
    if trt and precision == "int8" and not int8:
        raise ExportError("an INT8 engine is built from the INT8 QDQ model: add --int8")
    for folder in (data, calib_data):  # refuse a bad image folder before minutes of work
        if folder is not None:
            try:
                image_files(folder)
            except FileNotFoundError as exc:
                raise ExportError(str(exc)) from exc
    ckpt, out_dir = Path(ckpt), Path(os.path.abspath(out_dir))  # "." and "x/.." become real names; links stay
    protected = {"checkpoint being exported": ckpt, "--data folder": data, "--calib-data folder": calib_data,
                 "--timing-cache file": timing_cache}
    protected = {label: Path(path) for label, path in protected.items() if path is not None}
    check_out_dir(out_dir, force=force, protected=protected)  # before minutes of work
    remove_leftovers(out_dir)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        model, checkpoint = load_checkpoint(ckpt, expected_config=expected_config, phase="matmul")
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    timings["load"] = time.perf_counter() - start
    config = checkpoint.config
    trained_phase = config.model.phase  # the checkpoint's own phase implementation (usually fft)
    tmp = make_partial(out_dir)
    steps = tqdm(total=4 + int8 + fp16 + trt, desc="mrdl-export", unit="step", disable=not progress)
    try:
        steps.set_postfix_str("deploy module")
        deploy, folding = _timed(timings, "deploy_module", build_deploy_module, model)
        steps.update()
        steps.set_postfix_str("onnx export")
        onnx_path = _timed(timings, "onnx_export", export_onnx, deploy, example_inputs(model),
                           tmp / ARTIFACT_FILES["fp32"], opset=opset, exporter=exporter)
        phase_check = _timed(timings, "onnx_export", phase_sign_check, onnx_path)
        steps.update()

        steps.set_postfix_str("parity gate")
        mark = time.perf_counter()
        inputs, source = _model_inputs(config, data=data, count=parity_images)
        # The gate's reference is the checkpoint in PyTorch with the phase the graph implements
        # (matmul), so it measures the export alone. The fft and matmul phases of one checkpoint
        # differ by float rounding at near-zero DFT bins, where the phase is ill-conditioned: on a
        # trained `small` model that alone moves a few probabilities by 1e-2 (masks agree to 1e-5),
        # while the export itself stays near 1e-6. That drift is measured too, gated on masks.
        expected = reference_probabilities(model, inputs)
        fp32_probabilities = onnx_probabilities(onnx_path, inputs)
        parity = {"fp32": compare(expected, fp32_probabilities, source=source)}
        phase_drift = None
        if trained_phase != "matmul":  # the same weights with the phase as trained
            with model.phase_mode(trained_phase):
                phase_drift = compare(reference_probabilities(model, inputs), fp32_probabilities, source=source)
        timings["parity"] = time.perf_counter() - mark
        _gate(parity["fp32"], "FP32", ckpt=ckpt, atol=atol, min_dice=min_dice)
        if phase_drift is not None:
            _gate(phase_drift, f"FP32 vs the {trained_phase}-phase model", ckpt=ckpt, atol=1.0,
                  min_dice=min_dice)
        steps.update()

        artifacts = {"fp32": ARTIFACT_FILES["fp32"]}  # key -> file name in tmp
        calibration_source = None
        if int8:
            steps.set_postfix_str("int8 quantization")
            calibration, calibration_source = _model_inputs(config, data=calib_data or data, count=calib_images,
                                                            splits=CALIBRATION_SPLITS, synthetic_offset=1000)
            int8_path = _timed(timings, "int8", quantize_int8, onnx_path, tmp / ARTIFACT_FILES["int8"], calibration,
                               calib_method=calib_method, keep_fp32=tuple(int8_keep_fp32))
            parity["int8"] = compare(expected, onnx_probabilities(int8_path, inputs), source=source)
            if int8_min_dice is not None:
                _gate(parity["int8"], "INT8", ckpt=ckpt, atol=1.0, min_dice=int8_min_dice)
            artifacts["int8"] = ARTIFACT_FILES["int8"]
            steps.update()
        if fp16:
            steps.set_postfix_str("fp16 conversion")
            fp16_path = _timed(timings, "fp16", convert_fp16, onnx_path, tmp / ARTIFACT_FILES["fp16"])
            parity["fp16"] = compare(expected, onnx_probabilities(fp16_path, inputs), source=source)
            artifacts["fp16"] = ARTIFACT_FILES["fp16"]
            steps.update()

        steps.set_postfix_str("tensorrt report")
        fp32_graph = onnx.load(str(onnx_path))
        report, ops = check_graph(fp32_graph), op_counts(fp32_graph)
        variant_reports = {key: check_graph(onnx.load(str(tmp / name))).to_dict()
                           for key, name in artifacts.items() if key != "fp32"}
        if trt_check and not report.compatible("10.x"):
            raise ExportError(f"--trt-check: the graph is not TensorRT 10 compatible\n{format_report(report)}")
        steps.update()

        engine_record = None
        if trt:
            steps.set_postfix_str("tensorrt engine")
            module = tensorrt_build.load_tensorrt()
            source_key = tensorrt_build.engine_source(precision, tensorrt_build.major_version(module))
            if source_key not in artifacts:
                raise ExportError(f"a {precision} engine for TensorRT {module.__version__} is built from "
                                  f"{ARTIFACT_FILES[source_key]}: add --{source_key}")
            shapes = {spec["name"]: tuple(spec["shape"][1:]) for spec in input_specs(config)}
            engine_record = _timed(timings, "tensorrt", tensorrt_build.build_engine, tmp / artifacts[source_key],
                                   tmp / ARTIFACT_FILES["tensorrt"], shapes, engine_options, trt=module)
            artifacts["tensorrt"] = ARTIFACT_FILES["tensorrt"]
            steps.update()

        extra = {"folding": folding.to_dict(), "tensorrt_compatibility": report.to_dict()}
        if phase_drift is not None:
            extra["training_phase_parity"] = {"phase": trained_phase, **phase_drift.to_dict()}
        if variant_reports:
            extra["tensorrt_compatibility_variants"] = variant_reports
        if calibration_source:
            extra["int8_calibration"] = {"source": calibration_source, "images": calib_images,
                                         "method": f"{calib_method}, symmetric INT8, per-channel weights",
                                         "fp32_scopes": ["phase", "attention matmuls", *int8_keep_fp32]}
        if engine_record:
            extra["tensorrt"] = engine_record
        precisions = {"fp32": "fp32", "int8": "int8", "fp16": "fp16", "tensorrt": precision}
        manifest = build_manifest(config, checkpoint_path=ckpt, checkpoint_sha256=file_sha256(ckpt),
                                  artifacts={key: {"file": name, "precision": precisions[key]}
                                             for key, name in artifacts.items()},
                                  opset=opset, max_batch=max_batch,
                                  parity={k: v.to_dict() for k, v in parity.items()}, extra=extra)
        if engine_record:  # both runtimes check the engine's TensorRT version here before deserialising
            manifest["versions"]["tensorrt"] = engine_record["tensorrt_version"]
        manifest = write_deploy_manifest(tmp, manifest)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        publish(tmp, out_dir, force=force, protected=protected)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        steps.close()
    timings["total"] = time.perf_counter() - start

    def published(key: str) -> Path | None:
        return out_dir / artifacts[key] if key in artifacts else None

    return ExportResult(out_dir=out_dir, manifest_path=out_dir / MANIFEST_NAME, onnx_path=published("fp32"),
                        manifest=manifest, parity=parity, ops=ops, folding=folding.to_dict(), trt_report=report,
                        int8_path=published("int8"), fp16_path=published("fp16"), engine_path=published("tensorrt"),
                        sizes=sizes, timings=timings, phase_check=phase_check,
                        training_phase_parity=phase_drift)


def _gate(result: ParityResult, label: str, *, ckpt: Path, atol: float, min_dice: float) -> None:
    if not result.passes(atol=atol, min_dice=min_dice):
        raise ParityError(f"{label} parity gate failed for {ckpt}: max |delta| {result.max_abs_diff:.3g} "
                          f"(limit {atol:g}), mask Dice agreement {result.dice_agreement:.4f} (limit {min_dice:g}) "
                          f"on {result.images} images from {result.source}; no model was written")
