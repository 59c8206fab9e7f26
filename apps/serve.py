"""``mrdl serve MODEL_DIR``: the exported model behind a real Triton Inference Server.

NVIDIA's PyTriton (``pip install 'mrdl[serve]'``) starts ``tritonserver`` with its Python backend;
every request is forwarded to this process, where ``mrdl_runtime.Segmenter`` (the same verified
loading, preprocessing and postprocessing as ``mrdl predict``) segments it. Triton brings the
HTTP and gRPC endpoints (KServe v2 protocol), dynamic batching, several model instances, the
health and readiness endpoints and Prometheus metrics.

The served model (default name ``mrdl``):

* input ``image``: UINT8 ``[-1, -1, 3]`` per request (raw RGB, any height and width), batched
  (a request may carry ``[b, H, W, 3]``); Triton's dynamic batcher joins requests of the same
  image size;
* output ``mask``: UINT8 ``[-1, -1]``, the mask at the image's own size (0/1, or the class index);
* output ``probabilities``: FP32 ``[n_classes, -1, -1]`` at the image's size, computed only for
  requests that ask for it (or ask for no output in particular, Triton's "all outputs");
* output ``tiled``: BOOL ``[1]``, whether the image was segmented in windows (docs/tiling.md);
* request parameters ``tile`` (auto, true, false), ``overlap`` and ``blend``: the runtime's tiling
  options (absent: its defaults).

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

import logging
import os
import signal
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

logger = logging.getLogger("mrdl_apps.serve")

DEFAULT_MODEL_NAME = "mrdl"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
DEFAULT_MAX_PIXELS = 16_777_216  # 4096 x 4096
DEFAULT_MAX_SIDE = 8192
# Endpoints that change the server (or expose its files) need PyTriton's access token; statistics
# stay readable so that mrdl-bench (and people) can see the batch sizes the dynamic batcher formed.
RESTRICTED_ENDPOINTS = ["shared-memory", "model-repository", "trace", "logging"]


class ServeError(RuntimeError):
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


def check_ports(options: "ServeOptions") -> None:
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
class ServeOptions:
    """How :class:`Server` serves a model directory (``mrdl serve``'s options)."""

    host: str = "127.0.0.1"
    http_port: int = DEFAULT_PORTS["http"]
    grpc_port: int = DEFAULT_PORTS["grpc"]
    metrics_port: int = DEFAULT_PORTS["metrics"]
    model_name: str = DEFAULT_MODEL_NAME
    precision: str = "fp32"
    backend: str = "auto"
    max_batch: int | None = None  # default: the manifest's max_batch
    max_queue_delay_us: int = 2000
    instances: int = 1
    threads: int = 0  # intra-op threads per instance; 0: cores / instances
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = DEFAULT_MAX_SIDE
    verify: bool = True
    exit_timeout: int = 30


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
        options = self.options
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"input 'image' must be UINT8 [batch, height, width, 3] (RGB); got "
                             f"{images.dtype} {list(images.shape)}")
        height, width = images.shape[1:3]
        if height == 0 or width == 0:
            raise ValueError(f"input 'image' is empty ({height}x{width}); expected at least 1x1 pixels")
        if max(height, width) > options.max_side or height * width > options.max_pixels:
            raise ValueError(f"input 'image' is {height}x{width}: over this server's limit of {options.max_pixels} "
                             f"pixels and {options.max_side} per side (mrdl serve --max-pixels / --max-side)")

    def __call__(self, requests):
        for request in requests:
            self._check(request["image"])
        self.stats.add(sum(len(request["image"]) for request in requests))
        groups: dict[tuple, list[int]] = {}  # requests with the same tiling parameters run together
        for index, request in enumerate(requests):
            groups.setdefault(_tiling_options(request.parameters), []).append(index)
        responses: list = [None] * len(requests)
        for key, members in groups.items():
            wants = [_wants_probabilities(requests[i].requested_output_names) for i in members]
            images = [image for i in members for image in requests[i]["image"]]
            predictions = self.segmenter.predict_batch(images, with_probabilities=any(wants), **dict(key))
            start = 0
            for i, want in zip(members, wants):
                chunk = predictions[start:start + len(requests[i]["image"])]
                start += len(chunk)
                response = {"mask": np.stack([p.mask for p in chunk]).astype(np.uint8, copy=False),
                            "tiled": np.array([[getattr(p, "tiled", False)] for p in chunk], dtype=bool)}
                if want:
                    response["probabilities"] = np.stack([p.probabilities for p in chunk]).astype(np.float32,
                                                                                                   copy=False)
                responses[i] = response
        return responses


def _tiling_options(parameters: dict | None) -> tuple:
    """The request parameters ``tile`` ("auto", "true", "false"), ``overlap`` and ``blend`` as
    ``Segmenter.predict_batch`` keywords (a hashable tuple); absent ones keep the runtime's defaults."""
    parameters = parameters or {}
    options = []
    if "tile" in parameters:
        tile = str(parameters["tile"]).lower()
        if tile not in ("auto", "true", "false"):
            raise ValueError(f"request parameter 'tile' must be auto, true or false; got {parameters['tile']!r}")
        options.append(("tile", {"auto": "auto", "true": True, "false": False}[tile]))
    if "overlap" in parameters:
        try:
            options.append(("overlap", float(parameters["overlap"])))
        except (TypeError, ValueError):
            raise ValueError(f"request parameter 'overlap' must be a number; got {parameters['overlap']!r}") from None
    if "blend" in parameters:
        options.append(("blend", str(parameters["blend"])))
    return tuple(options)


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
        from mrdl_runtime import Segmenter
        from mrdl_runtime.manifest import load_manifest
        from mrdl_runtime.threads import default_threads

        options = self.options
        manifest = load_manifest(self.model_dir)
        if manifest.text_input is not None:
            raise ServeError(f"{self.model_dir}: mrdl serve serves image-only models (fusion 'distribution'); "
                             f"this one (fusion {manifest.fusion!r}) needs text features")
        max_batch = options.max_batch or manifest.max_batch
        if not 1 <= max_batch <= manifest.max_batch:
            raise ServeError(f"--max-batch must be in [1, {manifest.max_batch}] (the model directory's max_batch); "
                             f"got {max_batch}")
        threads = options.threads or max(1, default_threads() // options.instances)
        for _ in range(options.instances):
            self.segmenters.append(Segmenter.load(self.model_dir, backend=options.backend, precision=options.precision,
                                                  verify=options.verify, intra_op_threads=threads))
        return manifest, max_batch

    def start(self) -> "Server":
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


@click.command("serve")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0 exposes the server to the network)")
@click.option("--http-port", default=DEFAULT_PORTS["http"], show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=DEFAULT_PORTS["grpc"], show_default=True, type=click.IntRange(1, 65535))
@click.option("--metrics-port", default=DEFAULT_PORTS["metrics"], show_default=True, type=click.IntRange(1, 65535),
              help="Prometheus metrics at http://HOST:PORT/metrics")
@click.option("--model-name", default=DEFAULT_MODEL_NAME, show_default=True, help="the name clients ask for")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "int8", "fp16"]),
              help="which exported model to serve")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"]))
@click.option("--max-batch", default=None, type=click.IntRange(min=1),
              help="largest batch the dynamic batcher forms (default: the model directory's max_batch)")
@click.option("--max-queue-delay-us", default=2000, show_default=True, type=click.IntRange(min=0),
              help="how long a request may wait for others to batch with, in microseconds")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1, 64),
              help="model instances (each its own runtime session, run in parallel)")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0),
              help="intra-op threads per instance (0: cores / instances)")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1),
              help="refuse images with more pixels than this")
@click.option("--max-side", default=DEFAULT_MAX_SIDE, show_default=True, type=click.IntRange(min=1),
              help="refuse images taller or wider than this")
@click.option("--exit-timeout", default=30, show_default=True, type=click.IntRange(min=0),
              help="on SIGTERM, seconds to finish the requests already accepted")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="check the model file's SHA-256 against model.json before loading it")
def serve(model_dir: Path, host: str, http_port: int, grpc_port: int, metrics_port: int, model_name: str,
          precision: str, backend: str, max_batch: int | None, max_queue_delay_us: int, instances: int, threads: int,
          max_pixels: int, max_side: int, exit_timeout: int, verify: bool) -> None:
    """Serve the model exported to MODEL_DIR with Triton Inference Server (HTTP, gRPC, metrics) until SIGTERM."""
    from mrdl_runtime import BackendUnavailableError, ManifestError

    options = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                           model_name=model_name, precision=precision, backend=backend, max_batch=max_batch,
                           max_queue_delay_us=max_queue_delay_us, instances=instances, threads=threads,
                           max_pixels=max_pixels, max_side=max_side, verify=verify, exit_timeout=exit_timeout)
    server = Server(model_dir, options)
    previous = {sig: signal.signal(sig, server.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        started = time.perf_counter()
        server.start()
        urls = server.urls
        click.echo(f"serving {model_dir} as model {model_name!r} ({server.segmenters[0].precision}, "
                   f"{server.segmenters[0].backend}, {instances} instance(s)) in {time.perf_counter() - started:.1f} s",
                   err=True)
        click.echo(f"  HTTP {urls['http']}  gRPC {urls['grpc']}  metrics {urls['metrics']}", err=True)
        click.echo(f"  ready: curl http://{urls['http']}/v2/health/ready ; stop with SIGTERM or Ctrl-C", err=True)
        click.echo("READY", err=True)
        server.serve_forever()
    except (ServeError, ManifestError, BackendUnavailableError) as exc:
        server.stop()
        raise click.ClickException(str(exc)) from exc
    except BaseException:
        server.stop()  # never leave a tritonserver behind
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sizes = ", ".join(f"{size}: {count}" for size, count in sorted(server.stats.sizes.items())) or "none"
    click.echo(f"stopped; batches formed (images per model call: calls): {sizes}", err=True)
