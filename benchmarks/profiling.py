"""Where the time goes: per-operator profiles of onnxruntime sessions and of the PyTorch model.

Used to explain a missed target rather than to tune the benchmark: ``profile_onnxruntime`` turns
onnxruntime's JSON trace into time per operator type, ``profile_torch`` does the same with the
torch profiler's self CPU time per aten operator.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _top(times: dict[str, float], *, top: int) -> list[dict]:
    total = sum(times.values()) or 1.0
    ranked = sorted(times.items(), key=lambda item: item[1], reverse=True)[:top]
    return [{"op": op, "ms_per_iter": ms, "share": ms / total} for op, ms in ranked]


def profile_onnxruntime(model_path: Path, *, batch: int, size: int, threads: int, iters: int, out_dir: Path,
                        top: int = 8) -> dict:
    """Run ``iters`` profiled batches (after one warm-up) and sum node time per ONNX op type."""
    import onnxruntime as ort

    out_dir.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(out_dir / f"ort_{Path(model_path).stem}_b{batch}")
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)  # (B, 3, S, S)
    feeds = {session.get_inputs()[0].name: image}
    for _ in range(iters + 1):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    per_op: dict[str, float] = defaultdict(float)
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"].get("op_name", "?")] += event["dur"] / 1e3 / (iters + 1)  # ms per iteration
    return {"backend": "onnxruntime", "model": str(model_path), "batch": batch, "trace": str(trace),
            "node_ms_per_iter": sum(per_op.values()), "top_ops": _top(per_op, top=top)}


def profile_torch(ckpt: Path, *, phase: str, batch: int, iters: int, top: int = 8) -> dict:
    """Self CPU time per aten operator of the eager model over ``iters`` batches (after one warm-up)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mrdl.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ckpt, phase=phase)
    model.eval()
    size = model.config.model.image_size
    image = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))  # (B, 3, S, S)
    with torch.inference_mode():
        model(image)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                model(image)
    per_op = {event.key: event.self_cpu_time_total / 1e3 / iters for event in prof.key_averages()}
    return {"backend": f"torch-{phase}", "batch": batch, "op_ms_per_iter": sum(per_op.values()),
            "top_ops": _top(per_op, top=top)}
