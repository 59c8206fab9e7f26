"""Training: AdamW, a per-epoch learning-rate schedule, early stopping on Val Dice, exact resume, DDP.

:func:`train_model` takes one :class:`mrdl.train_options.TrainOptions` and runs named steps: set up
the run (a new run's settings, or the saved ones), load the data, build the model and optimizer,
start or resume, then the epoch loop (train, validate and select, commit the epoch's files, stop
early) and finish.

A run folder (:mod:`mrdl.run_folder`) holds ``resume.safetensors`` (weights, optimizer, scheduler and
RNG states, epoch, best score, early-stop counter, history, timings and the run's settings:
:mod:`mrdl.resume`, no pickle), the ordinary mrdl checkpoints ``best.safetensors`` and
``last.safetensors``, ``metrics.csv``, ``curves.png`` and ``run.json`` (a readable summary). Every
file is written atomically (temporary name, then rename). ``resume.safetensors`` is written before
the first epoch and, after each epoch, after the files of that epoch: it is the commit point. A kill
before it leaves the previous state, and redoing the epoch rewrites the same files identically, so a
kill at any instant leaves a resumable run. ``resume=True`` reads ``resume.safetensors`` alone and
produces the same weights as an uninterrupted run.

A new run refuses a folder that already holds a run's files unless ``overwrite=True``, which deletes
only those files (:data:`mrdl.run_folder.RUN_FILES`); other files there are left alone.

Stopping: a run ends at the epoch cap (``config.train.epochs``) or earlier by early stopping
(``patience`` epochs without a Val gain larger than ``min_delta``). The ``small`` and ``base``
defaults run a cosine schedule over the whole cap (``lr_period`` 0) with patience equal to the cap,
so they end at the cap (docs/training-schedule.md says why). With a period of its own
(``lr_period`` > 0) the schedule does not depend on the cap, so a capped run continued with a
higher cap equals a run that had the higher cap from the start. ``best.safetensors``
follows every Val gain, however small; the patience count restarts only on a gain above
``min_delta`` over the score that last restarted it. ``run.json``, :class:`TrainResult` and
``mrdl train``'s last line give the time to the best epoch and the time spent after it.

Batches and processes (PyTorch DDP under ``torchrun``, :mod:`mrdl.distributed`): ``batch_size`` is
the global batch of one optimizer step. ``DistributedSampler`` (seeded, reshuffled per epoch) deals
each global batch over the W processes; each process splits its share into ``accumulate``
interleaved micro-batches (sample ``i`` of its share goes to micro-batch ``i % accumulate``), so
micro-batch ``j`` of rank ``r`` is shard ``r + W*j`` of the global batch, the same samples whatever
W and ``accumulate`` are for a fixed W*accumulate. The model's one random draw in training (the
fused feature F ~ r) is seeded per (seed, step, shard), and each shard's loss counts 1/(W*accumulate),
so ``torchrun --nproc-per-node 2`` and one process with ``accumulate=2`` compute the same update up
to floating-point summation order. BatchNorm sees a shard, not the global batch (unless
``sync_bn`` under CUDA DDP); that is the one place the shard size matters.

Rank 0 alone validates, decides the best checkpoint and early stopping, and writes files; the
decision reaches the other ranks by broadcast. Text features come from a precomputed embedding
file (``mrdl embed-text``); training never runs CLIP. Validation runs in eval mode, where the fused
feature is mu_r and no text is used (as at deployment).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import save_checkpoint
from .config import MRDLConfig, TrainConfig
from .data.dataset import SegmentationDataset, TableLimits
from .data.embeddings import compute_embeddings, key, load_embeddings
from .distributed import Distributed, DistributedError
from .recipes import get_recipe
from .resume import load_optimizer_state, read_train_state, restore_rng
from .run_folder import (BEST, CURVES, LAST, METRICS_CSV, best_timing, check_run_folder, clear_run,
                         remove_leftover_temporaries, save_state, write_metrics)
from .text import RANDOM_INIT, RandomTextTowerWarning
from .train_engine import Engine, autocast_factory, make_scheduler, step_scheduler, train_epoch, validate
from .train_options import Hardware, TrainOptions, run_config

class ShortEmaRunWarning(UserWarning):
    """A run too short for its EMA to catch up with the trained weights, selecting on the EMA anyway."""


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
    samples_per_s: float = 0.0  # training samples per second over this invocation's epochs (all ranks)
    recipe: str | None = None
    seconds_to_best: float = 0.0  # epochs up to and including the best one, over every invocation of the run
    seconds_after_best: float = 0.0  # epochs after the best one: what early stopping's patience cost


def prepare_synthetic_data(out_dir: Path, config: MRDLConfig, *, seed: int = 0) -> tuple[Path, Path]:
    """Generate the built-in synthetic dataset and its (random-tower) text embeddings inside ``out_dir``."""
    from .data.synthetic import write_synthetic_dataset

    data_root = out_dir / "data"
    if not data_root.exists():
        write_synthetic_dataset(data_root, size=config.model.image_size, seed=seed)
    embeddings = out_dir / "text_embeddings.safetensors"
    if not embeddings.exists():
        compute_embeddings(data_root, config, out=embeddings, seed=seed, random_init=True)
    return data_root, embeddings


def real_gain(score: float, reference: float | None, train: TrainConfig) -> bool:
    """Whether ``score`` beats ``reference`` (None: nothing to beat yet) by more than ``train.min_delta``.

    ``absolute``: by more than ``min_delta`` Dice; ``relative``: by more than ``min_delta`` times
    the reference's magnitude. With ``min_delta`` 0 any increase counts.
    """
    if reference is None:
        return True
    margin = train.min_delta if train.min_delta_mode == "absolute" else train.min_delta * abs(reference)
    return score > reference + margin


def train_model(options: TrainOptions, *, config: MRDLConfig | None = None, hardware: Hardware = Hardware(),
                dist: Distributed | None = None, progress: bool = True,
                on_epoch_end: Callable[[dict], None] | None = None,
                on_start: Callable[[str], None] | None = None) -> TrainResult:
    """Train an MRDL model on ``options.data_root``'s Train split, validating on Val after every epoch.

    ``config`` is the architecture and schedule of a new run (the recipe and the options' overrides
    are applied on top; ignored when resuming). ``options.use_text=False`` is the paper's no-text
    ablation (no text features, lambda_3 = 0); the prompt's features still come from
    ``options.embeddings``. ``options.source_mpp`` (default: the recipe's) is recorded in every
    checkpoint's provenance as ``source_mpp``. A new run refuses an ``out_dir`` holding a run
    (:class:`mrdl.run_folder.RunExistsError`) unless ``overwrite``. ``dist`` is this process's place in a torchrun
    job (:func:`mrdl.distributed.setup`; default: one process). ``on_start`` receives the line
    describing the run's settings; ``on_epoch_end`` each epoch's metrics row after the run's files
    are written (rank 0). Ctrl-C during an epoch returns with ``interrupted=True``.
    """
    run = _Run(options.validate(), hardware=hardware, dist=dist or Distributed(), progress=progress)
    run.setup(config)
    run.load_data()
    run.build()
    run.start_or_resume()
    run.announce(on_start)
    return run.fit(on_epoch_end)


class _Run:
    """One invocation of a training run, as the steps :func:`train_model` calls in order."""

    def __init__(self, options: TrainOptions, *, hardware: Hardware, dist: Distributed, progress: bool) -> None:
        self.options, self.hardware, self.dist = options, hardware, dist
        self.progress = progress and dist.is_main
        self.out_dir = Path(options.out_dir)
        self.start_time = time.perf_counter()
        self.state = None

    # --- setup: the run's config and settings ---------------------------------------------------------------

    def setup(self, config: MRDLConfig | None) -> None:
        """A new run's config and settings from the options, or a resumed run's saved ones (a new cap allowed)."""
        options = self.options
        if options.resume:
            self.state = read_train_state(self.out_dir)
            settings, config = self.state.settings, self.state.config
            if options.epochs is not None and options.epochs != config.train.epochs:  # the schedule keeps its period
                period = config.train.lr_period or config.train.epochs
                config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=options.epochs,
                                                                               lr_period=period))
        else:
            if self.dist.is_main:
                check_run_folder(self.out_dir, overwrite=options.overwrite)
            if config is None or options.data_root is None or options.embeddings is None:
                raise ValueError("a new training run needs a config (e.g. mrdl.config.load_config('small')), and "
                                 "data_root and embeddings in its options (an LViT dataset and its `mrdl embed-text` "
                                 "file)")
            recipe = get_recipe(options.recipe) if options.recipe is not None else None
            config = run_config(config, options, recipe)
            source_mpp = options.source_mpp if options.source_mpp is not None else recipe and recipe.source_mpp
            settings = {"data_root": str(Path(options.data_root).resolve()),
                        "embeddings": str(Path(options.embeddings).resolve()), "seed": options.seed,
                        "use_text": options.use_text, "table_limits": dataclasses.asdict(options.table_limits),
                        "recipe": recipe.to_dict() if recipe is not None else None,
                        "accumulate": options.accumulate, "source_mpp": source_mpp}
        self.config, self.settings = config, settings
        self.seed, self.use_text = settings["seed"], settings["use_text"]
        self.accumulate = int(settings.get("accumulate", 1))
        shards = self.dist.world_size * self.accumulate
        if config.train.batch_size % shards:
            raise DistributedError(
                f"batch size {config.train.batch_size} (the global batch of one step) does not split into "
                f"{self.dist.world_size} process(es) x {self.accumulate} accumulation step(s); choose a batch size "
                f"that is a multiple of {shards}, or fewer processes")
        if self.hardware.sync_bn and self.dist.enabled and self.dist.device.type != "cuda":
            raise DistributedError("--sync-bn needs --device cuda: torch's SyncBatchNorm runs on GPUs only (on CPU "
                                   "each process normalises over its own share of the batch)")

    # --- data ---------------------------------------------------------------------------------------------

    def load_data(self) -> None:
        """The Train and Val splits and the text embeddings (checked against the Train descriptions)."""
        settings, config = self.settings, self.config
        data_root = Path(settings["data_root"])
        limits = TableLimits(**settings.get("table_limits", {}))
        self.train_set = SegmentationDataset(data_root, "Train", image_size=config.model.image_size, augment=True,
                                             seed=self.seed, table_limits=limits)
        self.val_set = SegmentationDataset(data_root, "Val", image_size=config.model.image_size, require_text=False,
                                           table_limits=limits)
        expected = ({key("Train", name): text for name, text in self.train_set.descriptions.items()}
                    if self.use_text else {})
        self.embeddings = load_embeddings(settings["embeddings"], config, expected_texts=expected, data_root=data_root)
        if self.embeddings.provenance.get("weights") == RANDOM_INIT and self.dist.is_main:
            warnings.warn(f"text embeddings {settings['embeddings']} come from a RANDOMLY INITIALISED CLIP tower: "
                          "they carry no language meaning", RandomTextTowerWarning, stacklevel=3)
        self.provenance = {
            "dataset": str(data_root), "train_images": len(self.train_set), "val_images": len(self.val_set),
            "text_embeddings": settings["embeddings"], "clip_weights": self.embeddings.provenance.get("weights"),
            "use_text": self.use_text, "seed": self.seed, "recipe": settings.get("recipe"),
            "global_batch": config.train.batch_size, "processes": self.dist.world_size,
            "accumulate": self.accumulate, "selected_weights": config.train.select,
            "source_size": list(self.train_set.source_size),  # the training scale; mrdl-export copies it to model.json
            "source_mpp": settings.get("source_mpp")}  # microns per pixel of the training images (None: unknown)

    # --- model, optimizer, schedule, EMA ------------------------------------------------------------------

    def build(self) -> None:
        from .ema import WeightEMA
        from .model import create_model

        config, device = self.config, self.dist.device
        model = create_model(config, prompt_features=self.embeddings.prompt, seed=self.seed)
        if self.state is not None:
            model.load_state_dict(self.state.model)
        model.to(device)
        if self.hardware.channels_last and device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr,
                                           weight_decay=config.train.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.ema = (WeightEMA(model, decay=config.train.ema_decay)
                    if config.train.ema_decay > 0 and self.dist.is_main else None)

    # --- start a new run, or resume a saved one -----------------------------------------------------------

    def start_or_resume(self) -> None:
        """Restore the saved optimizer, schedule, RNG and EMA, or write a new run's initial state; then the engine."""
        self.run_state = {"epoch": 0, "step": 0, "best_val_dice": -1.0, "best_epoch": 0, "bad_epochs": 0,
                          "history": [], "elapsed_seconds": 0.0, "best_elapsed_seconds": 0.0}
        if self.dist.is_main:
            remove_leftover_temporaries(self.out_dir)
        state = self.state
        if state is not None:
            load_optimizer_state(self.optimizer, state.optimizer)  # torch moves the moments to the weights' device
            self.scheduler.load_state_dict(state.scheduler)
            self.run_state = state.progress
            restore_rng(state.rng)
            if self.ema is not None:
                self.ema.load_state_dict(state.ema, updates=self.run_state["step"])
        elif self.dist.is_main:
            clear_run(self.out_dir)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_state(self.out_dir, self.model, self.optimizer, self.scheduler, self.settings, self.run_state,
                       self.provenance, self.ema)
        self.engine = self._engine()

    def _engine(self) -> Engine:
        model, wrapped, device = self.model, self.model, self.dist.device
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            if self.hardware.sync_bn:
                model = wrapped = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.model = model
            wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=not self.use_text)
        autocast, scaler, self.precision = autocast_factory(self.hardware, device)
        if scaler is not None and self.state is not None and self.state.scaler:
            scaler.load_state_dict(self.state.scaler)
        return Engine(model=model, wrapped=wrapped, optimizer=self.optimizer, scaler=scaler, autocast=autocast,
                      dist=self.dist, hardware=self.hardware, accumulate=self.accumulate, seed=self.seed, ema=self.ema)

    # --- the line that describes the run ------------------------------------------------------------------

    def announce(self, on_start: Callable[[str], None] | None) -> None:
        """Pass the settings line to ``on_start`` (rank 0); warn when an EMA selection outlasts the run."""
        from .recipes import describe

        config, train, dist = self.config, self.config.train, self.dist
        recipe = self.settings.get("recipe")
        shards = dist.world_size * self.accumulate
        line = (describe(get_recipe(recipe["name"]) if recipe else None, config)
                + f"; {dist.world_size} process(es) x {self.accumulate} accumulation step(s), "
                  f"{train.batch_size // shards} image(s) per forward pass; {dist.device}, {self.precision}"
                + (f"; EMA decay {train.ema_decay:g}, best/early stop on "
                   f"{'EMA' if train.select == 'ema' else 'raw'} weights" if train.ema_decay else "")
                + (f"; best/early stop on the mean Val Dice of the last {train.val_window} epochs"
                   if train.val_window > 1 else ""))
        if on_start is not None and dist.is_main:
            on_start(line)
        if train.select == "ema" and dist.is_main:
            planned_steps = train.epochs * math.ceil(len(self.train_set) / train.batch_size)
            horizon = 1.0 / (1.0 - train.ema_decay)
            if planned_steps < horizon:
                warnings.warn(f"this run makes at most {planned_steps} optimizer steps, fewer than the EMA's averaging "
                              f"horizon (decay {train.ema_decay:g}: ~{horizon:.0f} steps), yet the best checkpoint "
                              "and early stopping use the EMA weights, which lag the trained ones; for a short run "
                              "pass --select raw (or --ema-decay 0)", ShortEmaRunWarning, stacklevel=3)

    # --- the epoch loop -----------------------------------------------------------------------------------

    def fit(self, on_epoch_end: Callable[[dict], None] | None) -> TrainResult:
        """Epochs until early stopping or the cap (Ctrl-C returns with ``interrupted``); then the result."""
        from tqdm import tqdm

        from . import plots  # noqa: F401  (matplotlib loaded before the loop, where a Ctrl-C cannot break its import)

        config, run_state = self.config, self.run_state
        interrupted = stopped_early = False
        self.trained_samples, self.trained_seconds = 0, 0.0
        epoch_bar = tqdm(total=config.train.epochs, initial=min(run_state["epoch"], config.train.epochs),
                         desc="epochs", unit="epoch", disable=not self.progress)
        try:
            while run_state["epoch"] < config.train.epochs:
                if run_state["bad_epochs"] >= config.train.patience:
                    stopped_early = True
                    break
                self._epoch(run_state["epoch"] + 1, epoch_bar)
                if self.dist.is_main and on_epoch_end is not None:
                    on_epoch_end(run_state["history"][-1])
        except KeyboardInterrupt:
            interrupted = True
        finally:
            epoch_bar.close()
        return self._finish(stopped_early=stopped_early, interrupted=interrupted)

    def _epoch(self, epoch: int, epoch_bar) -> None:
        """Train one epoch; rank 0 validates, selects and commits it; every rank takes rank 0's verdict."""
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler
        from tqdm import tqdm

        dist, config, run_state = self.dist, self.config, self.run_state
        tic, cpu_tic = time.perf_counter(), time.process_time()
        self.train_set.set_epoch(epoch)
        sampler = DistributedSampler(self.train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                     seed=self.seed, drop_last=False)
        sampler.set_epoch(epoch)
        workers = self.hardware.workers if self.hardware.workers is not None else config.train.num_workers
        loader = DataLoader(self.train_set, batch_size=config.train.batch_size // dist.world_size, sampler=sampler,
                            num_workers=workers, pin_memory=dist.device.type == "cuda")
        lr = self.optimizer.param_groups[0]["lr"]
        with tqdm(total=len(loader), desc=f"epoch {epoch}", unit="batch", leave=False,
                  disable=not self.progress) as bar:
            texts = self.embeddings if self.use_text else None
            losses, samples = train_epoch(self.engine, loader, texts, config, run_state["step"], bar)
        train_seconds, train_cpu = time.perf_counter() - tic, time.process_time() - cpu_tic
        self.trained_samples += samples
        self.trained_seconds += train_seconds
        step_scheduler(self.scheduler, config, epoch)
        step = run_state["step"] + len(loader)
        if dist.is_main:
            row = self._validate_and_select(epoch, step, lr, losses, tic)
            self._commit(epoch, step, tic, throughput={
                "samples_per_s": samples / train_seconds,
                "samples_per_cpu_s": samples / dist.world_size / max(train_cpu, 1e-9)})
        # the other ranks wait here for rank 0's verdict (their own entries are overwritten)
        best, best_epoch, bad_epochs = dist.broadcast_flags(
            [run_state["best_val_dice"], float(run_state["best_epoch"]), float(run_state["bad_epochs"])])
        if not dist.is_main:
            run_state.update(epoch=epoch, step=step, best_val_dice=best, best_epoch=int(best_epoch),
                             bad_epochs=int(bad_epochs))
        epoch_bar.update(1)
        if dist.is_main:
            epoch_bar.set_postfix(val_dice=f"{row['val_dice']:.3f}", best=f"{run_state['best_val_dice']:.3f}",
                                  samples_s=f"{samples / train_seconds:.1f}")

    def _validate_and_select(self, epoch: int, step: int, lr: float, losses: dict, tic: float) -> dict:
        """Score the epoch on Val, keep the best checkpoint on any gain, count patience on real gains only."""
        model, ema, run_state, train = self.model, self.ema, self.run_state, self.config.train
        batch = train.batch_size
        val_dice, val_iou = validate(model, self.val_set, self.engine, batch)
        row = {"epoch": epoch, "step": step, "lr": lr, **losses, "val_dice": val_dice, "val_iou": val_iou}
        chosen, scored, chosen_iou = model, val_dice, val_iou
        if ema is not None:
            ema_dice, ema_iou = validate(ema.module, self.val_set, self.engine, batch)
            row.update(val_dice_ema=ema_dice, val_iou_ema=ema_iou)
            if train.select == "ema":
                chosen, scored, chosen_iou = ema.module, ema_dice, ema_iou
        best_dice = scored
        row["seconds"] = time.perf_counter() - tic
        history = run_state["history"]
        history.append(row)
        run_state.update(epoch=epoch, step=step)
        if train.val_window > 1:  # the criterion is the trailing mean of the selected weights' last Val scores
            column = "val_dice_ema" if train.select == "ema" else "val_dice"
            scored = float(np.mean([r[column] for r in history[-train.val_window:]]))
        reference = run_state.get("patience_reference", run_state["best_val_dice"])
        if real_gain(scored, reference if run_state["best_epoch"] else None, train):
            run_state.update(patience_reference=scored, bad_epochs=0)
        else:
            run_state["bad_epochs"] += 1
        if scored > run_state["best_val_dice"]:
            run_state.update(best_val_dice=scored, best_epoch=epoch, best_pending=True)
            extra = {"val_dice_smoothed": scored, "val_window": train.val_window} if train.val_window > 1 else {}
            save_checkpoint(self.out_dir / BEST, chosen, provenance={
                **self.provenance, "epoch": epoch, "step": step, "val_dice": best_dice, "val_iou": chosen_iou,
                **extra})
        return row

    def _commit(self, epoch: int, step: int, tic: float, throughput: dict) -> None:
        """Write the epoch's files, then the commit point (with the run's timings). A Ctrl-C meanwhile is held
        until the commit point is written: an interrupt inside matplotlib or a writer surfaced as another error
        (ImportError, ValueError 'Invalid bounding box') and ended the run without the resume command."""
        from mrdl_runtime.atomic import uninterruptible

        from .plots import plot_training_curves  # imported by fit before the loop

        run_state, history = self.run_state, self.run_state["history"]
        with uninterruptible():
            write_metrics(self.out_dir / METRICS_CSV, history)
            plot_training_curves(history, self.out_dir / CURVES)
            save_checkpoint(self.out_dir / LAST, self.model,
                            provenance={**self.provenance, "epoch": epoch, "step": step})
            elapsed = run_state.get("elapsed_seconds", 0.0) + time.perf_counter() - tic
            run_state["elapsed_seconds"] = elapsed
            if run_state.pop("best_pending", False):
                run_state["best_elapsed_seconds"] = elapsed
            save_state(self.out_dir, self.model, self.optimizer, self.scheduler, self.settings, run_state,
                       self.provenance, self.ema, self.engine.scaler, throughput=throughput)

    # --- finish -------------------------------------------------------------------------------------------

    def _finish(self, *, stopped_early: bool, interrupted: bool) -> TrainResult:
        run_state, recipe = self.run_state, self.settings.get("recipe")
        return TrainResult(out_dir=self.out_dir, best_checkpoint=self.out_dir / BEST,
                           last_checkpoint=self.out_dir / LAST, best_val_dice=run_state["best_val_dice"],
                           best_epoch=run_state["best_epoch"], epochs_completed=run_state["epoch"],
                           stopped_early=stopped_early, interrupted=interrupted,
                           wall_seconds=time.perf_counter() - self.start_time, history=run_state["history"],
                           samples_per_s=self.trained_samples / self.trained_seconds if self.trained_seconds else 0.0,
                           recipe=recipe["name"] if recipe else None, **best_timing(run_state))
