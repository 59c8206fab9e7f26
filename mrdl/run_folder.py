"""A training run's folder: which files a run writes, refusing to clobber a run, and writing them.

Every file is written atomically (:func:`mrdl_runtime.atomic.atomic_path`). ``resume.safetensors``
is the commit point (:mod:`mrdl.resume`); ``run.json`` is the readable summary written after it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from mrdl_runtime.atomic import atomic_path, is_temporary_name
from mrdl_runtime.errors import MrdlError

from .resume import LEGACY_STATE, RESUME, save_train_state

BEST, LAST, RUN_JSON = "best.safetensors", "last.safetensors", "run.json"
METRICS_CSV, CURVES = "metrics.csv", "curves.png"
RUN_FILES = (RESUME, BEST, LAST, METRICS_CSV, CURVES, RUN_JSON, LEGACY_STATE)  # what a run writes (and once wrote)
METRICS = ("epoch", "step", "lr", "train_loss", "train_dice_loss", "train_ce", "train_kl", "val_dice", "val_iou", "seconds")
EMA_METRICS = ("val_dice_ema", "val_iou_ema")  # present when the run keeps an EMA; before "seconds"


class RunExistsError(MrdlError, RuntimeError):
    """A new run pointed at a folder that already holds a training run."""


def run_files(out_dir: str | Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``out_dir``."""
    return [name for name in RUN_FILES if (Path(out_dir) / name).exists()]


def check_run_folder(out_dir: str | Path, *, overwrite: bool) -> None:
    """Refuse to start a new run where a run already is, unless ``overwrite``."""
    existing = run_files(out_dir)
    if existing and not overwrite:
        raise RunExistsError(f"{out_dir} already holds a training run ({', '.join(existing)}); continue it with "
                             f"--resume, or start again from scratch with --overwrite (replaces those files only)")


def remove_leftover_temporaries(out_dir: Path) -> None:
    """Delete the temporary files that a killed atomic write of a run file left in ``out_dir``."""
    if out_dir.is_dir():
        for leftover in out_dir.iterdir():
            if is_temporary_name(leftover.name) and leftover.is_file():
                leftover.unlink(missing_ok=True)


def clear_run(out_dir: Path) -> None:
    """Delete the run's own files (before a new run overwrites a folder)."""
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)


def write_metrics(path: Path, history: list[dict]) -> None:
    """``metrics.csv``: one row per epoch (the EMA's Val scores before ``seconds`` when the run keeps one)."""
    columns = list(METRICS)
    if history and EMA_METRICS[0] in history[0]:
        columns[-1:-1] = EMA_METRICS
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)


def best_timing(progress: dict) -> dict[str, float]:
    """Seconds of epochs up to and including the best one, and after it (over every invocation of the run)."""
    elapsed = progress.get("elapsed_seconds", 0.0)
    to_best = progress.get("best_elapsed_seconds", 0.0)
    return {"seconds_to_best": to_best, "seconds_after_best": max(elapsed - to_best, 0.0)}


def save_state(out_dir: Path, model, optimizer, scheduler, settings: dict, progress: dict,
               provenance: dict, ema=None, scaler=None, throughput: dict | None = None) -> None:
    """Write the commit point resume.safetensors, then the readable summary run.json."""
    save_train_state(out_dir / RESUME, model=model, optimizer=optimizer, scheduler=scheduler, settings=settings,
                     progress=progress, provenance=provenance,
                     ema=ema.state_dict() if ema is not None else None,
                     scaler=scaler.state_dict() if scaler is not None else None)
    summary = {"settings": settings, "epoch": progress["epoch"], "best_val_dice": progress["best_val_dice"],
               "best_epoch": progress["best_epoch"], **best_timing(progress)}
    if throughput is not None:  # the last epoch's training speed: wall clock (all ranks), and per CPU second of rank 0
        summary["last_epoch_throughput"] = {k: v for k, v in throughput.items() if math.isfinite(v)}
    with atomic_path(out_dir / RUN_JSON) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
