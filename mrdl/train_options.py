"""``TrainOptions`` and ``Hardware``: every setting of a training run, with its default, help and range, in one place.

:func:`mrdl.train.train_model` takes one :class:`TrainOptions` whole; ``mrdl train`` builds its
command-line options from these fields (the flag, help, choices and range in each field's metadata,
written with the one field helper :func:`mrdl_runtime.options.option`, the default in the field), as
``mrdl-export`` does from :class:`mrdl_export.options.ExportOptions`;
:class:`Hardware` (how the run executes) likewise. This module imports no torch, so the command
line builds its options without loading it.
Fields whose metadata names a ``config`` section override that section of the run's config (after
the recipe): they are the one list of training overrides, read by :func:`run_config`. ``None``
keeps the config's (or the recipe's) value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mrdl_runtime.options import check_fields, option

from .config import MIN_DELTA_MODES, MRDLConfig
from .data.dataset import TableLimits
from .recipes import Recipe, apply_recipe


@dataclass(frozen=True)
class TrainOptions:
    """One training run: data, overrides of the config, and what to do with the run folder.

    ``resume=True`` continues the run in ``out_dir`` with the settings saved there: only ``epochs``
    (the cap) is read again, to raise or lower it.
    """

    recipe: str | None = option(
        None, "Dataset recipe: monuseg, glas, mosmedplus, qata-cov19 (batch, lr, lambda_3, prompt, source mpp; "
        "printed at the start and stored in the checkpoints) [default: the config's own settings].")
    data_root: Path | None = option(
        None, "Dataset root in LViT's layout [default: the built-in synthetic dataset, generated into OUT/data].",
        flag="--data")
    embeddings: Path | None = option(
        None, "Text embedding file from `mrdl embed-text` [default: the one beside --data; with the synthetic "
        "data, OUT/text_embeddings.safetensors, built with a random tower].")
    epochs: int | None = option(
        None, "Epochs of the run: small and base run them all (patience = this cap) with the cosine over them "
        "(lr_period 0); with --patience below it, a cap [default: from the config]; with --resume it raises or "
        "lowers the saved cap.", config="train", low=0)
    batch_size: int | None = option(
        None, "Global batch of one optimizer step, split over processes and --accumulate [default: recipe/config].",
        config="train", low=1)
    lr: float | None = option(None, "Initial learning rate [default: recipe/config].", config="train", low=0,
                              low_open=True)
    lr_period: int | None = option(
        None, "Epochs of one cosine period of the learning-rate schedule [default: from the config].",
        config="train", low=1)
    kl_weight: float | None = option(None, "lambda_3, the weight of L_KL [default: recipe/config].", config="loss")
    ema_decay: float | None = option(
        None, "Also keep an EMA of the weights with this decay cap (0 = none) [default: from the config].",
        config="train", low=0, high=1, high_open=True)
    select: str | None = option(
        None, "Which weights' Val Dice picks best.safetensors and stops early [default: from the config].",
        config="train", choices=("raw", "ema"))
    val_window: int | None = option(
        None, "Pick the best checkpoint and stop early on the mean of the last N epochs' Val Dice "
        "[default: from the config; 1 = each epoch's own].", config="train", low=1)
    patience: int | None = option(
        None, "Stop after this many epochs without a Val Dice gain larger than --min-delta [default: from the "
        "config].", config="train", low=1)
    min_delta: float | None = option(
        None, "Smallest Val Dice gain that restarts the patience count (absolute Dice, or a fraction of the best "
        "score with --min-delta-mode relative) [default: from the config].", config="train", low=0)
    min_delta_mode: str | None = option(
        None, "Whether --min-delta is in Dice (absolute) or a fraction of the best score (relative) "
        "[default: from the config].", config="train", choices=MIN_DELTA_MODES)
    accumulate: int = option(
        1, "Split each process's share of a batch into this many micro-batches (same step, less memory).", low=1)
    source_mpp: float | None = option(
        None, "Microns per pixel of the training images, recorded in the checkpoints for whole-slide inference "
        "[default: the recipe's (monuseg: 0.25), else unknown].", low=0, high=1000, low_open=True)
    use_text: bool = option(True, "Text features (--no-text: the paper's ablation without them, lambda_3 = 0).",
                            flag="--text/--no-text")
    out_dir: Path = option(Path("runs/train"), "Run folder: checkpoints, resume.safetensors, metrics.csv, "
                           "curves.png, run.json.", flag="--out")
    seed: int = option(0, "Seed for weights, shuffling and augmentation.")
    resume: bool = option(
        False, "Continue the run in --out exactly where it stopped (its saved settings win; --epochs may change "
        "the cap).")
    overwrite: bool = option(
        False, "Start from scratch in an --out that holds a run, replacing that run's files (others are kept).")
    table_limits: TableLimits = option(TableLimits(), "Bounds on the description table.", cli=False)

    def validate(self) -> "TrainOptions":
        """Refuse a value outside its field's choices or range (:class:`~mrdl_runtime.OptionsError`, a ValueError
        naming the field); return self."""
        check_fields(self)
        return self

    def config_overrides(self, section: str) -> dict[str, Any]:
        """The fields overriding config section ``section`` that are set (not None)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata.get("config") == section and getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Hardware:
    """How a run executes, which never changes its numbers on CPU: device, AMP, loader workers, layout.

    ``amp`` (CUDA only) autocasts the forward pass to bfloat16 where the GPU supports it, else to
    float16 with a gradient scaler. ``channels_last`` (CUDA only) stores images and conv weights
    NHWC, the layout tensor cores prefer. ``workers`` DataLoader processes decode and augment
    batches (augmentation is seeded per sample, so workers do not change the data); memory is pinned
    for CUDA. ``sync_bn`` turns BatchNorm into SyncBatchNorm under CUDA DDP (statistics over the
    global batch; torch implements it for GPUs only).
    """

    device: str = option("cpu", "Train on the CPU or on CUDA GPUs (one per process under torchrun: cuda:LOCAL_RANK, "
                         "NCCL).", choices=("cpu", "cuda"))
    amp: bool = option(True, "CUDA: mixed precision (bfloat16 where supported, else float16 with a gradient scaler).",
                       flag="--amp/--no-amp")
    channels_last: bool = option(True, "CUDA: NHWC memory layout for images and conv weights.",
                                 flag="--channels-last/--no-channels-last")
    workers: int | None = option(None, "DataLoader worker processes [default: the config's num_workers].", low=0)
    sync_bn: bool = option(False, "CUDA DDP: BatchNorm statistics over the global batch (SyncBatchNorm).")


def run_config(config: MRDLConfig, options: TrainOptions, recipe: Recipe | None = None) -> MRDLConfig:
    """The config a run trains with: the recipe, then the options' overrides; no text forces lambda_3 = 0."""
    config = apply_recipe(config, recipe)
    changes = options.config_overrides("train")
    if changes.get("ema_decay") == 0.0 and "select" not in changes:  # no EMA asked for: select the raw weights
        changes["select"] = "raw"
    train = dataclasses.replace(config.train, **changes)
    train.validate()
    loss = dataclasses.replace(config.loss, **options.config_overrides("loss"))
    if not options.use_text:
        loss = dataclasses.replace(loss, kl_weight=0.0)
    return dataclasses.replace(config, train=train, loss=loss)
