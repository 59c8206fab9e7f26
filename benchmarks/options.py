"""``BenchOptions``: every setting of a benchmark run, each written once, as the runtime's options are.

A setting is one field (:func:`mrdl_runtime.options.option`: default, help, choices and range);
:func:`mrdl_bench.bench.run_benchmark` takes one :class:`BenchOptions` (keywords naming a field
change it) and ``mrdl-bench`` builds its command-line options from the fields
(``mrdl_apps.options.field_options``). This module imports neither torch nor the backends, so
``mrdl-bench --help`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mrdl_runtime.options import MAX_STREAMS, MAX_THREADS, OptionsBase, check_fields, option

from .report import DEFAULT_INT8_MIN_DICE, DEFAULT_MIN_DICE
from .runners import BENCH_BACKENDS, NNCF_DEFAULT
from .serving import DEFAULT_CONCURRENCY

DEFAULT_OUT = Path("bench-report")  # mrdl-bench's --out; the library writes no report unless given one


@dataclass(frozen=True)
class BenchOptions(OptionsBase):
    """How :func:`mrdl_bench.bench.run_benchmark` measures (``mrdl-bench``'s options, in its order).

    ``backends``, ``batches`` and ``concurrency`` are comma-separated text or sequences
    (:func:`mrdl_bench.bench.parse_backends`, :func:`~mrdl_bench.bench.parse_batches`,
    :func:`mrdl_bench.serving.parse_concurrency` read them).
    """

    backends: str | tuple[str, ...] = option(
        ",".join(name for name in BENCH_BACKENDS if name != NNCF_DEFAULT),
        "Comma-separated backends; those that cannot run here are skipped with the reason. Add 'triton' to serve the "
        f"model with mrdl serve and drive it with --concurrency clients, '{NNCF_DEFAULT}' for a reference row: "
        "OpenVINO running NNCF's default INT8 of model.onnx (no ignored scope, no accuracy gate), calibrated on the "
        "benchmark's images; its agreement is reported, never a failure.")
    batches: str | tuple[int, ...] = option("1", "Comma-separated batch sizes, e.g. 1,4,8.", flag="--batch")
    data: Path | None = option(
        None, "Real images: an LViT-layout root (its first split of Val, Test, Train) or a folder of images, as "
        "mrdl-export reads --data. Default: synthetic.", path="dir")
    images: int = option(8, "Input pool size (batches cycle over it; parity is computed on all of it).", low=1)
    warmup: int = option(3, "Untimed warm-up iterations.", low=0)
    iters: int = option(20, "Timed iterations.", low=1)
    settle_ms: int = option(
        50, "Idle milliseconds before each timed step of an interleaved round, so that the previous backend's "
        "spin-waiting worker threads have stopped and do not take cores from the next one (0: none).", low=0)
    phase_iters: int | None = option(
        None, "Timed passes for the export-safe phase's share of latency. Default: --iters.", low=1)
    threads: int = option(
        0, "CPU threads of every backend (torch, ONNX Runtime, OpenVINO intra-op threads, the same for all); 0: the "
        "runtime's default, one per physical core available to the process (mrdl_runtime.threads.default_threads).",
        low=0, high=MAX_THREADS)
    streams: int = option(
        1, "Parts each batch of the CPU runtime backends (ort-*, ov-*) is split into and run at once, sharing --threads "
        "(mrdl_runtime.LoadOptions.streams); PyTorch, TensorRT and the NNCF reference run whole batches.",
        low=1, high=MAX_STREAMS)
    include_prepost: bool = option(
        False, "Time preprocessing (resize, /255) and postprocessing (resize back, threshold) too.",
        flag="--include-prepost/--exclude-prepost")
    device: str = option("cpu", "torch device for the PyTorch backends (cpu, cuda).")
    profile_dir: Path | None = option(
        None, "Write onnxruntime profiles (JSON traces) of the ORT backends here.", path="dir")
    min_dice: float = option(
        DEFAULT_MIN_DICE, "Parity threshold for FP32/FP16 backends: mask Dice agreement with torch-fft below it marks "
        "the backend PARITY FAILED (exit 1).", low=0, high=1)
    int8_min_dice: float = option(
        DEFAULT_INT8_MIN_DICE, "Parity threshold for INT8 backends (ort-int8, an INT8 TensorRT engine).", low=0, high=1)
    concurrency: str | tuple[int, ...] = option(
        ",".join(map(str, DEFAULT_CONCURRENCY)), "With the triton backend: numbers of concurrent clients driving the "
        "model behind mrdl serve (throughput, p50/p99, dynamic-batch sizes, mask agreement with the in-process "
        "runtime).")
    serving_protocol: str = option("grpc", "With the triton backend: the protocol the clients use.",
                                   choices=("grpc", "http"))
    serving_instances: int = option(
        1, "With the triton backend: model instances in the server (mrdl serve --instances), sharing --threads "
        "between them.", low=1, high=64)
    out: Path | None = option(
        None, "Folder for bench.json, bench.md and bench.png.", path="dir")  # library default: no report
    progress: bool = option(True, "Show progress bars on stderr.", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)
