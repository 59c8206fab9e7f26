"""The exported model behind a real Triton Inference Server: the library under ``mrdl serve``.

NVIDIA's PyTriton (``pip install 'mrdl[serve]'``, imported only when a server starts) runs
``tritonserver`` with its Python backend; every request is forwarded to this process, where
:class:`mrdl_runtime.Segmenter` (the same verified loading, preprocessing and postprocessing as
``mrdl predict``) segments it. Triton brings the HTTP and gRPC endpoints (KServe v2 protocol),
dynamic batching, several model instances, the health and readiness endpoints and Prometheus
metrics. Torch-free, like the rest of the runtime.

    from mrdl_runtime.serving import ServeOptions, Server
    server = Server("deploy/", ServeOptions(http_port=8000)).start()   # ... server.stop()

:class:`ServeOptions` holds the server's own settings and, whole, the :class:`LoadOptions` each
instance loads with and the :class:`PredictOptions` requests run with (a request's parameters
override the ``request=True`` fields: ``tile``, ``overlap``, ``blend``). :func:`run_server` is
``mrdl serve``: start, print the addresses and ``READY``, serve until SIGTERM / SIGINT, stop.
:class:`mrdl_runtime.server_process.ServerProcess` runs it in a child process.

The served model (default name ``mrdl``):

* input ``image``: UINT8 ``[-1, -1, 3]`` per request (raw RGB, any height and width), batched
  (a request may carry ``[b, H, W, 3]``); Triton's dynamic batcher joins requests of the same
  image size;
* output ``mask``: UINT8 ``[-1, -1]``, the mask at the image's own size (0/1, or the class index);
* output ``probabilities``: FP32 ``[n_classes, -1, -1]`` at the image's size, computed only for
  requests that ask for it (or ask for no output in particular, Triton's "all outputs");
* output ``tiled``: BOOL ``[1]``, whether the image was segmented in windows (docs/tiling.md);
* request parameters: the ``request=True`` fields of :class:`PredictOptions` spelled as on the
  command line (``tile`` auto / true / false, ``overlap``, ``blend``); absent: the server's.

Wrong dtypes and ranks are refused by Triton itself; an empty image, one with more than
``max_pixels`` pixels or a larger side than ``max_side`` gets an error response naming the
limit. SIGTERM or SIGINT stops the server cleanly: Triton stops accepting requests, the ones it
accepted are finished (up to ``exit_timeout`` seconds), then the process exits 0.

PyTriton's backend stub embeds a shared ``libpython`` of the serving Python's exact release:
:func:`pin_libpython` points it at this interpreter's own library (the dynamic loader would
otherwise hand it the system's, of another patch release under pyenv); a Python built without
one cannot host it, and :func:`hosting_problem` says so, with the fix, before anything starts.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import MrdlError
from .options import LoadOptions, OptionsBase, PredictOptions, check_fields, option
from .threads import default_threads

DEFAULT_MODEL_NAME = "mrdl"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
SERVE_MAX_PIXELS = 16_777_216  # 4096 x 4096: a server holds several requests at once
DEFAULT_MAX_SIDE = 8192
SERVE_PREDICT_DEFAULTS = PredictOptions(max_pixels=SERVE_MAX_PIXELS)
# Endpoints that change the server (or expose its files) need PyTriton's access token; statistics
# stay readable so that mrdl-bench (and people) can see the batch sizes the dynamic batcher formed.
RESTRICTED_ENDPOINTS = ["shared-memory", "model-repository", "trace", "logging"]


class ServeError(MrdlError, RuntimeError):
    """The server cannot start: no PyTriton, a Python that cannot host it, bad options."""


def libpython_path() -> Path | None:
    """This interpreter's own shared libpython (``libpython3.X.so.1.0``), or None when it has none."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    names = [sysconfig.get_config_var(key) for key in ("INSTSONAME", "LDLIBRARY")]
    folders = [sysconfig.get_config_var(key) for key in ("LIBDIR", "LIBPL")]
    for folder in filter(None, folders):
        for name in filter(None, names):
            if (Path(folder) / name).is_file():
                return (Path(folder) / name).resolve()
    return None


def hosting_problem() -> str | None:
    """Why this Python cannot host PyTriton's Python backend, or None when it can.

    The backend stub that ``tritonserver`` launches embeds ``libpython3.X.so.1.0`` and then imports
    this interpreter's standard library and site-packages, so it needs this interpreter's own
    shared library: a Python built without one (``--enable-shared``) cannot host it. (With one,
    :func:`pin_libpython` makes the stub load exactly it; left to the dynamic loader, the stub would
    take the system's libpython, of another patch release under pyenv, and fail when the model
    loads with ``'_thread.RLock' object has no attribute '_recursion_count'``.)
    """
    if libpython_path() is not None:
        return None
    version = ".".join(map(str, sys.version_info[:3]))
    return (f"{sys.executable} (Python {version}) has no shared libpython, which PyTriton's Python backend needs to "
            "run the model inside Triton; create the environment from a Python built with --enable-shared, e.g. "
            "Debian's: '/usr/bin/python3.11 -m venv .venv && .venv/bin/pip install -e \".[serve]\"' "
            "(`make install` does this when /usr/bin/python3.11 exists)")


def pin_libpython(folder: Path) -> Path:
    """Put a link to this interpreter's libpython in ``folder`` and ``folder`` first on LD_LIBRARY_PATH,
    which tritonserver and its backend stub inherit: the stub then loads this very release."""
    library = libpython_path()
    if library is None:
        raise ServeError(hosting_problem() or "no shared libpython")
    name = sysconfig.get_config_var("INSTSONAME") or library.name
    link = folder / name
    if not link.exists():
        link.symlink_to(library)
    paths = [str(folder)] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
    return link


def require_pytriton() -> None:
    """Raise :class:`ServeError` (naming the extra and the fix) unless this Python can serve with PyTriton."""
    problem = hosting_problem()
    if problem:
        raise ServeError(problem)
    try:
        import pytriton  # noqa: F401
    except ImportError as exc:
        raise ServeError(f"mrdl serve needs NVIDIA's PyTriton ({exc}); install the serve extra: "
                         "pip install 'mrdl[serve]'") from exc


def check_ports(options: ServeOptions) -> None:
    """Raise :class:`ServeError` when a port is taken (or repeated): PyTriton would otherwise talk to
    whichever server already listens there."""
    import socket

    ports = {"--http-port": options.http_port, "--grpc-port": options.grpc_port, "--metrics-port": options.metrics_port}
    if len(set(ports.values())) < len(ports):
        raise ServeError(f"the HTTP, gRPC and metrics ports must differ; got {ports}")
    for flag, port in ports.items():
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((options.host, port))
            except OSError as exc:
                raise ServeError(f"{options.host}:{port} ({flag}) is not free ({exc.strerror}); is another server "
                                 f"running there? Choose another {flag}") from exc


@dataclass(frozen=True)
class ServeOptions(OptionsBase):
    """How :class:`Server` serves a model directory (``mrdl serve``'s options): the server's own
    settings, and whole the options each instance loads with and requests run with."""

    host: str = option("127.0.0.1", "Address to listen on (0.0.0.0 exposes the server to the network).")
    http_port: int = option(DEFAULT_PORTS["http"], "HTTP port (KServe v2 protocol).", low=1, high=65535)
    grpc_port: int = option(DEFAULT_PORTS["grpc"], "gRPC port (KServe v2 protocol).", low=1, high=65535)
    metrics_port: int = option(DEFAULT_PORTS["metrics"], "Prometheus metrics at http://HOST:PORT/metrics.",
                               low=1, high=65535)
    model_name: str = option(DEFAULT_MODEL_NAME, "The name clients ask for.")
    max_batch: int | None = option(None, "Largest batch the dynamic batcher forms (default: the model "
                                   "directory's max_batch).", low=1)
    max_queue_delay_us: int = option(2000, "How long a request may wait for others to batch with, in microseconds.",
                                     low=0)
    instances: int = option(1, "Model instances (each its own runtime session, run in parallel; --threads 0 "
                            "shares the default among them).", low=1, high=64)
    max_side: int = option(DEFAULT_MAX_SIDE, "Refuse request images taller or wider than this.", low=1)
    exit_timeout: int = option(30, "On SIGTERM, seconds to finish the requests already accepted.", low=0)
    load: LoadOptions = option(LoadOptions(), "How each instance loads the model.", cli=False)
    predict: PredictOptions = option(SERVE_PREDICT_DEFAULTS, "What requests run with (their parameters "
                                     "override the request fields).", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)

    def to_json(self) -> str:
        """The options as JSON (:meth:`from_json` reads them back), e.g. for a server in a child process."""
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        values = json.loads(text)
        load, predict = values.pop("load"), values.pop("predict")
        if load.get("cache_dir") is not None:
            load["cache_dir"] = Path(load["cache_dir"])
        return cls(**values, load=LoadOptions(**load), predict=PredictOptions(**predict))


class BatchStats:
    """How many images each call of the model held: the batch sizes the dynamic batcher formed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sizes: dict[int, int] = {}

    def add(self, size: int) -> None:
        with self._lock:
            self.sizes[size] = self.sizes.get(size, 0) + 1


class _Instance:
    """One model instance: its own :class:`mrdl_runtime.Segmenter`, called by PyTriton with a list of requests."""

    def __init__(self, segmenter, options: ServeOptions, stats: BatchStats) -> None:
        self.segmenter, self.options, self.stats = segmenter, options, stats

    def _check(self, images: np.ndarray) -> None:
        max_pixels, max_side = self.options.predict.max_pixels, self.options.max_side
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"input 'image' must be UINT8 [batch, height, width, 3] (RGB); got "
                             f"{images.dtype} {list(images.shape)}")
        height, width = images.shape[1:3]
        if height == 0 or width == 0:
            raise ValueError(f"input 'image' is empty ({height}x{width}); expected at least 1x1 pixels")
        if max(height, width) > max_side or height * width > max_pixels:
            raise ValueError(f"input 'image' is {height}x{width}: over this server's limit of {max_pixels} "
                             f"pixels and {max_side} per side (mrdl serve --max-pixels / --max-side)")

    def __call__(self, requests):
        for request in requests:
            self._check(request["image"])
        self.stats.add(sum(len(request["image"]) for request in requests))
        groups: dict[PredictOptions, list[int]] = {}  # requests with the same options run together
        for index, request in enumerate(requests):
            groups.setdefault(self.options.predict.from_request(request.parameters), []).append(index)
        responses: list = [None] * len(requests)
        for options, members in groups.items():
            wants = [_wants_probabilities(requests[i].requested_output_names) for i in members]
            images = [image for i in members for image in requests[i]["image"]]
            predictions = self.segmenter.predict_batch(images, options.with_fields(with_probabilities=any(wants)))
            start = 0
            for i, want in zip(members, wants):
                chunk = predictions[start:start + len(requests[i]["image"])]
                start += len(chunk)
                response = {"mask": np.stack([p.mask for p in chunk]).astype(np.uint8, copy=False),
                            "tiled": np.array([[p.tiled] for p in chunk], dtype=bool)}
                if want:
                    response["probabilities"] = np.stack([p.probabilities for p in chunk]).astype(np.float32,
                                                                                                   copy=False)
                responses[i] = response
        return responses


def _wants_probabilities(requested: list[str] | None) -> bool:
    """Triton's rule: a request that names no output asks for all of them."""
    return not requested or "probabilities" in requested


class Server:
    """A PyTriton server of one model directory; ``start()`` / ``stop()``, or ``serve_forever()``."""

    def __init__(self, model_dir: str | Path, options: ServeOptions | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.options = options or ServeOptions()
        self.stats = BatchStats()
        self.segmenters: list = []
        self.triton = None
        self._libpython: tempfile.TemporaryDirectory | None = None
        self._stop = threading.Event()

    def _load(self):
        from .manifest import load_manifest
        from .segmenter import Segmenter

        options = self.options
        manifest = load_manifest(self.model_dir)
        if manifest.text_input is not None:
            raise ServeError(f"{self.model_dir}: mrdl serve serves image-only models (fusion 'distribution'); "
                             f"this one (fusion {manifest.fusion!r}) needs text features")
        max_batch = options.max_batch or manifest.max_batch
        if not 1 <= max_batch <= manifest.max_batch:
            raise ServeError(f"--max-batch must be in [1, {manifest.max_batch}] (the model directory's max_batch); "
                             f"got {max_batch}")
        load = options.load  # --threads 0: the runtime's default, shared among the instances
        load = load.with_fields(threads=load.threads or max(1, default_threads() // options.instances))
        for _ in range(options.instances):
            self.segmenters.append(Segmenter.load(self.model_dir, load))
        return manifest, max_batch

    def start(self) -> Server:
        """Load the model (one Segmenter per instance), start tritonserver and wait until the model is ready."""
        require_pytriton()
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

        options = self.options
        if options.instances < 1:
            raise ServeError(f"--instances must be >= 1, got {options.instances}")
        check_ports(options)
        manifest, max_batch = self._load()
        self._libpython = tempfile.TemporaryDirectory(prefix="mrdl-serve-libpython-")
        pin_libpython(Path(self._libpython.name))
        # Dispatch as soon as a full batch is queued; otherwise after max_queue_delay_us with what is there.
        preferred = [max_batch]
        config = TritonConfig(http_address=options.host, http_port=options.http_port, grpc_address=options.host,
                              grpc_port=options.grpc_port, metrics_address=options.host,
                              metrics_port=options.metrics_port, allow_metrics=True, allow_cpu_metrics=True,
                              allow_gpu_metrics=False, exit_timeout_secs=options.exit_timeout, log_verbose=0)
        self.triton = Triton(config=config,
                             security_config=TritonSecurityConfig(restricted_endpoints=list(RESTRICTED_ENDPOINTS)))
        self.triton.bind(
            model_name=options.model_name,
            infer_func=[_Instance(segmenter, options, self.stats) for segmenter in self.segmenters],
            inputs=[Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3))],
            outputs=[Tensor(name="mask", dtype=np.uint8, shape=(-1, -1)),
                     Tensor(name="tiled", dtype=np.bool_, shape=(1,)),
                     Tensor(name="probabilities", dtype=np.float32, shape=(manifest.n_classes, -1, -1))],
            config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(
                max_queue_delay_microseconds=options.max_queue_delay_us, preferred_batch_size=preferred)),
            strict=False)
        self.triton.run()
        return self

    @property
    def urls(self) -> dict[str, str]:
        """The HTTP, gRPC and metrics addresses (``host:port``; metrics as a URL)."""
        o = self.options
        return {"http": f"{o.host}:{o.http_port}", "grpc": f"{o.host}:{o.grpc_port}",
                "metrics": f"http://{o.host}:{o.metrics_port}/metrics"}

    def request_stop(self, *_: object) -> None:
        """Ask :meth:`serve_forever` to stop (a signal handler: it only sets a flag)."""
        self._stop.set()

    def serve_forever(self, poll_s: float = 0.5) -> None:
        """Serve until :meth:`request_stop` (SIGTERM / SIGINT) or until tritonserver dies; then stop."""
        try:
            while not self._stop.wait(poll_s):
                if not self.triton.is_alive():
                    raise ServeError("tritonserver stopped unexpectedly (see its log above)")
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting requests, finish the accepted ones, stop tritonserver and release the model."""
        if self.triton is not None:
            self.triton.stop()  # SIGINT to tritonserver: refuses new requests, waits for in-flight ones
            self.triton = None
        for segmenter in self.segmenters:
            segmenter.close()
        self.segmenters = []
        if self._libpython is not None:
            self._libpython.cleanup()
            self._libpython = None


def run_server(model_dir: str | Path, options: ServeOptions | None = None, *,
               echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> dict[int, int]:
    """``mrdl serve``: start a :class:`Server`, say where it listens (then ``READY``), serve until SIGTERM or
    SIGINT, stop; returns the batch sizes formed (images per model call: calls). Never leaves a tritonserver
    behind; raises :class:`ServeError` (and the runtime's load errors) when the server cannot start."""
    server = Server(model_dir, options)
    previous = {sig: signal.signal(sig, server.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        started = time.perf_counter()
        server.start()
        urls, first = server.urls, server.segmenters[0]
        echo(f"serving {model_dir} as model {server.options.model_name!r} ({first.precision}, {first.backend}, "
             f"{server.options.instances} instance(s)) in {time.perf_counter() - started:.1f} s")
        echo(f"  HTTP {urls['http']}  gRPC {urls['grpc']}  metrics {urls['metrics']}")
        echo(f"  ready: curl http://{urls['http']}/v2/health/ready ; stop with SIGTERM or Ctrl-C")
        echo("READY")
        server.serve_forever()
    except BaseException:
        server.stop()  # never leave a tritonserver behind
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sizes = ", ".join(f"{size}: {count}" for size, count in sorted(server.stats.sizes.items())) or "none"
    echo(f"stopped; batches formed (images per model call: calls): {sizes}")
    return dict(server.stats.sizes)


def _child_main(arguments: list[str]) -> int:
    """``python -m mrdl_runtime.serving MODEL_DIR OPTIONS_JSON``: :func:`run_server` in a child process
    (:class:`mrdl_runtime.server_process.ServerProcess`); an error is one ``Error: ...`` line and exit 1."""
    model_dir, options = arguments
    try:
        run_server(model_dir, ServeOptions.from_json(options))
    except MrdlError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
