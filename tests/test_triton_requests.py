"""Each request stands alone (issue 22): checked by itself before any batch runs, a bad one refused with its
own one-line client error while the others of its dynamic batch get their masks, bounded work per request.

The unit tests call :mod:`mrdl_runtime.triton_model` directly; the server tests start one ``mrdl serve``
child process (loopback ports, bounded waits, stopped in a ``finally``) on a copy of the tiny model with
a training ``source_size``, so that tiled requests run.
"""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mrdl_runtime import PredictOptions, server_process
from mrdl_runtime.errors import BackendUnavailableError
from mrdl_runtime.serving import ServeOptions, hosting_problem
from mrdl_runtime.triton_model import INTERNAL, INVALID, Job, Limits, RequestRefused, check_request, run_jobs
from reexport import rewrite_manifest

pytest.importorskip("onnxruntime")
_PROBLEM = hosting_problem()
LIMITS = Limits(max_pixels=250_000, max_side=1000, max_windows=64, pixels_in_flight=500_000)
BAD_PARAMETERS = [({"overlap": "nan"}, "overlap must be a number"), ({"overlap": "1.5"}, "overlap must be a number"),
                  ({"tile": "maybe"}, "tile must be one of"), ({"blend": "bogus"}, "blend must be one of"),
                  ({"tiel": "true"}, "unknown request parameter 'tiel'")]


class _Manifest:
    source_size, size = (100, 100), (64, 64)


def _refusal(images, parameters=None, limits=LIMITS) -> str:
    with pytest.raises(RequestRefused) as refused:
        check_request(images, parameters, PredictOptions(), _Manifest(), limits, False)
    assert refused.value.code == INVALID and "\n" not in str(refused.value) and "Traceback" not in str(refused.value)
    return str(refused.value)


@pytest.mark.parametrize("parameters, message", BAD_PARAMETERS)
def test_bad_parameters_are_refused_by_the_field_rules(parameters, message):
    assert message in _refusal(np.zeros((1, 8, 8, 3), np.uint8), parameters)


def test_bad_images_and_limits_are_refused_naming_the_limit():
    assert "UINT8 [batch, height, width, 3]" in _refusal(np.zeros((1, 8, 8, 3), np.float32))
    assert "UINT8 [batch, height, width, 3]" in _refusal(np.zeros((8, 8, 3), np.uint8))
    assert "empty" in _refusal(np.zeros((1, 0, 8, 3), np.uint8))
    assert "empty" in _refusal(np.zeros((0, 8, 8, 3), np.uint8))
    assert "no input 'image'" in _refusal(None)
    assert "1000 pixels per side" in _refusal(np.zeros((1, 1001, 10, 3), np.uint8))
    assert "250000 pixels per request" in _refusal(np.zeros((3, 300, 300, 3), np.uint8))  # 270000 in one request
    # overlap 0.9 on 300x300 (192x192 at the training scale): 23 x 23 windows, over the budget of 64
    assert "--max-windows" in _refusal(np.zeros((1, 300, 300, 3), np.uint8), {"tile": "true", "overlap": "0.9"})
    job = check_request(np.zeros((1, 300, 300, 3), np.uint8), {"tile": "true", "overlap": "0.25"}, PredictOptions(),
                        _Manifest(), LIMITS, True)
    assert job.options.tile is True and job.options.overlap == 0.25 and job.wants_probabilities


class _FailsOnMarked:
    """A segmenter stand-in: a mask of ones, or an error for an image whose first pixel is 255."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_batch(self, images, options):
        self.calls.append(len(images))
        if any(image[0, 0, 0] == 255 for image in images):
            raise RuntimeError("boom\nTraceback (most recent call last): /secret/path.py")
        from mrdl_runtime.segmenter import Prediction

        return [Prediction(np.ones(image.shape[:2], np.uint8), None) for image in images]


def test_a_request_failing_in_the_model_fails_alone():
    images = [np.zeros((1, 4, 4, 3), np.uint8) for _ in range(4)]
    images[2] = images[2].copy()
    images[2][0, 0, 0, 0] = 255
    jobs = [Job(image, PredictOptions(), False) for image in images] + [RequestRefused("bad")]
    segmenter = _FailsOnMarked()
    results = run_jobs(segmenter, jobs, pixels_in_flight=1_000)
    assert [isinstance(r, RequestRefused) for r in results] == [False, False, True, False, True]
    assert results[2].code == INTERNAL and "boom" in str(results[2]) and "\n" not in str(results[2])
    assert all(np.array_equal(results[i]["mask"], np.ones((1, 4, 4), np.uint8)) for i in (0, 1, 3))
    assert segmenter.calls[0] == 4  # all four ran together first, then apart
    parts = _FailsOnMarked()
    run_jobs(parts, jobs[:2], pixels_in_flight=16)  # one 4x4 request's pixels at a time
    assert parts.calls == [1, 1]


class _FakeBackend:
    """Just enough of ``triton_python_backend_utils`` for :meth:`TritonPythonModel.execute`, recording what each
    request's response sender sent and when (after how many model calls)."""

    TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code):
            self.message, self.code = message, code

    class Tensor:
        def __init__(self, name, value):
            self.name, self.value = name, value

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.outputs = {t.name: t.value for t in output_tensors or []}
            self.error = error

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request.tensor


class _FakeRequest:
    def __init__(self, images, sent, calls):
        self.tensor = type("T", (), {"as_numpy": lambda _self: images})()
        self.sent, self.calls = sent, calls

    def parameters(self):
        return "{}"

    def requested_output_names(self):
        return ["mask"]

    def get_response_sender(self):
        request = self
        return type("S", (), {"send": lambda _self, response, flags: request.sent.append(
            (request, response, flags, len(request.calls)))})()


def test_execute_answers_a_batch_of_several_parts_through_response_senders_part_by_part(monkeypatch):
    """A batch over the in-flight budget runs in parts and each request is answered by its own sender as its
    part finishes (before the next part runs), errors included; a batch of one part returns its responses."""
    import sys

    from mrdl_runtime.triton_model import TritonPythonModel

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakeBackend)
    model = object.__new__(TritonPythonModel)
    model.segmenter, model.defaults, model.manifest = _FailsOnMarked(), PredictOptions(), _Manifest()
    model.limits = Limits(max_pixels=250_000, max_side=1000, max_windows=64, pixels_in_flight=16)  # one 4x4 each
    sent: list = []
    images = [np.zeros((1, 4, 4, 3), np.uint8) for _ in range(3)] + [np.zeros((1, 0, 4, 3), np.uint8)]
    requests = [_FakeRequest(image, sent, model.segmenter.calls) for image in images]
    assert model.execute(requests) is None
    assert [requests.index(request) for request, *_ in sent] == [3, 0, 1, 2]  # the refused one first
    assert [calls for *_, calls in sent] == [0, 1, 2, 3]  # each sent as soon as its part ran
    assert all(flags == 1 for _, _, flags, _ in sent)
    assert sent[0][1].error.code == "INVALID_ARG" and "empty" in sent[0][1].error.message
    assert all(np.array_equal(response.outputs["mask"], np.ones((1, 4, 4), np.uint8)) for _, response, *_ in sent[1:])
    model.limits = Limits(max_pixels=250_000, max_side=1000, max_windows=64, pixels_in_flight=1_000)
    sent.clear()
    responses = model.execute(requests)
    assert not sent and len(responses) == 4 and responses[3].error.code == "INVALID_ARG"
    assert all(np.array_equal(r.outputs["mask"], np.ones((1, 4, 4), np.uint8)) for r in responses[:3])


@pytest.fixture(scope="module")
def tiled_model_dir(model_dir, tmp_path_factory):
    copy = tmp_path_factory.mktemp("served") / "deploy"
    shutil.copytree(model_dir, copy)
    return rewrite_manifest(copy, {"source_size": [100, 100]})


@pytest.fixture(scope="module")
def server(tiled_model_dir, tmp_path_factory):
    if _PROBLEM is not None:
        pytest.skip(f"this Python cannot host the Python backend: {_PROBLEM}")
    pytest.importorskip("tritonclient.http", reason="the serve extra is missing: pip install 'mrdl[serve]'")
    options = ServeOptions(max_queue_delay_us=300_000, max_windows=400, max_queue=32,
                           predict=PredictOptions(max_pixels=250_000),
                           max_pixels_in_flight=1_000_000)
    running = server_process.ServerProcess(tiled_model_dir, options,
                                           log=tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        running.start(120)
    except BackendUnavailableError as error:
        pytest.fail(f"{error}\n{running.output(4000)}")
    try:
        yield running
    finally:
        code = running.stop()
    assert code == 0, running.output()


def _infer(module, client, image: np.ndarray, parameters: dict):
    tensor = module.InferInput("image", list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image)
    return client.infer("mrdl", [tensor], outputs=[module.InferRequestedOutput("mask")], parameters=parameters)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_mixed_batch_good_requests_answered_bad_ones_refused(server, tiled_model_dir, protocol):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from mrdl_runtime import Segmenter

    module = httpclient if protocol == "http" else grpcclient
    rng = np.random.default_rng(5)
    good = [rng.integers(0, 256, (1, 96, 80, 3), dtype=np.uint8) for _ in range(6)]
    bad = BAD_PARAMETERS[:2]  # 8 requests, 25% bad, all the same image size so the batcher joins them
    with Segmenter.load(tiled_model_dir, backend="onnxruntime-cpu") as segmenter:
        expected = [segmenter.predict(image[0], with_probabilities=False).mask for image in good]
    local = threading.local()

    def one(index: int):
        if not hasattr(local, "client"):
            local.client = module.InferenceServerClient(getattr(server, protocol).split("://")[1])
        if index < len(good):
            return _infer(module, local.client, good[index], {}).as_numpy("mask")[0]
        try:
            _infer(module, local.client, good[0], bad[index - len(good)][0])
        except InferenceServerException as exc:
            return exc
        return None

    before = json.loads(server.get("/v2/models/mrdl/stats"))["model_stats"][0]["execution_count"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, [6, 0, 1, 7, 2, 3, 4, 5], timeout=120))
    by_index = dict(zip([6, 0, 1, 7, 2, 3, 4, 5], answers))
    for index, mask in enumerate(expected):
        assert np.array_equal(by_index[index], mask), f"good request {index} got {by_index[index]!r}"
    for index, (_, message) in enumerate(bad):
        error = by_index[len(good) + index]
        assert isinstance(error, InferenceServerException) and message in error.message()
        assert "Traceback" not in error.message() and "/" not in error.message().split("got")[0]
        assert str(error.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    executions = json.loads(server.get("/v2/models/mrdl/stats"))["model_stats"][0]["execution_count"] - before
    assert executions < 8, "the dynamic batcher never joined requests: the test shows nothing about batches"


def test_tiled_request_identical_and_window_budget_refused(server, tiled_model_dir):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from mrdl_runtime import RemoteSegmenter, Segmenter

    image = np.random.default_rng(6).integers(0, 256, (240, 260, 3), dtype=np.uint8)
    with Segmenter.load(tiled_model_dir, backend="onnxruntime-cpu") as segmenter:
        expected = segmenter.predict(image, tile=True, overlap=0.5)
    with RemoteSegmenter(server.http) as remote:
        got = remote.predict(image, tile=True, overlap=0.5)
    assert got.tiled and np.array_equal(got.mask, expected.mask)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5)
    client = httpclient.InferenceServerClient(server.http.split("://")[1])
    big = np.zeros((480, 500, 3), np.uint8)  # 307x320 at the training scale: 42 x 44 windows at overlap 0.9
    with pytest.raises(InferenceServerException, match="--max-windows") as refused:
        _infer(httpclient, client, big[None], {"tile": "true", "overlap": "0.9"})
    assert str(refused.value.status()) == "400"
    assert _infer(httpclient, client, image[None], {}).as_numpy("mask").shape == (1, 240, 260)
    client.close()


def test_client_retries_busy_refusals_with_backoff(monkeypatch):
    """A request refused as busy (UNAVAILABLE / 503) is sent again after a growing pause; any other refusal is not."""
    from mrdl_runtime import remote as remote_module

    client = object.__new__(remote_module.RemoteSegmenter)
    client.retries, client.timeout, client.url, client.model = 3, 600.0, "grpc://127.0.0.1:1", "mrdl"
    client.busy_retries = 0
    busy = remote_module.RemoteError("queue full", "StatusCode.UNAVAILABLE")
    answers = [[busy, "ok-1", remote_module.RemoteError("bad", "400")], [busy], ["ok-0"]]
    sent, pauses = [], []
    monkeypatch.setattr(client, "_send_once", lambda groups, *_: (sent.append(list(groups)), answers.pop(0))[1],
                        raising=False)
    monkeypatch.setattr(remote_module.time, "sleep", pauses.append)
    outcomes = client._send_all(["g0", "g1", "g2"], False, {})
    assert outcomes[:2] == ["ok-0", "ok-1"] and outcomes[2].status == "400" and not outcomes[2].busy
    assert sent == [["g0", "g1", "g2"], ["g0"], ["g0"]]  # only the busy one again, twice
    assert len(pauses) == 2 and 0.5 <= pauses[0] <= 0.625 and 1.0 <= pauses[1] <= 1.25


def test_client_retries_busy_refusals_until_its_timeout(monkeypatch):
    """By default (retries None) a busy refusal is sent again until the client's own timeout runs out, each try
    given the time left; the last busy refusal is the answer once no pause fits before the deadline."""
    from mrdl_runtime import remote as remote_module

    client = object.__new__(remote_module.RemoteSegmenter)
    client.retries, client.timeout, client.url, client.model = None, 30.0, "grpc://127.0.0.1:1", "mrdl"
    client.busy_retries = 0
    now = [1000.0]
    busy = remote_module.RemoteError("queue full", "StatusCode.UNAVAILABLE")
    timeouts = []
    monkeypatch.setattr(client, "_send_once", lambda groups, _p, _q, timeout: (timeouts.append(timeout), [busy])[1],
                        raising=False)
    monkeypatch.setattr(remote_module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(remote_module.time, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    monkeypatch.setattr(remote_module.random, "uniform", lambda low, high: 1.0)
    outcomes = client._send_all(["g0"], False, {})
    assert outcomes[0] is busy
    # 0.5 + 1 + 2 + 4 + 8 + 8 = 23.5 s of pauses fit in 30 s (each leaving 1 s for the try); the next 8 s does not
    assert len(timeouts) == 7 and client.busy_retries == 6 and timeouts[0] == 30.0 and timeouts[-1] == pytest.approx(6.5)
    assert all(later < earlier for earlier, later in zip(timeouts, timeouts[1:]))
    more = object.__new__(remote_module.RemoteSegmenter)
    more.retries, more.timeout, more.busy_retries = None, 600.0, 0
    calls = []
    monkeypatch.setattr(more, "_send_once", lambda *args: (calls.append(1), [busy])[1], raising=False)
    more._send_all(["g0"], False, {})
    assert len(calls) > 10  # not a fixed count of tries: 600 s of 8 s pauses


def test_unreachable_or_stopping_servers_are_not_busy():
    """UNAVAILABLE / 503 from a full queue is busy (sent again); the same codes from a server that cannot be
    reached, is shutting down or no longer serves the model are not, so a client does not wait out its timeout
    against a server that is gone."""
    from mrdl_runtime.remote import RemoteError

    assert RemoteError("grpc://h:1 model 'mrdl': Exceeds maximum queue size", "StatusCode.UNAVAILABLE").busy
    assert RemoteError("http://h:1 model 'mrdl': too many pixels in flight", "429").busy
    for message, status in [("failed to connect to all addresses; last error: Connection refused",
                             "StatusCode.UNAVAILABLE"),
                            ("Socket closed", "StatusCode.UNAVAILABLE"),
                            ("Server is stopping", "503"),
                            ("Request for unknown model: 'mrdl' has no available versions", "StatusCode.UNAVAILABLE")]:
        assert not RemoteError(message, status).busy, message
    assert not RemoteError("Exceeds maximum queue size", "400").busy


def test_predict_server_tiles_skips_refused_images_and_records_what_ran(server, tiled_model_dir, tmp_path):
    """mrdl predict --server --tile true --timeout: tiling runs on the server, an image the server refuses is
    listed while the others are written, and predict.json says what ran."""
    from click.testing import CliRunner
    from PIL import Image

    from mrdl_apps.cli import main
    from mrdl_runtime import Segmenter

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(9)
    images = {"a": rng.integers(0, 256, (120, 140, 3), dtype=np.uint8),
              "b": rng.integers(0, 256, (90, 100, 3), dtype=np.uint8),
              "huge": rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)}  # over the server's 250000 pixels
    for stem, image in images.items():
        Image.fromarray(image).save(folder / f"{stem}.png")
    result = CliRunner().invoke(main, ["predict", str(tiled_model_dir), str(folder), "--out", str(tmp_path / "out"),
                                       "--server", server.grpc, "--tile", "true", "--overlap", "0.5",
                                       "--timeout", "120", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "huge" in result.output and "250000 pixels per request" in result.output
    record = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert record["outputs"] == ["a", "b"] and record["tiled"] == {"a": True, "b": True}
    assert record["tiling"]["tile"] is True and record["tiling"]["overlap"] == 0.5
    with Segmenter.load(tiled_model_dir, backend="onnxruntime-cpu") as segmenter:
        for stem in ("a", "b"):
            expected = segmenter.predict(images[stem], tile=True, overlap=0.5, with_probabilities=False).mask
            written = np.array(Image.open(tmp_path / "out" / "masks" / f"{stem}.png"))
            assert np.array_equal(written > 0, expected > 0)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shared_memory_gives_the_same_results_and_leaves_no_region(server, protocol):
    from pathlib import Path

    from mrdl_runtime import RemoteSegmenter

    rng = np.random.default_rng(10)
    images = [rng.integers(0, 256, (130, 150, 3), dtype=np.uint8) for _ in range(3)]
    with RemoteSegmenter(getattr(server, protocol), shared_memory="off") as plain:
        expected = plain.predict_batch(images)
        assert not plain.shared_memory
    with RemoteSegmenter(getattr(server, protocol), shared_memory="on") as shared:
        assert shared.shared_memory
        got = shared.predict_batch(images)
        refused = shared.predict_each([np.zeros((600, 600, 3), np.uint8)])[0]  # over the server's pixels
    for ours, theirs in zip(got, expected):
        assert np.array_equal(ours.mask, theirs.mask) and np.array_equal(ours.probabilities, theirs.probabilities)
    assert "250000 pixels per request" in str(refused)
    assert not [p for p in Path("/dev/shm").glob(f"mrdl-{__import__('os').getpid()}-*")]
