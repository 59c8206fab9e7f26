"""mrdl.metrics on hand-made masks: the 0.5 threshold and argmax, per-image Dice and IoU counted by hand,
empty masks on either side or both."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from mrdl.metrics import dice_iou_per_image, predict_mask  # noqa: E402


def _mask(size: int, *pixels: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.long)
    for row, column in pixels:
        mask[row, column] = 1
    return mask


def test_predict_mask_thresholds_sigmoid_strictly_above():
    p = torch.tensor([0.2, 0.5, 0.5001, 0.9])
    logits = torch.log(p / (1 - p)).reshape(1, 1, 1, 4)  # sigmoid(logit(p)) = p
    assert predict_mask(logits).tolist() == [[[0, 0, 1, 1]]]  # 0.5 itself is background
    assert predict_mask(logits, threshold=0.1).tolist() == [[[1, 1, 1, 1]]]
    assert predict_mask(logits, threshold=0.95).tolist() == [[[0, 0, 0, 0]]]
    assert predict_mask(logits).dtype == torch.long and predict_mask(logits).shape == (1, 1, 4)


def test_predict_mask_takes_the_argmax_over_classes():
    logits = torch.tensor([[[[0.1, 3.0]], [[2.0, -1.0]], [[-5.0, 3.5]]]])  # (B=1, K=3, H=1, W=2)
    assert predict_mask(logits).tolist() == [[[1, 2]]]
    assert predict_mask(logits, threshold=0.99).tolist() == [[[1, 2]]]  # no threshold with many classes


def test_dice_and_iou_counted_by_hand():
    pred = _mask(4, (0, 0), (0, 1), (1, 0), (1, 1))  # 4 pixels
    truth = _mask(4, (0, 1), (1, 0), (1, 1), (2, 2), (3, 3), (3, 0))  # 6 pixels, 3 shared
    dice, iou = dice_iou_per_image(pred[None], truth[None])
    assert dice.dtype == torch.float64 and dice.shape == (1,) and iou.shape == (1,)
    assert dice.item() == pytest.approx(2 * 3 / (4 + 6), abs=1e-12)
    assert iou.item() == pytest.approx(3 / 7, abs=1e-12)  # union: 4 + 6 - 3


def test_empty_masks():
    empty, one = _mask(3), _mask(3, (1, 1))
    dice, iou = dice_iou_per_image(torch.stack([empty, empty, one, empty]), torch.stack([empty, one, empty, one]))
    assert dice.tolist() == [1.0, 0.0, 0.0, 0.0]  # both empty: nothing to miss; otherwise nothing shared
    assert iou.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert not any(math.isnan(v) for v in dice.tolist() + iou.tolist())


def test_scores_are_per_image_not_pooled_over_the_batch():
    pred = torch.stack([_mask(4, (0, 0)), _mask(4, *[(r, c) for r in range(4) for c in range(4)])])
    truth = torch.stack([_mask(4, (0, 0)), _mask(4, (0, 0))])
    dice, iou = dice_iou_per_image(pred, truth)
    assert dice.tolist() == pytest.approx([1.0, 2 / 17])  # pooled it would be 4 / 19
    assert iou.tolist() == pytest.approx([1.0, 1 / 16])


def test_channel_axis_and_label_values_do_not_change_the_score():
    pred = _mask(5, (0, 0), (2, 3), (4, 4))
    truth = _mask(5, (0, 0), (2, 3))
    plain = dice_iou_per_image(pred[None], truth[None])
    with_channel = dice_iou_per_image(pred[None, None], truth[None, None])  # (B, 1, H, W)
    labels = dice_iou_per_image(pred[None] * 3, truth[None].bool())  # any non-zero is foreground
    assert plain[0].item() == pytest.approx(4 / 5) and plain[1].item() == pytest.approx(2 / 3)
    for other in (with_channel, labels):
        assert other[0].item() == plain[0].item() and other[1].item() == plain[1].item()
