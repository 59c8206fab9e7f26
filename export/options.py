"""``ExportOptions``: every option of an export, with its default and its help, in one place.

:class:`mrdl_export.exporter.Exporter` reads them once and :meth:`ExportOptions.validate` checks
them once. ``mrdl-export`` builds its command-line options from these fields: the flag, help,
choices and range live in each field's metadata (:func:`mrdl_runtime.options.option`, the one field
helper of every options dataclass), the default in the field, so neither is written twice. Fields
marked ``cli=False`` are library-only. The INT8-only fields (:data:`INT8_ONLY`) are refused without
``int8`` when they differ from their defaults (``mrdl-export`` also when given on the command line
at all): they would be ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable

from mrdl_runtime.manifest import MAX_BATCH, PRECISIONS
from mrdl_runtime.options import check_fields, command_line_flag, option

from .errors import ExportError
from .manifest import parse_source_mpp, parse_source_size
from .onnx_export import MAX_OPSET, MIN_OPSET
from .parity import DEFAULT_ATOL, DEFAULT_MAX_DICE_DROP, DEFAULT_MIN_DICE
from .quantize import CALIBRATION_METHODS, DEFAULT_CALIBRATION, DEFAULT_INT8_TARGET, INT8_TARGETS, KEEP_CHOICES, KEEP_FP32
from .tensorrt_build import EngineOptions


@dataclass(frozen=True)
class ExportOptions:
    """How :class:`mrdl_export.exporter.Exporter` exports a checkpoint (``mrdl-export``'s options, in its order)."""

    expected_config: str | None = option(
        None, "Refuse a checkpoint whose architecture differs from this config (tiny, small, base).", flag="--config")
    data: Path | None = option(
        None, "Parity images: an LViT dataset root or a folder of images (default: synthetic set).")
    parity_images: int = option(8, "How many images the parity gate compares.", low=1)
    atol: float = option(DEFAULT_ATOL, "Parity gate: max |delta probability| allowed.", low=0)
    min_dice: float = option(DEFAULT_MIN_DICE, "Parity gate: minimum mean mask Dice agreement.", low=0, high=1)
    int8: bool = option(False, "Also write model.int8.onnx (QDQ, static calibration).")
    calib_data: Path | None = option(
        None, "INT8 calibration images (dataset root or folder; default: --data, else synthetic).")
    calib_images: int = option(32, "How many calibration images.", low=1)
    calib_method: str = option(DEFAULT_CALIBRATION,
                               "INT8 calibration: activation ranges from min/max, entropy or percentile.",
                               choices=tuple(CALIBRATION_METHODS))
    # INT8 (issue 12): recipe, FP32 islands and the task-accuracy gate
    int8_target: str = option(
        DEFAULT_INT8_TARGET, "INT8 recipe: onnxruntime (u8 activations, integer CPU kernels between layers) or "
        "tensorrt (symmetric s8, zero points 0, compute ops only) or openvino (NNCF for OpenVINO's CPU, gated on "
        "OpenVINO; pip install 'mrdl[openvino]').", choices=tuple(INT8_TARGETS))
    int8_keep_fp32: tuple[str, ...] = option(
        KEEP_FP32, "Model parts left in FP32 in the INT8 model (repeatable; 'auto': the fewest blocks that pass the "
        "accuracy gate, by sensitivity on the calibration images; 'none' quantizes all but the phase).",
        choices=KEEP_CHOICES)
    int8_max_dice_drop: float = option(
        DEFAULT_MAX_DICE_DROP, "INT8 gate: most task Dice points (x100, against ground truth on labelled parity "
        "images) the INT8 model may lose against FP32.", low=0)
    int8_min_dice: float | None = option(
        None, "Fail when INT8 mask Dice agreement is below this (default: report only).", low=0, high=1)
    fp16: bool = option(False, "Also write model.fp16.onnx (FP32 IO, norms in FP32).")
    trt_check: bool = option(False, "Fail when the TensorRT 10 report flags an unsupported op.")
    trt: bool = option(False, "Build model.engine with TensorRT (needs TensorRT and a GPU).")
    trt_precision: str | None = option(
        None, "Engine precision (default: int8 with --int8, else fp16 with --fp16, else fp32).", choices=PRECISIONS)
    min_batch: int = option(1, "TensorRT profile: smallest batch.")
    opt_batch: int | None = option(None, "TensorRT profile: batch to tune for (default: midpoint).")
    max_batch: int = option(16, "Largest batch (TensorRT profile and manifest max_batch).", low=1, high=MAX_BATCH)
    workspace_mb: int = option(2048, "TensorRT workspace limit in MiB.", flag="--workspace")
    timing_cache: Path | None = option(None, "TensorRT timing cache file (read, then updated).")
    opset: int = option(MAX_OPSET, f"ONNX opset: TensorRT 10 parses up to {MAX_OPSET}, the exporter reaches down to "
                                   f"{MIN_OPSET} (mrdl_export.onnx_export).", low=MIN_OPSET, high=MAX_OPSET)
    force: bool = option(
        False, "Replace an existing deploy directory written by mrdl-export (never a folder with other files).")
    # Triton serving (issue 13): a model repository written from the published deploy directory.
    triton: Path | None = option(
        None, "Also write a Triton model repository here (one model per precision; see mrdl triton-repo).")
    # Tiled inference (issue 14): the training scale, model.json's source_size (docs/tiling.md).
    source_size: str | None = option(
        None, "Training images' size HxW (e.g. 1000x1000) for tiled inference; default: the checkpoint's "
              "provenance source_size (recorded by mrdl train), else none.")
    # Whole slides (issue 20): the training images' resolution, model.json's source_mpp (docs/slides.md).
    source_mpp: str | None = option(
        None, "Training images' resolution in microns per pixel (e.g. 0.25 for MoNuSeg at 40x) for whole-slide "
              "inference; default: the checkpoint's provenance source_mpp (recorded by mrdl train), else none.")
    exporter: str = option("dynamo", "torch.onnx exporter (mrdl_export.onnx_export.EXPORTERS).", cli=False)
    progress: bool = option(False, "Show a progress bar of the steps on stderr.", cli=False)

    @property
    def engine_precision(self) -> str:
        """The TensorRT engine's precision: ``trt_precision``, else the lowest variant exported."""
        return self.trt_precision or ("int8" if self.int8 else "fp16" if self.fp16 else "fp32")

    def engine_options(self) -> EngineOptions:
        return EngineOptions(precision=self.engine_precision, min_batch=self.min_batch, opt_batch=self.opt_batch,
                             max_batch=self.max_batch, workspace_mb=self.workspace_mb, timing_cache=self.timing_cache)

    def validate(self) -> "ExportOptions":
        """Refuse, before any work, options that cannot be honoured here; return self.

        Raises :class:`ExportError` naming the option (a value outside its choices or range, a
        batch profile out of order, an image folder without images) and ``TensorRTUnavailable``
        when ``trt`` is asked of a machine without TensorRT or a CUDA GPU.
        """
        from mrdl.data.sources import image_files

        from . import tensorrt_build

        check_fields(self, error=ExportError)
        check_int8_only(self)
        try:
            self.engine_options().validate()
        except ValueError as exc:
            raise ExportError(str(exc)) from exc
        if self.trt:  # fail fast, before any work, on a machine that cannot build engines
            tensorrt_build.major_version(tensorrt_build.load_tensorrt())
            tensorrt_build.detect_gpu()
        if self.trt and self.engine_precision == "int8" and not self.int8:
            raise ExportError("an INT8 engine is built from the INT8 QDQ model: add --int8")
        if self.trt and self.engine_precision == "int8" and self.int8_target != "tensorrt":
            raise ExportError("an INT8 engine needs the INT8 model's zero points at 0: add --int8-target tensorrt")
        if "auto" in self.int8_keep_fp32 and len(self.int8_keep_fp32) > 1:
            raise ExportError(f"int8_keep_fp32 'auto' cannot be combined with scopes, got "
                              f"{', '.join(self.int8_keep_fp32)}")
        if self.source_size is not None:  # a malformed or absurd HxW fails before minutes of work
            from mrdl_runtime.manifest import ManifestError, check_source_size

            try:  # the model-independent range here; the model-relative one when the manifest is built
                check_source_size(parse_source_size(self.source_size), None, "--source-size")
            except ManifestError as exc:
                raise ExportError(str(exc)) from None
        if self.source_mpp is not None:
            parse_source_mpp(self.source_mpp)
        for folder in (self.data, self.calib_data):  # refuse a bad image folder before minutes of work
            if folder is not None:
                try:
                    image_files(folder)
                except FileNotFoundError as exc:
                    raise ExportError(str(exc)) from exc
        return self


INT8_ONLY = ("calib_data", "calib_images", "calib_method", "int8_target", "int8_keep_fp32", "int8_max_dice_drop",
             "int8_min_dice")  # the fields that set up the INT8 model, and do nothing without it


def check_int8_only(options: ExportOptions, *, given: Iterable[str] = ()) -> None:
    """Refuse, without ``int8``, an INT8-only field (:data:`INT8_ONLY`) that differs from its default or is
    named in ``given`` (the fields a command line set explicitly, to its default value or not)."""
    if options.int8:
        return
    given = set(given)
    for option_field in fields(options):
        if option_field.name in INT8_ONLY and (option_field.name in given
                                               or getattr(options, option_field.name) != option_field.default):
            raise ExportError(f"{command_line_flag(option_field)} needs --int8 (int8=True): it only sets up the "
                              "INT8 model; add --int8 or drop it")
