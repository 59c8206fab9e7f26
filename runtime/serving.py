"""The exported model behind a real Triton Inference Server: the library under ``mrdl serve``.

``tritonserver`` (the binary NVIDIA's PyTriton wheel ships, ``pip install 'mrdl[serve]'``) serves a
repository written into a temporary folder: one front model (:mod:`mrdl_runtime.triton_model`) run
by Triton's Python backend, each instance with its own :class:`mrdl_runtime.Segmenter` (the same
verified loading, preprocessing, tiling and postprocessing as ``mrdl predict``), the same model
``mrdl triton-repo`` writes for a stock server. Triton brings the HTTP and gRPC endpoints (KServe
v2 protocol), dynamic batching, several model instances, the health and readiness endpoints and
Prometheus metrics. Torch-free, like the rest of the runtime.

    from mrdl_runtime.serving import ServeOptions, Server
    server = Server("deploy/", ServeOptions(http_port=8000)).start()   # ... server.stop()

:class:`ServeOptions` holds the server's own settings and limits and, whole, the
:class:`LoadOptions` each instance loads with and the :class:`PredictOptions` requests run with (a
request's parameters override the ``request=True`` fields: ``tile``, ``overlap``, ``blend``).
:func:`run_server` is ``mrdl serve``: start, print the addresses and ``READY``, serve until
SIGTERM / SIGINT, stop. :class:`mrdl_runtime.server_process.ServerProcess` runs it in a child process.

The request contract, and how each request of a dynamic batch is checked and answered by itself,
is :mod:`mrdl_runtime.triton_model`'s. Work and memory are bounded by the limits of
:class:`ServeOptions`: pixels and side per request (``max_pixels``, ``max_side``), tiled windows
per request (``max_windows``), request pixels worked on at once (``max_pixels_in_flight``) and
requests waiting (``max_queue``; one more is refused with UNAVAILABLE, HTTP 503). SIGTERM or
SIGINT stops the server cleanly: Triton stops accepting requests, the ones it accepted are
finished (up to ``exit_timeout`` seconds), then the process exits 0.

The Python backend's stub embeds a shared ``libpython`` of the serving Python's exact release:
:func:`pin_libpython` points it at this interpreter's own library (the dynamic loader would
otherwise hand it the system's, of another patch release under pyenv); a Python built without
one cannot host it, and :func:`hosting_problem` says so, with the fix, before anything starts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import children
from .errors import MrdlError, OptionsError
from .front_model import model_name_problem, write_front_model
from .options import LoadOptions, OptionsBase, PredictOptions, check_fields, option
from .remote import DEFAULT_MODEL

DEFAULT_MODEL_NAME = DEFAULT_MODEL  # the name RemoteSegmenter asks for by default
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
SERVE_MAX_PIXELS = 16_777_216  # 4096 x 4096: a server holds several requests at once
DEFAULT_MAX_SIDE = 8192
SERVE_PREDICT_DEFAULTS = PredictOptions(max_pixels=SERVE_MAX_PIXELS)
START_TIMEOUT_S = 180
PYTHON_SHM_BYTES = 16 * 1024 * 1024  # the Python backend's shared memory with each instance: start and growth step
# glibc malloc in tritonserver and the stubs: buffers of 1 MiB and more are mapped apart and returned to the
# system when freed (the default threshold rises up to 32 MiB with use, after which a freed request's pixels stay
# in the heap), and the heap is trimmed above 16 MiB free.
MALLOC_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 20)}
# Endpoints that change the server (or expose its files) need a token no client is given; statistics
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
    model_name: str = option(DEFAULT_MODEL_NAME, "The name clients ask for (the model's folder in the server's "
                             "repository: letters, digits, '_', '.', '-', not starting with '.').")
    max_batch: int | None = option(None, "Largest batch the dynamic batcher forms (default: the model "
                                   "directory's max_batch).", low=1)
    max_queue_delay_us: int | None = option(None, "How long a request may wait for others to batch with, in "
                                            "microseconds (default: a tenth of one image's inference, timed when the "
                                            "server starts, within 0.5-50 ms).", low=0)
    instances: int = option(1, "Model instances (each its own runtime session, run in parallel; --threads 0 "
                            "shares the default among them).", low=1, high=64)
    max_side: int = option(DEFAULT_MAX_SIDE, "Refuse request images taller or wider than this.", low=1)
    max_windows: int = option(4096, "Refuse a tiled request that plans more windows than this (all its images "
                              "together; an overlap near 1 multiplies them).", low=1)
    max_pixels_in_flight: int | None = option(None, "Request pixels the server works on at once, shared among the "
                                              "instances: a larger dynamic batch runs in parts, each answered "
                                              "before the next runs (default: one largest request, --max-pixels, "
                                              "per instance).", low=1)
    max_queue: int = option(2, "Requests that may wait for an instance; one more is refused with UNAVAILABLE "
                            "(HTTP 503), which clients retry until their timeout (each waiting 4096 x 4096 "
                            "request holds 48 MiB).", low=1)
    exit_timeout: int = option(30, "On SIGTERM, seconds to finish the requests already accepted.", low=0)
    load: LoadOptions = option(LoadOptions(), "How each instance loads the model.", cli=False)
    predict: PredictOptions = option(SERVE_PREDICT_DEFAULTS, "What requests run with (their parameters "
                                     "override the request fields).", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)
        problem = model_name_problem(self.model_name)
        if problem is not None:
            raise OptionsError(f"--model-name: {problem}")
        in_flight = self.max_pixels_in_flight
        if in_flight is not None and in_flight // self.instances < self.predict.max_pixels:
            raise OptionsError(f"--max-pixels-in-flight {self.max_pixels_in_flight} must hold one largest request "
                               f"({self.predict.max_pixels} pixels, --max-pixels) per instance ({self.instances})")

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


AUTO_QUEUE_DELAY_FRACTION = 0.1  # of one image's inference: the batcher's default wait (auto_queue_delay_us)
AUTO_QUEUE_DELAY_S = (0.0005, 0.05)  # its bounds, seconds


def tritonserver_files() -> dict[str, Path]:
    """The ``tritonserver`` binary, its libraries and the Python backend (with the stub built for this Python)
    that NVIDIA's PyTriton wheel ships; :class:`ServeError` names the extra when it is missing."""
    problem = hosting_problem()
    if problem:
        raise ServeError(problem)
    # Found, not imported: importing pytriton loads gRPC, whose fork handlers this process need not carry.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServeError("mrdl serve needs the tritonserver that NVIDIA's PyTriton ships (no module named "
                         "'pytriton'); install the serve extra: pip install 'mrdl[serve]'")
    root = Path(next(iter(spec.submodule_search_locations)))
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    files = {"binary": root / "tritonserver" / "bin" / "tritonserver",
             "backend": root / "tritonserver" / "backends" / "python",
             "stub": root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
             "libs": root.parent / "nvidia_pytriton.libs"}
    if not (root / "tritonserver" / "external_libs").is_dir() and not files["libs"].is_dir():
        raise ServeError(f"{root.parent / 'nvidia_pytriton.libs'} is missing: reinstall the serve extra")
    if (root / "tritonserver" / "external_libs").is_dir():
        files["libs"] = root / "tritonserver" / "external_libs"
    for key in ("binary", "stub"):
        if not files[key].is_file():
            raise ServeError(f"{files[key]} is missing (PyTriton {_pytriton_version()} has no "
                             f"tritonserver {key} for Python {version}): reinstall the serve extra")
    return files


def _pytriton_version() -> str:
    try:
        return importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def server_environment(folder: Path, files: dict[str, Path]) -> tuple[Path, dict[str, str]]:
    """A backend folder for ``tritonserver --backend-directory`` (the Python backend with this Python's stub) and
    the environment to run it in: this interpreter's libpython first on LD_LIBRARY_PATH (:func:`pin_libpython`),
    PyTriton's libraries next, this interpreter's folder first on PATH so the stub's embedded Python finds this
    environment's site-packages (and mrdl_runtime)."""
    backends = folder / "backends"
    python = backends / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in files["backend"].iterdir():
        if item.is_file():
            (python / item.name).symlink_to(item)
    (python / "triton_python_backend_stub").symlink_to(files["stub"])
    (folder / "lib").mkdir(exist_ok=True)
    environment = dict(os.environ)
    saved = os.environ.get("LD_LIBRARY_PATH")
    try:
        pin_libpython(folder / "lib")
        libraries = os.environ["LD_LIBRARY_PATH"].split(os.pathsep)
    finally:
        if saved is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = saved
    environment["LD_LIBRARY_PATH"] = os.pathsep.join([libraries[0], str(files["libs"]), *libraries[1:]])
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
    environment.update(MALLOC_ENVIRONMENT)
    return backends, environment


def tritonserver_command(files: dict[str, Path], repository: Path, backends: Path, options: ServeOptions) -> list[str]:
    """The ``tritonserver`` command line serving ``repository`` as ``options`` say (addresses, ports, exit
    timeout); the endpoints that change the server need an access token no client is given."""
    token = os.urandom(16).hex()
    # Shared memory lets a client on this host pass images through /dev/shm; only a loopback server allows it.
    loopback = options.host in ("127.0.0.1", "::1", "localhost") or options.host.startswith("127.")
    restricted = ",".join(e for e in RESTRICTED_ENDPOINTS if not (loopback and e == "shared-memory"))
    return [str(files["binary"]), f"--model-repository={repository}", f"--backend-directory={backends}",
            f"--http-address={options.host}", f"--http-port={options.http_port}",
            f"--grpc-address={options.host}", f"--grpc-port={options.grpc_port}",
            f"--metrics-address={options.host}", f"--metrics-port={options.metrics_port}",
            "--allow-gpu-metrics=false", "--allow-cpu-metrics=true", f"--exit-timeout-secs={options.exit_timeout}",
            "--log-verbose=0", "--strict-readiness=true",
            f"--http-restricted-api={restricted}:mrdl-admin={token}",
            f"--grpc-restricted-protocol={restricted}:mrdl-admin={token}",
            f"--backend-config=python,shm-default-byte-size={PYTHON_SHM_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={PYTHON_SHM_BYTES}",
            # gRPC request/response objects kept for reuse keep their buffers (a 4096 x 4096 request is 48 MiB,
            # its probabilities 128 MiB): keep none, so each request's buffers are freed with it.
            "--grpc-infer-allocation-pool-size=0", "--pinned-memory-pool-byte-size=0"]


def release_freed_memory() -> None:
    """Collect garbage, then return the C heap's free memory to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Also what ``mrdl-bench`` calls before each RSS baseline."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()

    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    try:
        getattr(ctypes.CDLL(name), "malloc_trim")(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc


def instance_threads(threads: int, instances: int) -> int:
    """Threads of each of ``instances`` model instances: ``threads`` (``--threads``) when given, else the
    physical cores shared among them. What each instance loads with
    (:meth:`mrdl_runtime.triton_model.TritonPythonModel.initialize`) and what the model check times."""
    from .threads import default_threads

    return threads or max(1, default_threads() // instances)


def auto_queue_delay_us(segmenter, *, fraction: float = AUTO_QUEUE_DELAY_FRACTION) -> int:
    """The dynamic batcher's wait when ``--max-queue-delay-us`` is not given: ``fraction`` of one image's
    inference (median of three, after a warm-up), within [0.5 ms, 50 ms].

    Clients that wait for their answer before sending again (a closed loop) come back a few milliseconds
    apart; with a wait far shorter than that, the first one back runs alone and the rest queue behind it,
    and the instance alternates between a lone image and the others. Four such clients on a ``small`` model
    (about 100 ms per image on 2 cores) reached 0.68-0.90x the in-process throughput with 2 ms and 0.93-0.99x
    with this wait (docs/measurements.md); a tenth of the inference costs a lone client that much latency at
    most.
    """
    image = np.zeros((1, *segmenter.manifest.image_input.fixed_shape), np.float32)
    timings = []
    for _ in range(4):
        started = time.perf_counter()
        segmenter.infer(image)  # the manifest's input and output names, as every request runs
        timings.append(time.perf_counter() - started)
    delay = fraction * float(np.median(timings[1:]))
    return int(round(min(max(delay, AUTO_QUEUE_DELAY_S[0]), AUTO_QUEUE_DELAY_S[1]) * 1e6))


class Server:
    """``tritonserver`` serving one model directory through the front model (:mod:`mrdl_runtime.triton_model`);
    ``start()`` / ``stop()``, or ``serve_forever()``."""

    def __init__(self, model_dir: str | Path, options: ServeOptions | None = None) -> None:
        self.model_dir = Path(model_dir).resolve()
        self.options = options or ServeOptions()
        self.process: subprocess.Popen | None = None
        self.checked = None  # (precision, backend) of the model as this process loaded it to check it
        self.max_batch: int | None = None  # the dynamic batcher's, once checked
        self.batch_sizes: dict[int, int] = {}
        self._folder: tempfile.TemporaryDirectory | None = None
        self._stop = threading.Event()

    def _check_model(self):
        """Load the model once here, so that a bad directory is one clear error before any server starts."""
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
        self.max_batch = max_batch
        load = options.load.with_fields(threads=instance_threads(options.load.threads, options.instances))
        with Segmenter.load(self.model_dir, load) as segmenter:
            self.checked = (segmenter.precision, segmenter.backend)
            if options.max_queue_delay_us is None:
                self.options = options.with_fields(max_queue_delay_us=auto_queue_delay_us(segmenter))
        release_freed_memory()  # this process only waits from here on: hand the check's buffers back
        return manifest

    def start(self, timeout: float = START_TIMEOUT_S) -> Server:
        """Check the model, write its front model into a temporary repository, start tritonserver on it and
        wait (bounded) until the model is ready."""
        files = tritonserver_files()
        check_ports(self.options)
        manifest = self._check_model()
        options = self.options  # with the queue delay resolved
        self._folder = tempfile.TemporaryDirectory(prefix="mrdl-serve-")
        folder = Path(self._folder.name)
        write_front_model(folder / "repository" / options.model_name, options.model_name, manifest, options,
                          str(self.model_dir))
        backends, environment = server_environment(folder, files)
        command = tritonserver_command(files, folder / "repository", backends, options)
        # Its own session (a terminal's Ctrl-C reaches this process, which stops it in order) that ends with this
        # process even when this one is killed (:mod:`mrdl_runtime.children`).
        self.process = children.spawn(command, env=environment, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise ServeError(f"tritonserver exited with {code} before the model was ready (its log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise ServeError(f"the model was not ready within {timeout:.0f} s (tritonserver's log above)")
            time.sleep(0.25)
        return self

    def _get(self, path: str, timeout: float = 2) -> bytes:
        with urllib.request.urlopen(f"http://{self.urls['http']}{path}", timeout=timeout) as reply:
            return reply.read()

    def ready(self) -> bool:
        try:
            self._get(f"/v2/models/{self.options.model_name}/ready")
            return True
        except OSError:
            return False

    def _read_batch_sizes(self) -> None:
        try:
            stats = json.loads(self._get(f"/v2/models/{self.options.model_name}/stats"))["model_stats"][0]
            self.batch_sizes = {int(entry["batch_size"]): int(entry["compute_infer"]["count"])
                                for entry in stats.get("batch_stats", [])}
        except (OSError, ValueError, KeyError, IndexError):
            pass

    @property
    def urls(self) -> dict[str, str]:
        """The HTTP, gRPC and metrics addresses (``host:port``; metrics as a URL)."""
        o = self.options
        host = f"[{o.host}]" if ":" in o.host else o.host
        return {"http": f"{host}:{o.http_port}", "grpc": f"{host}:{o.grpc_port}",
                "metrics": f"http://{host}:{o.metrics_port}/metrics"}

    def request_stop(self, *_: object) -> None:
        """Ask :meth:`serve_forever` to stop (a signal handler: it only sets a flag)."""
        self._stop.set()

    def serve_forever(self, poll_s: float = 0.5) -> None:
        """Serve until :meth:`request_stop` (SIGTERM / SIGINT) or until tritonserver dies; then stop."""
        try:
            while not self._stop.wait(poll_s):
                if self.process is None or self.process.poll() is not None:
                    raise ServeError("tritonserver stopped unexpectedly (see its log above)")
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting requests, finish the accepted ones (up to ``exit_timeout``), stop tritonserver."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            self._read_batch_sizes()
            process.send_signal(signal.SIGINT)  # tritonserver refuses new requests, finishes the accepted ones
            try:
                process.wait(timeout=self.options.exit_timeout + 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


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
        urls, (precision, backend) = server.urls, server.checked
        echo(f"serving {model_dir} as model {server.options.model_name!r} ({precision}, {backend}, "
             f"{server.options.instances} instance(s), batches up to {server.max_batch} formed within "
             f"{server.options.max_queue_delay_us / 1000:g} ms) in {time.perf_counter() - started:.1f} s")
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
    sizes = ", ".join(f"{size}: {count}" for size, count in sorted(server.batch_sizes.items())) or "none"
    echo(f"stopped; batches formed (images per model call: calls): {sizes}")
    return dict(server.batch_sizes)


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
