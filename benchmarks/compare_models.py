"""Interleaved A/B of model files: is one export (or one graph change) faster than another on this machine?

``python -m mrdl_bench.compare_models LABEL=RUNNER:PATH ... [--batch 1] [--rounds 30]`` runs each ONNX file
on the runtime's own runner (``ort`` = ONNX Runtime CPU; ``ov-fp32`` / ``ov-bf16`` / ``ov-int8`` = OpenVINO at
that precision, INT8 with the runner's graph rewrites), one random batch, round by round with the order
rotated and ``--settle-ms`` of idle time before each run (as ``mrdl-bench`` does), and prints each file's
median latency and its paired per-round speed-up over the first one (median [quartiles]). The files are read
as they are, without a deploy directory's manifest, so that a file written by hand or by an experiment can be
timed beside the export it changes. Speed only: compare the outputs with ``mrdl-bench``'s parity columns.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mrdl_runtime.errors import MrdlError

from .measure import interleaved, paired_ratios

RUNNERS = ("ort", "ov-fp32", "ov-bf16", "ov-int8")


def parse_spec(spec: str) -> tuple[str, str, str]:
    """``LABEL=RUNNER:PATH`` -> (label, runner, path); ValueError naming the expected form otherwise."""
    label, sep, rest = spec.partition("=")
    runner, sep2, path = rest.partition(":")
    if not (sep and sep2 and label and path) or runner not in RUNNERS:
        raise ValueError(f"expected LABEL=RUNNER:PATH with RUNNER one of {', '.join(RUNNERS)}, got {spec!r}")
    return label, runner, path


def open_runner(runner: str, path: str, threads: int):
    """The runtime's runner for ``path`` (opened)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file (expected an ONNX file for LABEL=RUNNER:PATH)")
    if runner == "ort":
        from mrdl_runtime.onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, intra_op_threads=threads, optimized_cache=False).open()
    from mrdl_runtime.openvino_runner import OpenVinoRunner

    return OpenVinoRunner(path, precision=runner.split("-", 1)[1], threads=threads).open()


def _timed_infer(runner, feeds: dict[str, np.ndarray]):
    """One interleaved step: ``runner`` on ``feeds``, its seconds."""
    def step(_round: int) -> float:
        start = time.perf_counter()
        runner.infer(feeds)
        return time.perf_counter() - start
    return step


def compare(specs: list[str], *, batch: int = 1, rounds: int = 30, warmup: int = 3, settle_ms: float = 50.0,
            threads: int = 0, seed: int = 0) -> dict[str, dict]:
    """Time every ``LABEL=RUNNER:PATH`` of ``specs`` interleaved; label -> median seconds and paired ratios over
    the first."""
    if len(specs) < 2:
        raise ValueError("compare needs at least two LABEL=RUNNER:PATH specs")
    if batch < 1 or rounds < 1:
        raise ValueError(f"batch and rounds must be >= 1, got {batch} and {rounds}")
    parsed = [parse_spec(spec) for spec in specs]
    labels = [label for label, _, _ in parsed]
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must differ, got {labels}")
    runners = {label: open_runner(runner, path, threads) for label, runner, path in parsed}
    try:
        feeds = {}
        for label, runner in runners.items():
            spec = runner.input_specs[0]
            shape = [batch, *(int(d) for d in spec.shape[1:])]
            feeds[label] = {spec.name: np.random.default_rng(seed).random(shape, dtype=np.float32)}
            for _ in range(warmup):
                runner.infer(feeds[label])
        steps = {label: _timed_infer(runners[label], feeds[label]) for label in labels}
        times = interleaved(steps, rounds=rounds, settle_s=settle_ms / 1000.0)
    finally:
        for runner in runners.values():
            runner.close()
    first = labels[0]
    return {label: {"median_s": float(np.median(times[label])), "over_first": paired_ratios(times[first], times[label])}
            for label in labels}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mrdl_bench.compare_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", metavar="LABEL=RUNNER:PATH", help=f"RUNNER: {', '.join(RUNNERS)}")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--settle-ms", type=float, default=50.0)
    parser.add_argument("--threads", type=int, default=0, help="0: the physical cores available")
    args = parser.parse_args(argv)
    try:
        results = compare(args.specs, batch=args.batch, rounds=args.rounds, warmup=args.warmup,
                          settle_ms=args.settle_ms, threads=args.threads)
    except (ValueError, OSError, MrdlError) as exc:
        parser.error(str(exc))
    first = args.specs[0].partition("=")[0]
    for label, result in results.items():
        ratio = result["over_first"]
        print(f"{label:16s} {1e3 * result['median_s']:8.1f} ms   over {first}: {ratio['median']:.3f}x "
              f"[{ratio['p25']:.3f}, {ratio['p75']:.3f}] ({ratio['rounds']} rounds, batch {args.batch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
