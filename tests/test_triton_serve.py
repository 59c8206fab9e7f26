"""``mrdl serve`` (a real tritonserver through PyTriton) and ``RemoteSegmenter``, on loopback only.

The server runs as a child process (:class:`mrdl_runtime.server_process.ServerProcess`: the library's
``run_server``, what ``mrdl serve`` runs) on free 127.0.0.1 ports; every
wait and every loop below is bounded in count and time. Skipped, with the reason, where this Python
cannot host PyTriton's backend (no shared libpython: ``make install`` builds .venv from Debian's
/usr/bin/python3.11 for that) or where the serve extra is missing.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mrdl_runtime import PredictOptions, server_process
from mrdl_runtime.errors import BackendUnavailableError
from mrdl_runtime.server_process import free_ports
from mrdl_runtime.serving import ServeOptions, hosting_problem

pytest.importorskip("onnxruntime")
_PROBLEM = hosting_problem()
if _PROBLEM is None:
    pytest.importorskip("pytriton", reason="the serve extra is missing: pip install 'mrdl[serve]'")
    pytest.importorskip("tritonclient.grpc", reason="the serve extra is missing: pip install 'mrdl[serve]'")
    pytest.importorskip("tritonclient.http", reason="the serve extra is missing: pip install 'mrdl[serve]'")

needs_pytriton = pytest.mark.skipif(_PROBLEM is not None, reason=f"this Python cannot host PyTriton: {_PROBLEM}")
START_TIMEOUT_S = 120
MAX_PIXELS = 250_000  # the test server's --max-pixels: a 600x600 image is "oversized" without a big payload


class ServerProcess(server_process.ServerProcess):
    """The library's server child process (loopback ports, SIGTERM then kill, bounded) with the tests' pixel
    limit; a server that does not come up fails the test with its log."""

    def __init__(self, model_dir: Path, log: Path, **options) -> None:
        super().__init__(model_dir, ServeOptions(predict=PredictOptions(max_pixels=MAX_PIXELS), **options), log=log)

    def status(self, path: str, port: int | None = None) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.http_port}{path}", timeout=5) as reply:
                return reply.status
        except OSError:
            return 0

    def wait_ready(self) -> None:
        try:
            self.start(START_TIMEOUT_S)
        except BackendUnavailableError as error:
            pytest.fail(f"{error}\n{self.output(4000)}")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    if _PROBLEM is not None:
        pytest.skip(f"this Python cannot host PyTriton: {_PROBLEM}")
    running = ServerProcess(model_dir, tmp_path_factory.mktemp("serve") / "serve.log", max_queue_delay_us=20000,
                            max_queue=64)
    running.wait_ready()
    yield running
    code = running.stop()
    assert code == 0, running.output()


@pytest.fixture(scope="module")
def segmenter(model_dir):
    from mrdl_runtime import Segmenter

    with Segmenter.load(model_dir, backend="onnxruntime-cpu") as loaded:
        yield loaded


def _images(count: int, seed: int = 0, sizes=((96, 80), (64, 64), (150, 200), (37, 53))) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(count)]


def test_hosting_problem_names_the_fix(monkeypatch):
    import sysconfig

    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: 0 if name == "Py_ENABLE_SHARED" else None)
    problem = hosting_problem()
    assert "shared libpython" in problem and "/usr/bin/python3.11" in problem and "make install" in problem
    from mrdl_runtime.serving import ServeError, tritonserver_files

    with pytest.raises(ServeError, match="shared libpython"):
        tritonserver_files()


def test_remote_url_parsing():
    from mrdl_runtime.remote import parse_url

    assert parse_url("grpc://127.0.0.1:8001") == ("grpc", "127.0.0.1:8001")
    assert parse_url("127.0.0.1:8000") == ("http", "127.0.0.1:8000")
    assert parse_url("http://[::1]:8000/") == ("http", "[::1]:8000")
    for bad in ("ftp://host:1", "http://host", "http://host:80/v2/models"):
        with pytest.raises(ValueError, match="expected"):
            parse_url(bad)


@needs_pytriton
def test_health_readiness_and_metrics(server):
    assert server.status("/v2/health/live") == 200
    assert server.status("/v2/health/ready") == 200
    metadata = json.loads(server.get("/v2/models/mrdl"))
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [("image", "UINT8", [-1, -1, -1, 3])]
    assert {t["name"] for t in metadata["outputs"]} == {"mask", "probabilities", "tiled"}
    metrics = server.get("/metrics", port=server.metrics_port)
    assert 'nv_inference_count{model="mrdl",version="1"}' in metrics


@needs_pytriton
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_masks_identical_to_in_process(server, segmenter, protocol):
    from mrdl_runtime import RemoteSegmenter

    images = _images(6, seed=1)
    expected = segmenter.predict_batch(images)
    with RemoteSegmenter(getattr(server, protocol)) as remote:
        assert remote.max_batch == segmenter.manifest.max_batch and remote.n_classes == segmenter.manifest.n_classes
        got = remote.predict_batch(images)
        single = remote.predict(images[2], with_probabilities=False)
    assert [p.mask.shape for p in got] == [image.shape[:2] for image in images]
    for ours, theirs in zip(got, expected):
        assert ours.mask.dtype == np.uint8 and np.array_equal(ours.mask, theirs.mask)
        np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-5)
        assert 0 < ours.mask.mean() < 1  # a real mask (the calibrated tiny model marks ~30% of pixels)
    assert single.probabilities is None and np.array_equal(single.mask, expected[2].mask)


@needs_pytriton
def test_32_concurrent_requests_all_answered_and_batched(server, segmenter):
    from mrdl_runtime import RemoteSegmenter

    images = _images(32, seed=2, sizes=((120, 100),))
    expected = [p.mask for p in segmenter.predict_batch(images, with_probabilities=False)]
    local = threading.local()

    def one(index: int) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = RemoteSegmenter(server.grpc if index % 2 else server.http, timeout=60)
        return local.client.predict(images[index], with_probabilities=False).mask

    with ThreadPoolExecutor(max_workers=32) as pool:
        masks = list(pool.map(one, range(32), timeout=120))
    assert all(np.array_equal(mask, want) for mask, want in zip(masks, expected))
    stats = json.loads(server.get("/v2/models/mrdl/stats"))["model_stats"][0]
    sizes = {entry["batch_size"] for entry in stats["batch_stats"]}
    assert max(sizes) > 1, f"the dynamic batcher formed only batches of {sizes}"


@needs_pytriton
def test_bad_requests_get_errors_and_the_server_stays_healthy(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    cases = {
        "dtype": (np.zeros((1, 8, 8, 3), np.float32), "FP32", "UINT8"),
        "rank": (np.zeros((1, 8, 3), np.uint8), "UINT8", "shape"),
        "channels": (np.zeros((1, 8, 8, 4), np.uint8), "UINT8", "shape"),
        "empty": (np.zeros((1, 0, 8, 3), np.uint8), "UINT8", "empty|zeros in shape"),
        "oversized": (np.zeros((1, 600, 600, 3), np.uint8), "UINT8", f"limit of {MAX_PIXELS} pixels"),
    }
    for module, address in ((httpclient, server.http), (grpcclient, server.grpc)):
        client = module.InferenceServerClient(address.split("://")[1])
        for label, (array, datatype, message) in cases.items():
            tensor = module.InferInput("image", list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            with pytest.raises(InferenceServerException, match=message):
                client.infer("mrdl", [tensor], outputs=[module.InferRequestedOutput("mask")])
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mrdl")
        good = module.InferInput("image", [1, 8, 8, 3], "UINT8")
        good.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
        assert client.infer("mrdl", [good]).as_numpy("mask").shape == (1, 8, 8)
        client.close()
    from mrdl_runtime import ImageInputError, RemoteError, RemoteSegmenter

    with pytest.raises(RemoteError, match="has no ready model 'nope'"):
        RemoteSegmenter(server.http, model="nope")
    with RemoteSegmenter(server.grpc) as remote, pytest.raises(ImageInputError):
        remote.predict(np.zeros((0, 5, 3), np.uint8))  # refused by the client's own image check


@needs_pytriton
def test_predict_server_writes_the_same_files(server, model_dir, tmp_path):
    from PIL import Image

    from mrdl_apps.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(_images(3, seed=3)):
        Image.fromarray(image).save(folder / f"i{index}.png")
    local = CliRunner().invoke(main, ["predict", str(model_dir), str(folder), "--out", str(tmp_path / "local"),
                                      "--no-progress"])
    remote = CliRunner().invoke(main, ["predict", str(model_dir), str(folder), "--out", str(tmp_path / "remote"),
                                       "--server", server.grpc, "--no-progress"])
    assert local.exit_code == 0 and remote.exit_code == 0, local.output + remote.output
    for kind in ("masks", "overlays"):
        for path in sorted((tmp_path / "local" / kind).iterdir()):
            assert path.read_bytes() == (tmp_path / "remote" / kind / path.name).read_bytes()
    refused = CliRunner().invoke(main, ["predict", str(model_dir), str(folder), "--out", str(tmp_path / "x"),
                                        "--server", f"http://127.0.0.1:{free_ports(1)[0]}", "--no-progress"])
    assert refused.exit_code == 1 and "no Triton server answers" in refused.output


@needs_pytriton
def test_busy_port_is_refused_before_loading(server, model_dir):
    from mrdl_apps.cli import main

    result = CliRunner().invoke(main, ["serve", str(model_dir), "--http-port", str(server.http_port),
                                       "--grpc-port", str(free_ports(1)[0]),
                                       "--metrics-port", str(free_ports(1)[0])])
    assert result.exit_code == 1 and "is not free" in result.output and "--http-port" in result.output


@needs_pytriton
def test_sigterm_under_load_loses_no_accepted_request(model_dir, segmenter, tmp_path):
    """Clients keep sending while the server gets SIGTERM: every request ends, within bounded time, with the
    right mask or an explicit refusal (server stopping / model gone / connection refused); none is lost."""
    from mrdl_runtime import RemoteError, RemoteSegmenter

    running = ServerProcess(model_dir, tmp_path / "serve.log", exit_timeout=30)
    running.wait_ready()
    image = _images(1, seed=4, sizes=((400, 400),))[0]
    expected = segmenter.predict(image, with_probabilities=False).mask
    outcomes: list[tuple[str, float, str]] = []  # (ok | wrong | refused | lost, finish time, message)
    lock, answered = threading.Lock(), threading.Event()

    def client(index: int) -> None:
        try:
            remote = RemoteSegmenter(running.grpc if index % 2 else running.http, timeout=60)
        except RemoteError as exc:
            with lock:
                outcomes.append(("refused", time.monotonic(), str(exc)))
            return
        for _ in range(12):  # bounded: 8 clients x 12 requests
            try:
                mask = remote.predict(image, with_probabilities=False).mask
                kind, message = ("ok" if np.array_equal(mask, expected) else "wrong"), ""
            except RemoteError as exc:
                message = str(exc)
                refused = any(word in message for word in ("stopping", "unknown model", "unavailable", "Unavailable",
                                                           "refused", "not ready", "UNAVAILABLE"))
                kind = "refused" if refused else "lost"
            with lock:
                outcomes.append((kind, time.monotonic(), message))
                if sum(o[0] == "ok" for o in outcomes) >= 8:
                    answered.set()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    assert answered.wait(60), f"the server answered too few requests:\n{running.output()}"
    signalled = time.monotonic()
    running.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=max(1.0, signalled + 90 - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a request never ended"
    code = running.stop(timeout=60)
    kinds = [o[0] for o in outcomes]
    assert code == 0, running.output()
    assert len(outcomes) == 8 * 12 or "refused" in kinds
    assert "wrong" not in kinds and "lost" not in kinds, [o for o in outcomes if o[0] in ("wrong", "lost")]
    assert sum(o[0] == "ok" and o[1] > signalled for o in outcomes) >= 1  # in-flight requests were finished
    assert "stopped; batches formed" in running.output()
