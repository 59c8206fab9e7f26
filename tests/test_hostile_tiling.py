"""The cost of the tiled path is bounded before anything is allocated (issue 21, item 1;
docs/tiling.md section 3, "Cost bound"): the resampled image by ``max_pixels`` (``--max-pixels``),
the windows by 16 x ``max_pixels`` model pixels. With ``source_size`` [1, 1] a 1000x1000 image
asked an 11 GiB resample and raised MemoryError; the range of ``source_size`` now refuses that at
load, and this bound covers what the range still allows (a quarter of the model size)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from reexport import rewrite_manifest


def test_resampled_image_over_max_pixels_is_refused_before_allocation():
    from mrdl_runtime.imaging import ImageInputError
    from mrdl_runtime.tiling import plan_tiles

    plan = plan_tiles((1000, 1000), (16, 16), (64, 64), 0.25, max_pixels=16_000_000)  # 4000x4000: at the limit
    assert plan.resampled_size == (4000, 4000)
    with pytest.raises(ImageInputError, match=r"a 1000x1000 image at the training scale is 4000x4000 = 16,000,000 "
                                              r"pixels, over the limit of 15,999,999 pixels; raise it with --max-pixels"):
        plan_tiles((1000, 1000), (16, 16), (64, 64), 0.25, max_pixels=15_999_999)


def test_window_count_is_bounded_by_sixteen_times_max_pixels():
    from mrdl_runtime.imaging import ImageInputError
    from mrdl_runtime.tiling import plan_tiles

    assert len(plan_tiles((640, 640), (64, 64), (64, 64), 0.25, max_pixels=1_000_000).windows) == 13 * 13
    assert len(plan_tiles((640, 640), (64, 64), (64, 64), 0.75, max_pixels=1_000_000).windows) == 37 * 37
    with pytest.raises(ImageInputError, match=r"9,409 windows of 64x64 = 38,539,264 model pixels \(more than 16 x the "
                                              r"limit: lower the overlap\)"):
        plan_tiles((640, 640), (64, 64), (64, 64), 0.9, max_pixels=1_000_000)


def test_segmenter_applies_its_max_pixels_to_the_tiled_path(model_dir, tmp_path):
    from mrdl_runtime import Segmenter
    from mrdl_runtime.imaging import ImageInputError

    deploy = rewrite_manifest(shutil.copytree(model_dir, tmp_path / "deploy"), {"source_size": [16, 16]})
    image = np.zeros((300, 300, 3), np.uint8)  # 1200x1200 at the training scale: 1.44 M pixels
    with Segmenter.load(deploy, backend="onnxruntime-cpu") as segmenter:
        with pytest.raises(ImageInputError, match="1200x1200 = 1,440,000 pixels, over the limit of 1,000,000"):
            segmenter.predict(image, tile=True, max_pixels=1_000_000)
        assert segmenter.predict(image[:40, :40], tile=True, max_pixels=1_000_000).tiled
