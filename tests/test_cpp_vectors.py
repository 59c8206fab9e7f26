"""The reference vectors the C++ runtime's ctest suite compares against (runtime/cpp/scripts/
make_test_data.py) agree with the training preprocessing contract, ``mrdl.data.preprocess``.

The C++ tests check C++ == ``mrdl_runtime``; this closes the loop to what the model was trained on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "runtime" / "cpp" / "scripts" / "make_test_data.py"


@pytest.fixture(scope="module")
def make_test_data():
    spec = importlib.util.spec_from_file_location("make_test_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preprocess_vectors_match_training_preprocessing(make_test_data, tmp_path):
    from mrdl.data.preprocess import preprocess as training_preprocess

    cases = make_test_data._preprocess_vectors(tmp_path, np.random.default_rng(0))
    assert len(cases) == len(make_test_data.PREPROCESS_CASES)
    channels = {case["shape"][2] for case in cases}
    assert channels == {1, 3, 4}, "gray, RGB and RGBA inputs are all covered"
    for case in cases:
        image = np.fromfile(tmp_path / case["image"], dtype="<u1").reshape(case["shape"])
        tensor = np.fromfile(tmp_path / case["expected"], dtype="<f4").reshape(3, *case["size"])
        height, width = case["size"]
        if height == width:  # the training helper resizes to squares only
            np.testing.assert_array_equal(tensor, training_preprocess(image, height), err_msg=case["name"])
        assert tensor.min() >= 0.0 and tensor.max() <= 1.0


def test_postprocess_vectors_threshold_and_argmax(make_test_data, tmp_path):
    cases = make_test_data._postprocess_vectors(tmp_path, np.random.default_rng(0))
    for case in cases:
        k, (height, width) = case["n_classes"], case["size"]
        probs = np.fromfile(tmp_path / case["expected_probabilities"], dtype="<f4").reshape(k, height, width)
        mask = np.fromfile(tmp_path / case["expected_mask"], dtype="<u1").reshape(height, width)
        expected = (probs[0] > case["threshold"]) if k == 1 else probs.argmax(axis=0)
        np.testing.assert_array_equal(mask, expected.astype(np.uint8), err_msg=case["name"])
        assert 0 < mask.mean() < (1 if k == 1 else k - 1), f"{case['name']}: mask is not one constant value"
