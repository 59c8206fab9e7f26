"""The default training schedule of ``small`` and ``base`` is the one issue 24's held-out comparison chose
(docs/training-schedule.md), and the comparison script scales the schedules as it documents."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mrdl.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, epochs", [("small", 100), ("base", 200)])
def test_default_schedule_is_cosine_over_the_run_with_ema_selection(name, epochs):
    train = load_config(name).train
    assert (train.epochs, train.lr_schedule, train.lr_period) == (epochs, "cosine", 0)  # cosine over the whole run
    assert train.patience >= train.epochs  # early stopping cannot end a default run within its cap
    assert (train.ema_decay, train.select) == (0.999, "ema")
    assert (train.min_delta, train.min_delta_mode) == (0.001, "absolute")  # once --patience is set below --epochs


def _script():
    spec = importlib.util.spec_from_file_location("schedule_comparison", ROOT / "scripts" / "schedule_comparison.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_comparison_scales_period_patience_cap_and_ema_horizon():
    script = _script()
    at_02 = script.schedules(0.2, 3)
    assert at_02["cosine-hold-ema"] == dict(epochs=60, lr_period=20, ema_decay=0.995, select="ema", patience=10,
                                            min_delta=0.0)
    assert at_02["cosine-run-ema"] == dict(epochs=20, lr_period=20, ema_decay=0.995, select="ema", patience=60)
    assert at_02["cosine-run"]["ema_decay"] == 0.0 and at_02["cosine-run"]["select"] == "raw"
    assert script.schedules(0.1, 3)["cosine-hold-ema"]["ema_decay"] == pytest.approx(0.99)  # the tiny comparison's
    assert script.schedules(1.0, 10)["cosine-hold-ema"] == dict(epochs=1000, lr_period=100, ema_decay=0.999,
                                                                select="ema", patience=50, min_delta=0.0)


def test_comparison_table_reports_mean_spread_and_each_seed():
    rows = [{"schedule": "cosine-run", "seed": seed, "epochs": 20, "seconds": 10.0 * (seed + 1), "best_epoch": 15 + seed,
             "held_out_dice": dice, "val_dice": 0.6} for seed, dice in enumerate((0.70, 0.72, 0.74))]
    line = _script().table(rows).splitlines()[2]
    assert line == "| cosine-run | 3 | 20; 20, 20, 20 | 20 | 15, 16, 17 | 72.00 ± 2.00 (70.00-74.00) | 60.00 |"
