"""``Exporter``: checkpoint -> verified deploy directory (docs/deploy-manifest.md), in named steps.

One :class:`~mrdl_export.options.ExportOptions` is read once and validated once; :meth:`Exporter.run`
then dispatches the steps, each a method:

* :meth:`~Exporter.deploy_module`: the checkpoint (matmul phase) reduced to inference, constants folded;
* :meth:`~Exporter.onnx`: the ONNX graph, its export-safety checks and the phase sign probe;
* :meth:`~Exporter.gate`: parity against the checkpoint in PyTorch, and the drift from its trained phase (with
  a warning in :attr:`ExportResult.warnings` when the checkpoint's masks are one class everywhere);
* :meth:`~Exporter.variants`: the INT8 and FP16 models, each compared with the same reference;
* :meth:`~Exporter.tensorrt`: the TensorRT compatibility report and the optional engine;
* :meth:`~Exporter.manifest`: the manifest, embedded into each ONNX file, then every artifact hashed
  into ``model.json``;
* :meth:`~Exporter.publish`: the finished folder renamed onto ``--out``;
* :meth:`~Exporter.triton` (with ``--triton REPO``): a Triton model repository of the published directory.

Everything is written into a hidden temporary folder beside ``out_dir`` and renamed onto it only
when every step passed, so a failed gate leaves no model under the normal name
(:mod:`mrdl_export.publish`).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mrdl_runtime.manifest import ARTIFACT_FILES, MANIFEST_NAME

from .options import ExportError, ExportOptions
from .parity import ParityError, ParityResult


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
    int8: dict[str, Any] | None = None  # INT8 recipe, FP32 islands, sensitivity search and task-accuracy gate
    warnings: list[str] = field(default_factory=list)  # what passed but proves less than it seems (mrdl-export prints)


@dataclass
class _Reference:
    """The parity images and the checkpoint's probabilities on them: what every exported file is compared with."""

    inputs: list[np.ndarray]  # [images] [+ stand-in text features]
    source: str
    probabilities: np.ndarray
    labels: np.ndarray | None = None  # ground truth (N, S, S) where the parity images have it
    fp32_probabilities: np.ndarray | None = None  # the FP32 ONNX model's, for the INT8 task-accuracy gate

    def compare(self, onnx_path: Path) -> ParityResult:
        from .parity import compare, onnx_probabilities

        return compare(self.probabilities, onnx_probabilities(onnx_path, self.inputs), source=self.source)


@dataclass
class _Job:
    """One run: its inputs, and what the steps produced so far (files stay in ``folder`` until published)."""

    ckpt: Path
    out_dir: Path
    protected: dict[str, Path]  # what the export reads: label -> path; --out may be none of them
    model: Any  # mrdl.model.MRDL, matmul phase: the parity reference
    config: Any  # the checkpoint's own MRDLConfig (its trained phase)
    folder: Path  # the private .partial folder
    timings: dict[str, float]
    progress: Any  # tqdm bar over the steps (disabled unless options.progress)
    artifacts: dict[str, str] = field(default_factory=dict)  # key -> file name in folder
    parity: dict[str, ParityResult] = field(default_factory=dict)
    reference: _Reference | None = None
    phase_check: dict[str, float] = field(default_factory=dict)
    phase_drift: ParityResult | None = None
    folding: Any = None  # mrdl_export.deploy.FoldReport
    deploy: Any = None  # the deploy module model.onnx was exported from
    report: Any = None  # FP32 graph's mrdl_export.trt_report.CompatibilityReport
    variant_reports: dict[str, dict] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)
    calibration_source: str | None = None
    int8: dict[str, Any] = field(default_factory=dict)  # INT8 recipe, search and accuracy (manifest int8_quantization)
    engine: dict[str, Any] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Exporter:
    """Export checkpoints with one set of :class:`ExportOptions`: ``Exporter(options).run(ckpt, out_dir)``."""

    def __init__(self, options: ExportOptions | None = None) -> None:
        self.options = options or ExportOptions()

    def run(self, ckpt: str | Path, out_dir: str | Path) -> ExportResult:
        """Export ``ckpt`` to the deploy directory ``out_dir``, every step verified; see :func:`export_model`."""
        from tqdm import tqdm

        from mrdl.checkpoint import CheckpointError, load_checkpoint

        from .publish import check_out_dir, make_partial, remove_leftovers

        options = self.options.validate()
        ckpt, out_dir = Path(ckpt), Path(os.path.abspath(out_dir))  # "." and "x/.." become real names; links stay
        protected = {"checkpoint being exported": ckpt, "--data folder": options.data,
                     "--calib-data folder": options.calib_data, "--timing-cache file": options.timing_cache}
        protected = {label: Path(path) for label, path in protected.items() if path is not None}
        check_out_dir(out_dir, force=options.force, protected=protected)  # before minutes of work
        if options.triton is not None:
            _check_triton_out(Path(options.triton), force=options.force, out_dir=out_dir)
        remove_leftovers(out_dir)
        start = time.perf_counter()
        try:
            model, checkpoint = load_checkpoint(ckpt, expected_config=options.expected_config, phase="matmul")
        except CheckpointError as exc:
            raise ExportError(str(exc)) from exc
        timings = {"load": time.perf_counter() - start}
        folder = make_partial(out_dir)
        progress = tqdm(total=4 + options.int8 + options.fp16 + options.trt, desc="mrdl-export", unit="step",
                        disable=not options.progress)
        job = _Job(ckpt=ckpt, out_dir=out_dir, protected=protected, model=model, config=checkpoint.config,
                   folder=folder, timings=timings, progress=progress)
        try:
            self.deploy_module(job)
            self.onnx(job)
            self.gate(job)
            self.variants(job)
            self.tensorrt(job)
            self.manifest(job)
            sizes = {p.name: p.stat().st_size for p in sorted(job.folder.iterdir()) if p.is_file()}
            self.publish(job)
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        finally:
            progress.close()
        if options.triton is not None:
            self.triton(job)
        job.timings["total"] = time.perf_counter() - start

        def published(key: str) -> Path | None:
            return out_dir / job.artifacts[key] if key in job.artifacts else None

        return ExportResult(out_dir=out_dir, manifest_path=out_dir / MANIFEST_NAME, onnx_path=published("fp32"),
                            manifest=job.manifest, parity=job.parity, ops=job.ops, folding=job.folding.to_dict(),
                            trt_report=job.report, int8_path=published("int8"), fp16_path=published("fp16"),
                            engine_path=published("tensorrt"), sizes=sizes, timings=job.timings,
                            phase_check=job.phase_check, training_phase_parity=job.phase_drift,
                            int8=job.int8 or None, warnings=job.warnings)

    def deploy_module(self, job: _Job) -> None:
        """``job.deploy``: the checkpoint reduced to what inference needs (:mod:`mrdl_export.deploy`)."""
        from .deploy import build_deploy_module

        with _step(job, "deploy module"):
            job.deploy, job.folding = _timed(job, "deploy_module", build_deploy_module, job.model)

    def onnx(self, job: _Job) -> None:
        """``model.onnx`` from the deploy module, checked export-safe, and the phase's sign probe."""
        from .onnx_export import phase_sign_check

        with _step(job, "onnx export"):
            path = _timed(job, "onnx_export", self._export, job, job.deploy, job.folder / ARTIFACT_FILES["fp32"])
            job.phase_check = _timed(job, "onnx_export", phase_sign_check, path)
            job.artifacts["fp32"] = ARTIFACT_FILES["fp32"]

    def _export(self, job: _Job, module, path: Path) -> Path:
        """``module`` (a deploy module) to the ONNX file ``path``, by the options' exporter and opset."""
        from .deploy import example_inputs
        from .onnx_export import export_onnx

        return export_onnx(module, example_inputs(job.model), path, opset=self.options.opset,
                           exporter=self.options.exporter)

    def gate(self, job: _Job) -> None:
        """FP32 parity against the checkpoint in PyTorch; :class:`ParityError` when it fails.

        The gate's reference is the checkpoint in PyTorch with the phase the graph implements
        (matmul), so it measures the export alone. The fft and matmul phases of one checkpoint
        differ by float rounding at near-zero DFT bins, where the phase is ill-conditioned: on a
        trained ``small`` model that alone moves a few probabilities by 1e-2 (masks agree to
        1e-5), while the export itself stays near 1e-6. That drift is measured too, gated on masks.
        When the checkpoint's masks are one class on every parity image, the mask agreement is
        trivially perfect and the gate proves little: that passes, with a warning in ``job.warnings``.
        """
        from mrdl.data.sources import EVALUATION_SPLITS

        from .parity import compare, constant_prediction, ground_truth, onnx_probabilities, reference_probabilities

        options, model = self.options, job.model
        trained_phase = job.config.model.phase  # the checkpoint's own phase implementation (usually fft)
        with _step(job, "parity gate"):
            mark = time.perf_counter()
            inputs, source, names = _model_inputs(job.config, data=options.data, count=options.parity_images)
            job.reference = _Reference(inputs, source, reference_probabilities(model, inputs))
            constant = constant_prediction(job.reference.probabilities)
            if constant:
                job.warnings.append(f"{job.ckpt}: {constant} on all {len(inputs[0])} parity images ({source}), so the "
                                    "parity gate compares constant masks and proves little. Untrained, or diverged "
                                    "to huge weights? Check the checkpoint on its validation images (mrdl evaluate), "
                                    "or give --data images it should segment")
            fp32_probabilities = onnx_probabilities(job.folder / job.artifacts["fp32"], inputs)
            job.reference.fp32_probabilities = fp32_probabilities
            if options.int8:
                job.reference.labels = ground_truth(options.data, names, size=job.config.model.image_size,
                                                    splits=EVALUATION_SPLITS)
            job.parity["fp32"] = compare(job.reference.probabilities, fp32_probabilities, source=source)
            if trained_phase != "matmul":  # the same weights with the phase as trained
                with model.phase_mode(trained_phase):
                    job.phase_drift = compare(reference_probabilities(model, inputs), fp32_probabilities,
                                              source=source)
            job.timings["parity"] = time.perf_counter() - mark
            _gate(job.parity["fp32"], "FP32", ckpt=job.ckpt, atol=options.atol, min_dice=options.min_dice)
            if job.phase_drift is not None:
                _gate(job.phase_drift, f"FP32 vs the {trained_phase}-phase model", ckpt=job.ckpt, atol=1.0,
                      min_dice=options.min_dice)

    def variants(self, job: _Job) -> None:
        """The INT8 (``options.int8``) and FP16 (``options.fp16``) models, compared with the gate's reference."""
        from mrdl.data.sources import CALIBRATION_SPLITS

        from .openvino_export import probabilities_for
        from .parity import compare
        from .quantize import convert_fp16

        options, folder = self.options, job.folder
        fp32_path = folder / job.artifacts["fp32"]
        if options.int8:
            with _step(job, "int8 quantization"):
                calib_data = options.calib_data or options.data
                calibration, job.calibration_source, names = _model_inputs(
                    job.config, data=calib_data, count=options.calib_images, splits=CALIBRATION_SPLITS,
                    synthetic_offset=1000)
                with tempfile.TemporaryDirectory(prefix="mrdl-int8-source-") as scratch:
                    source = _timed(job, "int8", self._int8_source, job, Path(scratch))
                    path = _timed(job, "int8", self._quantize, job, source or fp32_path, calibration, names,
                                  calib_data)
                probabilities = probabilities_for(options.int8_target)(path, job.reference.inputs)  # where it runs
                job.parity["int8"] = compare(job.reference.probabilities, probabilities, source=job.reference.source)
                self._int8_gate(job, probabilities)
                job.artifacts["int8"] = ARTIFACT_FILES["int8"]
        if options.fp16:
            with _step(job, "fp16 conversion"):
                path = _timed(job, "fp16", convert_fp16, fp32_path, folder / ARTIFACT_FILES["fp16"])
                job.parity["fp16"] = job.reference.compare(path)
                job.artifacts["fp16"] = ARTIFACT_FILES["fp16"]

    def _int8_source(self, job: _Job, scratch: Path) -> Path | None:
        """When the INT8 target's recipe asks for it (:attr:`~mrdl_export.quantize.Int8Recipe.int8_swaps`), the FP32
        graph to quantize instead of ``model.onnx``: the deploy module with :func:`mrdl_export.swaps.swap_for_int8`
        (the same function in ops that run faster in integer), exported to ``scratch``; None otherwise."""
        from .quantize import INT8_TARGETS
        from .swaps import swap_for_int8

        if not INT8_TARGETS[self.options.int8_target].int8_swaps:
            return None
        deploy = copy.deepcopy(job.deploy)
        job.folding.int8_replaced = swap_for_int8(deploy)
        if not job.folding.int8_replaced:
            return None
        return self._export(job, deploy, scratch / "int8-source.onnx")

    def _quantize(self, job: _Job, fp32_path: Path, calibration: list[np.ndarray], names: list[str],
                  calib_data: Path | None) -> Path:
        """``model.int8.onnx`` by ``int8_target``'s recipe; FP32 islands by hand or by the sensitivity search."""
        from mrdl.data.sources import CALIBRATION_SPLITS

        from .mixed_precision import search_fp32_blocks
        from .openvino_export import probabilities_for
        from .parity import ground_truth
        from .qdq_graph import excluded_nodes
        from .quantize import AUTO, Int8Model, finish_int8, quantize_full, quantize_int8_model, save_model

        options, out = self.options, job.folder / ARTIFACT_FILES["int8"]
        keep = tuple(options.int8_keep_fp32)
        if AUTO not in keep:
            try:
                int8 = quantize_int8_model(fp32_path, out, calibration, calib_method=options.calib_method,
                                           keep_fp32=keep, target=options.int8_target)
            except ValueError as exc:
                raise ExportError(str(exc)) from exc
            job.int8 = int8.to_dict()
            return out
        quantized, fp32 = quantize_full(fp32_path, calibration, calib_method=options.calib_method,
                                        target=options.int8_target)
        labels = ground_truth(calib_data, names, size=job.config.model.image_size, splits=CALIBRATION_SPLITS)
        model, search = search_fp32_blocks(quantized, fp32, calibration, labels, source=job.calibration_source,
                                           max_drop_points=options.int8_max_dice_drop, progress=options.progress,
                                           probabilities=probabilities_for(options.int8_target))
        rewrites = finish_int8(model, options.int8_target)
        save_model(model, out)
        int8 = Int8Model(path=out, target=options.int8_target, kept=search.kept, rewrites=rewrites,
                         fp32_nodes=excluded_nodes(fp32, keep_fp32=tuple(search.kept)))
        job.int8 = {**int8.to_dict(), "search": search.to_dict()}
        return out

    def _int8_gate(self, job: _Job, probabilities: np.ndarray) -> None:
        """Task Dice against ground truth, INT8 vs FP32 ONNX, on the parity images (when labelled); then the
        optional mask-agreement gate. :class:`ParityError` when either fails."""
        from .parity import task_accuracy

        options, reference = self.options, job.reference
        if reference.labels is None:
            job.int8["accuracy"] = {"measured": False,
                                    "reason": f"the parity images ({reference.source}) have no ground truth masks"}
        else:
            accuracy = task_accuracy(reference.fp32_probabilities, probabilities, reference.labels,
                                     source=reference.source, max_drop_points=options.int8_max_dice_drop)
            job.int8["accuracy"] = {"measured": True, **accuracy.to_dict()}
            if not accuracy.passes:
                raise ParityError(
                    f"INT8 accuracy gate failed for {job.ckpt}: task Dice against ground truth {accuracy.int8_dice:.4f} "
                    f"vs FP32 {accuracy.fp32_dice:.4f} on {accuracy.images} images from {accuracy.source}, a drop of "
                    f"{accuracy.drop_points:.2f} points (limit {accuracy.max_drop_points:g}; mask agreement with FP32 "
                    f"{accuracy.agreement:.4f}){_search_summary(job.int8.get('search'))}; keep more of the model in "
                    f"FP32 (--int8-keep-fp32 scopes), calibrate on more images, or raise --int8-max-dice-drop; "
                    f"no model was written")
        if options.int8_min_dice is not None:
            _gate(job.parity["int8"], "INT8", ckpt=job.ckpt, atol=1.0, min_dice=options.int8_min_dice)

    def tensorrt(self, job: _Job) -> None:
        """The TensorRT compatibility report of every graph (``trt_check``: gated), then the engine (``trt``)."""
        import onnx

        from . import tensorrt_build
        from .manifest import input_specs
        from .onnx_export import op_counts
        from .trt_report import check_graph, format_report

        options, folder = self.options, job.folder
        with _step(job, "tensorrt report"):
            fp32_graph = onnx.load(str(folder / job.artifacts["fp32"]))
            job.report, job.ops = check_graph(fp32_graph), op_counts(fp32_graph)
            job.variant_reports = {key: check_graph(onnx.load(str(folder / name))).to_dict()
                                   for key, name in job.artifacts.items() if key != "fp32"}
            if options.trt_check and not job.report.compatible("10.x"):
                raise ExportError(f"--trt-check: the graph is not TensorRT 10 compatible\n"
                                  f"{format_report(job.report)}")
        if not options.trt:
            return
        with _step(job, "tensorrt engine"):
            precision = options.engine_precision
            module = tensorrt_build.load_tensorrt()
            source_key = tensorrt_build.engine_source(precision, tensorrt_build.major_version(module))
            if source_key not in job.artifacts:
                raise ExportError(f"a {precision} engine for TensorRT {module.__version__} is built from "
                                  f"{ARTIFACT_FILES[source_key]}: add --{source_key}")
            shapes = {spec["name"]: tuple(spec["shape"][1:]) for spec in input_specs(job.config)}
            job.engine = _timed(job, "tensorrt", tensorrt_build.build_engine, folder / job.artifacts[source_key],
                                folder / ARTIFACT_FILES["tensorrt"], shapes, options.engine_options(), trt=module)
            job.artifacts["tensorrt"] = ARTIFACT_FILES["tensorrt"]

    def manifest(self, job: _Job) -> None:
        """``model.json`` and its copy in each ONNX file (:func:`mrdl_export.manifest.write_deploy_manifest`)."""
        from mrdl_runtime.manifest import file_sha256

        from .manifest import build_manifest, source_mpp_for, source_size_for, write_deploy_manifest

        options = self.options
        extra = {"folding": job.folding.to_dict(), "tensorrt_compatibility": job.report.to_dict()}
        if job.phase_drift is not None:
            extra["training_phase_parity"] = {"phase": job.config.model.phase, **job.phase_drift.to_dict()}
        if job.variant_reports:
            extra["tensorrt_compatibility_variants"] = job.variant_reports
        if job.calibration_source:
            recipe = job.int8.get("recipe", "")
            extra["int8_calibration"] = {"source": job.calibration_source, "images": options.calib_images,
                                         "method": f"{options.calib_method}, {recipe}",
                                         "fp32_scopes": ["phase", "attention matmuls", *job.int8.get("fp32_kept", [])]}
            extra["int8_quantization"] = job.int8
        if job.engine:
            extra["tensorrt"] = job.engine
        precisions = {"fp32": "fp32", "int8": "int8", "fp16": "fp16", "tensorrt": options.engine_precision}
        manifest = build_manifest(job.config, checkpoint_path=job.ckpt, checkpoint_sha256=file_sha256(job.ckpt),
                                  artifacts={key: {"file": name, "precision": precisions[key]}
                                             for key, name in job.artifacts.items()},
                                  opset=options.opset, max_batch=options.max_batch,
                                  parity={key: result.to_dict() for key, result in job.parity.items()}, extra=extra,
                                  source_size=source_size_for(options.source_size, job.ckpt),
                                  source_mpp=source_mpp_for(options.source_mpp, job.ckpt))
        if job.engine:  # both runtimes check the engine's TensorRT version here before deserialising
            manifest["versions"]["tensorrt"] = job.engine["tensorrt_version"]
        job.manifest = write_deploy_manifest(job.folder, manifest)

    def triton(self, job: _Job) -> None:
        """The Triton model repository of the published directory (:func:`mrdl_export.triton.write_repository`)."""
        from .triton import TritonRepoError, TritonRepoOptions, write_repository

        try:
            _timed(job, "triton", write_repository, job.out_dir, self.options.triton,
                   TritonRepoOptions(force=self.options.force))
        except TritonRepoError as exc:
            raise ExportError(f"{job.out_dir} was exported, but its Triton repository was not written: {exc}") from exc

    def publish(self, job: _Job) -> None:
        """Rename the finished folder onto ``out_dir`` (:func:`mrdl_export.publish.publish`)."""
        from .publish import publish

        publish(job.folder, job.out_dir, force=self.options.force, protected=job.protected)


def export_model(ckpt: str | Path, out_dir: str | Path, options: ExportOptions | None = None,
                 **fields: Any) -> ExportResult:
    """Export the checkpoint ``ckpt`` to the deploy directory ``out_dir`` and verify it.

    ``options``: an :class:`ExportOptions` (default: its defaults); ``fields``: ExportOptions
    fields set on top of it, so ``export_model(ckpt, out, int8=True)`` is
    ``Exporter(ExportOptions(int8=True)).run(ckpt, out)``. Each field's metadata says what it does.
    ``force`` replaces an existing mrdl deploy directory (never a folder holding the checkpoint,
    the image folders or other files; :mod:`mrdl_export.publish`).
    Raises :class:`ExportError` on bad input, a refused ``out_dir`` or a failed step,
    :class:`ParityError` when a gate fails and ``TensorRTUnavailable`` when ``trt`` is asked for
    on a machine without TensorRT or a GPU; nothing is left under ``out_dir`` in those cases, nor
    after KeyboardInterrupt.
    """
    return Exporter(replace(options or ExportOptions(), **fields)).run(ckpt, out_dir)


def _check_triton_out(repo: Path, *, force: bool, out_dir: Path) -> None:
    """Refuse, before any work, a ``--triton`` folder that overlaps ``--out`` or holds other files."""
    from .triton import TritonRepoError, check_out

    try:
        check_out(repo, force=force, model_dir=out_dir)
    except TritonRepoError as exc:
        raise ExportError(str(exc).replace("--out", "--triton", 1)) from exc


def _model_inputs(config, *, data: Path | None, count: int, **selection) -> tuple[list[np.ndarray], str, list[str]]:
    """The graph's inputs for ``count`` images (``load_images``): ([images] [+ stand-in text features], source, names)."""
    from mrdl.data.sources import load_images

    from .parity import text_features_for

    images = load_images(size=config.model.image_size, data=data, count=count, **selection)
    extra = [text_features_for(config, len(images))] if config.model.fusion == "addition" else []
    return [images.tensors, *extra], images.source, images.names


@contextmanager
def _step(job: _Job, label: str) -> Iterator[None]:
    """One step of the progress bar: its label while it runs, counted once it has passed."""
    job.progress.set_postfix_str(label)
    yield
    job.progress.update()


def _timed(job: _Job, name: str, function, *args, **kwargs):
    mark = time.perf_counter()
    value = function(*args, **kwargs)
    job.timings[name] = job.timings.get(name, 0.0) + time.perf_counter() - mark
    return value


def _search_summary(search: dict | None) -> str:
    """What the automatic mixed-precision search kept, for a failed gate's message ('' without a search)."""
    if not search:
        return ""
    final = search["final"]
    drop = "" if final["drop_points"] is None else f", Dice drop {final['drop_points']:.2f} points"
    return (f"; the search kept {', '.join(search['kept']) or 'nothing'} in FP32 (on {search['images']} calibration "
            f"images: agreement {final['agreement']:.4f}{drop})")


def _gate(result: ParityResult, label: str, *, ckpt: Path, atol: float, min_dice: float) -> None:
    if not result.passes(atol=atol, min_dice=min_dice):
        raise ParityError(f"{label} parity gate failed for {ckpt}: max |delta| {result.max_abs_diff:.3g} "
                          f"(limit {atol:g}), mask Dice agreement {result.dice_agreement:.4f} (limit {min_dice:g}) "
                          f"on {result.images} images from {result.source}; no model was written")
