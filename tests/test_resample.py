"""mrdl_runtime.resample: the runtime's one resampler, its two paths and where they agree.

The Pillow path (whole images, as training) and the documented horizontal-first rule (tiled and
whole-slide paths, as C++) are checked against Pillow itself here and in test_tiling.py /
test_runtime_vectors.py; this file checks the claim of the module docstring: they agree exactly
unless both axes shrink, and then by at most one grey level.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrdl_runtime import imaging
from mrdl_runtime.resample import pillow_map_strips, resample_rgb, resize_rgb, resized_strips

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shape, size", [((37, 53), (224, 224)), ((100, 60), (333, 777)), ((500, 224), (224, 224)),
                                         ((224, 300), (224, 224)), ((64, 64), (64, 64)), ((40, 300), (224, 224))])
def test_the_two_paths_agree_exactly_unless_both_axes_shrink(shape, size):
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert np.array_equal(resize_rgb(rgb, size), resample_rgb(rgb, size))


@pytest.mark.parametrize("shape", [(500, 300), (1000, 600), (448, 300), (3000, 2000)])
def test_when_both_axes_shrink_the_paths_differ_by_at_most_one_grey_level(shape):
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    pillow, documented = resize_rgb(rgb, (224, 224)), resample_rgb(rgb, (224, 224))
    assert np.abs(pillow.astype(np.int16) - documented).max() <= 1
    assert np.array_equal(pillow, np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BILINEAR)))


def test_probability_maps_pillow_path_is_pillow_and_matches_the_documented_rule_when_growing():
    probability = np.random.default_rng(3).random((50, 70), dtype=np.float32)
    pillow = np.concatenate([rows for _, rows in pillow_map_strips(probability, (173, 211))])
    assert np.array_equal(pillow, np.asarray(Image.fromarray(probability).resize((211, 173), Image.BILINEAR)))
    documented = np.concatenate([rows for _, rows in resized_strips(probability, (173, 211))])
    assert np.array_equal(pillow, documented)
    assert np.array_equal(imaging.resize_probabilities(probability[None], (173, 211))[0], pillow)


def test_no_other_runtime_module_resamples_bilinearly():
    """Bilinear resizing lives in resample.py alone (other modules may use NEAREST or BOX for pictures)."""
    offenders = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "runtime").glob("*.py"))
                 if path.name != "resample.py" and re.search(r"BILINEAR|def axis_taps|_vertical", path.read_text())]
    assert offenders == []
