"""Recipes, the schedule (early stop, epoch cap, lr period), batch splitting and the weight EMA."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mrdl.checkpoint import read_checkpoint
from mrdl.data.embeddings import compute_embeddings
from mrdl.data.synthetic import write_synthetic_dataset
from mrdl.distributed import DistributedError
from mrdl.ema import WeightEMA
from mrdl.recipes import RECIPES, apply_recipe
from helpers.training import resume_run, train_run
from mrdl_apps.cli import main

pytestmark = [pytest.mark.filterwarnings("ignore::mrdl.text.RandomTextTowerWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data")
    root = write_synthetic_dataset(folder / "syn", n_train=4, n_val=2, size=64)
    return root, compute_embeddings(root, tiny_config, out=folder / "text.safetensors", random_init=True)


def _train(tiny_config, data, out: Path, **kwargs):
    return train_run(tiny_config, data, out, seed=2, **kwargs)


def _resume(out: Path, **kwargs):
    return resume_run(out, **kwargs)


def _same_weights(a: Path, b: Path) -> bool:
    x, y = read_checkpoint(a).state_dict, read_checkpoint(b).state_dict
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_recipe_is_printed_applied_and_stored(tmp_path: Path, tiny_config, data):
    root, _ = data
    glas = RECIPES["glas"]
    embeddings = compute_embeddings(root, apply_recipe(tiny_config, glas), out=tmp_path / "glas.safetensors",
                                    random_init=True)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--config", "tiny", "--recipe", "glas", "--batch-size", "8",
                                       "--data", str(root), "--embeddings", str(embeddings), "--epochs", "1",
                                       "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert (f"recipe glas ({glas.dataset}): batch 8, lr 0.001, lambda_3 0.1, prompt '{glas.prompt}'"
            in result.output)  # --batch-size overrides the recipe's 2
    checkpoint = read_checkpoint(out / "last.safetensors")
    assert checkpoint.provenance["recipe"] == glas.to_dict()
    assert checkpoint.config.loss.kl_weight == 0.1 and checkpoint.config.model.prompt == glas.prompt
    assert checkpoint.config.train.batch_size == 8
    unknown = CliRunner().invoke(main, ["train", "--config", "tiny", "--recipe", "brats", "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 1 and "no recipe named 'brats'; available: monuseg, glas, mosmedplus, qata-cov19" \
        in unknown.output


def test_epoch_cap_is_only_a_limit_and_the_lr_period_its_own(tmp_path: Path, tiny_config, data):
    """cosine over 2 epochs then held; a run capped at 2 and resumed with cap 4 equals a 4-epoch run.
    Both pick their best checkpoint on the mean Val Dice of the last 2 epochs (val_window)."""
    straight = _train(tiny_config, data, tmp_path / "straight", epochs=4, lr_period=2, val_window=2)
    assert [row["lr"] for row in straight.history] == pytest.approx([1e-3, 5e-4, 0.0, 0.0], abs=1e-12)
    dice = [row["val_dice"] for row in straight.history]
    smoothed = [sum(dice[max(0, i - 1): i + 1]) / len(dice[max(0, i - 1): i + 1]) for i in range(4)]
    best = read_checkpoint(straight.best_checkpoint).provenance
    assert best["epoch"] == 1 + smoothed.index(max(smoothed)) and best["val_window"] == 2
    assert best["val_dice_smoothed"] == pytest.approx(max(smoothed)) and best["val_dice"] == dice[best["epoch"] - 1]
    capped = _train(tiny_config, data, tmp_path / "capped", epochs=2, lr_period=2, val_window=2)
    assert capped.epochs_completed == 2 and not capped.stopped_early
    raised = _resume(tmp_path / "capped", epochs=4)
    assert raised.epochs_completed == 4
    assert _same_weights(straight.last_checkpoint, raised.last_checkpoint)
    assert read_checkpoint(raised.last_checkpoint).config.train.epochs == 4


def test_global_batch_must_split_over_processes_and_accumulation(tmp_path: Path, tiny_config, data):
    with pytest.raises(DistributedError, match=r"batch size 3 \(the global batch of one step\) does not split into "
                                               r"1 process\(es\) x 2 accumulation step\(s\)"):
        _train(tiny_config, data, tmp_path / "run", epochs=1, batch_size=3, accumulate=2)


def test_weight_ema_follows_timm_model_ema_v3():
    timm_utils = pytest.importorskip("timm.utils", reason="timm (the reference EMA) is not installed")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ours = WeightEMA(model, decay=0.99, warmup_power=2 / 3)
    reference = timm_utils.ModelEmaV3(copy.deepcopy(model), decay=0.99, use_warmup=True, warmup_power=2 / 3,
                                      foreach=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(1, 31):
        model(torch.randn(8, 4)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ours.update(model)
        reference.update(model, step=step)
    for name, value in reference.module.state_dict().items():
        assert torch.allclose(ours.state_dict()[name].float(), value.float(), atol=1e-6), name
    assert ours.decay_at(1) == 0.0 and ours.decay_at(10**9) == 0.99


@pytest.mark.filterwarnings("ignore::mrdl.train.ShortEmaRunWarning")  # 3 steps: a deliberately short EMA run
def test_ema_selects_best_and_resumes_exactly(tmp_path: Path, tiny_config, data):
    straight = _train(tiny_config, data, tmp_path / "straight", epochs=3, ema_decay=0.9, select="ema")

    def stop_after_first(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    stopped = _train(tiny_config, data, tmp_path / "resumed", epochs=3, ema_decay=0.9, select="ema",
                     on_epoch_end=stop_after_first)
    assert stopped.interrupted
    resumed = _resume(tmp_path / "resumed")
    for name in ("best.safetensors", "last.safetensors"):
        assert _same_weights(straight.out_dir / name, resumed.out_dir / name), name
    ema_scores = [row["val_dice_ema"] for row in straight.history]
    best = read_checkpoint(straight.best_checkpoint)
    assert best.provenance["val_dice"] == pytest.approx(max(ema_scores))
    assert best.provenance["selected_weights"] == "ema" and straight.best_val_dice == max(ema_scores)
    header = (straight.out_dir / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith("val_dice,val_iou,val_dice_ema,val_iou_ema,seconds")
    with pytest.raises(ValueError, match="select must be 'raw' or 'ema'"):
        _train(tiny_config, data, tmp_path / "bad", epochs=1, select="ema")


def test_selecting_on_an_ema_longer_than_the_run_warns(tmp_path: Path, tiny_config, data):
    import warnings

    from mrdl.train import ShortEmaRunWarning

    with pytest.warns(ShortEmaRunWarning, match="--select raw"):  # 1 epoch of a few steps vs ~1000
        _train(tiny_config, data, tmp_path / "short", epochs=1, ema_decay=0.999, select="ema")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShortEmaRunWarning)
        _train(tiny_config, data, tmp_path / "raw", epochs=1, ema_decay=0.999, select="raw")


def test_real_gain_absolute_and_relative_min_delta(tiny_config):
    from mrdl.train import real_gain

    train = tiny_config.train
    absolute = dataclasses.replace(train, min_delta=0.01)
    relative = dataclasses.replace(train, min_delta=0.02, min_delta_mode="relative")
    assert real_gain(0.0, None, absolute)  # the first score always counts
    assert real_gain(0.50001, 0.5, train) and not real_gain(0.5, 0.5, train)  # min_delta 0: any increase
    assert not real_gain(0.509, 0.5, absolute) and real_gain(0.511, 0.5, absolute)
    assert not real_gain(0.509, 0.5, relative) and real_gain(0.511, 0.5, relative)  # 2% of 0.5 = 0.01
    with pytest.raises(ValueError, match="min_delta must be a finite number >= 0"):
        dataclasses.replace(train, min_delta=-0.1).validate()


def _scripted_validation(monkeypatch, scores: list[float]) -> None:
    """Make each epoch's Val Dice the next of ``scores`` (IoU = Dice / 2), to test the stopping rule exactly."""
    import mrdl.train

    remaining = iter(scores)

    def validate(model, dataset, engine, batch_size):
        score = next(remaining)
        return score, score / 2

    monkeypatch.setattr(mrdl.train, "validate", validate)


@pytest.mark.parametrize("mode, min_delta", [("absolute", 0.001), ("relative", 0.002)])
def test_a_gain_below_min_delta_does_not_restart_patience(tmp_path: Path, tiny_config, data, monkeypatch, mode,
                                                          min_delta):
    creeping = [0.5, 0.5004, 0.5008, 0.5012, 0.5016]  # +0.0004 per epoch: below 0.001 (and 0.2% of 0.5)
    _scripted_validation(monkeypatch, creeping)
    without = _train(tiny_config, data, tmp_path / "any", epochs=5, patience=2)
    assert without.epochs_completed == 5 and not without.stopped_early  # each creep restarted the patience count
    _scripted_validation(monkeypatch, creeping)
    stopped = _train(tiny_config, data, tmp_path / "creep", epochs=5, patience=2, min_delta=min_delta,
                     min_delta_mode=mode)
    assert stopped.epochs_completed == 3 and stopped.stopped_early  # epochs 2 and 3 gained too little
    assert stopped.best_epoch == 3 and stopped.best_val_dice == 0.5008  # the best checkpoint still follows any gain
    assert read_checkpoint(stopped.best_checkpoint).provenance["epoch"] == 3
    _scripted_validation(monkeypatch, [0.5, 0.5004, 0.502, 0.5024, 0.5028, 0.5032])
    regained = _train(tiny_config, data, tmp_path / "gain", epochs=6, patience=2, min_delta=min_delta,
                      min_delta_mode=mode)
    assert regained.epochs_completed == 5 and regained.stopped_early  # epoch 3's real gain restarted the count
    assert read_checkpoint(regained.last_checkpoint).config.train.min_delta == min_delta


def test_run_reports_the_time_to_the_best_epoch_and_after_it(tmp_path: Path, tiny_config, data, monkeypatch):
    _scripted_validation(monkeypatch, [0.5, 0.6, 0.55, 0.55])

    def stop_after_first(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    assert _train(tiny_config, data, tmp_path / "run", epochs=4, on_epoch_end=stop_after_first).interrupted
    result = _resume(tmp_path / "run")  # the timings add up over both invocations
    assert result.epochs_completed == 4 and result.best_epoch == 2
    seconds = [row["seconds"] for row in result.history]
    assert result.seconds_to_best >= sum(seconds[:2]) and result.seconds_after_best >= sum(seconds[2:]) > 0
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["seconds_to_best"] == pytest.approx(result.seconds_to_best)
    assert summary["seconds_after_best"] == pytest.approx(result.seconds_after_best)
