"""Training on the synthetic data: Dice rises, files are written, resume is exact, the CLI works."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mrdl.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from mrdl_apps.cli import main
from mrdl.data.embeddings import compute_embeddings
from mrdl.data.synthetic import write_synthetic_dataset
from mrdl.resume import RESUME, ResumeError
from helpers.training import resume_run, train_run

pytestmark = [pytest.mark.filterwarnings("ignore::mrdl.text.RandomTextTowerWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


def _make_data(folder: Path, tiny_config, *, n_train: int, n_val: int) -> tuple[Path, Path]:
    """A synthetic dataset under ``folder`` and its random-tower embeddings (the warning is filtered above)."""
    root = write_synthetic_dataset(folder / "syn", n_train=n_train, n_val=n_val, size=64)
    return root, compute_embeddings(root, tiny_config, out=folder / "text.safetensors")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, tiny_config) -> tuple[Path, Path]:
    return _make_data(tmp_path_factory.mktemp("data"), tiny_config, n_train=6, n_val=3)


def _train(tiny_config, data, out: Path, **kwargs):
    return train_run(tiny_config, data, out, **kwargs)


def test_validation_dice_rises(tmp_path: Path, tiny_config):
    root, embeddings = _make_data(tmp_path, tiny_config, n_train=16, n_val=6)
    result = _train(tiny_config, (root, embeddings), tmp_path / "run", epochs=12, seed=0)
    dice = [row["val_dice"] for row in result.history]
    assert result.epochs_completed == 12 and not result.interrupted
    assert result.best_val_dice == max(dice) and result.best_val_dice > dice[0] + 0.25, dice
    model, ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt.provenance["epoch"] == result.best_epoch and ckpt.provenance["val_dice"] == pytest.approx(max(dice))
    assert ckpt.provenance["dataset"] == str(root.resolve()) and ckpt.provenance["clip_weights"] == "random-init"
    assert ckpt.provenance["step"] == result.best_epoch * 4 and ckpt.config.train.epochs == 12
    assert ckpt.provenance["source_size"] == [64, 64]  # the synthetic images' size before resizing
    assert ckpt.provenance["source_mpp"] is None  # no recipe, no --source-mpp: the resolution is unknown
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and float(rows[-1]["val_dice"]) == pytest.approx(dice[-1])
    assert float(rows[0]["lr"]) == pytest.approx(1e-3) and float(rows[-1]["lr"]) < 1e-4  # cosine annealing
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


def test_resume_equals_uninterrupted_run(tmp_path: Path, tiny_config, small_data):
    straight = _train(tiny_config, small_data, tmp_path / "straight", epochs=3, seed=3)

    def interrupt_after_first(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    stopped = _train(tiny_config, small_data, tmp_path / "resumed", epochs=3, seed=3, on_epoch_end=interrupt_after_first)
    assert stopped.interrupted and stopped.epochs_completed == 1
    resumed = resume_run(tmp_path / "resumed")
    assert resumed.epochs_completed == 3
    a = read_checkpoint(straight.last_checkpoint).state_dict
    b = read_checkpoint(resumed.last_checkpoint).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(straight.history) == drop(resumed.history)


def test_same_seed_same_weights_and_no_text(tmp_path: Path, tiny_config, small_data):
    first = _train(tiny_config, small_data, tmp_path / "a", epochs=1, seed=1, use_text=False)
    second = _train(tiny_config, small_data, tmp_path / "b", epochs=1, seed=1, use_text=False)
    a = read_checkpoint(first.last_checkpoint)
    b = read_checkpoint(second.last_checkpoint)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert first.history[0]["train_kl"] == 0.0 and a.config.loss.kl_weight == 0.0
    assert a.provenance["use_text"] is False


def test_resume_refuses_a_missing_or_damaged_state(tmp_path: Path, tiny_config, small_data):
    with pytest.raises(ResumeError, match=f"cannot resume {tmp_path}: expected {RESUME} there"):
        resume_run(tmp_path)
    run = _train(tiny_config, small_data, tmp_path / "run", epochs=1)
    model, _ = load_checkpoint(run.last_checkpoint)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(run.last_checkpoint, model)  # resume reads resume.safetensors alone: this does not matter
    resumed = resume_run(run.out_dir)
    assert resumed.epochs_completed == 1 and not resumed.interrupted
    state = run.out_dir / RESUME
    data = bytearray(state.read_bytes())
    data[-3] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(ResumeError, match="resume.safetensors is corrupt"):
        resume_run(run.out_dir)


def test_source_mpp_from_the_recipe_or_the_option_is_in_the_provenance(tmp_path: Path, tiny_config, small_data):
    from mrdl.recipes import get_recipe

    assert get_recipe("monuseg").source_mpp == 0.25 and get_recipe("glas").source_mpp is None
    recipe = _train(tiny_config, small_data, tmp_path / "recipe", epochs=1, recipe="monuseg", batch_size=2)
    assert read_checkpoint(recipe.last_checkpoint).provenance["source_mpp"] == 0.25
    given = _train(tiny_config, small_data, tmp_path / "given", epochs=1, recipe="monuseg", source_mpp=0.5)
    assert read_checkpoint(given.best_checkpoint).provenance["source_mpp"] == 0.5  # the option wins over the recipe
    resumed = resume_run(given.out_dir, epochs=2)
    assert read_checkpoint(resumed.last_checkpoint).provenance["source_mpp"] == 0.5  # kept in the run's settings
    for bad in (0.0, -1.0, float("nan"), "0.25"):
        with pytest.raises(ValueError, match=r"source_mpp must be a number in \(0, 1000\], got "):
            _train(tiny_config, small_data, tmp_path / "bad", epochs=1, source_mpp=bad)


def test_a_new_run_without_config_or_data_is_refused(tmp_path: Path, tiny_config, small_data):
    from mrdl.train import train_model
    from mrdl.train_options import TrainOptions

    root, embeddings = small_data
    for config, options in ((None, TrainOptions(data_root=root, embeddings=embeddings, out_dir=tmp_path / "a")),
                            (tiny_config, TrainOptions(embeddings=embeddings, out_dir=tmp_path / "b"))):
        with pytest.raises(ValueError, match="a new training run needs a config"):
            train_model(options, config=config, progress=False)
    with pytest.raises(ValueError, match=r"batch_size must be a number >= 1, got 0$"):
        TrainOptions(batch_size=0).validate()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_stale_embeddings_are_refused(tmp_path: Path, tiny_config, small_data):
    root, _ = small_data
    other = write_synthetic_dataset(tmp_path / "other", n_train=2, n_val=1, size=64, seed=9)
    wrong = compute_embeddings(other, tiny_config, out=tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match="mrdl embed-text"):
        _train(tiny_config, (root, wrong), tmp_path / "run", epochs=1)


def test_cli_trains_on_builtin_synthetic_data(tmp_path: Path):
    out = tmp_path / "cli"
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--config", "tiny", "--epochs", "1", "--out", str(out), "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "RANDOMLY INITIALISED" in result.output and "best Val Dice" in result.output
    assert re.search(r"\(\d+ s of epochs to the best, 0 s after it\)", result.output), result.output
    assert (out / "data" / "Train_Folder" / "img").is_dir() and (out / "last.safetensors").is_file()
    assert read_checkpoint(out / "last.safetensors").config.train.batch_size == 8
    clobber = runner.invoke(main, ["train", "--config", "tiny", "--epochs", "1", "--out", str(out)])
    assert clobber.exit_code == 1 and "already holds a training run" in clobber.output
    again = runner.invoke(main, ["train", "--out", str(out), "--resume", "--epochs", "1"])
    assert again.exit_code == 0 and "at epoch 1" in again.output
    assert "ignored" not in again.output  # --epochs is the one setting a resumed run takes
    flags = runner.invoke(main, ["train", "--out", str(out), "--resume", "--epochs", "1", "--lr", "0.5",
                                 "--config", "small", "--batch-size", "2"])
    assert flags.exit_code == 0, flags.output
    assert (f"warning: --resume continues {out} with its saved settings; ignored: --config, --batch-size, --lr "
            "(only --epochs changes a saved run)") in flags.output
    failed = runner.invoke(main, ["train", "--out", str(tmp_path / "empty"), "--resume"])
    assert failed.exit_code != 0 and "cannot resume" in failed.output
    helped = runner.invoke(main, ["train", "--help"])
    assert "--no-text" in helped.output and "--resume" in helped.output and "--source-mpp" in helped.output
    refused = runner.invoke(main, ["train", "--config", "tiny", "--epochs", "1", "--out", str(tmp_path / "mpp"),
                                   "--source-mpp", "0"])
    assert refused.exit_code == 2 and "--source-mpp" in refused.output
