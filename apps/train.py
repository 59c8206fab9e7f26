"""``mrdl train`` and ``mrdl evaluate``: thin click commands over :mod:`mrdl.train` and :mod:`mrdl.evaluate`.

``mrdl train``'s options are built from the fields of :class:`mrdl.train_options.TrainOptions` and
:class:`mrdl.train_options.Hardware` (flag, help, choices, range and default written there once; the
click options by :func:`mrdl_apps.options.field_options`, as for every command),
plus ``--config``, ``--clip-weights``, ``--threads`` and the description-table limits.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
from pathlib import Path
from typing import Callable, NoReturn

import click

from mrdl.data.dataset import TableLimits
from mrdl.train_options import Hardware, TrainOptions
from mrdl_apps.options import build, field_options
from mrdl_runtime.options import MAX_THREADS

from .embed import loud_random_tower_warnings, table_limit_options


def train_options(command: Callable) -> Callable:
    """``--config``, the fields of :class:`TrainOptions`, ``--clip-weights``, :class:`Hardware`'s, ``--threads``
    and the table limits; the command receives ``config_name``, ``options``, ``hardware``, ``clip_weights``
    and ``threads``."""

    @functools.wraps(command)
    def with_objects(*args, table_limits: TableLimits, **values):
        options = build(TrainOptions, values, defaults=TrainOptions(table_limits=table_limits))
        hardware = build(Hardware, values)
        return command(*args, options=options, hardware=hardware, **values)

    decorators = [
        click.option("--config", "config_name", default="small", show_default=True,
                     help="Config name (tiny, small, base) or JSON file."),
        field_options(TrainOptions),
        click.option("--clip-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Local open_clip checkpoint (safetensors) used when the synthetic data's embeddings are "
                          "built here."),
        field_options(Hardware),
        click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
                     help="torch CPU threads [default: torch's choice]."),
    ]
    wrapped = table_limit_options(with_objects)
    for decorator in reversed(decorators):
        wrapped = decorator(wrapped)
    return wrapped


@click.command("train")
@train_options
def train(config_name: str, options: TrainOptions, hardware: Hardware, clip_weights: Path | None,
          threads: int | None) -> None:
    """Train MRDL on a dataset's Train split with early stopping on its Val split's Dice.

    An --out that already holds a run is refused unless --resume or --overwrite is given. Ctrl-C
    keeps the last saved epoch, says which one it is and the command that resumes, and exits 130.
    Several processes: torchrun --nproc-per-node N -m mrdl_apps train ... (DDP; rank 0 validates
    and writes; a failing rank stops the job with a non-zero exit).
    """
    from mrdl.distributed import DistributedError, setup

    if options.resume and options.overwrite:
        raise click.UsageError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    if options.resume:
        _warn_ignored_on_resume(options.out_dir)
    if clip_weights is not None and options.data_root is not None:
        raise click.UsageError("--clip-weights only applies to the built-in synthetic data; for --data run "
                               "`mrdl embed-text DATA --clip-weights PATH` and pass --embeddings")
    try:
        dist = setup(hardware.device)
    except DistributedError as exc:
        raise click.ClickException(str(exc)) from exc
    echo = click.echo if dist.is_main else (lambda *args, **kwargs: None)
    out_dir = options.out_dir
    try:
        result = _train(config_name, options, clip_weights=clip_weights, threads=threads, hardware=hardware,
                        dist=dist, on_start=echo)
    except KeyboardInterrupt:
        _stop_interrupted(out_dir, dist.is_main)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if result.interrupted:
        _stop_interrupted(out_dir, dist.is_main)
    dist.close()
    if result.stopped_early:
        echo(f"early stop after epoch {result.epochs_completed} (no Val Dice gain above min_delta for the patience "
             "window)")
    if result.epochs_completed == 0:
        echo(f"no epoch completed; the initial state is saved in {out_dir}")
        return
    echo(f"best Val Dice {result.best_val_dice:.4f} at epoch {result.best_epoch}; "
         f"best: {result.best_checkpoint}; last: {result.last_checkpoint}; {result.wall_seconds:.0f} s "
         f"({result.seconds_to_best:.0f} s of epochs to the best, {result.seconds_after_best:.0f} s after it); "
         f"{result.samples_per_s:.2f} training samples/s")


def _train(config_name: str, options: TrainOptions, *, clip_weights: Path | None, threads: int | None, dist,
           **run):
    """Prepare the data the options name (the synthetic set by default) and run :func:`mrdl.train.train_model`.

    Under torchrun rank 0 checks the folder and writes the synthetic data while the others wait.
    """
    import torch

    from mrdl.config import load_config
    from mrdl.data.embeddings import compute_embeddings, default_embeddings_path
    from mrdl.recipes import apply_recipe, get_recipe
    from mrdl.run_folder import check_run_folder
    from mrdl.train import prepare_synthetic_data, train_model

    if threads is not None:
        torch.set_num_threads(threads)
    config = load_config(config_name)
    out_dir, data_root, embeddings = options.out_dir, options.data_root, options.embeddings
    recipe = get_recipe(options.recipe) if options.recipe and not options.resume else None
    if not options.resume and dist.is_main:
        check_run_folder(out_dir, overwrite=options.overwrite)  # before the synthetic data is written there
    with loud_random_tower_warnings():
        if not options.resume and data_root is None:
            if dist.is_main:
                out_dir.mkdir(parents=True, exist_ok=True)
                prepare_synthetic_data(out_dir, apply_recipe(config, recipe), seed=options.seed)
            dist.barrier()
            data_root, default_embeddings = out_dir / "data", out_dir / "text_embeddings.safetensors"
            if embeddings is None and clip_weights is not None:
                embeddings = out_dir / "text_embeddings_clip.safetensors"
                if dist.is_main:
                    compute_embeddings(data_root, apply_recipe(config, recipe), out=embeddings,
                                       clip_weights=clip_weights)
                dist.barrier()
            embeddings = embeddings or default_embeddings
        elif not options.resume and embeddings is None:
            embeddings = default_embeddings_path(data_root, config)
        options = dataclasses.replace(options, data_root=data_root, embeddings=embeddings)
        return train_model(options, config=config, dist=dist, **run)


# What --resume takes from the saved run rather than from the command line (--epochs alone changes a saved run;
# --out, --resume and the hardware options apply as given).
KEPT_ON_RESUME = ({f.name for f in dataclasses.fields(TrainOptions)} - {"out_dir", "resume", "overwrite", "epochs"}
                  | {"config_name", "clip_weights"})


def _warn_ignored_on_resume(out_dir: Path) -> None:
    """Say which options given on this command line a resumed run ignores: it keeps its saved settings, and
    a --lr or --data typed now would otherwise look as if it had taken effect."""
    from click.core import ParameterSource

    context = click.get_current_context()
    given = [parameter.opts[0] for parameter in context.command.params if parameter.name in KEPT_ON_RESUME
             and context.get_parameter_source(parameter.name) == ParameterSource.COMMANDLINE]
    if given and os.environ.get("RANK", "0") == "0":  # once under torchrun
        click.echo(f"warning: --resume continues {out_dir} with its saved settings; ignored: {', '.join(given)} "
                   "(only --epochs changes a saved run)", err=True)


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
