"""Peak resident memory of ``mrdl predict`` on one large RGB PNG (issue 10: at most 1.5 GB for 10000x10000),
and of tiled inference on a 20000x20000 RGB image (issue 14: under 2 GB).

    python benchmarks/peak_rss.py                       # 10000x10000, a tiny model exported here
    python benchmarks/peak_rss.py --model-dir deploy/ --size 8000 --limit-mb 1500
    python benchmarks/peak_rss.py --tiled               # 20000x20000 in memory, tiled, limit 2000 MB

Writes a smooth synthetic RGB PNG of ``--size`` x ``--size`` (gradients and discs: it compresses
well and segments into foreground and background), exports the ``tiny`` config with
``mrdl_export`` unless ``--model-dir`` is given, runs ``mrdl predict`` on the image in a
subprocess and reads that process's peak RSS from ``os.wait4`` (Linux ru_maxrss, KiB). Prints
the figure and exits 1 when it is above ``--limit-mb`` (decimal megabytes), 2 when predict fails.

``--tiled`` (docs/tiling.md) measures ``Segmenter.predict(image, tile=True, with_probabilities=False)``
in a fresh process on a ``--size`` x ``--size`` (default 20000) RGB uint8 array that the process
builds in memory, strip by strip (the 1.2 GB input itself counts in the figure; a PNG of that size
would be decoded whole by Pillow first, see docs/measurements.md). The exported ``tiny`` model gets
``source_size`` = size * 64 / 4480, so the image is resampled to 4480 x 4480 (what MoNuSeg's 224-pixel
``base`` model does with 20000 x 20000 at source size 1000) and runs in 8649 windows of 64 x 64.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_SIZE = 10_000
DEFAULT_LIMIT_MB = 1500.0  # 1.5 GB
TILED_SIZE = 20_000
TILED_LIMIT_MB = 2000.0  # 2 GB
TILED_RESAMPLED_SIDE = 4480  # MoNuSeg base (224 px, source 1000) at 20000 px


def test_image(size: int) -> np.ndarray:
    """A size x size RGB uint8 array: colour gradients with a grid of bright discs, built in row strips."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    x = np.arange(size, dtype=np.float32)
    cell = max(size // 8, 8)
    cx = (x % cell) - cell / 2
    for start in range(0, size, 512):
        y = np.arange(start, min(start + 512, size), dtype=np.float32)[:, None]
        disc = (cx[None, :] ** 2 + ((y % cell) - cell / 2) ** 2) < (cell / 3) ** 2
        image[start:start + len(y), :, 0] = (x[None, :] * 255 / size).astype(np.uint8)
        image[start:start + len(y), :, 1] = (y * 255 / size).astype(np.uint8)
        image[start:start + len(y), :, 2] = np.where(disc, 230, 40)
    return image


def write_test_image(path: Path, size: int) -> None:
    """:func:`test_image` saved as a PNG."""
    from PIL import Image

    Image.fromarray(test_image(size)).save(path, compress_level=1)


def export_tiny_model(folder: Path, *, source_size: str | None = None, max_batch: int = 1) -> Path:
    """Export a randomly initialised ``tiny`` model (needs torch and mrdl_export) to ``folder/deploy``,
    or reuse the one an earlier run left there."""
    from mrdl_runtime.manifest import MANIFEST_NAME

    if (folder / "deploy" / MANIFEST_NAME).is_file():
        return folder / "deploy"
    from mrdl.checkpoint import save_checkpoint
    from mrdl.config import load_config
    from mrdl.model import create_model, deterministic_prompt_features
    from mrdl_export import export_model

    config = load_config("tiny")
    model = create_model(config, prompt_features=deterministic_prompt_features(config), seed=0).eval()
    save_checkpoint(folder / "tiny.safetensors", model)
    export_model(folder / "tiny.safetensors", folder / "deploy", max_batch=max_batch, parity_images=2,
                 source_size=source_size)
    return folder / "deploy"


# Linux records the RSS high-water mark of the process image an exec replaces, so a child forked from
# this (large, after exporting and writing the image) process would inherit our peak: a small fresh
# interpreter starts mrdl predict and reports that grandchild's own rusage.
_MEASURE = ("import os, subprocess, sys; process = subprocess.Popen(sys.argv[2:]); "
            "_, status, usage = os.wait4(process.pid, 0); "
            "open(sys.argv[1], 'w').write(f'{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}')")


def measured_run(command: list[str]) -> tuple[int, float, int, subprocess.CompletedProcess]:
    """Run ``command`` under :data:`_MEASURE`: (its exit status, seconds, peak RSS in bytes, the run)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "rusage"
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", _MEASURE, str(report), *command], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if not report.is_file():
            return run.returncode or 1, seconds, 0, run
        status, max_rss_kib = map(int, report.read_text().split())
    return status, seconds, max_rss_kib * 1024, run


def peak_rss_of_predict(model_dir: Path, image: Path, out_dir: Path, *, backend: str = "onnxruntime-cpu",
                        extra: tuple[str, ...] = ()) -> tuple[int, float, int, str]:
    """Run ``mrdl predict`` in a subprocess: (its exit status, seconds, peak RSS in bytes, its output)."""
    command = [sys.executable, "-m", "mrdl_apps", "predict", str(model_dir), str(image),
               "--out", str(out_dir), "--backend", backend, "--no-progress", *extra]
    status, seconds, peak, run = measured_run(command)
    return status, seconds, peak, run.stdout + run.stderr


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024 / 1e6


def tiled_child(model_dir: Path, size: int) -> None:
    """In the measured process: build the image, then one tiled, masks-only prediction; print what it did."""
    from mrdl_runtime import Segmenter

    with Segmenter.load(model_dir, backend="onnxruntime-cpu") as segmenter:
        loaded = _rss_mb()
        image = test_image(size)
        with_image = _rss_mb()
        start = time.perf_counter()
        prediction = segmenter.predict(image, tile=True, with_probabilities=False)
        seconds = time.perf_counter() - start
    print(f"model loaded: {loaded:.0f} MB RSS; with the {image.nbytes / 1e6:.0f} MB input: {with_image:.0f} MB; "
          f"tiled={prediction.tiled}, mask {prediction.mask.shape} holds {prediction.mask.mean():.3f} foreground; "
          f"predict {seconds:.1f} s")


def measure_tiled(args: argparse.Namespace, work: Path) -> int:
    """``--tiled``: the peak RSS of a fresh process that builds a size x size image and segments it tiled."""
    source = max(1, round(args.size * 64 / TILED_RESAMPLED_SIDE))
    model_dir = args.model_dir or export_tiny_model(work / f"tiled-{source}", source_size=f"{source}x{source}",
                                                    max_batch=16)
    child = [sys.executable, "-m", "mrdl_bench.peak_rss", "--tiled-child", str(model_dir), "--size", str(args.size)]
    status, seconds, peak, run = measured_run(child)
    if status != 0:
        print(run.stdout + run.stderr, file=sys.stderr)
        print(f"tiled prediction failed with exit status {status}", file=sys.stderr)
        return 2
    megabytes = peak / 1e6
    verdict = "within" if megabytes <= args.limit_mb else "ABOVE"
    print(run.stdout.strip())
    print(f"peak RSS of a tiled prediction on one {args.size}x{args.size} RGB image (in memory, counted): "
          f"{megabytes:.0f} MB ({peak / 2**20:.0f} MiB), {verdict} the limit of {args.limit_mb:.0f} MB; "
          f"{seconds:.1f} s in all")
    return 0 if megabytes <= args.limit_mb else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, help="image side in pixels (default 10000, --tiled 20000)")
    parser.add_argument("--model-dir", type=Path, help="deploy directory (default: export the tiny config here; "
                                                        "with --tiled it needs a source_size)")
    parser.add_argument("--limit-mb", type=float, help="bound in MB (default 1500, --tiled 2000)")
    parser.add_argument("--tiled", action="store_true", help="tiled inference on an in-memory image instead")
    parser.add_argument("--tiled-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--workdir", type=Path, help="keep the image, model and outputs here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = TILED_SIZE if args.tiled or args.tiled_child else DEFAULT_SIZE
    if args.limit_mb is None:
        args.limit_mb = TILED_LIMIT_MB if args.tiled else DEFAULT_LIMIT_MB
    if args.tiled_child:
        tiled_child(args.tiled_child, args.size)
        return 0

    with tempfile.TemporaryDirectory(prefix="mrdl-peak-rss-") as temporary:
        work = args.workdir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        if args.tiled:
            return measure_tiled(args, work)
        image = work / f"large_{args.size}.png"
        if not image.is_file():
            write_test_image(image, args.size)
        model_dir = args.model_dir or export_tiny_model(work)
        status, seconds, peak, output = peak_rss_of_predict(model_dir, image, work / "out", backend=args.backend)
    if status != 0:
        print(output, file=sys.stderr)
        print(f"mrdl predict failed with exit status {status}", file=sys.stderr)
        return 2
    megabytes = peak / 1e6
    verdict = "within" if megabytes <= args.limit_mb else "ABOVE"
    print(f"peak RSS of mrdl predict on one {args.size}x{args.size} RGB PNG: {megabytes:.0f} MB "
          f"({peak / 2**20:.0f} MiB), {verdict} the limit of {args.limit_mb:.0f} MB; {seconds:.1f} s")
    return 0 if megabytes <= args.limit_mb else 1


if __name__ == "__main__":
    sys.exit(main())
