"""``mrdl-bench --backends ...,triton --concurrency 1,4,16``: the model behind ``mrdl serve`` against in-process.

Both sides do the same work per image: raw uint8 image in, mask at the original size out
(preprocessing, model, postprocessing). First the in-process runtime (``mrdl_runtime.Segmenter``,
ONNX Runtime CPU) is timed at every batch size up to the model's ``max_batch``; its best
throughput is the reference. Then the server behind ``mrdl serve`` (:mod:`mrdl_runtime.serving`)
starts in a child process on free loopback ports (:class:`mrdl_runtime.server_process.ServerProcess`,
so the clients and the server do not share one interpreter), and for each concurrency level
``c`` that many client threads, each with its own :class:`mrdl_runtime.RemoteSegmenter`, send
single-image requests in a closed loop. Reported per level: throughput, p50/p99 latency per
request, errors, and the batch sizes Triton's dynamic batcher formed (the difference of the
model's ``/v2/models/<name>/stats`` batch statistics before and after the level), and the
in-process best batch measured again just before and after the level, so that a shared machine's
changing load does not decide the ratio. Finally every input image is segmented once through the
server and its mask compared with the in-process one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mrdl_runtime.options import LoadOptions
from mrdl_runtime.server_process import ServerProcess
from mrdl_runtime.serving import ServeOptions

from .measure import LatencySummary

SERVING_BACKENDS = ("triton",)
DEFAULT_CONCURRENCY = (1, 4, 16)
TARGET_FRACTION = 0.9  # issue 13: 4 clients reach >= 0.9x the in-process best throughput


def parse_concurrency(text: str | Sequence[int]) -> list[int]:
    """``"1,4,16"`` or a list -> positive client counts, in the order given, no repeats."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        levels = [int(str(p).strip()) for p in parts if str(p).strip()]
    except ValueError:
        levels = []
    if not levels or any(level < 1 or level > 256 for level in levels):
        raise ValueError(f"--concurrency must be comma-separated client counts in [1, 256] like 1,4,16; got {text!r}")
    return list(dict.fromkeys(levels))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def measure_in_process(model_dir: Path, images: list[np.ndarray], *, batches: Sequence[int], threads: int,
                       precision: str, iters: int, warmup: int, bar=None) -> tuple[list[dict], list[np.ndarray]]:
    """Segmenter.predict_batch (raw images -> masks) at each batch size: rows, and the masks of every image."""
    from mrdl_runtime import Segmenter

    rows = []
    with Segmenter.load(model_dir, LoadOptions(backend="onnxruntime-cpu", precision=precision,
                                               threads=threads)) as segmenter:
        masks = [p.mask for p in segmenter.predict_batch(images, with_probabilities=False)]
        for batch in batches:
            if bar is not None:
                bar.set_postfix_str(f"in-process batch {batch}")
            chunks = [[images[(step * batch + k) % len(images)] for k in range(batch)]
                      for step in range(warmup + iters)]
            times = []
            for step, chunk in enumerate(chunks):
                start = time.perf_counter()
                segmenter.predict_batch(chunk, with_probabilities=False)
                if step >= warmup:
                    times.append(time.perf_counter() - start)
            latency = LatencySummary.from_seconds(times)
            rows.append({"batch": batch, "throughput_ips": batch * len(times) / sum(times),
                         "latency_ms": latency.to_dict()})
            if bar is not None:
                bar.update()
    return rows, masks


def _in_process_round(model_dir: Path, images: list[np.ndarray], *, batch: int, threads: int, precision: str,
                      iters: int) -> float:
    """In-process throughput at ``batch`` (one warm-up call, then ``iters`` timed), measured right beside a
    concurrency level so that both see the same machine load."""
    from mrdl_runtime import Segmenter

    with Segmenter.load(model_dir, LoadOptions(backend="onnxruntime-cpu", precision=precision,
                                               threads=threads)) as segmenter:
        chunks = [[images[(step * batch + k) % len(images)] for k in range(batch)] for step in range(iters + 1)]
        segmenter.predict_batch(chunks[0], with_probabilities=False)
        start = time.perf_counter()
        for chunk in chunks[1:]:
            segmenter.predict_batch(chunk, with_probabilities=False)
        return batch * iters / (time.perf_counter() - start)


def _drive(server: ServerProcess, images: list[np.ndarray], *, clients: int, requests: int, protocol: str,
           timeout: float) -> dict:
    """``clients`` threads, each sending ``requests`` single-image requests back to back (plus one warm-up)."""
    from mrdl_runtime import RemoteSegmenter

    latencies: list[float] = []
    errors: list[str] = []
    warmed = [0]  # warm-up requests answered
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1, timeout=timeout)
    url = server.grpc if protocol == "grpc" else server.http

    def client(index: int) -> None:
        remote = None
        try:
            remote = RemoteSegmenter(url, timeout=timeout)
            remote.predict(images[index % len(images)], with_probabilities=False)  # warm-up, untimed
            with lock:
                warmed[0] += 1
        except Exception as exc:  # counted, never raised: the level goes on with the others
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        for step in range(requests if remote is not None else 0):
            start = time.perf_counter()
            try:
                remote.predict(images[(index + step * clients) % len(images)], with_probabilities=False)
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
        if remote is not None:
            remote.close()

    before = server.batch_counts()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join(timeout=timeout * requests + 30)
    wall = time.perf_counter() - start
    answered = len(latencies) + warmed[0]
    deadline = time.monotonic() + 2  # Triton records a batch's statistics just after its responses leave
    while True:
        after = server.batch_counts()
        served = sum(size * (after.get(size, 0) - before.get(size, 0)) for size in after)
        if served >= answered or time.monotonic() > deadline:  # every answered image counted, or 2 s
            break
        time.sleep(0.05)
    formed = {size: after.get(size, 0) - before.get(size, 0) for size in sorted(after)}
    formed = {size: count for size, count in formed.items() if count > 0}
    calls = sum(formed.values())
    latency = LatencySummary.from_seconds(latencies) if latencies else None
    return {"clients": clients, "requests": clients * requests, "answered": len(latencies), "errors": len(errors),
            "error_examples": sorted(set(errors))[:3], "wall_s": wall,
            "throughput_ips": len(latencies) / wall if wall > 0 else 0.0,
            "latency_ms": latency.to_dict() if latency else None,
            "batch_sizes": formed, "mean_batch": sum(s * c for s, c in formed.items()) / calls if calls else None,
            "unfinished_clients": sum(thread.is_alive() for thread in threads)}


def measure_serving(model_dir: str | Path, images: list[np.ndarray], *,
                    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
                    threads: int = 0, precision: str = "fp32", iters: int = 20, warmup: int = 3,
                    batches: Sequence[int] | None = None, protocol: str = "grpc", max_queue_delay_us: int | None = None,
                    instances: int = 1, timeout: float = 120, progress: bool = False) -> dict:
    """The serving comparison (module docstring) as a JSON-ready dict.

    ``iters``: requests per client at each level (and timed calls per batch size in-process).
    ``batches``: in-process batch sizes (default: powers of two up to the model's max_batch).
    Raises ``BackendUnavailableError`` when ``mrdl serve`` cannot run here (with its reason).
    """
    from mrdl_runtime.manifest import load_manifest

    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    if batches is None:
        batches = [2 ** i for i in range(manifest.max_batch.bit_length()) if 2 ** i <= manifest.max_batch]
    from tqdm import tqdm

    bar = tqdm(total=len(batches) + 1 + len(concurrency) + 1, desc="mrdl-bench serving", disable=not progress)
    try:
        return _measure_serving(model_dir, manifest, images, bar, concurrency=concurrency, threads=threads,
                                precision=precision, iters=iters, warmup=warmup, batches=batches, protocol=protocol,
                                max_queue_delay_us=max_queue_delay_us, instances=instances, timeout=timeout)
    finally:
        bar.close()


def _measure_serving(model_dir: Path, manifest, images: list[np.ndarray], bar, *, concurrency: Sequence[int],
                     threads: int, precision: str, iters: int, warmup: int, batches: Sequence[int], protocol: str,
                     max_queue_delay_us: int | None, instances: int, timeout: float) -> dict:
    in_process, reference = measure_in_process(model_dir, images, batches=batches, threads=threads,
                                               precision=precision, iters=iters, warmup=warmup, bar=bar)
    best = max(in_process, key=lambda row: row["throughput_ips"])
    # the in-process runtime's cores, shared among the server's instances (0: the runtime's default, shared)
    load = LoadOptions(precision=precision, threads=max(1, threads // instances) if threads else 0)
    levels = []
    # a queue for every client: the comparison measures serving, not busy refusals and retries
    server = ServerProcess(model_dir, ServeOptions(max_queue_delay_us=max_queue_delay_us, instances=instances,
                                                   load=load, max_queue=max(16, 2 * max(concurrency))))
    try:
        bar.set_postfix_str("starting mrdl serve")
        started = time.perf_counter()
        server.start()
        start_s = time.perf_counter() - started
        # the batcher's wait as the server resolved it (auto when not given: mrdl_runtime.serving.auto_queue_delay_us)
        config = json.loads(server.get(f"/v2/models/{server.options.model_name}/config"))
        queue_delay_us = int(config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", -1))
        bar.update()
        for clients in concurrency:
            bar.set_postfix_str(f"triton {clients} clients")
            # the in-process best batch again, right before and after the level: the same machine load
            before = _in_process_round(model_dir, images, batch=best["batch"], threads=threads, precision=precision,
                                       iters=max(2, iters // best["batch"]))
            level = _drive(server, images, clients=clients, requests=iters, protocol=protocol, timeout=timeout)
            after = _in_process_round(model_dir, images, batch=best["batch"], threads=threads, precision=precision,
                                      iters=max(2, iters // best["batch"]))
            level["fraction_of_in_process_best"] = level["throughput_ips"] / best["throughput_ips"]
            level["in_process_beside_ips"] = (before + after) / 2
            level["fraction_of_in_process_beside"] = level["throughput_ips"] / level["in_process_beside_ips"]
            levels.append(level)
            bar.update()
        bar.set_postfix_str("mask agreement")
        from mrdl_runtime import RemoteSegmenter

        with RemoteSegmenter(server.grpc if protocol == "grpc" else server.http, timeout=timeout) as remote:
            served = [remote.predict(image, with_probabilities=False).mask for image in images]
        stats = json.loads(server.get("/v2/models/mrdl/stats"))
        metrics = server.get("/metrics", port=server.metrics_port)
    finally:
        exit_code = server.stop()
    server.log.unlink(missing_ok=True)  # kept when the server failed: the error names it
    bar.update()
    identical = sum(np.array_equal(a, b) for a, b in zip(served, reference))
    agreement = {"images": len(images), "identical_masks": int(identical),
                 "mean_dice": float(np.mean([_dice(a, b) for a, b in zip(served, reference)]))}
    four = next((level for level in levels if level["clients"] == 4), None)
    load = os.getloadavg()
    return {"load_average_end": list(load), "protocol": protocol, "precision": precision, "threads": threads,
            "instances": instances,
            "max_queue_delay_us": queue_delay_us, "queue_delay_auto": max_queue_delay_us is None,
            "max_batch": manifest.max_batch, "server_start_s": start_s,
            "server_exit_code": exit_code, "in_process": in_process, "in_process_best": best, "levels": levels,
            "agreement": agreement, "target": {
                "four_clients_fraction": four["fraction_of_in_process_best"] if four else None,
                "four_clients_fraction_beside": four["fraction_of_in_process_beside"] if four else None,
                "required": TARGET_FRACTION,
                "met": bool(four and four["fraction_of_in_process_best"] >= TARGET_FRACTION),
                "met_beside": bool(four and four["fraction_of_in_process_beside"] >= TARGET_FRACTION)},
            "inference_count_metric": _metric(metrics, "nv_inference_count"),
            "execution_count_metric": _metric(metrics, "nv_inference_exec_count"),
            "model_stats_inference_count": stats["model_stats"][0].get("inference_count")}


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and 'model="mrdl"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def serving_failures(serving: dict) -> list[str]:
    """Sentences for errors under load and masks that differ from the in-process runtime's."""
    failures = [f"TRITON: {level['errors']} of {level['requests']} requests failed with {level['clients']} clients "
                f"(e.g. {level['error_examples'][:1]})" for level in serving["levels"] if level["errors"]]
    agreement = serving["agreement"]
    if agreement["identical_masks"] != agreement["images"]:
        failures.append(f"TRITON: {agreement['images'] - agreement['identical_masks']} of {agreement['images']} masks "
                        f"differ from the in-process runtime's (mean Dice {agreement['mean_dice']:.4f})")
    return failures


def format_serving(serving: dict) -> list[str]:
    """Plain-text lines: the in-process rows, one row per concurrency level, agreement and the target."""
    best = serving["in_process_best"]
    lines = [f"serving ({serving['protocol']}, {serving['precision']}, {serving['instances']} instance(s), "
             f"queue delay {serving['max_queue_delay_us']} us{' (auto)' if serving.get('queue_delay_auto') else ''}; "
             f"raw image in, mask at original size out, "
             f"pre/post-processing included on both sides):"]
    for row in serving["in_process"]:
        latency = row["latency_ms"]
        lines.append(f"  in-process batch {row['batch']:>3}: {row['throughput_ips']:8.1f} img/s  "
                     f"p50 {latency['p50']:.1f} ms  p99 {latency['p99']:.1f} ms per call")
    for level in serving["levels"]:
        latency = level["latency_ms"] or {"p50": float("nan"), "p99": float("nan")}
        sizes = ", ".join(f"{size}x{count}" for size, count in level["batch_sizes"].items()) or "-"
        lines.append(f"  triton {level['clients']:>3} clients: {level['throughput_ips']:8.1f} img/s "
                     f"({level['fraction_of_in_process_best']:.2f}x in-process best {best['throughput_ips']:.1f} "
                     f"at batch {best['batch']}; {level['fraction_of_in_process_beside']:.2f}x its "
                     f"{level['in_process_beside_ips']:.1f} measured beside this level)  p50 {latency['p50']:.1f} ms  "
                     f"p99 {latency['p99']:.1f} ms  errors {level['errors']}/{level['requests']}  "
                     f"batches formed (size x count): {sizes}")
    agreement, target = serving["agreement"], serving["target"]
    lines.append(f"  masks identical to in-process: {agreement['identical_masks']}/{agreement['images']} "
                 f"(mean Dice {agreement['mean_dice']:.4f})")
    if target["four_clients_fraction"] is not None:
        lines.append(f"  target 4 clients >= {target['required']}x in-process best: "
                     f"{target['four_clients_fraction']:.2f}x of the sweep's best, "
                     f"{'met' if target['met'] else 'NOT met'}; {target['four_clients_fraction_beside']:.2f}x of the "
                     f"best batch measured beside it, {'met' if target['met_beside'] else 'NOT met'} "
                     f"(load average at the end {', '.join(f'{x:.1f}' for x in serving['load_average_end'])})")
    return lines
