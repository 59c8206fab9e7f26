"""``mrdl train`` and ``mrdl evaluate``: thin click commands over :mod:`mrdl.train` and :mod:`mrdl.evaluate`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import NoReturn

import click

from mrdl.data.dataset import TableLimits

from .embed import loud_random_tower_warnings, table_limit_options


@click.command("train")
@click.option("--config", "config_name", default="small", show_default=True,
              help="Config name (tiny, small, base) or JSON file.")
@click.option("--data", "data_root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dataset root in LViT's layout [default: the built-in synthetic dataset, generated into OUT/data].")
@click.option("--embeddings", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Text embedding file from `mrdl embed-text` [default: the one beside --data; with the synthetic "
                   "data, OUT/text_embeddings.safetensors, built with a random tower].")
@click.option("--epochs", type=int, default=None, help="Epochs [default: from the config].")
@click.option("--batch-size", type=int, default=None, help="Batch size [default: from the config].")
@click.option("--kl-weight", type=float, default=None, help="lambda_3, the weight of L_KL [default: from the config].")
@click.option("--no-text", is_flag=True, help="Ablation: train without text features (lambda_3 = 0).")
@click.option("--clip-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Local open_clip checkpoint (safetensors) used when the synthetic data's embeddings are built here.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/train"),
              show_default=True, help="Run folder: checkpoints, resume.safetensors, metrics.csv, curves.png, run.json.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights, shuffling and augmentation.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out exactly where it stopped (its saved settings win).")
@click.option("--overwrite", is_flag=True,
              help="Start from scratch in an --out that holds a run, replacing that run's files (others are kept).")
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's choice].")
@table_limit_options
def train(config_name: str, data_root: Path | None, embeddings: Path | None, epochs: int | None,
          batch_size: int | None, kl_weight: float | None, no_text: bool, clip_weights: Path | None,
          out_dir: Path, seed: int, resume: bool, overwrite: bool, threads: int | None,
          table_limits: TableLimits) -> None:
    """Train MRDL on a dataset's Train split with early stopping on its Val split's Dice.

    An --out that already holds a run is refused unless --resume or --overwrite is given. Ctrl-C
    keeps the last saved epoch, says which one it is and the command that resumes, and exits 130.
    """
    if resume and overwrite:
        raise click.UsageError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    if clip_weights is not None and data_root is not None:
        raise click.UsageError("--clip-weights only applies to the built-in synthetic data; for --data run "
                               "`mrdl embed-text DATA --clip-weights PATH` and pass --embeddings")
    try:
        result = _train(config_name, data_root, embeddings, epochs=epochs, batch_size=batch_size, kl_weight=kl_weight,
                        no_text=no_text, clip_weights=clip_weights, out_dir=out_dir, seed=seed, resume=resume,
                        overwrite=overwrite, threads=threads, table_limits=table_limits)
    except KeyboardInterrupt:
        _stop_interrupted(out_dir)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if result.interrupted:
        _stop_interrupted(out_dir)
    if result.stopped_early:
        click.echo(f"early stop after epoch {result.epochs_completed} (no Val Dice gain for the patience window)")
    if result.epochs_completed == 0:
        click.echo(f"no epoch completed; the initial state is saved in {out_dir}")
        return
    click.echo(f"best Val Dice {result.best_val_dice:.4f} at epoch {result.best_epoch}; "
               f"best: {result.best_checkpoint}; last: {result.last_checkpoint}; {result.wall_seconds:.0f} s")


def _train(config_name: str, data_root: Path | None, embeddings: Path | None, *, no_text: bool,
           clip_weights: Path | None, out_dir: Path, seed: int, resume: bool, overwrite: bool, threads: int | None,
           **overrides):
    """Prepare the data the options name (the synthetic set by default) and run :func:`mrdl.train.train_model`."""
    import torch

    from mrdl.config import load_config
    from mrdl.data.embeddings import compute_embeddings, default_embeddings_path
    from mrdl.train import check_run_folder, prepare_synthetic_data, train_model

    if threads is not None:
        torch.set_num_threads(threads)
    config = load_config(config_name)
    if not resume:
        check_run_folder(out_dir, overwrite=overwrite)  # before the synthetic data is written there
    with loud_random_tower_warnings():
        if resume:
            data_root = embeddings = Path()
        elif data_root is None:
            out_dir.mkdir(parents=True, exist_ok=True)
            data_root, default_embeddings = prepare_synthetic_data(out_dir, config, seed=seed)
            if embeddings is None and clip_weights is not None:
                embeddings = compute_embeddings(data_root, config, out=out_dir / "text_embeddings_clip.safetensors",
                                                clip_weights=clip_weights)
            embeddings = embeddings or default_embeddings
        elif embeddings is None:
            embeddings = default_embeddings_path(data_root, config)
        return train_model(config=config, data_root=data_root, embeddings_path=embeddings, out_dir=out_dir,
                           seed=seed, use_text=not no_text, resume=resume, overwrite=overwrite, **overrides)


def _stop_interrupted(out_dir: Path) -> NoReturn:
    """Say what an interrupted run left (read from its resume.safetensors) and exit 130, as for SIGINT."""
    from mrdl.resume import ResumeError, read_train_metadata

    try:
        saved = read_train_metadata(out_dir)
    except ResumeError:
        click.echo(f"interrupted before the run's first state was saved in {out_dir}: nothing to resume; "
                   "run the same command again", err=True)
    else:
        command = f"mrdl train --out {shlex.quote(str(out_dir))} --resume"
        click.echo(f"interrupted: the run in {out_dir} is saved after epoch {saved['progress']['epoch']} of "
                   f"{saved['config']['train']['epochs']} (work since then is lost); continue it with: {command}",
                   err=True)
    raise click.exceptions.Exit(130)


@click.command("evaluate")
@click.option("--ckpt", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="mrdl checkpoint (.safetensors).")
@click.option("--data", "data_root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Dataset root in LViT's layout.")
@click.option("--split", default="Val", show_default=True, help="Split to evaluate (Train, Val or Test).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for per_image.csv, summary.json and overlays.png.")
def evaluate(ckpt: Path, data_root: Path, split: str, out_dir: Path) -> None:
    """Per-image Dice and IoU of a checkpoint (threshold 0.5 at the model size), averaged over images."""
    from mrdl.evaluate import evaluate_checkpoint

    try:
        summary = evaluate_checkpoint(ckpt, data_root, split, out_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({k: summary[k] for k in ("split", "images", "dice", "iou")}))
    click.echo(f"wrote {out_dir / 'per_image.csv'}, {out_dir / 'summary.json'}, {out_dir / 'overlays.png'}")
