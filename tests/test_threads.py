"""Threads: one Segmenter shared by 8 threads gives exactly the serial results; the runner's
latency counters lose no call; ``LoadOptions.threads`` / ``mrdl predict --threads`` reach ONNX Runtime."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

THREADS = 8


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """16 synthetic images of different sizes, some larger and some smaller than the model's input."""
    from mrdl.data.synthetic import synthetic_sample

    return [synthetic_sample(i, size=40 + 9 * i, seed=2)[0][:, : 40 + 7 * i] for i in range(16)]


@pytest.fixture(scope="module")
def shared_segmenter(model_dir):
    from mrdl_runtime import Segmenter

    # two intra-op threads: ONNX Runtime's own pool works under the 8 calling threads too
    with Segmenter.load(model_dir, backend="onnxruntime-cpu", threads=2) as segmenter:
        yield segmenter


def _run_in_threads(task, jobs: list) -> list:
    """``task(job)`` for every job on THREADS threads that all start together; results in job order."""
    barrier = threading.Barrier(THREADS)

    def first_waits(job):
        if threading.current_thread().name not in started:  # each pool thread waits for the others once
            started.add(threading.current_thread().name)
            barrier.wait(timeout=60)
        return task(job)

    started: set[str] = set()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(first_waits, jobs))


def test_shared_segmenter_from_8_threads_equals_serial(shared_segmenter, images):
    serial = [shared_segmenter.predict(image) for image in images]
    calls_before = shared_segmenter.runner.count
    jobs = list(range(len(images))) * 3  # every image three times, the calls interleaved across threads
    parallel = _run_in_threads(lambda i: shared_segmenter.predict(images[i]), jobs)
    for index, prediction in zip(jobs, parallel):
        np.testing.assert_array_equal(prediction.mask, serial[index].mask)
        np.testing.assert_array_equal(prediction.probabilities, serial[index].probabilities)
    assert shared_segmenter.runner.count - calls_before == len(jobs)  # one model call per predict, none lost


def test_shared_segmenter_batches_from_8_threads_equal_serial(shared_segmenter, images):
    """predict_batch splits into max_batch chunks (4 here); concurrent batches of 6 keep their order."""
    groups = [images[start:start + 6] for start in range(0, 10)]
    serial = [[p.mask for p in shared_segmenter.predict_batch(group)] for group in groups]
    parallel = _run_in_threads(lambda group: [p.mask for p in shared_segmenter.predict_batch(group)], groups)
    for expected, got in zip(serial, parallel):
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a, b)


def test_shared_segmenter_tiled_from_8_threads_equals_serial(model_dir, tmp_path):
    """Tiled inference (windows at the training scale, batched through the shared runner) is thread-safe too."""
    import json
    import shutil

    from mrdl.data.synthetic import synthetic_sample
    from mrdl_runtime import Segmenter

    from reexport import rewrite_manifest

    copy = shutil.copytree(model_dir, tmp_path / "deploy")
    side = json.loads((copy / "model.json").read_text())["preprocessing"]["size"][0]
    rewrite_manifest(copy, {"source_size": [2 * side, 2 * side]})  # a 5x-side image: 2.5 windows at the training scale
    images = [synthetic_sample(i, size=5 * side + 3 * i, seed=4)[0] for i in range(4)]
    with Segmenter.load(copy, backend="onnxruntime-cpu", threads=1) as segmenter:
        serial = [segmenter.predict(image, tile=True) for image in images]
        assert all(prediction.tiled for prediction in serial)
        jobs = list(range(len(images))) * 2
        parallel = _run_in_threads(lambda i: segmenter.predict(images[i], tile=True), jobs)
    for index, prediction in zip(jobs, parallel):
        np.testing.assert_array_equal(prediction.probabilities, serial[index].probabilities)


def test_latency_counters_lose_no_concurrent_call():
    """LatencyStats.record is read-modify-writes; a count whose addition lets other threads run in
    between (as any thread switch may) loses calls unless record holds its lock."""
    import time

    from mrdl_runtime.runner import LatencyStats

    class SlowCount(int):
        def __add__(self, other):
            time.sleep(1e-4)  # releases the GIL between reading the count and storing the sum
            return SlowCount(int(self) + other)

    stats, per_thread = LatencyStats(), 50
    stats.count = SlowCount(0)
    _run_in_threads(lambda _: [stats.record(0.001) for _ in range(per_thread)], list(range(THREADS)))
    assert stats.count == THREADS * per_thread
    assert stats.total_s == pytest.approx(THREADS * per_thread * 0.001)
    assert stats.mean_ms == pytest.approx(1.0)


def test_serial_backend_never_runs_two_batches_at_once():
    """A runner with concurrent_infer = False (the native TensorRT runner) gets one _infer at a time."""
    import time

    from mrdl_runtime.runner import Runner
    from mrdl_runtime.tensorrt_runner import TensorRTRunner

    class OneAtATime(Runner):
        backend, concurrent_infer = "test", False

        def __init__(self):
            super().__init__()
            self.inside, self.most_inside = 0, 0

        def _open(self):
            pass

        def _infer(self, feeds):
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            time.sleep(0.002)
            self.inside -= 1
            return feeds

        def _close(self):
            pass

    assert TensorRTRunner.concurrent_infer is False
    with OneAtATime() as runner:
        _run_in_threads(lambda i: runner.infer({"x": np.zeros(1)}), list(range(4 * THREADS)))
        assert runner.most_inside == 1 and runner.count == 4 * THREADS


def test_intra_op_threads_reach_onnxruntime(model_dir):
    from mrdl_runtime import Segmenter

    with Segmenter.load(model_dir, backend="onnxruntime-cpu", threads=2) as segmenter:
        assert segmenter.runner.session.get_session_options().intra_op_num_threads == 2


def test_predict_threads_option(model_dir, tmp_path, monkeypatch):
    from mrdl_apps.cli import main
    from mrdl_runtime import Segmenter

    Image.fromarray(np.full((30, 40, 3), 120, np.uint8)).save(tmp_path / "a.png")
    seen = []
    load = Segmenter.load.__func__

    def recording_load(cls, *args, **kwargs):
        segmenter = load(cls, *args, **kwargs)
        seen.append(segmenter.runner.session.get_session_options().intra_op_num_threads)
        return segmenter

    monkeypatch.setattr(Segmenter, "load", classmethod(recording_load))
    for threads in ("3", "0"):
        result = CliRunner().invoke(main, ["predict", str(model_dir), str(tmp_path / "a.png"), "--out",
                                           str(tmp_path / f"out{threads}"), "--threads", threads, "--no-progress"])
        assert result.exit_code == 0, result.output
    from mrdl_runtime.threads import default_threads

    assert seen == [3, default_threads()]  # 0: the runtime's default, one per physical core available
    refused = CliRunner().invoke(main, ["predict", str(model_dir), str(tmp_path / "a.png"), "--out",
                                       str(tmp_path / "bad"), "--threads", "-1"])
    assert refused.exit_code == 2 and "--threads" in refused.output
