"""Training: AdamW, cosine annealing per epoch, early stopping on validation Dice, exact resume.

A run folder holds ``resume.safetensors`` (weights, optimizer, scheduler and RNG states, epoch, best
score, early-stop counter, history and the run's settings: :mod:`mrdl.resume`, no pickle), the
ordinary mrdl checkpoints ``best.safetensors`` and ``last.safetensors``, ``metrics.csv``,
``curves.png`` and ``run.json`` (a readable summary). Every file is written atomically (temporary
name, then rename). ``resume.safetensors`` is written before the first epoch and, after each epoch,
after the files of that epoch: it is the commit point. A kill before it leaves the previous state,
and redoing the epoch rewrites the same files identically, so a kill at any instant leaves a
resumable run. ``resume=True`` reads ``resume.safetensors`` alone and produces the same weights as an
uninterrupted run.

A new run refuses a folder that already holds a run's files unless ``overwrite=True``, which deletes
only those files (:data:`RUN_FILES`); other files there are left alone.

Text features come from a precomputed embedding file (``mrdl embed-text``); training never runs CLIP.
Validation runs in eval mode, where the fused feature is mu_r and no text is used (as at deployment).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import atomic_path, save_checkpoint
from .config import MRDLConfig
from .data.dataset import SegmentationDataset, TableLimits
from .data.embeddings import TextEmbeddings, compute_embeddings, key, load_embeddings
from .evaluate import predict_dataset, score_masks
from .losses import segmentation_loss
from .resume import LEGACY_STATE, RESUME, load_optimizer_state, read_train_state, restore_rng, save_train_state
from .text import RANDOM_INIT, RandomTextTowerWarning

BEST, LAST, RUN_JSON = "best.safetensors", "last.safetensors", "run.json"
METRICS_CSV, CURVES = "metrics.csv", "curves.png"
RUN_FILES = (RESUME, BEST, LAST, METRICS_CSV, CURVES, RUN_JSON, LEGACY_STATE)  # what a run writes (and once wrote)
METRICS = ("epoch", "step", "lr", "train_loss", "train_dice_loss", "train_ce", "train_kl", "val_dice", "val_iou", "seconds")

class RunExistsError(RuntimeError):
    """A new run pointed at a folder that already holds a training run."""


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_val_dice: float
    best_epoch: int
    epochs_completed: int
    stopped_early: bool
    interrupted: bool
    wall_seconds: float
    history: list[dict] = field(default_factory=list)


def run_config(config: MRDLConfig, *, epochs: int | None, batch_size: int | None, kl_weight: float | None,
               use_text: bool) -> MRDLConfig:
    """The config a run trains with: overrides applied; no text forces lambda_3 = 0."""
    train = dataclasses.replace(config.train, **{k: v for k, v in
                                                 {"epochs": epochs, "batch_size": batch_size}.items() if v is not None})
    kl = 0.0 if not use_text else (kl_weight if kl_weight is not None else config.loss.kl_weight)
    return dataclasses.replace(config, train=train, loss=dataclasses.replace(config.loss, kl_weight=kl))


def prepare_synthetic_data(out_dir: Path, config: MRDLConfig, *, seed: int = 0) -> tuple[Path, Path]:
    """Generate the built-in synthetic dataset and its (random-tower) text embeddings inside ``out_dir``."""
    from .data.synthetic import write_synthetic_dataset

    data_root = out_dir / "data"
    if not data_root.exists():
        write_synthetic_dataset(data_root, size=config.model.image_size, seed=seed)
    embeddings = out_dir / "text_embeddings.safetensors"
    if not embeddings.exists():
        compute_embeddings(data_root, config, out=embeddings, seed=seed)
    return data_root, embeddings


def run_files(out_dir: str | Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``out_dir``."""
    return [name for name in RUN_FILES if (Path(out_dir) / name).exists()]


def check_run_folder(out_dir: str | Path, *, overwrite: bool) -> None:
    """Refuse to start a new run where a run already is, unless ``overwrite``."""
    existing = run_files(out_dir)
    if existing and not overwrite:
        raise RunExistsError(f"{out_dir} already holds a training run ({', '.join(existing)}); continue it with "
                             f"--resume, or start again from scratch with --overwrite (replaces those files only)")


def _remove_leftover_temporaries(out_dir: Path) -> None:
    """Delete the temporary files (atomic_path's names) that a killed write of a run file left behind."""
    for name in RUN_FILES:
        for leftover in out_dir.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


def _clear_run(out_dir: Path) -> None:
    """Delete the run's own files (before a new run overwrites a folder)."""
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)


def _write_metrics(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(METRICS))
            writer.writeheader()
            writer.writerows(history)


def _train_epoch(model, optimizer, loader, texts: TextEmbeddings | None, config: MRDLConfig, bar) -> dict:
    model.train()
    sums = {"train_loss": 0.0, "train_dice_loss": 0.0, "train_ce": 0.0, "train_kl": 0.0}
    seen = 0
    for batch in loader:
        images, masks = batch["image"], batch["mask"]  # (B, 3, S, S), (B, S, S)
        text = texts.for_split("Train", batch["name"]) if texts is not None else None  # (B, L, D)
        output = model(images, text)
        terms = segmentation_loss(output.logits, masks, output.kl, config.loss)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        n = images.shape[0]
        seen += n
        for name, value in zip(sums, terms):
            sums[name] += float(value.detach()) * n
        bar.update(1)
        bar.set_postfix(loss=f"{float(terms.total.detach()):.3f}")
    return {name: total / seen for name, total in sums.items()}


def train_model(*, config: MRDLConfig, data_root: str | Path, embeddings_path: str | Path, out_dir: str | Path,
                epochs: int | None = None, seed: int = 0, use_text: bool = True, kl_weight: float | None = None,
                batch_size: int | None = None, resume: bool = False, overwrite: bool = False,
                table_limits: TableLimits = TableLimits(), progress: bool = True,
                on_epoch_end: Callable[[dict], None] | None = None) -> TrainResult:
    """Train an MRDL model on ``data_root``'s Train split, validating on Val after every epoch.

    ``use_text=False`` is the paper's no-text ablation (no text features, lambda_3 = 0); the prompt's
    features still come from ``embeddings_path``. ``resume=True`` continues the run in ``out_dir`` with
    the settings saved there (the other arguments except ``progress`` and ``on_epoch_end`` are ignored).
    A new run refuses an ``out_dir`` holding a run (:class:`RunExistsError`) unless ``overwrite=True``.
    ``table_limits`` bound the description tables read. ``on_epoch_end`` receives each epoch's metrics
    row after the run's files are written. Ctrl-C during an epoch returns with ``interrupted=True``.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from .model import create_model
    from .plots import plot_training_curves

    out_dir = Path(out_dir)
    start_time = time.perf_counter()
    state = None
    if resume:
        state = read_train_state(out_dir)
        settings, config = state.settings, state.config
    else:
        check_run_folder(out_dir, overwrite=overwrite)
        config = run_config(config, epochs=epochs, batch_size=batch_size, kl_weight=kl_weight, use_text=use_text)
        settings = {"data_root": str(Path(data_root).resolve()), "embeddings": str(Path(embeddings_path).resolve()),
                    "seed": seed, "use_text": use_text, "table_limits": dataclasses.asdict(table_limits)}
    data_root, seed, use_text = Path(settings["data_root"]), settings["seed"], settings["use_text"]
    table_limits = TableLimits(**settings.get("table_limits", {}))
    train_set = SegmentationDataset(data_root, "Train", image_size=config.model.image_size, augment=True, seed=seed,
                                    table_limits=table_limits)
    val_set = SegmentationDataset(data_root, "Val", image_size=config.model.image_size, require_text=False,
                                  table_limits=table_limits)
    expected = {key("Train", name): text for name, text in train_set.descriptions.items()} if use_text else {}
    embeddings = load_embeddings(settings["embeddings"], config, expected_texts=expected, data_root=data_root)
    texts = embeddings if use_text else None
    if embeddings.provenance.get("weights") == RANDOM_INIT:
        warnings.warn(f"text embeddings {settings['embeddings']} come from a RANDOMLY INITIALISED CLIP tower: "
                      "they carry no language meaning", RandomTextTowerWarning, stacklevel=2)

    model = create_model(config, prompt_features=embeddings.prompt, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.train.epochs)
    progress_state = {"epoch": 0, "step": 0, "best_val_dice": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}
    provenance = {"dataset": str(data_root), "train_images": len(train_set), "val_images": len(val_set),
                  "text_embeddings": settings["embeddings"], "clip_weights": embeddings.provenance.get("weights"),
                  "use_text": use_text, "seed": seed, "source_size": list(train_set.source_size)}
    _remove_leftover_temporaries(out_dir)
    if state is not None:
        model.load_state_dict(state.model)
        load_optimizer_state(optimizer, state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        progress_state = state.progress
        restore_rng(state.rng)
    else:
        _clear_run(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _save_state(out_dir, model, optimizer, scheduler, settings, progress_state, provenance)

    history: list[dict] = progress_state["history"]
    interrupted = stopped_early = False
    epoch_bar = tqdm(total=config.train.epochs, initial=progress_state["epoch"], desc="epochs", unit="epoch",
                     disable=not progress)
    try:
        while progress_state["epoch"] < config.train.epochs:
            if progress_state["bad_epochs"] >= config.train.patience:
                stopped_early = True
                break
            epoch = progress_state["epoch"] + 1
            tic = time.perf_counter()
            train_set.set_epoch(epoch)
            shuffle = torch.Generator().manual_seed(seed * 100_003 + epoch)
            loader = DataLoader(train_set, batch_size=config.train.batch_size, shuffle=True, generator=shuffle,
                                num_workers=0)
            with tqdm(total=len(loader), desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress) as bar:
                losses = _train_epoch(model, optimizer, loader, texts, config, bar)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            scores = score_masks(predict_dataset(model, val_set, batch_size=config.train.batch_size), val_set)
            val_dice = float(np.mean([s["dice"] for s in scores]))
            row = {"epoch": epoch, "step": progress_state["step"] + len(loader), "lr": lr, **losses,
                   "val_dice": val_dice, "val_iou": float(np.mean([s["iou"] for s in scores])),
                   "seconds": time.perf_counter() - tic}
            history.append(row)
            progress_state.update(epoch=epoch, step=row["step"])
            if val_dice > progress_state["best_val_dice"]:
                progress_state.update(best_val_dice=val_dice, best_epoch=epoch, bad_epochs=0)
                save_checkpoint(out_dir / BEST, model, provenance={**provenance, "epoch": epoch, "step": row["step"],
                                                                   "val_dice": val_dice, "val_iou": row["val_iou"]})
            else:
                progress_state["bad_epochs"] += 1
            _write_metrics(out_dir / METRICS_CSV, history)
            plot_training_curves(history, out_dir / CURVES)
            save_checkpoint(out_dir / LAST, model, provenance={**provenance, "epoch": epoch, "step": row["step"]})
            _save_state(out_dir, model, optimizer, scheduler, settings, progress_state, provenance)
            epoch_bar.update(1)
            epoch_bar.set_postfix(val_dice=f"{val_dice:.3f}", best=f"{progress_state['best_val_dice']:.3f}")
            if on_epoch_end is not None:
                on_epoch_end(row)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        epoch_bar.close()
    return TrainResult(out_dir=out_dir, best_checkpoint=out_dir / BEST, last_checkpoint=out_dir / LAST,
                       best_val_dice=progress_state["best_val_dice"], best_epoch=progress_state["best_epoch"],
                       epochs_completed=progress_state["epoch"], stopped_early=stopped_early, interrupted=interrupted,
                       wall_seconds=time.perf_counter() - start_time, history=history)


def _save_state(out_dir: Path, model, optimizer, scheduler, settings: dict, progress_state: dict,
                provenance: dict) -> None:
    """Write the commit point resume.safetensors, then the readable summary run.json."""
    save_train_state(out_dir / RESUME, model=model, optimizer=optimizer, scheduler=scheduler, settings=settings,
                     progress=progress_state, provenance=provenance)
    with atomic_path(out_dir / RUN_JSON) as tmp:
        tmp.write_text(json.dumps({"settings": settings, "epoch": progress_state["epoch"],
                                   "best_val_dice": progress_state["best_val_dice"],
                                   "best_epoch": progress_state["best_epoch"]}, indent=2))
