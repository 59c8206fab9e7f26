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

Needs ``tritonclient`` (``pip install 'mrdl[serve]'``), imported when a RemoteSegmenter is made.
"""

from __future__ import annotations

import time
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np

from .errors import BackendUnavailableError, MrdlError, OptionsError
from .imaging import check_image
from .options import PredictOptions
from .segmenter import Prediction

DEFAULT_MODEL = "mrdl"
PROTOCOLS = ("http", "grpc")


class RemoteError(MrdlError, RuntimeError):
    """The server could not be reached, does not serve the model, or answered a request with an error."""


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
    """The server's error text; of a Python traceback (PyTriton's), its first and last lines."""
    text = str(exc.message() if hasattr(exc, "message") and callable(exc.message) else exc) or repr(exc)
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 2 and any("Traceback" in line for line in lines):
        return f"{lines[0]} ... {lines[-1].strip()}"
    return text


class RemoteSegmenter:
    """A model served by Triton Inference Server, used like an in-process ``Segmenter``.

    ``url``: ``http://HOST:PORT`` or ``grpc://HOST:PORT`` (no scheme: HTTP). ``model``: the served
    model's name (``mrdl serve --model-name``). ``timeout``: seconds for connecting and for each
    call. ``concurrency``: requests in flight at once (HTTP connection pool size). Raises
    :class:`RemoteError` when the server is not reachable or the model is not ready.
    """

    def __init__(self, url: str, *, model: str = DEFAULT_MODEL, protocol: str | None = None,
                 timeout: float = 60.0, concurrency: int = 8) -> None:
        self.protocol, self.address = parse_url(url, protocol)
        self.url, self.model, self.timeout = f"{self.protocol}://{self.address}", model, float(timeout)
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
            config = self._client.get_model_config(self.model) if ready else None
        except (self._server_error, OSError, ConnectionError):
            ready, config = False, None
        if not ready:
            self.close()
            raise RemoteError(f"the server at {self.url} has no ready model {self.model!r} "
                              f"(mrdl serve --model-name names it)")
        config = config.get("config", config) if isinstance(config, dict) else config.config
        self.max_batch = int(config["max_batch_size"] if isinstance(config, dict) else config.max_batch_size) or 1
        outputs = config["output"] if isinstance(config, dict) else config.output
        dims = [list(o["dims"] if isinstance(o, dict) else o.dims) for o in outputs
                if (o["name"] if isinstance(o, dict) else o.name) == "probabilities"]
        self.n_classes = int(dims[0][0]) if dims and dims[0] else None  # None: not an mrdl serve model
        self.count = 0  # requests answered
        self._seconds = 0.0

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

    def _send_all(self, groups: list[np.ndarray], with_probabilities: bool, parameters: dict) -> list:
        """Send every group at once; the results in order (each with ``as_numpy``)."""
        results: list = [None] * len(groups)
        parameters = parameters or None
        try:
            if self.protocol == "http":
                pending = []
                for group in groups:
                    inputs, outputs = self._request(group, with_probabilities)
                    pending.append(self._client.async_infer(self.model, inputs, outputs=outputs,
                                                            parameters=parameters))
                return [request.get_result() for request in pending]
            import queue

            done: queue.Queue = queue.Queue()
            for index, group in enumerate(groups):
                inputs, outputs = self._request(group, with_probabilities)
                self._client.async_infer(self.model, inputs,
                                         lambda result, error, i=index: done.put((i, result, error)),
                                         outputs=outputs, client_timeout=self.timeout, parameters=parameters)
            for _ in groups:
                index, result, error = done.get(timeout=self.timeout + 5)
                if error is not None:
                    raise error
                results[index] = result
            return results
        except self._server_error as exc:
            raise RemoteError(f"{self.url} model {self.model!r}: {_server_message(exc)}") from exc
        except (OSError, ConnectionError) as exc:
            raise RemoteError(f"{self.url}: connection failed: {exc}") from exc

    def predict_batch(self, images: Sequence[np.ndarray], options: PredictOptions | None = None, *,
                      text_features: np.ndarray | None = None, **fields) -> list[Prediction]:
        """Segment several images (any sizes) on the server; results in the order given.

        Same contract as ``Segmenter.predict_batch`` (``options`` or keywords naming
        :class:`PredictOptions` fields), except that the server serves image-only models
        (``text_features`` must be None) and returns results at the original size
        (``at_model_size=False``). The fields marked ``request=True`` (``tile``, ``overlap``,
        ``blend``) travel with every request as its parameters, which the server applies.
        """
        options = PredictOptions.of(options, **fields)
        if text_features is not None:
            raise OptionsError("the served model takes images only (mrdl serve serves fusion 'distribution' models)")
        if options.at_model_size:
            raise OptionsError("the server returns masks at each image's original size; at_model_size is "
                               "in-process only")
        with_probabilities = options.with_probabilities
        if len(images) == 0:
            return []
        rgb = [check_image(image, channel_order=options.channel_order) for image in images]
        order: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(rgb):
            order.setdefault(image.shape, []).append(index)
        plan = [indices[start:start + self.max_batch] for indices in order.values()
                for start in range(0, len(indices), self.max_batch)]
        start = time.perf_counter()
        results = self._send_all([np.stack([rgb[i] for i in chunk]) for chunk in plan], with_probabilities,
                                 options.request_parameters())
        self.count += len(plan)
        self._seconds += (time.perf_counter() - start) * len(plan)  # the requests ran concurrently
        predictions: list[Prediction | None] = [None] * len(rgb)
        for chunk, result in zip(plan, results):
            masks = result.as_numpy("mask")  # read-only views of the response: copied, as Segmenter's are writable
            probabilities = result.as_numpy("probabilities") if with_probabilities else None
            masks = None if masks is None else np.array(masks)
            probabilities = None if probabilities is None else np.array(probabilities)
            if masks is None or masks.shape[0] != len(chunk) or (with_probabilities and probabilities is None):
                raise RemoteError(f"{self.url} model {self.model!r} answered without the expected outputs "
                                  "(mask [b, H, W] uint8, probabilities [b, C, H, W]); is it served by mrdl serve?")
            tiled = result.as_numpy("tiled")
            for row, index in enumerate(chunk):
                extra = {} if tiled is None else {"tiled": bool(tiled[row].any())}
                predictions[index] = Prediction(masks[row], None if probabilities is None else probabilities[row],
                                                **extra)
        return predictions  # type: ignore[return-value]

    def predict(self, image: np.ndarray, options: PredictOptions | None = None, *,
                text_features: np.ndarray | None = None, **fields) -> Prediction:
        """Segment one image on the server (HxWx3 RGB, gray, RGBA; uint8, uint16 or float)."""
        return self.predict_batch([image], PredictOptions.of(options, **fields), text_features=text_features)[0]

    def close(self) -> None:
        """Close the connection."""
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def __enter__(self) -> RemoteSegmenter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteSegmenter({self.url!r}, model={self.model!r})"
