"""mrdl_runtime against its contract: torch-free, training's preprocessing bit for bit, PyTorch's masks.

The model is conftest's ``tiny_export``: the tiny config with its head's bias shifted so that about
30 % of the synthetic pixels are foreground (the masks are not trivially empty), exported with
``mrdl_export.export_model``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MIN_DICE_AGREEMENT = 0.999  # FP32 runtime vs PyTorch, per image


@pytest.fixture(scope="session")
def segmenter(tiny_export):
    from mrdl_runtime import Segmenter

    with Segmenter.load(tiny_export[1], backend="onnxruntime-cpu") as loaded:
        yield loaded


def dice_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Dice between two binary masks; both empty counts as full agreement."""
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def test_runtime_runs_with_torch_blocked(tiny_export, block_torch, repo_root):
    code = block_torch + f"""
import numpy as np
from mrdl_runtime import Segmenter
with Segmenter.load({str(tiny_export[1])!r}) as segmenter:
    prediction = segmenter.predict(np.full((50, 70, 3), 128, np.uint8))
assert prediction.mask.shape == (50, 70), prediction.mask.shape
assert not any(name.split('.')[0] in ('torch', 'mrdl') for name in sys.modules)
assert 'onnxruntime' in sys.modules
print('ok', segmenter.backend)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "onnxruntime-cpu"]


@pytest.mark.parametrize("shape", [(37, 53, 3), (301, 157, 3), (20, 30, 3), (64, 64, 3), (45, 61), (33, 47, 1),
                                   (40, 41, 4)])
def test_preprocessing_equals_training(shape):
    from mrdl.data.preprocess import preprocess as training_preprocess
    from mrdl_runtime.imaging import preprocess

    image = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    ours = preprocess(image, (64, 64))
    assert ours.dtype == np.float32 and ours.shape == (3, 64, 64)
    np.testing.assert_array_equal(ours, training_preprocess(image, 64))


def test_bgr_input_equals_rgb():
    from mrdl_runtime.imaging import preprocess

    rgb = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess(rgb[:, :, ::-1], (64, 64), channel_order="BGR"), preprocess(rgb, (64, 64)))


def _runtime_masks(segmenter, paths: list[Path]) -> dict[str, np.ndarray]:
    from mrdl.data.preprocess import read_rgb

    predictions = segmenter.predict_batch([read_rgb(p) for p in paths], at_model_size=True)
    return {p.name: pred.mask for p, pred in zip(paths, predictions)}


def _compare_with_pytorch(segmenter, ckpt: Path, root: Path) -> tuple[list[float], float]:
    from mrdl.data.dataset import list_samples
    from mrdl.evaluate import predict_masks

    reference = predict_masks(ckpt, root, split="Val")  # PyTorch, as `mrdl evaluate` computes it
    samples = list_samples(root, "Val", require_text=False)
    ours = _runtime_masks(segmenter, [s.image_path for s in samples])
    agreements = [dice_agreement(ours[s.image_path.name], reference[s.name]) for s in samples]
    foreground = float(np.mean([reference[s.name].mean() for s in samples]))
    return agreements, foreground


def test_masks_equal_pytorch_on_synthetic(segmenter, tiny_export, tmp_path):
    from mrdl.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "synthetic", n_train=1, n_val=8, size=96)
    agreements, foreground = _compare_with_pytorch(segmenter, tiny_export[0], root)
    assert 0.05 < foreground < 0.95, f"masks are (nearly) trivial: {foreground:.3f} foreground"
    assert min(agreements) >= MIN_DICE_AGREEMENT, agreements


def test_masks_equal_pytorch_on_monuseg_val(segmenter, tiny_export, monuseg_root):
    agreements, _ = _compare_with_pytorch(segmenter, tiny_export[0], monuseg_root)
    assert len(agreements) > 0
    assert min(agreements) >= MIN_DICE_AGREEMENT, agreements


def test_probabilities_match_pytorch_closely(segmenter, tiny_export):
    torch = pytest.importorskip("torch")
    from mrdl.checkpoint import load_checkpoint
    from mrdl.data.preprocess import preprocess
    from mrdl.data.synthetic import synthetic_sample

    model, _ = load_checkpoint(tiny_export[0])
    images = [synthetic_sample(i, size=77, seed=3)[0] for i in range(3)]
    with torch.no_grad():
        reference = torch.sigmoid(model.eval()(torch.from_numpy(np.stack([preprocess(im, 64) for im in images]))).logits)
    ours = np.stack([p.probabilities for p in segmenter.predict_batch(images, at_model_size=True)])
    assert ours.shape == (3, 1, 64, 64)
    assert np.abs(ours - reference.numpy()).max() < 1e-4


def test_original_size_is_pillow_bilinear_of_model_size(segmenter):
    from mrdl.data.synthetic import synthetic_sample

    image = synthetic_sample(5, size=90, seed=0)[0][:71, :, :]  # 71 x 90, not square
    small = segmenter.predict(image, at_model_size=True)
    full = segmenter.predict(image)
    assert full.mask.shape == (71, 90) and full.probabilities.shape == (1, 71, 90)
    expected = np.asarray(Image.fromarray(small.probabilities[0]).resize((90, 71), Image.BILINEAR))
    np.testing.assert_array_equal(full.probabilities[0], expected)
    np.testing.assert_array_equal(full.mask, (expected > 0.5).astype(np.uint8))


def test_grayscale_inputs_equal_replicated_rgb(segmenter):
    gray = np.random.default_rng(1).integers(0, 256, size=(50, 60), dtype=np.uint8)
    rgb = segmenter.predict(np.repeat(gray[:, :, None], 3, axis=2))
    for variant in (gray, gray[:, :, None]):
        np.testing.assert_array_equal(segmenter.predict(variant).probabilities, rgb.probabilities)


def test_predict_batch_chunks_beyond_max_batch(segmenter):
    from mrdl.data.synthetic import synthetic_sample

    images = [synthetic_sample(i, size=48 + 5 * i, seed=1)[0] for i in range(6)]  # max_batch is 4
    calls = segmenter.runner.count
    batched = segmenter.predict_batch(images)
    assert segmenter.runner.count - calls == 2
    assert [p.mask.shape for p in batched] == [im.shape[:2] for im in images]
    for image, prediction in zip(images, batched):
        np.testing.assert_allclose(segmenter.predict(image).probabilities, prediction.probabilities, atol=1e-6)
    assert segmenter.predict_batch([]) == []
