"""``run_benchmark``: every requested backend on the same inputs, one report.

Order of work: fix the thread count; load the inputs; measure the machine's matmul peak; count
FLOPs per image; compute the PyTorch FP32 reference (torch-fft eager) once; then, per backend,
activate it (a failure skips it with the reason; a model directory that fails the runtime's
integrity checks stops the run) and warm it up alone at each batch size while sampling memory;
then, per batch size, time all of them **interleaved**: ``iters`` rounds, each backend one step
per round in an order rotated every round, so load from other processes falls on all of them
alike; per-round ratios over ``ort-fp32`` (median and quartiles) are the paired speed-ups, and
the load average around the rounds is recorded and flagged above the logical CPU count;
finally the parity pass on every input image, the export-safe phase's share of latency, and
the derived columns (speed-up, GFLOP/s). p90 / p99 are printed only with the iterations that
resolve them (10 / 100).

A backend whose masks agree with the reference's less than the parity threshold (mask Dice
agreement below ``min_dice``, ``int8_min_dice`` for INT8) is marked ``PARITY FAILED``: its speed
is that of a different model, so its speed-up is not a result. A model directory exported from
another checkpoint than ``ckpt`` (``source_checkpoint.sha256``) is flagged too; both end up in
``BenchReport.failures`` and make ``mrdl-bench`` exit 1.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mrdl_runtime.errors import MrdlError
from mrdl_runtime.runner import BackendUnavailableError
from mrdl_runtime.serving import release_freed_memory
from mrdl_runtime.threads import default_threads

from .inputs import InputSet, load_inputs, postprocess_batch, preprocess_batch
from .measure import (MEMORY_METHOD, LatencySummary, PeakRSSSampler, current_rss, flops_per_image, matmul_peak_gflops,
                      interleaved, onnxruntime_gemm_peak, paired_ratios, parity, phase_share)
from .options import BenchOptions
from .report import PARITY_FAILED, PARITY_OK, BackendResult, BenchReport, SkippedBackend, machine_info, write_report
from .runners import BENCH_BACKENDS, NNCF_DEFAULT, RUNTIME_BACKEND, BenchRunner, TorchRunner, make_bench_runner
from .serving import SERVING_BACKENDS, parse_concurrency

REFERENCE = "torch-fft"
CPU_ONNXRUNTIME = tuple(name for name, (backend, _) in RUNTIME_BACKEND.items() if backend == "onnxruntime-cpu")
PAIRED_BASELINE = "ort-fp32"  # per-round speed-ups are over this backend (the first one measured without it)
LOAD_PER_CPU = 1.0  # 1-minute load average per logical CPU above which a run is flagged as measured under load


class BenchError(MrdlError, ValueError):
    """Benchmark settings that cannot work: a missing file, an unknown backend, a bad batch size."""


def parse_backends(text: str | Sequence[str]) -> list[str]:
    """``"ort-fp32,ort-int8"`` or a list -> validated backend names, in the order given, no repeats."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in BENCH_BACKENDS + SERVING_BACKENDS]
    if unknown or not names:
        raise BenchError(f"unknown backend(s) {unknown or '(none given)'}; expected a comma-separated list of "
                         f"{', '.join(BENCH_BACKENDS + SERVING_BACKENDS)}")
    return list(dict.fromkeys(names))


def parse_batches(text: str | Sequence[int]) -> list[int]:
    """``"1,4,8"`` or a list -> positive batch sizes, in the order given, no repeats."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        batches = [int(str(p).strip()) for p in parts if str(p).strip()]
    except ValueError:
        raise BenchError(f"batch sizes must be comma-separated positive integers like 1,4,8; got {text!r}") from None
    if not batches or any(b < 1 for b in batches):
        raise BenchError(f"batch sizes must be comma-separated positive integers like 1,4,8; got {text!r}")
    return list(dict.fromkeys(batches))


def _check_sources(ckpt: Path, model_dir: Path):
    """(config, manifest, a sentence when ``model_dir`` was exported from another checkpoint, else None)."""
    from mrdl.checkpoint import CheckpointError, read_checkpoint
    from mrdl_runtime.manifest import ManifestError, file_sha256, load_manifest

    try:
        config = read_checkpoint(ckpt).config
        manifest = load_manifest(model_dir)
    except (CheckpointError, ManifestError) as exc:
        raise BenchError(str(exc)) from exc
    size = config.model.image_size
    if tuple(manifest.size) != (size, size):
        raise BenchError(f"{model_dir} was exported at {manifest.size}, but {ckpt} is a {size}x{size} model; "
                         f"benchmark a checkpoint with the model directory exported from it")
    if manifest.text_input is not None or config.model.fusion != "distribution":
        raise BenchError("mrdl-bench measures image-only models (fusion 'distribution'); this one needs text features")
    source = manifest.raw.get("source_checkpoint")
    source = source if isinstance(source, dict) else {}
    digest = file_sha256(ckpt)
    if source.get("sha256") == digest:
        return config, manifest, None
    origin = (f"was exported from {source.get('path')} (sha256 {str(source['sha256'])[:12]}…)" if source.get("sha256")
              else "records no source checkpoint")
    return config, manifest, (f"SOURCE MISMATCH: {model_dir} {origin}, not from --ckpt {ckpt} (sha256 "
                              f"{digest[:12]}…); re-export it: mrdl-export --ckpt {ckpt} --out {model_dir} --force")


def _step(runner: BenchRunner, inputs: InputSet, *, index: int, batch: int, include_prepost: bool,
          threshold: float) -> float:
    """One step, in seconds: the runner's own clock around inference, or the whole step with pre/post-processing."""
    if include_prepost:
        start = time.perf_counter()
        images = [inputs.raw[i] for i in inputs.indices(index, batch)]
        postprocess_batch(runner.infer(preprocess_batch(images, inputs.size)), images, threshold=threshold)
        return time.perf_counter() - start
    runner.infer(inputs.batch(index, batch))
    return runner.inference_times[-1]


def _warm_up(runner: BenchRunner, inputs: InputSet, *, batch: int, warmup: int, include_prepost: bool,
             threshold: float, baseline_rss: int) -> tuple[dict[str, float], float]:
    """One runner's warm-up at one batch size, alone, while its memory is sampled: (warm-up, peak MB)."""
    with PeakRSSSampler(baseline=baseline_rss) as memory:
        times = [_step(runner, inputs, index=index, batch=batch, include_prepost=include_prepost, threshold=threshold)
                 for index in range(warmup)]
    warm = {"iterations": warmup, "total_ms": 1e3 * sum(times), "first_ms": 1e3 * times[0] if times else 0.0}
    return warm, memory.peak_delta_mb


def _rounds(runners: dict[str, BenchRunner], inputs: InputSet, *, batch: int, first_index: int, iters: int,
            include_prepost: bool, threshold: float, settle_s: float = 0.0) -> dict[str, list[float]]:
    """``iters`` interleaved rounds (:func:`mrdl_bench.measure.interleaved`) in which every runner takes one timed
    step on the same images: name -> seconds per round."""
    def step(runner: BenchRunner) -> Callable[[int], float]:
        return lambda round_index: _step(runner, inputs, index=first_index + round_index, batch=batch,
                                         include_prepost=include_prepost, threshold=threshold)

    return interleaved({name: step(runner) for name, runner in runners.items()}, rounds=iters, settle_s=settle_s)


def load_check(start: float, end: float, *, cpus: int | None = None) -> dict:
    """The 1-minute load average before and after the timed rounds, flagged when it exceeds the logical CPUs:
    other processes then compete for the cores, and absolute latencies are slower than this machine's."""
    cpus = cpus or os.cpu_count() or 1
    flagged = max(start, end) > LOAD_PER_CPU * cpus
    return {"start": start, "end": end, "cpus": cpus, "flagged": flagged,
            "note": (f"LOADED: 1-minute load average {max(start, end):.2f} > {LOAD_PER_CPU * cpus:g} ({cpus} logical "
                     "CPUs) during the timed rounds: latencies are slower than this machine's, the paired ratios "
                     "are the figures to read") if flagged else "load average below the logical CPU count"}


def _notes(runner: BenchRunner) -> dict[str, float]:
    """Load time, machine load while measuring, and torch.compile's compile time where it applies."""
    notes = {"activation_s": runner.activation_seconds, "load_average_1min": os.getloadavg()[0]}
    if getattr(runner, "compile_seconds", None):
        notes["compile_s"] = runner.compile_seconds
    return notes


def _all_outputs(runner: BenchRunner, inputs: InputSet, *, batch: int) -> np.ndarray:
    """Probabilities for every input image, in order: (N, n_classes, S, S)."""
    chunks = [runner.infer(np.ascontiguousarray(inputs.tensors[start:start + batch]))
              for start in range(0, len(inputs), batch)]
    return np.concatenate(chunks)


def _measure_backends(backends: list[str], batches: list[int], *, ckpt: Path, model_dir: Path, inputs: InputSet,
                      threads: int, device: str, warmup: int, iters: int, include_prepost: bool, threshold: float,
                      progress: bool, settle_s: float = 0.0, streams: int = 1) -> tuple[list[BackendResult], list[SkippedBackend], dict[str, np.ndarray], dict]:
    """Activate every backend and warm each up alone (memory sampled), then time them all interleaved, round by
    round, at every batch size: (results, skipped, outputs on every input image, load check per batch)."""
    from tqdm import tqdm

    runners: dict[str, BenchRunner] = {}
    skipped: list[SkippedBackend] = []
    warm: dict[tuple[str, int], tuple[dict[str, float], float]] = {}
    results: list[BackendResult] = []
    outputs: dict[str, np.ndarray] = {}
    loads: dict[int, dict] = {}
    try:
        with tqdm(total=len(backends) + len(batches), desc="mrdl-bench", disable=not progress) as bar:
            for name in backends:
                bar.set_postfix_str(f"{name}: load and warm up")
                runner = make_bench_runner(name, ckpt=ckpt, model_dir=model_dir, threads=threads, device=device,
                                           calibration=inputs.tensors, streams=streams)
                release_freed_memory()
                baseline_rss = current_rss()
                try:
                    runner.activate()
                except BackendUnavailableError as exc:
                    skipped.append(SkippedBackend(name, str(exc)))
                    bar.update(1)
                    continue
                runners[name] = runner
                for batch in batches:
                    warm[name, batch] = _warm_up(runner, inputs, batch=batch, warmup=warmup,
                                                 include_prepost=include_prepost, threshold=threshold,
                                                 baseline_rss=baseline_rss)
                bar.update(1)
            timed: dict[int, dict[str, list[float]]] = {}
            for batch in batches:
                bar.set_postfix_str(f"batch {batch}: {iters} interleaved rounds")
                before = os.getloadavg()[0]
                timed[batch] = _rounds(runners, inputs, batch=batch, first_index=warmup, iters=iters,
                                       include_prepost=include_prepost, threshold=threshold, settle_s=settle_s)
                loads[batch] = load_check(before, os.getloadavg()[0])
                bar.update(1)
        baseline = PAIRED_BASELINE if PAIRED_BASELINE in runners else next(iter(runners), None)
        for name, runner in runners.items():
            for batch in batches:
                latency = LatencySummary.from_seconds(timed[batch][name])
                notes = {**_notes(runner), "load_average_1min": [loads[batch]["start"], loads[batch]["end"]]}
                if name != baseline:
                    notes["paired_speedup"] = {"baseline": baseline,
                                               **paired_ratios(timed[batch][baseline], timed[batch][name])}
                warm_up, peak_mb = warm[name, batch]
                results.append(BackendResult(
                    backend=name, precision=runner.precision, batch=batch, latency_ms=latency, warmup=warm_up,
                    throughput_ips=batch / (latency.mean / 1e3), peak_memory_mb=peak_mb,
                    memory_method=MEMORY_METHOD, model_size_mb=runner.model_size_bytes / 2**20,
                    model_file=str(runner.model_path), parity=None, parity_vs_onnx_fp32=None,
                    prepost_included=include_prepost, notes=notes))
            outputs[name] = _all_outputs(runner, inputs, batch=min(batches))
    finally:
        for runner in runners.values():
            runner.deactivate()
    return results, skipped, outputs, loads


def _profiles(results: list[BackendResult], *, ckpt: Path, batch: int, size: int, threads: int, iters: int,
              out_dir: Path) -> list[dict]:
    """Per-operator profiles of torch eager and of every CPU onnxruntime backend that ran."""
    from .profiling import profile_onnxruntime, profile_torch

    profiles = [profile_torch(ckpt, phase="fft", batch=batch, iters=iters)]
    cpu_ort = {r.backend: r.model_file for r in results if r.backend in CPU_ONNXRUNTIME}
    for backend, model_file in cpu_ort.items():
        profile = profile_onnxruntime(Path(model_file), batch=batch, size=size, threads=threads, iters=iters,
                                      out_dir=out_dir)
        profiles.append({**profile, "backend": backend})
    return profiles


def run_benchmark(options: BenchOptions | None = None, *, ckpt: str | Path, model_dir: str | Path,
                  **changes: Any) -> BenchReport:
    """Benchmark ``options.backends`` at each batch size on the same inputs; write the report into ``options.out``
    if given.

    ``options``: every setting (:class:`mrdl_bench.options.BenchOptions`, default: its defaults);
    keywords naming a field change it (``run_benchmark(ckpt=..., model_dir=..., iters=5)``).
    ``images``: how many input images (synthetic, or the first of ``data``) form the pool that
    batches cycle over and parity is computed on. ``threads``: every backend's intra-op threads (0:
    the runtime's default, :func:`mrdl_runtime.threads.default_threads`). ``profile_dir``: profile torch eager and
    the CPU onnxruntime backends at the smallest batch (traces written there, op summaries in the report).
    ``phase_iters``: timed passes for the phase-share measurement (default: ``iters``).
    ``min_dice`` / ``int8_min_dice``: the parity thresholds (mask Dice agreement with torch-fft)
    for FP32/FP16 and for INT8 backends; below them a backend is marked ``PARITY FAILED``.
    ``triton`` among ``backends``: the model behind ``mrdl serve`` driven by each number of
    ``concurrency`` clients against the in-process runtime (:mod:`mrdl_bench.serving`; the
    report's ``serving`` section), over ``serving_protocol`` ("grpc" or "http"), with
    ``serving_instances`` model instances sharing the ``threads``.
    Raises :class:`mrdl_runtime.OptionsError` for a setting outside its choices or range and
    ``mrdl_runtime.IntegrityError`` when the model directory's files do not match its ``model.json``.
    """
    import torch

    from mrdl.checkpoint import load_checkpoint

    options = BenchOptions.of(options, **changes)  # each field in its range (iters >= 1, Dice in [0, 1] ...)
    ckpt, model_dir = Path(ckpt), Path(model_dir)
    backends, batches = parse_backends(options.backends), parse_batches(options.batches)
    try:
        levels = parse_concurrency(options.concurrency)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    threads = options.threads or default_threads()
    warmup, iters, device, progress = options.warmup, options.iters, options.device, options.progress
    min_dice, int8_min_dice, include_prepost = options.min_dice, options.int8_min_dice, options.include_prepost
    config, manifest, source_mismatch = _check_sources(ckpt, model_dir)
    if max(batches) > manifest.max_batch:
        raise BenchError(f"batch {max(batches)} exceeds the model directory's max_batch {manifest.max_batch}")
    torch.set_num_threads(threads)
    machine = machine_info()
    inputs = load_inputs(size=config.model.image_size, data=options.data, count=options.images)
    peak = matmul_peak_gflops(threads=threads)
    int8_peak = None
    if any(RUNTIME_BACKEND.get(name, (None, None))[1] == "int8" or name == NNCF_DEFAULT for name in backends):
        # the integer GEMM the INT8 kernels run, and FP32 measured the same way beside it
        int8_peak = onnxruntime_gemm_peak(threads=threads, precision="int8")
        int8_peak["fp32_gops_same_way"] = onnxruntime_gemm_peak(threads=threads, precision="fp32")["gops"]
        int8_peak["int8_over_fp32"] = int8_peak["gops"] / int8_peak["fp32_gops_same_way"]
    matmul_model = load_checkpoint(ckpt, phase="matmul")[0].eval()  # FLOPs and the phase's share of latency
    flops = flops_per_image(matmul_model)
    threshold = manifest.threshold

    with TorchRunner(REFERENCE, ckpt=ckpt, phase="fft", device=device) as reference_runner:
        reference = _all_outputs(reference_runner, inputs, batch=min(batches))
    served = [name for name in backends if name in SERVING_BACKENDS]
    in_process = [name for name in backends if name not in SERVING_BACKENDS]
    results, skipped, outputs, loads = _measure_backends(
        in_process, batches, ckpt=ckpt, model_dir=model_dir, inputs=inputs, threads=threads, device=device,
        warmup=warmup, iters=iters, include_prepost=include_prepost, threshold=threshold, progress=progress,
        settle_s=options.settle_ms / 1e3, streams=options.streams)

    for result in results:
        result.parity = parity(outputs[result.backend], reference, reference_name=REFERENCE, threshold=threshold)
        if result.backend in RUNTIME_BACKEND and result.backend != "ort-fp32" and "ort-fp32" in outputs:
            result.parity_vs_onnx_fp32 = parity(outputs[result.backend], outputs["ort-fp32"],
                                                reference_name="ort-fp32", threshold=threshold)
        result.parity_min_dice = int8_min_dice if result.precision == "int8" else min_dice
        passed = result.parity.dice_agreement >= result.parity_min_dice
        result.parity_status = PARITY_OK if passed else PARITY_FAILED
        result.gflops_achieved = flops * result.throughput_ips / 1e9
        result.peak_fraction = result.gflops_achieved / peak["gflops"]
        if int8_peak is not None and result.precision == "int8":  # ort-int8, ov-int8, the reference: the INT8 share
            result.int8_peak_fraction = result.gflops_achieved / int8_peak["gops"]
    for result in results:
        eager = next((r for r in results if r.backend == REFERENCE and r.batch == result.batch), None)
        if eager is not None:
            speedup = eager.latency_ms.p50 / result.latency_ms.p50
            if result.parity_status == PARITY_OK:
                result.speedup_vs_torch_eager = speedup
            else:  # the speed of another model: kept for inspection, never presented as a result
                result.speedup_unverified = speedup
    failures = [] if source_mismatch is None else [source_mismatch]
    gated = [r for r in results if r.backend != NNCF_DEFAULT]  # the reference's agreement is a result, not a failure
    for name in dict.fromkeys(r.backend for r in gated if r.parity_status == PARITY_FAILED):
        p = next(r for r in results if r.backend == name)
        failures.append(f"{PARITY_FAILED}: {name} ({p.precision}) masks agree with {REFERENCE} at mask Dice "
                        f"{p.parity.dice_agreement:.4f} < {p.parity_min_dice:g} (max |Δp| "
                        f"{p.parity.max_abs_diff:.2e}): its speed is not a result for --ckpt's model. "
                        + ("INT8 quantization may lose this much on this model (see --int8-keep-fp32 in mrdl-export); "
                           if p.precision == "int8" else "")
                        + f"is {model_dir} exported from {ckpt}? Re-export it, or change --min-dice / --int8-min-dice")

    serving = None
    if served:
        from .serving import measure_serving, serving_failures

        try:
            serving = measure_serving(model_dir, inputs.raw, concurrency=levels, threads=threads, iters=iters,
                                      warmup=warmup, protocol=options.serving_protocol,
                                      instances=options.serving_instances, progress=progress)
            failures += serving_failures(serving)
        except BackendUnavailableError as exc:
            skipped.append(SkippedBackend("triton", str(exc)))

    shares = [phase_share(matmul_model, batch=batch, warmup=max(1, warmup), iters=options.phase_iters or iters)
              for batch in batches]
    for share in shares:
        share["phase_flops_share"] = share["phase_flops_per_image"] / flops
    profiles = _profiles(results, ckpt=ckpt, batch=min(batches), size=config.model.image_size, threads=threads,
                         iters=max(1, min(iters, 5)), out_dir=Path(options.profile_dir)) if options.profile_dir else []
    machine["load_average_end"] = list(os.getloadavg())
    settings = {"model": config.name, "ckpt": str(ckpt), "model_dir": str(model_dir), "backends": backends,
                "batches": batches, "warmup": warmup, "iters": iters, "threads": threads, "streams": options.streams,
                "torch_threads": torch.get_num_threads(), "include_prepost": include_prepost, "device": device,
                "inputs": inputs.source, "images": len(inputs), "image_size": config.model.image_size,
                "reference": REFERENCE, "min_dice": min_dice, "int8_min_dice": int8_min_dice,
                "source_checkpoint_matches": source_mismatch is None,
                "concurrency": levels if served else None, "interleaved": True,
                "load_check": {str(batch): check for batch, check in loads.items()}}
    report = BenchReport(settings=settings, machine=machine, flops_per_image=flops, matmul_peak=peak, results=results,
                         skipped=skipped, phase_share=shares, profiles=profiles, failures=failures, serving=serving,
                         int8_peak=int8_peak)
    if options.out is not None:
        write_report(report, Path(options.out))
    return report
