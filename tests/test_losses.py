"""mrdl.losses against independent float64 numpy computations: probabilities, soft Dice, BCE / CE and
the weighted sum L = w_dice * Dice + w_ce * CE + w_kl * L_KL."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mrdl.config import LossConfig  # noqa: E402
from mrdl.losses import (LossTerms, cross_entropy_loss, probabilities, segmentation_loss,  # noqa: E402
                         soft_dice_loss)

SMOOTH = 1e-5  # soft_dice_loss's default


def _logits(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0.0, 2.0, size=shape).astype(np.float32))


def _labels(shape: tuple[int, ...], n_classes: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, n_classes, size=shape))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:  # over axis 1
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _dice_by_hand(probs: np.ndarray, truth: np.ndarray) -> float:
    """1 - mean over (sample, class) of (2 sum(p t) + s) / (sum p + sum t + s)."""
    scores = [(2 * (probs[b, k] * truth[b, k]).sum() + SMOOTH) / (probs[b, k].sum() + truth[b, k].sum() + SMOOTH)
              for b in range(probs.shape[0]) for k in range(probs.shape[1])]
    return 1.0 - float(np.mean(scores))


def test_probabilities_are_sigmoid_for_one_class_and_softmax_over_classes():
    one, three = _logits((2, 1, 4, 5), 0), _logits((2, 3, 4, 5), 1)
    np.testing.assert_allclose(probabilities(one).numpy(), _sigmoid(one.double().numpy()), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(probabilities(three).numpy(), _softmax(three.double().numpy()), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(probabilities(three).sum(1).numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("channel_axis", [True, False])
def test_soft_dice_one_class_equals_the_hand_formula(channel_axis):
    logits = _logits((3, 1, 6, 7), 2)
    mask = _labels((3, 6, 7), 2, 3)
    target = mask[:, None] if channel_axis else mask  # (B, 1, H, W) and (B, H, W) mean the same
    expected = _dice_by_hand(_sigmoid(logits.double().numpy()), mask.numpy()[:, None].astype(np.float64))
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_soft_dice_many_classes_equals_the_hand_formula():
    logits, labels = _logits((2, 3, 5, 5), 4), _labels((2, 5, 5), 3, 5)
    truth = (labels.numpy()[:, None] == np.arange(3)[None, :, None, None]).astype(np.float64)  # one-hot (B, K, H, W)
    expected = _dice_by_hand(_softmax(logits.double().numpy()), truth)
    assert soft_dice_loss(logits, labels).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_soft_dice_limits():
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    mask[..., 1:3, 1:3] = 1
    confident = torch.where(mask.bool(), 30.0, -30.0)
    assert soft_dice_loss(confident, mask).item() == pytest.approx(0.0, abs=1e-6)  # right everywhere
    assert soft_dice_loss(-confident, mask).item() == pytest.approx(1.0, abs=1e-6)  # wrong everywhere
    # empty truth and (almost) empty prediction: the smoothing term makes that a perfect score, not 0/0
    assert soft_dice_loss(torch.full((1, 1, 4, 4), -30.0), torch.zeros_like(mask)).item() == pytest.approx(0.0, abs=1e-6)
    # a uniform 0.5 prediction against 4 of 16 pixels: 1 - (2*2 + s) / (8 + 4 + s)
    half = soft_dice_loss(torch.zeros(1, 1, 4, 4), mask).item()
    assert half == pytest.approx(1 - (4 + SMOOTH) / (12 + SMOOTH), rel=1e-6)


def test_binary_cross_entropy_equals_the_hand_formula_and_torch():
    logits, mask = _logits((2, 1, 5, 6), 6), _labels((2, 1, 5, 6), 2, 7)
    x, y = logits.double().numpy(), mask.numpy().astype(np.float64)
    p = _sigmoid(x)
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    ours = cross_entropy_loss(logits, mask).item()
    assert ours == pytest.approx(expected, rel=1e-5)
    reference = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits.double()), mask.double()).item()
    assert ours == pytest.approx(reference, rel=1e-5)
    assert cross_entropy_loss(logits, mask[:, 0]).item() == ours  # (B, H, W) targets too


def test_multiclass_cross_entropy_equals_minus_mean_log_softmax():
    logits, labels = _logits((2, 4, 3, 5), 8), _labels((2, 3, 5), 4, 9)
    p = _softmax(logits.double().numpy())
    picked = np.take_along_axis(p, labels.numpy()[:, None], axis=1)
    expected = -np.mean(np.log(picked))
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    assert cross_entropy_loss(logits, labels[:, None]).item() == pytest.approx(expected, rel=1e-5)


def test_segmentation_loss_weights_the_three_terms():
    assert (LossConfig().dice_weight, LossConfig().ce_weight, LossConfig().kl_weight) == (0.5, 0.5, 1.0)  # the paper's
    logits, mask = _logits((2, 1, 4, 4), 10), _labels((2, 1, 4, 4), 2, 11)
    kl = torch.tensor(0.37)
    dice, ce = soft_dice_loss(logits, mask).item(), cross_entropy_loss(logits, mask).item()

    terms = segmentation_loss(logits, mask, kl)
    assert isinstance(terms, LossTerms)
    assert (terms.dice.item(), terms.ce.item(), terms.kl.item()) == (dice, ce, pytest.approx(0.37))
    assert terms.total.item() == pytest.approx(0.5 * dice + 0.5 * ce + 1.0 * 0.37, rel=1e-6)

    weighted = segmentation_loss(logits, mask, kl, LossConfig(dice_weight=2.0, ce_weight=3.0, kl_weight=5.0))
    assert weighted.total.item() == pytest.approx(2 * dice + 3 * ce + 5 * 0.37, rel=1e-6)

    without_kl = segmentation_loss(logits, mask, None)
    assert without_kl.kl.item() == 0.0 and without_kl.total.item() == pytest.approx(0.5 * dice + 0.5 * ce, rel=1e-6)


def test_loss_gradient_points_towards_the_target():
    mask = _labels((1, 1, 6, 6), 2, 12)
    logits = torch.zeros(1, 1, 6, 6, requires_grad=True)
    segmentation_loss(logits, mask, None).total.backward()
    grad = logits.grad[0, 0]
    assert (grad[mask[0, 0] == 1] < 0).all() and (grad[mask[0, 0] == 0] > 0).all()
