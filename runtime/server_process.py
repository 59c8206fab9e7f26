"""A served model in a child process: :class:`ServerProcess` runs :func:`mrdl_runtime.serving.run_server`
(what ``mrdl serve`` runs) as ``python -m mrdl_runtime.serving`` on free loopback ports.

Used by ``mrdl-bench``'s serving comparison and the serving tests; every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .errors import BackendUnavailableError, OptionsError
from . import children
from .front_model import model_name_problem
from .serving import ServeOptions, server_environment, tritonserver_files

START_TIMEOUT_S = 180


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago."""
    sockets = []
    for _ in range(count):
        probe = socket.socket()
        probe.bind((host, 0))
        sockets.append(probe)
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


class ServerProcess:
    """:func:`mrdl_runtime.serving.run_server` (``mrdl serve``) in a child process on free loopback ports,
    its output in a log file, so that clients and server do not share one interpreter.

    ``options``' host and ports are replaced by 127.0.0.1 and free ports. ``start`` waits, bounded,
    until the model is ready; ``stop`` sends SIGTERM and waits (then kills). A server that cannot
    start raises ``BackendUnavailableError`` with its last lines.
    """

    def __init__(self, model_dir: str | Path, options: ServeOptions | None = None, *, log: Path | None = None) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.options = (options or ServeOptions()).with_fields(host="127.0.0.1", http_port=self.http_port,
                                                               grpc_port=self.grpc_port, metrics_port=self.metrics_port)
        self.command = [sys.executable, "-m", "mrdl_runtime.serving", str(model_dir), self.options.to_json()]
        self.log = log or Path(tempfile.mkstemp(prefix="mrdl-serve-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None
        self.environment: dict[str, str] | None = None  # None: this process's
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.grpc = f"grpc://127.0.0.1:{self.grpc_port}"

    def output(self, characters: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    def get(self, path: str, *, port: int | None = None, timeout: float = 5) -> str:
        url = f"http://127.0.0.1:{port or self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.read().decode()

    def ready(self) -> bool:
        try:
            self.get(f"/v2/models/{self.options.model_name}/ready", timeout=2)
            return True
        except OSError:
            return False

    def start(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        with open(self.log, "wb") as handle:
            # never outlives a killed client (mrdl_runtime.children: no preexec_fn, so gRPC's fork handlers stay out)
            self.process = children.spawn(self.command, stdout=handle, stderr=subprocess.STDOUT, env=self.environment)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                lines = [line.strip() for line in self.output(20000).splitlines() if line.strip()]
                reason = next((line for line in reversed(lines) if line.startswith("Error: ") and "NVML" not in line),
                              " | ".join(lines[-3:]))
                raise BackendUnavailableError(f"mrdl serve exited with {self.process.returncode}: {reason} "
                                              f"(log: {self.log})")
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise BackendUnavailableError(f"mrdl serve was not ready within {timeout:.0f} s (log: {self.log})")

    def stop(self, timeout: float = 60) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def batch_counts(self) -> dict[int, int]:
        """Model executions per batch size so far (Triton's statistics endpoint)."""
        stats = json.loads(self.get(f"/v2/models/{self.options.model_name}/stats"))["model_stats"][0]
        return {int(entry["batch_size"]): int(entry["compute_infer"]["count"])
                for entry in stats.get("batch_stats", [])}

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class StockServer(ServerProcess):
    """``tritonserver --model-repository REPOSITORY`` itself, as a stock server runs a repository that
    ``mrdl triton-repo`` wrote: the binary NVIDIA's PyTriton ships, its Python backend with this Python's stub
    (:func:`mrdl_runtime.serving.server_environment`), free loopback ports, only ``models`` loaded
    (``--model-control-mode explicit``: that server has no onnxruntime backend for the bare ONNX models)."""

    def __init__(self, repository: str | Path, models: tuple[str, ...] = ("mrdl",), *, log: Path | None = None) -> None:
        problems = [problem for problem in map(model_name_problem, models) if problem is not None]
        if problems or not models:
            raise OptionsError(problems[0] if problems else "name at least one model to load")
        super().__init__(repository, ServeOptions(model_name=models[0]), log=log)
        files = tritonserver_files()
        self._folder = tempfile.TemporaryDirectory(prefix="mrdl-stock-")
        backends, self.environment = server_environment(Path(self._folder.name), files)
        self.command = [str(files["binary"]), f"--model-repository={repository}", f"--backend-directory={backends}",
                        "--http-address=127.0.0.1", f"--http-port={self.http_port}", "--grpc-address=127.0.0.1",
                        f"--grpc-port={self.grpc_port}", "--metrics-address=127.0.0.1",
                        f"--metrics-port={self.metrics_port}", "--allow-gpu-metrics=false",
                        "--model-control-mode=explicit", *[f"--load-model={name}" for name in models]]

    def stop(self, timeout: float = 60) -> int | None:
        try:
            return super().stop(timeout)
        finally:
            self._folder.cleanup()
