"""LoadOptions.streams: a batch split into parts that run at once on the CPU backends, outputs joined in order.

The parts' probabilities equal each part run alone (the backend computes each image of a part as it would);
one ``infer`` stays one latency record; GPU backends refuse streams; the option is bounded."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from mrdl_runtime import LoadOptions, Segmenter  # noqa: E402
from mrdl_runtime.backends import make_runner  # noqa: E402
from mrdl_runtime.errors import OptionsError  # noqa: E402
from mrdl_runtime.manifest import load_manifest  # noqa: E402


def _batch(model_dir, count: int) -> np.ndarray:
    size = load_manifest(model_dir).size
    return np.random.default_rng(0).random((count, 3, *size), dtype=np.float32)


def _parts_seen(runner, monkeypatch) -> list[tuple[int, str]]:
    """Record the batch size and thread of every backend call the runner makes."""
    seen, inner = [], runner._infer

    def spy(feeds):
        seen.append((len(next(iter(feeds.values()))), threading.current_thread().name))
        return inner(feeds)

    monkeypatch.setattr(runner, "_infer", spy)
    return seen


@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "openvino-cpu"])
def test_parts_run_on_the_streams_and_join_in_order(model_dir, backend, monkeypatch):
    if backend == "openvino-cpu":
        pytest.importorskip("openvino")
    batch = _batch(model_dir, 3)
    with Segmenter.load(model_dir, LoadOptions(backend=backend, threads=2)) as one:
        alone = [one.infer(batch[start:end]) for start, end in ((0, 2), (2, 3))]  # the parts streams=2 makes
    with Segmenter.load(model_dir, LoadOptions(backend=backend, threads=2, streams=2)) as two:
        seen = _parts_seen(two.runner, monkeypatch)
        joined = two.infer(batch)
        assert two.runner.count == 1  # one call, one latency record
        single = two.infer(batch[:1])  # a batch of one is not split
    split, unsplit = seen[:2], seen[2:]
    assert sorted(size for size, _ in split) == [1, 2] and all("stream" in name for _, name in split)
    assert [size for size, _ in unsplit] == [1] and "stream" not in unsplit[0][1]
    np.testing.assert_array_equal(joined, np.concatenate(alone))
    assert single.shape == alone[0][:1].shape


def test_onnxruntime_shares_the_threads_among_the_streams(model_dir):
    with Segmenter.load(model_dir, LoadOptions(backend="onnxruntime-cpu", threads=4, streams=2)) as segmenter:
        assert segmenter.runner.session.get_session_options().intra_op_num_threads == 2
    with Segmenter.load(model_dir, LoadOptions(backend="onnxruntime-cpu", threads=1, streams=4)) as segmenter:
        assert segmenter.runner.session.get_session_options().intra_op_num_threads == 1  # never 0: that means "all"


def test_openvino_compiles_one_stream_per_part(model_dir):
    pytest.importorskip("openvino")
    with Segmenter.load(model_dir, LoadOptions(backend="openvino-cpu", threads=2, streams=2)) as segmenter:
        settings = segmenter.runner.settings
    assert settings["NUM_STREAMS"] == "2" and settings["PERFORMANCE_HINT"] == "THROUGHPUT"


def test_gpu_backends_and_out_of_range_streams_are_refused(model_dir):
    manifest = load_manifest(model_dir)
    with pytest.raises(OptionsError, match="streams 2 .*backend onnxruntime-cuda runs on cuda"):
        make_runner(manifest, "onnxruntime-cuda", "fp32", LoadOptions(streams=2))
    for bad in (0, 65, 1.5, True):
        with pytest.raises(OptionsError, match="streams"):
            LoadOptions(streams=bad)


def test_bench_runs_the_runtime_backends_in_streams(tiny_export):
    from mrdl_bench.bench import run_benchmark
    from mrdl_bench.report import format_table

    report = run_benchmark(ckpt=tiny_export[0], model_dir=tiny_export[1], backends="torch-fft,ort-fp32", batches="2",
                           images=2, warmup=1, iters=2, threads=2, streams=2, phase_iters=1, progress=False)
    assert report.settings["streams"] == 2 and report.failures == []
    assert "threads 2 in 2 streams" in format_table(report)
