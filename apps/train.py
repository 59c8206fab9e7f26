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
@click.option("--recipe", default=None,
              help="Dataset recipe: monuseg, glas, mosmedplus, qata-cov19 (batch, lr, lambda_3, prompt; printed at "
                   "the start and stored in the checkpoints) [default: the config's own settings].")
@click.option("--data", "data_root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dataset root in LViT's layout [default: the built-in synthetic dataset, generated into OUT/data].")
@click.option("--embeddings", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Text embedding file from `mrdl embed-text` [default: the one beside --data; with the synthetic "
                   "data, OUT/text_embeddings.safetensors, built with a random tower].")
@click.option("--epochs", type=click.IntRange(min=0), default=None,
              help="Epoch cap, a safety limit (early stopping is the real stop) [default: from the config]; with "
                   "--resume it raises or lowers the saved cap.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Global batch of one optimizer step, split over processes and --accumulate [default: recipe/config].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Initial learning rate [default: recipe/config].")
@click.option("--lr-period", type=click.IntRange(min=1), default=None,
              help="Epochs of one cosine period of the learning-rate schedule [default: from the config].")
@click.option("--kl-weight", type=float, default=None, help="lambda_3, the weight of L_KL [default: recipe/config].")
@click.option("--ema-decay", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
              help="Also keep an EMA of the weights with this decay cap (0 = none) [default: from the config].")
@click.option("--select", type=click.Choice(["raw", "ema"]), default=None,
              help="Which weights' Val Dice picks best.safetensors and stops early [default: from the config].")
@click.option("--val-window", type=click.IntRange(min=1), default=None,
              help="Pick the best checkpoint and stop early on the mean of the last N epochs' Val Dice "
                   "[default: from the config; 1 = each epoch's own].")
@click.option("--accumulate", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split each process's share of a batch into this many micro-batches (same step, less memory).")
@click.option("--source-mpp", type=click.FloatRange(min=0, max=1000, min_open=True), default=None,
              help="Microns per pixel of the training images, recorded in the checkpoints for whole-slide inference "
                   "[default: the recipe's (monuseg: 0.25), else unknown].")
@click.option("--no-text", is_flag=True, help="Ablation: train without text features (lambda_3 = 0).")
@click.option("--clip-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Local open_clip checkpoint (safetensors) used when the synthetic data's embeddings are built here.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/train"),
              show_default=True, help="Run folder: checkpoints, resume.safetensors, metrics.csv, curves.png, run.json.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights, shuffling and augmentation.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out exactly where it stopped (its saved settings win; --epochs may change "
                   "the cap).")
@click.option("--overwrite", is_flag=True,
              help="Start from scratch in an --out that holds a run, replacing that run's files (others are kept).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Train on the CPU or on CUDA GPUs (one per process under torchrun: cuda:LOCAL_RANK, NCCL).")
@click.option("--amp/--no-amp", default=True, show_default=True,
              help="CUDA: mixed precision (bfloat16 where supported, else float16 with a gradient scaler).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="CUDA: NHWC memory layout for images and conv weights.")
@click.option("--sync-bn", is_flag=True, help="CUDA DDP: BatchNorm statistics over the global batch (SyncBatchNorm).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader worker processes [default: the config's num_workers].")
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's choice].")
@table_limit_options
def train(config_name: str, recipe: str | None, data_root: Path | None, embeddings: Path | None, epochs: int | None,
          batch_size: int | None, lr: float | None, lr_period: int | None, kl_weight: float | None,
          ema_decay: float | None, select: str | None, val_window: int | None, accumulate: int, source_mpp: float | None,
          no_text: bool, clip_weights: Path | None,
          out_dir: Path, seed: int, resume: bool, overwrite: bool, device: str, amp: bool, channels_last: bool,
          sync_bn: bool, workers: int | None, threads: int | None, table_limits: TableLimits) -> None:
    """Train MRDL on a dataset's Train split with early stopping on its Val split's Dice.

    An --out that already holds a run is refused unless --resume or --overwrite is given. Ctrl-C
    keeps the last saved epoch, says which one it is and the command that resumes, and exits 130.
    Several processes: torchrun --nproc-per-node N -m mrdl_apps train ... (DDP; rank 0 validates
    and writes; a failing rank stops the job with a non-zero exit).
    """
    from mrdl.distributed import DistributedError, setup
    from mrdl.train import Hardware

    if resume and overwrite:
        raise click.UsageError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    if clip_weights is not None and data_root is not None:
        raise click.UsageError("--clip-weights only applies to the built-in synthetic data; for --data run "
                               "`mrdl embed-text DATA --clip-weights PATH` and pass --embeddings")
    try:
        dist = setup(device)
    except DistributedError as exc:
        raise click.ClickException(str(exc)) from exc
    hardware = Hardware(device=device, amp=amp, channels_last=channels_last, workers=workers, sync_bn=sync_bn)
    echo = click.echo if dist.is_main else (lambda *args, **kwargs: None)
    try:
        result = _train(config_name, data_root, embeddings, epochs=epochs, batch_size=batch_size, kl_weight=kl_weight,
                        recipe=recipe, lr=lr, lr_period=lr_period, ema_decay=ema_decay, select=select,
                        val_window=val_window, accumulate=accumulate, source_mpp=source_mpp, no_text=no_text, clip_weights=clip_weights, out_dir=out_dir, seed=seed,
                        resume=resume, overwrite=overwrite, threads=threads, table_limits=table_limits,
                        hardware=hardware, dist=dist, on_start=echo)
    except KeyboardInterrupt:
        _stop_interrupted(out_dir, dist.is_main)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if result.interrupted:
        _stop_interrupted(out_dir, dist.is_main)
    dist.close()
    if result.stopped_early:
        echo(f"early stop after epoch {result.epochs_completed} (no Val Dice gain for the patience window)")
    if result.epochs_completed == 0:
        echo(f"no epoch completed; the initial state is saved in {out_dir}")
        return
    echo(f"best Val Dice {result.best_val_dice:.4f} at epoch {result.best_epoch}; "
         f"best: {result.best_checkpoint}; last: {result.last_checkpoint}; {result.wall_seconds:.0f} s; "
         f"{result.samples_per_s:.2f} training samples/s")


def _train(config_name: str, data_root: Path | None, embeddings: Path | None, *, no_text: bool,
           clip_weights: Path | None, out_dir: Path, seed: int, resume: bool, overwrite: bool, threads: int | None,
           dist, **overrides):
    """Prepare the data the options name (the synthetic set by default) and run :func:`mrdl.train.train_model`.

    Under torchrun rank 0 checks the folder and writes the synthetic data while the others wait.
    """
    import torch

    from mrdl.config import load_config
    from mrdl.data.embeddings import compute_embeddings, default_embeddings_path
    from mrdl.recipes import apply_recipe, get_recipe
    from mrdl.train import check_run_folder, prepare_synthetic_data, train_model

    if threads is not None:
        torch.set_num_threads(threads)
    config = load_config(config_name)
    recipe = get_recipe(overrides["recipe"]) if overrides.get("recipe") and not resume else None
    if not resume and dist.is_main:
        check_run_folder(out_dir, overwrite=overwrite)  # before the synthetic data is written there
    with loud_random_tower_warnings():
        if resume:
            data_root = embeddings = Path()
        elif data_root is None:
            if dist.is_main:
                out_dir.mkdir(parents=True, exist_ok=True)
                prepare_synthetic_data(out_dir, apply_recipe(config, recipe), seed=seed)
            dist.barrier()
            data_root, default_embeddings = out_dir / "data", out_dir / "text_embeddings.safetensors"
            if embeddings is None and clip_weights is not None:
                embeddings = out_dir / "text_embeddings_clip.safetensors"
                if dist.is_main:
                    compute_embeddings(data_root, apply_recipe(config, recipe), out=embeddings,
                                       clip_weights=clip_weights)
                dist.barrier()
            embeddings = embeddings or default_embeddings
        elif embeddings is None:
            embeddings = default_embeddings_path(data_root, config)
        return train_model(config=config, data_root=data_root, embeddings_path=embeddings, out_dir=out_dir,
                           seed=seed, use_text=not no_text, resume=resume, overwrite=overwrite, dist=dist,
                           **overrides)


def _stop_interrupted(out_dir: Path, main_rank: bool = True) -> NoReturn:
    """Say what an interrupted run left (read from its resume.safetensors) and exit 130, as for SIGINT."""
    from mrdl.resume import ResumeError, read_train_metadata

    if not main_rank:
        raise click.exceptions.Exit(130)
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
