"""Python vs C++ tiled inference on one large image: the masks of ``mrdl_runtime.Segmenter.predict``
and of the C++ ``mrdl_segment`` (reading the same pixels as a 16-bit tiled TIFF), with times and the
C++ peak RSS.

    python tests/cpp/compare_tiled.py [SIDE] [BUILD_DIR]

SIDE (default 3000) is the square image's side; BUILD_DIR (default runtime/cpp/build) must hold
``mrdl_segment`` and the ctest's ``test_data`` (run the suite once first): its ``model`` is the
``tiny`` test model with ``source_size`` [128, 128] for its 64x64 input, so a SIDE image is tiled at
half scale. Prints one line; exits 1 when the masks differ.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_test_data import _write_tiff  # noqa: E402


def main(side: int, build: Path) -> int:
    from mrdl.data.synthetic import synthetic_sample
    from mrdl_runtime import Segmenter

    model = build / "test_data" / "model"
    if not (build / "mrdl_segment").exists() or not model.is_dir():
        sys.exit(f"{build} has no mrdl_segment or test_data/model: build and run the ctest suite first")
    strip = np.concatenate([synthetic_sample(i, size=500, seed=0)[0] for i in range(6)], axis=1)  # (500, 3000, 3)
    image = np.ascontiguousarray(np.tile(strip, (side // 500 + 1, side // 3000 + 1, 1))[:side, :side])
    with tempfile.TemporaryDirectory() as tmp:
        tiff, mask_png = Path(tmp) / "image.tif", Path(tmp) / "mask.png"
        _write_tiff(tiff, image.astype(np.uint16) * 257, photometric=2, tile=256, deflate=True)
        with Segmenter.load(model, backend="onnxruntime-cpu") as segmenter:
            start = time.perf_counter()
            prediction = segmenter.predict(image, with_probabilities=False)
            python_s = time.perf_counter() - start
        start = time.perf_counter()
        run = subprocess.run(["/usr/bin/time", "-f", "%M", str(build / "mrdl_segment"), str(model), str(tiff),
                              str(mask_png)], capture_output=True, text=True, check=True)
        cpp_s = time.perf_counter() - start
        cpp_mask = np.asarray(Image.open(mask_png)) // 255
    differing = int((cpp_mask != prediction.mask).sum())
    rss_mib = int(run.stderr.strip().splitlines()[-1]) / 1024
    cpp_tiled = "tiled at the training scale" in run.stdout
    print(f"{side}x{side}: Python tiled={prediction.tiled} {python_s:.1f} s; C++ tiled={cpp_tiled} "
          f"{cpp_s:.1f} s incl. TIFF decode and PNG write, peak RSS {rss_mib:.0f} MiB; "
          f"mask pixels differing: {differing} of {cpp_mask.size} (foreground {prediction.mask.mean():.3f})")
    return 1 if differing or not (cpp_tiled and prediction.tiled) else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000,
                  Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[2] / "runtime/cpp/build"))
