"""Evaluation: per-image scores, summary, overlay grid, PyTorch reference masks, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mrdl.checkpoint import save_checkpoint
from mrdl_apps.cli import main
from mrdl.data.dataset import SegmentationDataset
from mrdl.data.synthetic import write_synthetic_dataset
from mrdl.evaluate import evaluate_checkpoint, predict_dataset, predict_masks, score_masks
from mrdl.metrics import predict_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    return write_synthetic_dataset(tmp_path / "syn", n_train=1, n_val=3, size=64)


@pytest.fixture
def checkpoint(tmp_path: Path, tiny_model) -> Path:
    return save_checkpoint(tmp_path / "tiny.safetensors", tiny_model, provenance={"epoch": 0})


def test_score_masks_against_known_predictions(dataset_root: Path):
    dataset = SegmentationDataset(dataset_root, "Val", image_size=64)
    perfect = {name: dataset.raw(i)[1] for i, name in enumerate(dataset.names)}
    assert all(row["dice"] == 1.0 and row["iou"] == 1.0 for row in score_masks(perfect, dataset))
    empty = {name: np.zeros((64, 64), np.uint8) for name in dataset.names}
    assert all(row["dice"] == 0.0 for row in score_masks(empty, dataset))
    half = {}
    for i, name in enumerate(dataset.names):
        mask = dataset.raw(i)[1].copy()
        rows, cols = np.nonzero(mask)
        mask[rows[::2], cols[::2]] = 0  # keep about half of the true pixels, no false positives
        half[name] = mask
    for row, i in zip(score_masks(half, dataset), range(3)):
        kept = half[row["image"]].sum()
        total = dataset.raw(i)[1].sum()
        assert row["dice"] == pytest.approx(2 * kept / (kept + total))
        assert row["iou"] == pytest.approx(kept / total)


def test_evaluate_checkpoint_writes_reports(dataset_root: Path, checkpoint: Path, tmp_path: Path, tiny_model):
    out = tmp_path / "eval"
    summary = evaluate_checkpoint(checkpoint, dataset_root, "Val", out)
    with open(out / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == ["synthetic_0001.png", "synthetic_0002.png", "synthetic_0003.png"]
    assert summary["images"] == 3 and summary["image_size"] == 64 and summary["threshold"] == 0.5
    assert summary["dice"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]))
    assert json.loads((out / "summary.json").read_text())["iou"] == pytest.approx(summary["iou"])
    assert (out / "overlays.png").stat().st_size > 1000
    masks = predict_masks(checkpoint, dataset_root, split="Val")
    dataset = SegmentationDataset(dataset_root, "Val", image_size=64)
    tiny_model.eval()
    with torch.no_grad():
        logits = tiny_model(torch.stack([dataset[i]["image"] for i in range(3)])).logits
    expected = predict_mask(logits).numpy().astype(np.uint8)  # (3, 64, 64)
    for i, name in enumerate(dataset.names):
        assert masks[name].shape == (64, 64) and masks[name].dtype == np.uint8
        assert np.array_equal(masks[name], expected[i])
    assert predict_dataset(tiny_model, dataset).keys() == masks.keys()


@pytest.mark.parametrize("n_classes", [1, 3])
def test_predict_mask_is_the_runtimes_rule(n_classes: int):
    """PyTorch's masks (evaluation, training's validation) are the runtime's masks of the same probabilities."""
    from mrdl.losses import probabilities
    from mrdl_runtime.imaging import probabilities_to_mask

    logits = torch.randn(4, n_classes, 16, 16, generator=torch.Generator().manual_seed(0))
    logits[0, 0, 0, 0] = 0.0  # probability exactly 0.5 (one class): background under both
    runtime = [probabilities_to_mask(p, threshold=0.5) for p in probabilities(logits).numpy()]
    assert np.array_equal(predict_mask(logits).numpy(), np.stack(runtime))


def test_evaluate_cli(dataset_root: Path, checkpoint: Path, tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", "--ckpt", str(checkpoint), "--data", str(dataset_root),
                                  "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0])["images"] == 3
    missing = runner.invoke(main, ["evaluate", "--ckpt", str(checkpoint), "--data", str(dataset_root),
                                   "--split", "Test", "--out", str(tmp_path / "t")])
    assert missing.exit_code != 0 and "Test_Folder" in missing.output
    bad = runner.invoke(main, ["evaluate", "--ckpt", str(tmp_path / "none.safetensors"), "--data",
                               str(dataset_root), "--out", str(tmp_path / "n")])
    assert bad.exit_code != 0 and "does not exist" in bad.output


def test_monuseg_smoke(monuseg_root: Path, checkpoint: Path, tmp_path: Path):
    summary = evaluate_checkpoint(checkpoint, monuseg_root, "Val", tmp_path / "monuseg")
    assert summary["images"] == 6 and 0.0 <= summary["dice"] <= 1.0
