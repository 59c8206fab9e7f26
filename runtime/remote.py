"""``RemoteSegmenter``: a model served by Triton (``mrdl serve``), with :class:`~mrdl_runtime.Segmenter`'s API.

    from mrdl_runtime import RemoteSegmenter
    with RemoteSegmenter("http://127.0.0.1:8000") as segmenter:       # or "grpc://127.0.0.1:8001"
        prediction = segmenter.predict(rgb)   # HxWx3 -> mask (H, W), probabilities (C, H, W)

Images are decoded locally by the runtime's rule (:func:`~mrdl_runtime.imaging.check_image`:
uint8/uint16/bool/float, gray, RGBA, BGR) and sent as raw UINT8 HxWx3; the server preprocesses,
runs the model and returns the mask (and, when asked, the probabilities) at the image's own size,
exactly as ``Segmenter.predict`` computes them in-process. ``predict_batch`` sends images of one
size together (at most the server's ``max_batch_size`` per request) and all requests at once, so
the server's dynamic batcher can join them.

Slow work: ``timeout`` (:class:`ClientOptions`, ``mrdl predict --server URL --timeout S``) is how
long one request may take, from sending it to its answer (a tiled 4096x4096 image on a busy CPU
takes minutes; the default is generous). A request the server refuses because it is busy (its
queue is full: UNAVAILABLE / HTTP 503, or RESOURCE_EXHAUSTED / 429) or cannot take yet is sent
again after 0.5, 1, 2, 4, 8, 8 ... s (with jitter) until its ``timeout`` runs out (or at most
``retries`` times when set), so a client waiting behind others keeps its place in line as long as it
is willing to wait; any other refusal is the
request's own error (:class:`RemoteError`, one line). :meth:`RemoteSegmenter.predict_each` returns
each image's prediction or error, so one bad image never loses the others; ``predict_batch``
raises the first error. Requests hold at most ``max_batch`` images and the server's
``max_request_pixels`` pixels (both read from the model's config).

Needs ``tritonclient`` (``pip install 'mrdl[serve]'``), imported when a RemoteSegmenter is made.
"""

from __future__ import annotations

import queue
import random
import time
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np

from .errors import BackendUnavailableError, MrdlError, OptionsError
from .imaging import check_image
from .options import OptionsBase, PredictOptions, check_fields, option
from .front_model import model_name_problem
from .segmenter import Prediction

DEFAULT_MODEL = "mrdl"
PROTOCOLS = ("http", "grpc")
RETRY_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED", "503", "429")
# UNAVAILABLE also means "not there" (no connection, the server shutting down, the model unloaded): sending
# again until the timeout would hold the client for minutes against a server that is gone
GONE_MARKERS = ("failed to connect", "connection refused", "connect failed", "socket closed", "stopping",
                "shutting down", "unknown model", "no available versions", "not ready")
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.5, 8.0
SHM_MIN_BYTES = 1 << 20  # shared_memory "auto": smaller requests go inline (registering regions costs round trips)


@dataclass(frozen=True)
class ClientOptions(OptionsBase):
    """How a :class:`RemoteSegmenter` talks to the server (``mrdl predict --server``'s options)."""

    model_name: str = option(DEFAULT_MODEL, "With --server: the served model's name.")
    timeout: float = option(600.0, "With --server: seconds one request may take from sending to its answer (a "
                            "tiled large image on a busy server takes minutes).", low=1)
    shared_memory: str = option("auto", "With --server: pass images and masks through system shared memory "
                                "instead of the network stack; auto: when the server is on this host's loopback and "
                                "accepts it.", choices=("auto", "on", "off"))
    retries: int | None = option(None, "With --server: a request the server refused as busy (UNAVAILABLE, "
                                 "RESOURCE_EXHAUSTED) is sent again after 0.5, 1, 2, 4, 8, 8 ... s until --timeout "
                                 "runs out (default), or at most this many times.", low=0, high=10_000)

    def __post_init__(self) -> None:
        check_fields(self)
        problem = model_name_problem(self.model_name)  # a name Triton could never serve (e.g. "..", a hidden name)
        if problem:
            raise OptionsError(problem)


class RemoteError(MrdlError, RuntimeError):
    """The server could not be reached, does not serve the model, or answered a request with an error
    (``status``: the server's status, e.g. "400" or "StatusCode.INVALID_ARGUMENT", when it answered)."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def busy(self) -> bool:
        """The server refused the request as busy (a full queue, too many pixels in flight): sending it again
        later may succeed. Unreachable or stopping servers are not busy."""
        text = str(self).lower()
        return self.status in RETRY_STATUSES and not any(marker in text for marker in GONE_MARKERS)


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """``"grpc://host:8001"`` / ``"http://host:8000"`` / ``"host:8000"`` -> (protocol, "host:port")."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    scheme = parts.scheme or protocol or "http"
    if protocol is not None and parts.scheme and parts.scheme != protocol:
        raise OptionsError(f"url {url!r} says {parts.scheme}, protocol says {protocol}")
    if scheme not in PROTOCOLS:
        raise OptionsError(f"url {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
    if not parts.hostname or parts.port is None or parts.path not in ("", "/"):
        raise OptionsError(f"url {url!r}: expected {scheme}://HOST:PORT (e.g. {scheme}://127.0.0.1:"
                         f"{8000 if scheme == 'http' else 8001})")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return scheme, f"{host}:{parts.port}"


def _server_message(exc: Exception) -> str:
    """The server's error text; of a Python traceback (another server's), its first and last lines."""
    text = str(exc.message() if hasattr(exc, "message") and callable(exc.message) else exc) or repr(exc)
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 2 and any("Traceback" in line for line in lines):
        return f"{lines[0]} ... {lines[-1].strip()}"
    return text


def _writable(array: np.ndarray | None) -> np.ndarray | None:
    """A response's read-only view copied, as Segmenter's results are writable; an array already copied out of
    shared memory is kept as it is."""
    return array if array is None or array.flags.writeable else np.array(array)


class RemoteSegmenter:
    """A model served by Triton Inference Server, used like an in-process ``Segmenter``.

    ``url``: ``http://HOST:PORT`` or ``grpc://HOST:PORT`` (no scheme: HTTP). ``options``
    (:class:`ClientOptions`; the keywords ``model``, ``timeout``, ``retries`` and ``shared_memory``
    override its fields): the served model's name (``mrdl serve --model-name``), seconds each request
    may take (also the connection timeout), retries of requests refused as busy, system shared memory
    (:mod:`mrdl_runtime.remote_shm`; "auto": on a loopback server that accepts it, for requests of at
    least 1 MiB). ``concurrency``: requests in flight at once (HTTP connection pool size). Raises
    :class:`RemoteError` when the server is not reachable
    or the model is not ready.
    """

    def __init__(self, url: str, options: ClientOptions | None = None, *, model: str | None = None,
                 protocol: str | None = None, timeout: float | None = None, retries: int | None = None,
                 shared_memory: str | None = None, concurrency: int = 8) -> None:
        changes = {name: value for name, value in (("model_name", model), ("timeout", float(timeout) if timeout
                   is not None else None), ("retries", retries), ("shared_memory", shared_memory)) if value is not None}
        self.options = ClientOptions.of(options, **changes)
        self.protocol, self.address = parse_url(url, protocol)
        self.url, self.model = f"{self.protocol}://{self.address}", self.options.model_name
        self.timeout, self.retries = self.options.timeout, self.options.retries
        try:
            if self.protocol == "http":
                import tritonclient.http as client_module
            else:
                import tritonclient.grpc as client_module
        except ImportError as exc:
            raise BackendUnavailableError(f"RemoteSegmenter needs tritonclient ({exc}); install the serve extra: "
                                          "pip install 'mrdl[serve]'") from exc
        self._module = client_module
        from tritonclient.utils import InferenceServerException

        self._server_error = InferenceServerException
        if self.protocol == "http":
            self._client = client_module.InferenceServerClient(
                self.address, concurrency=max(1, concurrency), connection_timeout=self.timeout,
                network_timeout=self.timeout)
        else:
            self._client = client_module.InferenceServerClient(self.address)
        try:
            self._client.is_server_live()
        except (self._server_error, OSError, ConnectionError) as exc:
            self.close()
            raise RemoteError(f"no Triton server answers at {self.url} ({exc}); start one with: "
                              f"mrdl serve MODEL_DIR") from exc
        try:
            ready = self._client.is_model_ready(self.model)
            json_form = {} if self.protocol == "http" else {"as_json": True}  # the HTTP client answers JSON
            config = self._client.get_model_config(self.model, **json_form) if ready else None
        except (self._server_error, OSError, ConnectionError):
            ready, config = False, None
        if not ready:
            self.close()
            raise RemoteError(f"the server at {self.url} has no ready model {self.model!r} "
                              f"(mrdl serve --model-name names it)")
        config = config.get("config", config)
        self.max_batch = int(config.get("max_batch_size", 0)) or 1
        dims = [list(o.get("dims", [])) for o in config.get("output", []) if o.get("name") == "probabilities"]
        self.n_classes = int(dims[0][0]) if dims and dims[0] else None  # None: not an mrdl serve model
        parameters = {key: value.get("string_value", value.get("stringValue", ""))
                      for key, value in (config.get("parameters") or {}).items()}
        self.max_request_pixels = int(parameters.get("max_request_pixels") or 0) or None  # None: no limit known
        self.export_id = parameters.get("export_id")
        self.shared_memory = self._choose_shared_memory()
        self._regions = None  # the shared-memory regions kept between requests (remote_shm.RegionPool)
        if self.shared_memory:
            from .remote_shm import RegionPool

            self._regions = RegionPool(self._client)
        self.count = 0  # requests answered
        self.busy_retries = 0  # requests sent again after a busy refusal
        self._seconds = 0.0

    def _choose_shared_memory(self) -> bool:
        from .remote_shm import is_loopback, probe

        wanted = self.options.shared_memory
        if wanted == "off" or (wanted == "auto" and not is_loopback(self.address)):
            return False
        problem = probe(self._client)
        if problem is not None and wanted == "on":
            self.close()
            raise RemoteError(f"the server at {self.url} does not accept shared memory from this client ({problem}); "
                              "use --shared-memory off, or a server on this host's loopback")
        return problem is None

    @property
    def mean_latency_ms(self) -> float:
        """Mean round-trip time per request (preprocessing, model and postprocessing on the server, transfer)."""
        return 1e3 * self._seconds / self.count if self.count else 0.0

    def _request(self, images: np.ndarray, with_probabilities: bool):
        module = self._module
        tensor = module.InferInput("image", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        names = ["mask", "tiled"] + (["probabilities"] if with_probabilities else [])
        return [tensor], [module.InferRequestedOutput(name) for name in names]

    def _error(self, exc: BaseException) -> RemoteError:
        if isinstance(exc, self._server_error):
            status = str(exc.status()) if exc.status() is not None else None
            if status in ("StatusCode.DEADLINE_EXCEEDED", "408", "504") or "Deadline Exceeded" in str(exc):
                return RemoteError(f"{self.url} model {self.model!r}: no answer within {self.timeout:g} s "
                                   "(--timeout)", status)
            return RemoteError(f"{self.url} model {self.model!r}: {_server_message(exc)}", status)
        if isinstance(exc, (TimeoutError, queue.Empty)) or "timed out" in str(exc):
            return RemoteError(f"{self.url} model {self.model!r}: no answer within {self.timeout:g} s (--timeout)")
        return RemoteError(f"{self.url}: connection failed: {exc}")

    def _send_once(self, groups: list[list[np.ndarray]], with_probabilities: bool, parameters: dict | None,
                   timeout: float) -> list:
        """Send every group (images of one size) at once; per group its result (with ``as_numpy``) or its
        :class:`RemoteError`. Through shared memory a group's images are written straight into its region; else
        they are stacked into the request."""
        from .remote_shm import SharedMemoryCall

        names = ["mask", "tiled"] + (["probabilities"] if with_probabilities else [])
        calls: list = [None] * len(groups)
        outcomes: list = [None] * len(groups)
        try:
            requests = []
            for index, group in enumerate(groups):
                nbytes = sum(image.nbytes for image in group)
                if self.shared_memory and (self.options.shared_memory == "on" or nbytes >= SHM_MIN_BYTES):
                    calls[index] = SharedMemoryCall(self._regions, self._module, group, names, self.n_classes or 1)
                    requests.append((calls[index].inputs, calls[index].outputs))
                else:
                    stacked = np.stack(group) if len(group) > 1 else group[0][None]  # one image: a view
                    requests.append(self._request(stacked, with_probabilities))
            if self.protocol == "http":
                self._send_http(requests, parameters, outcomes)
            else:
                self._send_grpc(requests, parameters, outcomes, timeout)
            for index, call in enumerate(calls):
                if call is not None and not isinstance(outcomes[index], RemoteError):
                    outcomes[index] = call.read(outcomes[index])
        except (self._server_error, OSError, ConnectionError) as exc:
            return [self._error(exc)] * len(groups)
        finally:
            for call in calls:
                if call is not None:
                    call.close()
        return outcomes

    def _send_http(self, requests: list, parameters: dict | None, outcomes: list) -> None:
        pending = []
        for inputs, outputs in requests:
            try:
                pending.append(self._client.async_infer(self.model, inputs, outputs=outputs, parameters=parameters))
            except (self._server_error, OSError, ConnectionError) as exc:
                pending.append(self._error(exc))
        for index, request in enumerate(pending):
            try:
                outcomes[index] = request if isinstance(request, RemoteError) else request.get_result()
            except Exception as exc:  # noqa: BLE001 - each request's failure is its own
                outcomes[index] = self._error(exc)

    def _send_grpc(self, requests: list, parameters: dict | None, outcomes: list, timeout: float) -> None:
        done: queue.Queue = queue.Queue()
        for index, (inputs, outputs) in enumerate(requests):
            self._client.async_infer(self.model, inputs, lambda result, error, i=index: done.put((i, result, error)),
                                     outputs=outputs, client_timeout=timeout, parameters=parameters)
        deadline = time.monotonic() + timeout + 5
        for _ in requests:
            try:
                index, result, error = done.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty as exc:
                for index, outcome in enumerate(outcomes):
                    outcomes[index] = outcome if outcome is not None else self._error(exc)
                return
            outcomes[index] = result if error is None else self._error(error)

    def _send_all(self, groups: list[list[np.ndarray]], with_probabilities: bool, parameters: dict) -> list:
        """:meth:`_send_once`, then the requests refused as busy again after a growing pause, until ``timeout``
        seconds from now have run out (or ``retries`` times when set); each try waits at most the time left."""
        deadline = time.monotonic() + self.timeout
        outcomes = self._send_once(groups, with_probabilities, parameters or None, self.timeout)
        attempt = 0
        while self.retries is None or attempt < self.retries:
            again = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, RemoteError) and outcome.busy]
            pause = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** attempt) * random.uniform(1.0, 1.25)
            if not again or time.monotonic() + pause + 1 > deadline:
                break
            time.sleep(pause)
            attempt += 1
            self.busy_retries += len(again)
            left = max(1.0, deadline - time.monotonic())
            for index, outcome in zip(again, self._send_once([groups[i] for i in again], with_probabilities,
                                                             parameters or None, left)):
                outcomes[index] = outcome
        return outcomes

    def _plan(self, rgb: list[np.ndarray]) -> list[list[int]]:
        """Requests: images of one size, at most ``max_batch`` of them and ``max_request_pixels`` pixels."""
        order: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(rgb):
            order.setdefault(image.shape, []).append(index)
        plan = []
        for shape, indices in order.items():
            pixels = shape[0] * shape[1]
            per_request = self.max_batch if not self.max_request_pixels else \
                max(1, min(self.max_batch, self.max_request_pixels // max(1, pixels)))
            plan.extend(indices[start:start + per_request] for start in range(0, len(indices), per_request))
        return plan

    def predict_each(self, images: Sequence[np.ndarray], options: PredictOptions | None = None,
                     **fields) -> list[Prediction | RemoteError]:
        """Like :meth:`predict_batch`, but each image's :class:`RemoteError` in its place instead of raising:
        a refused or failed image never loses the others."""
        options = PredictOptions.of(options, **fields)
        if options.at_model_size:
            raise OptionsError("the server returns masks at each image's original size; at_model_size is "
                               "in-process only")
        with_probabilities = options.with_probabilities
        if len(images) == 0:
            return []
        rgb = [check_image(image, channel_order=options.channel_order) for image in images]
        plan = self._plan(rgb)
        start = time.perf_counter()
        results = self._send_all([[rgb[i] for i in chunk] for chunk in plan], with_probabilities,
                                 options.request_parameters())
        answered = sum(not isinstance(result, RemoteError) for result in results)
        self.count += answered
        self._seconds += (time.perf_counter() - start) * answered  # the requests ran concurrently
        predictions: list[Prediction | RemoteError] = [None] * len(rgb)  # type: ignore[list-item]
        for chunk, result in zip(plan, results):
            if isinstance(result, RemoteError):
                for index in chunk:
                    predictions[index] = result
                continue
            masks = _writable(result.as_numpy("mask"))
            probabilities = _writable(result.as_numpy("probabilities")) if with_probabilities else None
            if masks is None or masks.shape[0] != len(chunk) or (with_probabilities and probabilities is None):
                raise RemoteError(f"{self.url} model {self.model!r} answered without the expected outputs "
                                  "(mask [b, H, W] uint8, probabilities [b, C, H, W]); is it served by mrdl serve?")
            tiled = result.as_numpy("tiled")
            for row, index in enumerate(chunk):
                extra = {} if tiled is None else {"tiled": bool(tiled[row].any())}
                predictions[index] = Prediction(masks[row], None if probabilities is None else probabilities[row],
                                                **extra)
        return predictions

    def predict_batch(self, images: Sequence[np.ndarray], options: PredictOptions | None = None, *,
                      text_features: np.ndarray | None = None, **fields) -> list[Prediction]:
        """Segment several images (any sizes) on the server; results in the order given.

        Same contract as ``Segmenter.predict_batch`` (``options`` or keywords naming
        :class:`PredictOptions` fields), except that the server serves image-only models
        (``text_features`` must be None) and returns results at the original size
        (``at_model_size=False``). The fields marked ``request=True`` (``tile``, ``overlap``,
        ``blend``) travel with every request as its parameters, which the server applies. Raises
        the first image's :class:`RemoteError` (:meth:`predict_each` returns them instead).
        """
        if text_features is not None:
            raise OptionsError("the served model takes images only (mrdl serve serves fusion 'distribution' models)")
        predictions = self.predict_each(images, options, **fields)
        for prediction in predictions:
            if isinstance(prediction, RemoteError):
                raise prediction
        return predictions  # type: ignore[return-value]

    def predict(self, image: np.ndarray, options: PredictOptions | None = None, *,
                text_features: np.ndarray | None = None, **fields) -> Prediction:
        """Segment one image on the server (HxWx3 RGB, gray, RGBA; uint8, uint16 or float)."""
        return self.predict_batch([image], PredictOptions.of(options, **fields), text_features=text_features)[0]

    def close(self) -> None:
        """Close the connection."""
        regions, self._regions = getattr(self, "_regions", None), None
        if regions is not None:
            regions.close()
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def __enter__(self) -> RemoteSegmenter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteSegmenter({self.url!r}, model={self.model!r})"
