"""Hostile load on ``mrdl serve`` (issue 22): bounded memory under many clients, good requests among bad ones.

    python -m mrdl_bench.serving_load MODEL_DIR [--clients 16 --requests 2 --side 4096] [--mixed-clients 8]
        [--shared-memory on] [--transfer 1024,4096] [--skip memory] [--skip mixed]

``memory``: a server at the default limits (:class:`mrdl_runtime.serving.ServeOptions`) in a child
process on loopback; ``clients`` threads, each with its own :class:`mrdl_runtime.RemoteSegmenter`
(gRPC, retries on busy refusals), send ``requests`` images of ``side`` x ``side`` (the largest a
request may hold at the defaults) in a closed loop, half asking for the probabilities too. The
resident memory of the server's process tree (the ``mrdl serve`` process, tritonserver and the
Python backend's stubs, shared pages counted in each) is sampled every 50 ms with psutil; reported:
its peak, its value when ready, answers, busy refusals the clients retried, failures, wall time.

``mixed``: ``mixed_clients`` threads send ``rounds`` requests each at the same time, every fourth
bad (an overlap of NaN or 1.5, tile "maybe", blend "bogus" in turn); reported: the share of good
requests answered with the in-process mask and of bad ones refused as client errors (400 /
INVALID_ARGUMENT), and how many model executions served them (fewer than requests: batches were
shared). Every wait is bounded; the server is always stopped.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mrdl_runtime.serving import ServeOptions

BAD_PARAMETERS = ({"overlap": "nan"}, {"overlap": "1.5"}, {"tile": "maybe"}, {"blend": "bogus"})
MB = 1024 * 1024


def tree_rss(pid: int, field: str = "rss") -> int:
    """Resident bytes of process ``pid`` and all its descendants (0 for those that ended meanwhile); ``field``
    "pss": each shared page (the Python backend's /dev/shm pool, mapped by tritonserver and each stub)
    counted once, divided among the processes that map it."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += getattr(process.memory_full_info() if field == "pss" else process.memory_info(), field)
        except psutil.Error:
            pass
    return total


class RssSampler:
    """Samples :func:`tree_rss` of a process every ``period_s`` in a thread; ``peak`` (RSS) and ``peak_pss``
    in bytes."""

    def __init__(self, pid: int, period_s: float = 0.1) -> None:
        self.pid, self.period_s, self.peak, self.peak_pss = pid, period_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.peak = max(self.peak, tree_rss(self.pid))
            self.peak_pss = max(self.peak_pss, tree_rss(self.pid, "pss"))

    def __enter__(self) -> RssSampler:
        self.peak = tree_rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def memory_under_load(model_dir: str | Path, *, clients: int = 16, requests: int = 2, side: int = 4096,
                      options: ServeOptions | None = None, timeout: float = 600, shared_memory: str = "off") -> dict:
    """The ``memory`` measurement (module docstring) as a dict."""
    from mrdl_runtime import RemoteError, RemoteSegmenter
    from mrdl_runtime.remote import ClientOptions
    from mrdl_runtime.server_process import ServerProcess

    image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    server = ServerProcess(model_dir, options or ServeOptions())
    outcomes: list[str] = []
    lock = threading.Lock()
    try:
        server.start()
        ready_rss = tree_rss(server.process.pid)

        def client(index: int) -> None:
            with RemoteSegmenter(server.grpc, ClientOptions(timeout=timeout, retries=10,
                                                            shared_memory=shared_memory)) as remote:
                for _ in range(requests):
                    try:
                        remote.predict(image, with_probabilities=bool(index % 2))
                        outcome = "answered"
                    except RemoteError as exc:
                        outcome = f"failed: {exc}"
                    with lock:
                        outcomes.append(outcome)

        started = time.perf_counter()
        with RssSampler(server.process.pid) as sampler:
            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=max(1.0, started + timeout - time.perf_counter()))
        seconds = time.perf_counter() - started
        busy = _metric(server.get("/metrics", port=server.metrics_port), "nv_inference_request_failure")
    finally:
        server.stop()
    return {"clients": clients, "requests_per_client": requests, "side": side,
            "ready_rss_mb": round(ready_rss / MB), "peak_rss_mb": round(sampler.peak / MB),
            "peak_pss_mb": round(sampler.peak_pss / MB), "shared_memory": shared_memory,
            "answered": outcomes.count("answered"), "failed": [o for o in outcomes if o != "answered"],
            "server_refusals_retried": busy, "seconds": round(seconds, 1)}


def _metric(text: str, name: str) -> float:
    """The sum of a Prometheus counter's samples (all labels)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def mixed_batches(model_dir: str | Path, *, clients: int = 8, rounds: int = 4, side: int = 256,
                  options: ServeOptions | None = None) -> dict:
    """The ``mixed`` measurement (module docstring) as a dict."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from mrdl_runtime import Segmenter
    from mrdl_runtime.server_process import ServerProcess

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (1, side, side, 3), dtype=np.uint8) for _ in range(clients)]
    with Segmenter.load(model_dir, backend="onnxruntime-cpu") as segmenter:
        expected = [p.mask for p in segmenter.predict_batch([image[0] for image in images], with_probabilities=False)]
    server = ServerProcess(model_dir, options or ServeOptions(max_queue_delay_us=100_000, max_queue=4 * clients))
    counts = {"good": 0, "good_correct": 0, "bad": 0, "bad_refused_as_client_error": 0}
    lock = threading.Lock()
    try:
        server.start()
        before = json.loads(server.get("/v2/models/mrdl/stats"))["model_stats"][0]["execution_count"]
        barrier = threading.Barrier(clients)

        def client(index: int) -> None:
            connection = grpcclient.InferenceServerClient(server.grpc.split("://")[1])
            for round_ in range(rounds):
                bad = (index + round_) % 4 == 3
                tensor = grpcclient.InferInput("image", list(images[index].shape), "UINT8")
                tensor.set_data_from_numpy(images[index])
                parameters = BAD_PARAMETERS[(index + round_) % len(BAD_PARAMETERS)] if bad else {}
                barrier.wait(timeout=120)
                try:
                    mask = connection.infer("mrdl", [tensor], outputs=[grpcclient.InferRequestedOutput("mask")],
                                            parameters=parameters, client_timeout=300).as_numpy("mask")[0]
                    ok = not bad and np.array_equal(mask, expected[index])
                except InferenceServerException as exc:
                    ok = bad and exc.status() == "StatusCode.INVALID_ARGUMENT"
                with lock:
                    counts["bad" if bad else "good"] += 1
                    counts[("bad_refused_as_client_error" if bad else "good_correct")] += int(ok)
            connection.close()

        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(client, range(clients), timeout=600))
        executions = json.loads(server.get("/v2/models/mrdl/stats"))["model_stats"][0]["execution_count"] - before
    finally:
        server.stop()
    return {**counts, "requests": clients * rounds, "model_executions": executions,
            "good_correct_percent": round(100 * counts["good_correct"] / max(1, counts["good"]), 1),
            "bad_refused_percent": round(100 * counts["bad_refused_as_client_error"] / max(1, counts["bad"]), 1)}


def transfer(model_dir: str | Path, sides: tuple[int, ...] = (1024, 4096), *, requests: int = 4,
             clients: int = 2) -> list[dict]:
    """Images per second through one server for each side, plain gRPC against system shared memory: ``clients``
    threads send ``requests`` masks-only requests each, in a closed loop; masks compared between the two."""
    from mrdl_runtime import RemoteSegmenter
    from mrdl_runtime.remote import ClientOptions
    from mrdl_runtime.server_process import ServerProcess

    rows = []
    server = ServerProcess(model_dir, ServeOptions())
    try:
        server.start()
        for side in sides:
            image = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
            masks = {}
            for mode in ("off", "on"):
                remotes = [RemoteSegmenter(server.grpc, ClientOptions(shared_memory=mode)) for _ in range(clients)]
                remotes[0].predict(image, with_probabilities=False)  # warm-up
                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=clients) as pool:
                    results = list(pool.map(lambda r: [r.predict(image, with_probabilities=False).mask
                                                       for _ in range(requests)], remotes, timeout=600))
                seconds = time.perf_counter() - started
                masks[mode] = results[0][0]
                for remote in remotes:
                    remote.close()
                rows.append({"side": side, "shared_memory": mode, "images": clients * requests,
                             "images_per_s": round(clients * requests / seconds, 2)})
            rows[-1]["masks_identical"] = bool(np.array_equal(masks["off"], masks["on"]))
    finally:
        server.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--mixed-clients", type=int, default=8)
    parser.add_argument("--mixed-rounds", type=int, default=4)
    parser.add_argument("--shared-memory", choices=["off", "on"], default="off",
                        help="memory: the clients pass images through system shared memory")
    parser.add_argument("--transfer", default="", help="sides like 1024,4096: plain gRPC against shared memory")
    parser.add_argument("--skip", choices=["memory", "mixed"], action="append", default=[])
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 64 or not 1 <= args.requests <= 16 or not 16 <= args.side <= 8192:
        parser.error("--clients in [1, 64], --requests in [1, 16], --side in [16, 8192]")
    report = {}
    if "mixed" not in args.skip:
        report["mixed"] = mixed_batches(args.model_dir, clients=args.mixed_clients, rounds=args.mixed_rounds)
        print(json.dumps(report["mixed"]), flush=True)
    if "memory" not in args.skip:
        report["memory"] = memory_under_load(args.model_dir, clients=args.clients, requests=args.requests,
                                             side=args.side, shared_memory=args.shared_memory)
        print(json.dumps(report["memory"]), flush=True)
    if args.transfer:
        for row in transfer(args.model_dir, tuple(int(side) for side in args.transfer.split(",")), requests=2):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
