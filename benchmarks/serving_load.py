"""Hostile load on ``mrdl serve`` (issue 22): bounded memory under many clients, good requests among bad ones.

    python -m mrdl_bench.serving_load MODEL_DIR [--clients 16 --requests 2 --side 4096] [--mixed-clients 8]
        [--shared-memory on] [--transfer 1024,4096 --transfer-tile false,auto] [--skip memory] [--skip mixed]

``memory``: a server at the default limits (:class:`mrdl_runtime.serving.ServeOptions`) in a child
process on loopback; ``clients`` threads, each with its own :class:`mrdl_runtime.RemoteSegmenter`
(gRPC, busy refusals retried until the client's timeout), send ``requests`` images of ``side`` x ``side`` (the largest a
request may hold at the defaults) in a closed loop, half asking for the probabilities too. The
resident memory of the server's process tree (the ``mrdl serve`` process, tritonserver and the
Python backend's stubs) is sampled every 0.1 s with psutil; reported: its peak RSS (shared pages counted in
each process) and PSS (once), each process's peak, the Python backend's shared-memory pool's peak, the
RSS when ready, answers, failures, wall time.

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


def tree_memory(pid: int) -> dict[str, tuple[int, int]]:
    """``{process name: (RSS, PSS)}`` in bytes of process ``pid`` and all its descendants (same names summed;
    those that ended meanwhile left out). PSS counts each shared page (the Python backend's /dev/shm pool,
    mapped by tritonserver and each stub) once, divided among the processes that map it."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    usage: dict[str, tuple[int, int]] = {}
    for process in processes:
        try:
            name = process.name()
            info = process.memory_full_info()
        except psutil.Error:
            continue
        rss, pss = usage.get(name, (0, 0))
        usage[name] = (rss + info.rss, pss + info.pss)
    return usage


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and all its descendants (shared pages counted in each)."""
    return sum(rss for rss, _ in tree_memory(pid).values())


def shm_pool_bytes() -> int:
    """Bytes of the Python backend's shared-memory pools in /dev/shm (their files' allocated blocks)."""
    return sum(path.stat().st_blocks * 512 for path in Path("/dev/shm").glob("*triton_python_backend_shm*"))


class RssSampler:
    """Samples :func:`tree_memory` of a process every ``period_s`` in a thread: ``peak`` (RSS) and ``peak_pss`` of
    the whole tree, ``peaks`` per process name (RSS, PSS) and ``peak_shm_pool`` (:func:`shm_pool_bytes`), in
    bytes."""

    def __init__(self, pid: int, period_s: float = 0.1) -> None:
        self.pid, self.period_s, self.peak, self.peak_pss, self.peak_shm_pool = pid, period_s, 0, 0, 0
        self.peaks: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        usage = tree_memory(self.pid)
        self.peak = max(self.peak, sum(rss for rss, _ in usage.values()))
        self.peak_pss = max(self.peak_pss, sum(pss for _, pss in usage.values()))
        for name, (rss, pss) in usage.items():
            old = self.peaks.get(name, (0, 0))
            self.peaks[name] = (max(old[0], rss), max(old[1], pss))
        self.peak_shm_pool = max(self.peak_shm_pool, shm_pool_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
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
    retried = [0]
    lock = threading.Lock()
    try:
        server.start()
        ready_rss = tree_rss(server.process.pid)

        def client(index: int) -> None:
            with RemoteSegmenter(server.grpc, ClientOptions(timeout=timeout, shared_memory=shared_memory)) as remote:
                for _ in range(requests):
                    try:
                        remote.predict(image, with_probabilities=bool(index % 2))
                        outcome = "answered"
                    except RemoteError as exc:
                        outcome = f"failed: {exc}"
                    with lock:
                        outcomes.append(outcome)
            with lock:
                retried[0] += remote.busy_retries

        started = time.perf_counter()
        with RssSampler(server.process.pid) as sampler:
            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=max(1.0, started + timeout - time.perf_counter()))
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    return {"clients": clients, "requests_per_client": requests, "side": side,
            "ready_rss_mb": round(ready_rss / MB), "peak_rss_mb": round(sampler.peak / MB),
            "peak_pss_mb": round(sampler.peak_pss / MB), "shared_memory": shared_memory,
            "peak_by_process_mb": {name: [round(rss / MB), round(pss / MB)] for name, (rss, pss) in sampler.peaks.items()},
            "peak_python_backend_shm_pool_mb": round(sampler.peak_shm_pool / MB),
            "answered": outcomes.count("answered"), "failed": [o for o in outcomes if o != "answered"],
            "busy_refusals_retried": retried[0], "seconds": round(seconds, 1)}


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


def transfer(model_dir: str | Path, sides: tuple[int, ...] = (1024, 4096), *, tiles: tuple[str, ...] = ("false",),
             rounds: int = 4) -> list[dict]:
    """Seconds per image through one server for each side and ``tile`` setting, plain gRPC against system shared
    memory and the same image in-process (one Segmenter: the compute a served image cannot avoid), one
    masks-only request at a time, the three interleaved round by round in a rotating order, so a change in the
    machine's load (and the server's work left from the request before) reaches all three alike; reported: each one's median and the median of the per-round ratios
    gRPC / shared memory (the shared memory speed-up), masks compared with in-process. ``tile="false"`` resizes
    the whole image to the model's size, so the transfer is most of a served image's cost; ``"auto"`` tiles a
    large image at the training scale, so compute is."""
    from mrdl_runtime import RemoteSegmenter, Segmenter
    from mrdl_runtime.remote import ClientOptions
    from mrdl_runtime.server_process import ServerProcess

    rows = []
    server = ServerProcess(model_dir, ServeOptions())
    try:
        server.start()
        with Segmenter.load(model_dir, backend="onnxruntime-cpu") as local, \
                RemoteSegmenter(server.grpc, ClientOptions(shared_memory="off")) as plain, \
                RemoteSegmenter(server.grpc, ClientOptions(shared_memory="on")) as shared:
            paths = {"in_process": local, "grpc": plain, "shm": shared}
            for side in sides:
                image = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
                for tile in tiles:
                    options = {"with_probabilities": False, "tile": {"false": False, "true": True}.get(tile, tile)}
                    expected = local.predict(image, **options).mask  # and warm-up
                    seconds: dict[str, list[float]] = {name: [] for name in paths}
                    identical = True
                    names = list(paths)
                    for round_ in range(rounds + 1):  # round 0 warms the served paths up
                        for name in names[round_ % 3:] + names[:round_ % 3]:  # order rotated round by round
                            segmenter = paths[name]
                            started = time.perf_counter()
                            mask = segmenter.predict(image, **options).mask
                            if round_:
                                seconds[name].append(time.perf_counter() - started)
                            identical &= bool(np.array_equal(mask, expected))
                    ratios = [g / s for g, s in zip(seconds["grpc"], seconds["shm"])]
                    rows.append({"side": side, "tile": tile, "rounds": rounds, "masks_identical": identical,
                                 **{f"{name}_s_per_image": round(float(np.median(values)), 3)
                                    for name, values in seconds.items()},
                                 "shm_over_grpc_median": round(float(np.median(ratios)), 2),
                                 "shm_over_grpc_range": [round(min(ratios), 2), round(max(ratios), 2)]})
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
    parser.add_argument("--transfer-tile", default="false,auto",
                        help="the tile settings --transfer measures: false (transfer-bound), auto, true")
    parser.add_argument("--transfer-rounds", type=int, default=4, help="interleaved rounds in --transfer")
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
        for row in transfer(args.model_dir, tuple(int(side) for side in args.transfer.split(",")),
                            tiles=tuple(args.transfer_tile.split(",")), rounds=args.transfer_rounds):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
