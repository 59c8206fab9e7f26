"""Measurements: latency statistics, peak memory, parity, FLOPs, the machine's matmul peak, phase share."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from mrdl.model import MRDL

MEMORY_METHOD = "peak RSS minus RSS before loading the backend, psutil sampling every 2 ms"


@dataclass
class LatencySummary:
    """Percentiles and moments of the timed iterations' latency, milliseconds (the report's ``latency_ms``)."""

    p50: float
    p90: float
    p99: float
    mean: float
    stdev: float
    min: float
    max: float
    iterations: int

    @classmethod
    def from_seconds(cls, times: list[float]) -> "LatencySummary":
        if not times:
            raise ValueError("no timed iterations to summarise")
        ms = np.asarray(times, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(ms.mean()),
                   stdev=float(statistics.stdev(ms)) if len(ms) > 1 else 0.0,
                   min=float(ms.min()), max=float(ms.max()), iterations=len(ms))

    def meaningful(self, percentile: int) -> bool:
        """Whether this many iterations resolve ``percentile`` (p90 needs 10, p99 needs 100: at least one
        sample beyond it); below that the value is the slowest iteration or an interpolation towards it."""
        return self.iterations >= MIN_ITERATIONS[percentile]

    def to_dict(self) -> dict:
        return asdict(self)


MIN_ITERATIONS = {50: 2, 90: 10, 99: 100}  # percentile -> timed iterations it needs


def paired_ratios(baseline: list[float], candidate: list[float]) -> dict[str, float]:
    """Per-round speed-ups ``baseline[i] / candidate[i]`` of two backends timed in the same rounds: median,
    quartiles (the spread) and extremes. Pairing cancels what the machine did to both in a round."""
    if len(baseline) != len(candidate) or not baseline:
        raise ValueError(f"paired ratios need two equal, non-empty series; got {len(baseline)} and {len(candidate)}")
    ratios = np.asarray(baseline, dtype=np.float64) / np.asarray(candidate, dtype=np.float64)
    p25, median, p75 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "p25": float(p25), "p75": float(p75), "min": float(ratios.min()),
            "max": float(ratios.max()), "rounds": len(ratios)}


def interleaved(steps: dict[str, Callable[[int], float]], *, rounds: int, settle_s: float = 0.0) -> dict[str, list[float]]:
    """``rounds`` rounds in which every step runs once (``step(round_index)`` returns its seconds), the order
    rotated each round (no step always runs first, or after the same neighbour): name -> seconds per round.

    Interleaved, a burst of load from another process hits every step in the round it happens in, instead
    of whichever one happened to be measuring then; per-round ratios (:func:`paired_ratios`) cancel it.
    ``settle_s`` of idle time precede each step: ONNX Runtime's and OpenVINO's worker threads spin-wait for
    work for a while after a run returns, and without the pause the previous backend's spinning threads take
    cores from the next one (on 2 cores, ONNX Runtime INT8 after FP32 measured 25-50% slower than alone)."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if settle_s:
                time.sleep(settle_s)
            times[name].append(steps[name](round_index))
    return times


def current_rss() -> int:
    """This process's resident set size in bytes."""
    import psutil

    return psutil.Process().memory_info().rss


class PeakRSSSampler:
    """Samples this process's resident set size in a thread; ``peak_delta_mb`` over the baseline.

    ``baseline``: RSS in bytes to measure from (default: the RSS when the sampler is created).
    """

    def __init__(self, *, baseline: int | None = None, interval_s: float = 0.002) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval_s = interval_s
        self.baseline = self.process.memory_info().rss if baseline is None else baseline  # bytes
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRSSSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def peak_delta_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


@dataclass
class Parity:
    """Agreement of one backend's probabilities with a reference's on the same images
    (:func:`mrdl_export.parity.compare`, the export gate's figures)."""

    reference: str
    max_abs_diff: float
    mean_abs_diff: float
    dice_agreement: float  # mean over images of the mask Dice agreement (mrdl_export.parity); both empty counts 1
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


def parity(probabilities: np.ndarray, reference: np.ndarray, *, reference_name: str, threshold: float = 0.5) -> Parity:
    """Compare two (N, n_classes, H, W) probability arrays: max/mean |delta| and mask Dice agreement."""
    from mrdl_export.parity import compare

    if probabilities.shape != reference.shape:
        raise ValueError(f"output shape {probabilities.shape} differs from the reference's {reference.shape}")
    result = compare(reference, probabilities, source=reference_name, threshold=threshold)
    return Parity(reference=reference_name, max_abs_diff=result.max_abs_diff, mean_abs_diff=result.mean_abs_diff,
                  dice_agreement=result.dice_agreement, images=result.images)


def matmul_peak_gflops(*, threads: int, size: int = 2048, repeats: int = 5) -> dict:
    """Measured float32 GEMM rate of this machine: torch.matmul of size x size, best of ``repeats``."""
    import torch

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    torch.matmul(a, b)  # warm-up: thread pool and caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return {"gflops": 2.0 * size**3 / best / 1e9, "method": f"torch.matmul float32 {size}x{size}, best of {repeats}",
            "threads": threads, "seconds": best}


def onnxruntime_gemm_peak(*, threads: int, precision: str = "int8", size: int = 2048, repeats: int = 5) -> dict:
    """Measured GEMM rate of onnxruntime's CPU kernels, the way :func:`matmul_peak_gflops` measures FP32.

    ``int8``: MatMulInteger with uint8 activations x int8 weights (a constant), the integer GEMM
    class behind QLinearConv / QLinearMatMul in onnxruntime's INT8 models (u8 x s8 is the fast
    x86 path; s8 x s8 has no fast kernel without AVX-VNNI-INT8). ``fp32``: MatMul in float32.
    Giga-operations per second, 2 per multiply-accumulate, best of ``repeats``.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    if precision not in ("int8", "fp32"):
        raise ValueError(f"precision must be int8 or fp32, got {precision!r}")
    rng = np.random.default_rng(0)
    if precision == "int8":
        op, a_type, out_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
        a = rng.integers(0, 256, (size, size), dtype=np.uint8)
        b = rng.integers(-127, 128, (size, size), dtype=np.int8)
    else:
        op, a_type, out_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
        a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    graph = helper.make_graph([helper.make_node(op, ["A", "B"], ["Y"])], "gemm_peak",
                              [helper.make_tensor_value_info("A", a_type, [size, size])],
                              [helper.make_tensor_value_info("Y", out_type, [size, size])],
                              [numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, {"A": a})  # warm-up: thread pool, packed weights
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"A": a})
        best = min(best, time.perf_counter() - start)
    kind = "MatMulInteger uint8 x int8" if precision == "int8" else "MatMul float32"
    return {"gops": 2.0 * size**3 / best / 1e9, "precision": precision, "threads": threads, "seconds": best,
            "method": f"onnxruntime {ort.__version__} {kind} {size}x{size}, best of {repeats}"}


def flops_per_image(model: MRDL) -> int:
    """FLOPs of one image through the ``matmul``-phase PyTorch model (eval mode), by FlopCounterMode.

    The ``matmul`` phase is counted because FlopCounterMode does not count torch.fft; its DFT
    matmuls are part of the work every exported backend does.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = model.config.model.image_size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return int(counter.get_total_flops())


def phase_share(model: MRDL, *, batch: int, warmup: int, iters: int) -> dict:
    """Share of the ``matmul``-phase model's latency spent in the export-safe phase spectrum (MatmulPhaseSpectrum).

    Timed inside the same forward passes of the model (eval mode; forward hooks around the phase
    module, removed afterwards), so load on a shared machine hits both parts alike. Also the
    phase's share of the FLOPs, which does not depend on the machine.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = model.config.model.image_size
    image = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))  # (B, 3, S, S)
    phase_module = model.frequency_prompt.phase
    marks: list[float] = []
    hooks = [phase_module.register_forward_pre_hook(lambda *_: marks.append(time.perf_counter())),
             phase_module.register_forward_hook(lambda *_: marks.append(time.perf_counter()))]
    phase_s, model_s = [], []
    with torch.inference_mode():
        for index in range(warmup + iters):
            marks.clear()
            start = time.perf_counter()
            model(image)
            if index >= warmup:
                model_s.append(time.perf_counter() - start)
                phase_s.append(marks[1] - marks[0])
        with FlopCounterMode(display=False) as phase_counter:
            phase_module(image[:1])
    for hook in hooks:
        hook.remove()
    phase_ms, model_ms = 1e3 * float(np.mean(phase_s)), 1e3 * float(np.mean(model_s))
    return {"batch": batch, "phase_ms": phase_ms, "model_ms": model_ms, "share": phase_ms / model_ms,
            "phase_flops_per_image": int(phase_counter.get_total_flops()),
            "method": "forward hooks around the phase module inside the torch-matmul model's forward passes"}
