"""Whole-slide benchmark (issue 20): ``mrdl predict-slide`` on synthetic slides vs the model's own time.

For each slide size (default 20,000^2 and 60,000^2 at 0.25 um/px, 40 % tissue, MoNuSeg crops when
``--monuseg`` is given; built once by :mod:`mrdl_bench.synthetic_slide` and reused):

* the slide's wall time inside ``predict-slide`` with the mask only (reading, tissue mask, resampling,
  model, stitching, OME-TIFF) and windows/s, from the slide's ``<stem>.json`` record;
* the model's time for the same windows, two ways: the time inside the model calls of that run, and
  the runtime's batch latency at ``max_batch`` measured alone x windows / max_batch. The target is
  slide / model <= 1.25;
* the same run with GeoJSON: the extra time and the object count;
* peak RSS of the whole ``mrdl predict-slide`` process (rusage of a fresh child);
* for the first size, a run with ``--no-tissue-mask``: the time the tissue mask saves, beside the
  background fraction.

Then a projection for a 100,000 x 80,000 40x slide with 40 % tissue: its windows (the model's grid,
times the fraction of windows run at 40 % tissue measured here) at the measured windows/s on this
CPU, and from the model's FLOPs per window on an RTX 3090-class GPU (35.6 TFLOPS FP32 peak at the
stated utilisation), beside TIAToolbox's published 30-50 min per 60k^2 slide on a V100.

    python -m mrdl_bench.slide --work /tmp/slidebench --monuseg PATH/TO/MoNuSeg
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .peak_rss import measured_run
from .synthetic_slide import SlideOptions as BuildOptions
from .synthetic_slide import build_synthetic_slide

GPU_TFLOPS = 35.6  # RTX 3090, FP32 peak (NVIDIA's GA102 whitepaper)
GPU_UTILISATION = 0.3  # assumed fraction of the peak a small-batch segmentation model reaches
PROJECTED_SIZE = (80_000, 100_000)  # (height, width)
PROJECTED_TISSUE = 0.4
TIATOOLBOX_V100 = "30-50 min per 60,000^2 slide on a V100 (TIAToolbox semantic segmentation, published)"


def prepare_model(work: Path, *, source_size: str, source_mpp: float, max_batch: int) -> Path:
    """The ``tiny`` model (random weights: timing only) exported with ``--source-size`` / ``--source-mpp``
    to ``work/deploy``, or the one an earlier run left there with the same settings."""
    from mrdl_runtime import load_manifest

    deploy = work / "deploy"
    if (deploy / "model.json").is_file():
        manifest = load_manifest(deploy)
        if manifest.source_mpp == source_mpp and manifest.max_batch == max_batch and \
                "x".join(map(str, manifest.source_size or ())) == source_size:
            return deploy
    from mrdl.checkpoint import save_checkpoint
    from mrdl.config import load_config
    from mrdl.model import create_model, deterministic_prompt_features
    from mrdl_export import export_model

    import torch

    config = load_config("tiny")
    model = create_model(config, prompt_features=deterministic_prompt_features(config), seed=0).eval()
    with torch.no_grad():  # the head's bias shifted so that ~30 % of H&E-like pixels are foreground (as the tests'
        rng = np.random.default_rng(0)  # calibrated tiny model): masks and GeoJSON then have objects to write
        pinkish = torch.from_numpy(rng.uniform(0.3, 0.95, (4, 3, 64, 64)).astype(np.float32))
        model.decoder.head.bias -= torch.quantile(model(pinkish).logits.flatten(), 0.7)
    save_checkpoint(work / "tiny.safetensors", model)
    export_model(work / "tiny.safetensors", deploy, max_batch=max_batch, parity_images=2, source_size=source_size,
                 source_mpp=str(source_mpp), force=True)
    return deploy


def model_batch_seconds(deploy: Path, threads: int, repeats: int = 30) -> tuple[float, int]:
    """(seconds per batch of ``max_batch`` windows, max_batch): the runtime's own latency, measured alone."""
    from mrdl_runtime import Segmenter

    with Segmenter.load(deploy, threads=threads) as segmenter:
        manifest = segmenter.manifest
        rng = np.random.default_rng(0)
        batch = rng.random((manifest.max_batch, 3, *manifest.size), dtype=np.float32)
        for _ in range(3):
            segmenter.infer(batch)
        start = time.perf_counter()
        for _ in range(repeats):
            segmenter.infer(batch)
        return (time.perf_counter() - start) / repeats, manifest.max_batch


def run_slide(deploy: Path, slide: Path, out: Path, threads: int, *extra: str) -> dict:
    """``mrdl predict-slide`` in a fresh child: its record, wall time and peak RSS."""
    command = [sys.executable, "-m", "mrdl_apps", "predict-slide", str(deploy), str(slide), "--out", str(out),
               "--no-progress", "--threads", str(threads), *extra]
    status, seconds, peak, run = measured_run(command)
    if status != 0:
        raise RuntimeError(f"predict-slide failed ({status}): {run.stdout[-2000:]} {run.stderr[-2000:]}")
    stem = slide.name.split(".")[0]
    record = json.loads((out / f"{stem}.json").read_text())
    return {**record, "process_seconds": seconds, "peak_rss_mb": peak / 2**20, "line": run.stdout.strip().splitlines()[-2]}


def flops_per_window(config_name: str) -> int:
    """One model-size image through the deploy model (mrdl_bench.measure's counter; needs torch)."""
    from mrdl.config import load_config
    from mrdl.model import create_model, deterministic_prompt_features

    from .measure import flops_per_image

    config = load_config(config_name)
    return flops_per_image(create_model(config, prompt_features=deterministic_prompt_features(config), seed=0).eval())


def projection(model_mpp: float, model_size: int, overlap: float, windows_fraction: float, windows_per_second: float,
               flops: int) -> dict:
    """Windows and times for :data:`PROJECTED_SIZE` at 0.25 um/px with :data:`PROJECTED_TISSUE` tissue."""
    stride = math.floor(model_size * (1 - overlap))
    grid = [round(side * 0.25 / model_mpp) for side in PROJECTED_SIZE]
    windows = math.prod(max(1, math.ceil((g - model_size) / stride) + 1) for g in grid)
    run = windows * windows_fraction
    return {"grid": grid, "windows": windows, "windows_run": round(run),
            "cpu_minutes": run / windows_per_second / 60,
            "gpu_minutes_model_only": run * flops / (GPU_TFLOPS * 1e12 * GPU_UTILISATION) / 60,
            "flops_per_window": flops}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the model, slides and outputs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 60_000])
    parser.add_argument("--monuseg", type=Path, help="MoNuSeg folder for the crops (default: procedural crops)")
    parser.add_argument("--source-size", default="1000x1000", help="the model's training image size (MoNuSeg)")
    parser.add_argument("--source-mpp", type=float, default=0.25, help="the model's training mpp (MoNuSeg, 40x)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--small-ms-per-window", type=float, default=105.0,
                        help="the small model's ORT FP32 latency per window on this CPU, for the projection (docs/"
                             "measurements.md, 'INT8 speed, wall clock': 419 ms per batch of 4, 2 threads)")
    parser.add_argument("--no-tissue-comparison", action="store_true",
                        help="skip the --no-tissue-mask run of the first size")
    args = parser.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    deploy = prepare_model(work, source_size=args.source_size, source_mpp=args.source_mpp, max_batch=args.max_batch)
    batch_seconds, batch = model_batch_seconds(deploy, args.threads)
    report: dict = {"model": "tiny", "max_batch": batch, "batch_seconds": batch_seconds, "slides": [],
                    "load": os.getloadavg()}
    for index, size in enumerate(args.sizes):
        slide = work / f"slide-{size}.svs"
        if not slide.is_file():
            start = time.perf_counter()
            build_synthetic_slide(slide, BuildOptions(width=size, height=size, tissue_fraction=0.4,
                                                      monuseg=str(args.monuseg) if args.monuseg else None))
            print(f"built {slide} in {time.perf_counter() - start:.0f} s", flush=True)
        result = run_slide(deploy, slide, work / f"out-{size}", args.threads, "--no-geojson")
        # the limit two ways: the model calls' own time inside this run, and the latency measured alone
        result["ratio"] = result["seconds"] / result["model_seconds"]
        result["model_seconds_alone"] = result["windows_run"] * batch_seconds / batch
        result["ratio_to_alone"] = result["seconds"] / result["model_seconds_alone"]
        result["windows_per_second"] = result["windows_run"] / result["seconds"]
        with_geojson = run_slide(deploy, slide, work / f"out-{size}-geojson", args.threads)
        result["geojson"] = {key: with_geojson[key] for key in ("seconds", "objects", "peak_rss_mb")}
        result["geojson"]["extra_seconds"] = with_geojson["seconds"] - result["seconds"]
        if index == 0 and not args.no_tissue_comparison:
            full = run_slide(deploy, slide, work / f"out-{size}-all", args.threads, "--no-tissue-mask",
                             "--no-geojson")
            result["no_tissue_mask"] = {key: full[key] for key in ("seconds", "windows_run", "peak_rss_mb")}
            result["tissue_time_saved"] = 1 - result["seconds"] / full["seconds"]
        report["slides"].append(result)
        print(json.dumps({key: result[key] for key in ("slide_size", "level", "mask_size", "tissue_fraction",
                                                       "windows", "windows_run", "seconds", "model_seconds", "ratio",
                                                       "model_seconds_alone", "ratio_to_alone", "geojson",
                                                       "windows_per_second", "peak_rss_mb") if key in result}),
              flush=True)
    last = report["slides"][-1]
    model_size = json.loads((deploy / "model.json").read_text())["preprocessing"]["size"][0]
    fraction, rate = last["windows_run"] / last["windows"], last["windows_per_second"]
    tiny = flops_per_window("tiny")
    report["projection"] = {"tiny": projection(last["model_mpp"][0], model_size, 0.25, fraction, rate, tiny)}
    # the small model (224 px, MoNuSeg 1000 px -> 1.116 um/px) at its measured ONNX Runtime latency per window
    small = flops_per_window("small")
    source = int(args.source_size.split("x")[0])
    small_projection = projection(args.source_mpp * source / 224, 224, 0.25, fraction,
                                  1e3 / args.small_ms_per_window, small)
    small_projection["cpu_minutes_note"] = (f"model time only, {args.small_ms_per_window} ms per window "
                                            "(--small-ms-per-window)")
    report["projection"]["small"] = small_projection
    report["projection"]["tiatoolbox"] = TIATOOLBOX_V100
    report["projection"]["gpu_assumption"] = f"{GPU_TFLOPS} TFLOPS FP32 x {GPU_UTILISATION:.0%} utilisation, model only"
    report["load_after"] = os.getloadavg()
    (work / "slide-bench.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["projection"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
