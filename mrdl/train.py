"""Training: AdamW, a per-epoch learning-rate schedule, early stopping on Val Dice, exact resume, DDP.

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

Stopping: early stopping (``patience`` epochs without a better Val score) is the real stop; the
epoch cap (``config.train.epochs``) is a safety limit that can be raised when resuming, and the
learning-rate schedule has its own period (``lr_period``), so a capped run continued with a higher
cap equals a run that had the higher cap from the start.

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

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mrdl_runtime.errors import MrdlError

from .checkpoint import atomic_path, save_checkpoint
from .config import MRDLConfig
from .data.dataset import SegmentationDataset, TableLimits
from .data.embeddings import TextEmbeddings, compute_embeddings, key, load_embeddings
from .distributed import Distributed, DistributedError
from .evaluate import predict_dataset, score_masks
from .losses import segmentation_loss
from .recipes import Recipe, apply_recipe, check_source_mpp, get_recipe
from .resume import LEGACY_STATE, RESUME, load_optimizer_state, read_train_state, restore_rng, save_train_state
from .text import RANDOM_INIT, RandomTextTowerWarning

BEST, LAST, RUN_JSON = "best.safetensors", "last.safetensors", "run.json"
METRICS_CSV, CURVES = "metrics.csv", "curves.png"
RUN_FILES = (RESUME, BEST, LAST, METRICS_CSV, CURVES, RUN_JSON, LEGACY_STATE)  # what a run writes (and once wrote)
METRICS = ("epoch", "step", "lr", "train_loss", "train_dice_loss", "train_ce", "train_kl", "val_dice", "val_iou", "seconds")
EMA_METRICS = ("val_dice_ema", "val_iou_ema")  # present when the run keeps an EMA; before "seconds"


class RunExistsError(MrdlError, RuntimeError):
    """A new run pointed at a folder that already holds a training run."""


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

    device: str = "cpu"
    amp: bool = True
    channels_last: bool = True
    workers: int | None = None  # None: config.train.num_workers
    sync_bn: bool = False


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


def run_config(config: MRDLConfig, *, epochs: int | None, batch_size: int | None, kl_weight: float | None,
               use_text: bool, recipe: Recipe | None = None, lr: float | None = None,
               lr_period: int | None = None, ema_decay: float | None = None, select: str | None = None,
               val_window: int | None = None) -> MRDLConfig:
    """The config a run trains with: the recipe, then explicit overrides; no text forces lambda_3 = 0."""
    config = apply_recipe(config, recipe)
    if ema_decay == 0.0 and select is None:  # no EMA asked for: the raw weights are the ones to select
        select = "raw"
    changes = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "lr_period": lr_period, "ema_decay": ema_decay,
               "select": select, "val_window": val_window}
    train = dataclasses.replace(config.train, **{k: v for k, v in changes.items() if v is not None})
    train.validate()
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
        compute_embeddings(data_root, config, out=embeddings, seed=seed, random_init=True)
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
    columns = list(METRICS)
    if history and EMA_METRICS[0] in history[0]:
        columns[-1:-1] = EMA_METRICS
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The torch seed of one shard of one optimizer step (the model's sampling noise)."""
    digest = hashlib.blake2b(f"mrdl/{seed}/{step}/{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def make_scheduler(optimizer: torch.optim.Optimizer, config: MRDLConfig):
    """The learning-rate schedule of ``config.train`` (stepped once per epoch)."""
    t = config.train
    period = t.lr_period or max(t.epochs, 1)
    if t.lr_schedule == "cosine-restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=period, eta_min=t.min_lr)
    if t.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=period, eta_min=t.min_lr)


def _step_scheduler(scheduler, config: MRDLConfig, epoch: int) -> None:
    """Advance the schedule after ``epoch``; ``cosine`` holds ``min_lr`` once its period is over."""
    t = config.train
    if t.lr_schedule == "cosine" and epoch > (t.lr_period or max(t.epochs, 1)):
        return
    scheduler.step()


@dataclass
class _Engine:
    """The per-run objects the epoch loop needs."""

    model: torch.nn.Module  # the module itself (checkpoints, EMA, validation)
    wrapped: torch.nn.Module  # what the forward pass calls: DDP(model) under torchrun, else model
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: Callable[[], contextlib.AbstractContextManager]
    dist: Distributed
    hardware: Hardware
    accumulate: int
    seed: int
    ema: object | None = None


def _train_epoch(engine: _Engine, loader, texts: TextEmbeddings | None, config: MRDLConfig, first_step: int,
                 bar) -> tuple[dict, int]:
    """One epoch over this rank's share; returns the loss terms averaged over every rank's samples, and samples seen."""
    model, dist, device = engine.wrapped, engine.dist, engine.dist.device
    model.train()
    sums = {"train_loss": 0.0, "train_dice_loss": 0.0, "train_ce": 0.0, "train_kl": 0.0}
    seen = 0
    step = first_step
    non_blocking = device.type == "cuda"
    for batch in loader:
        step += 1
        parts = [slice(j, None, engine.accumulate) for j in range(engine.accumulate)]
        parts = [(j, part) for j, part in enumerate(parts) if len(batch["name"][part])]
        engine.optimizer.zero_grad(set_to_none=True)
        for number, (j, part) in enumerate(parts):
            images = batch["image"][part].to(device, non_blocking=non_blocking)  # (b, 3, S, S)
            masks = batch["mask"][part].to(device, non_blocking=non_blocking)  # (b, S, S)
            if engine.hardware.channels_last and device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            names = batch["name"][part]
            text = texts.for_split("Train", names).to(device, non_blocking=non_blocking) if texts is not None else None
            torch.manual_seed(shard_seed(engine.seed, step, dist.rank + dist.world_size * j))
            last = number == len(parts) - 1
            sync = contextlib.nullcontext() if last or not dist.enabled else model.no_sync()
            with sync:
                with engine.autocast():
                    output = model(images, text)
                kl = output.kl.float() if output.kl is not None else None
                terms = segmentation_loss(output.logits.float(), masks, kl, config.loss)
                loss = terms.total / len(parts)
                (engine.scaler.scale(loss) if engine.scaler is not None else loss).backward()
            n = images.shape[0]
            seen += n
            for name, value in zip(sums, terms):
                sums[name] += float(value.detach()) * n
        if engine.scaler is not None:
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            engine.optimizer.step()
        if engine.ema is not None:
            engine.ema.update(engine.model)
        bar.update(1)
        bar.set_postfix(loss=f"{float(terms.total.detach()):.3f}")
    totals = dist.all_reduce_sum([*sums.values(), float(seen)])
    return {name: total / max(totals[-1], 1.0) for name, total in zip(sums, totals)}, int(totals[-1])


def _validate(model: torch.nn.Module, dataset: SegmentationDataset, engine: _Engine, batch_size: int) -> tuple[float, float]:
    """Mean per-image Dice and IoU of ``model`` (eval mode) on ``dataset``, LViT's protocol."""
    device = engine.dist.device
    masks = predict_dataset(model, dataset, batch_size=batch_size, device=device, autocast=engine.autocast,
                            channels_last=engine.hardware.channels_last and device.type == "cuda")
    scores = score_masks(masks, dataset)
    return float(np.mean([s["dice"] for s in scores])), float(np.mean([s["iou"] for s in scores]))


def _autocast_factory(hardware: Hardware, device: torch.device) -> tuple[Callable, torch.amp.GradScaler | None, str]:
    """The forward pass's autocast, the gradient scaler (float16 only) and a name for the precision."""
    if device.type != "cuda" or not hardware.amp:
        return contextlib.nullcontext, None, "float32"
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast(device_type="cuda", dtype=dtype)), scaler, str(dtype).removeprefix("torch.")


class ShortEmaRunWarning(UserWarning):
    """A run too short for its EMA to catch up with the trained weights, selecting on the EMA anyway."""


def train_model(*, config: MRDLConfig, data_root: str | Path, embeddings_path: str | Path, out_dir: str | Path,
                epochs: int | None = None, seed: int = 0, use_text: bool = True, kl_weight: float | None = None,
                batch_size: int | None = None, recipe: str | Recipe | None = None, lr: float | None = None,
                lr_period: int | None = None, ema_decay: float | None = None, select: str | None = None,
                val_window: int | None = None, accumulate: int = 1, resume: bool = False, overwrite: bool = False,
                source_mpp: float | None = None,
                table_limits: TableLimits = TableLimits(), hardware: Hardware = Hardware(),
                dist: Distributed | None = None, progress: bool = True,
                on_epoch_end: Callable[[dict], None] | None = None,
                on_start: Callable[[str], None] | None = None) -> TrainResult:
    """Train an MRDL model on ``data_root``'s Train split, validating on Val after every epoch.

    ``use_text=False`` is the paper's no-text ablation (no text features, lambda_3 = 0); the prompt's
    features still come from ``embeddings_path``. ``recipe`` (a name of :data:`mrdl.recipes.RECIPES`)
    sets the dataset's batch, lr, lambda_3 and prompt; ``epochs``, ``batch_size``, ``lr``,
    ``kl_weight``, ``lr_period``, ``ema_decay``, ``select`` and ``val_window`` override it. ``accumulate`` splits
    each process's share of a batch into that many micro-batches (one optimizer step). ``source_mpp``
(microns per pixel of the training images; default: the recipe's) is recorded in every checkpoint's
provenance as ``source_mpp`` (None when unknown).
    ``resume=True`` continues the run in ``out_dir`` with the settings saved there; only ``epochs``
    (the cap) may be given again, to raise or lower it; the other arguments except ``hardware``,
    ``dist``, ``progress`` and the callbacks are ignored. A new run refuses an ``out_dir`` holding a
    run (:class:`RunExistsError`) unless ``overwrite=True``. ``dist`` is this process's place in a
    torchrun job (:func:`mrdl.distributed.setup`; default: one process). ``on_start`` receives the
    line describing the run's settings; ``on_epoch_end`` each epoch's metrics row after the run's
    files are written (rank 0). Ctrl-C during an epoch returns with ``interrupted=True``.
    """
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from tqdm import tqdm

    from .ema import WeightEMA
    from .model import create_model
    from .plots import plot_training_curves
    from .recipes import describe

    dist = dist or Distributed()
    progress = progress and dist.is_main
    out_dir = Path(out_dir)
    start_time = time.perf_counter()
    state = None
    if resume:
        state = read_train_state(out_dir)
        settings, config = state.settings, state.config
        if epochs is not None and epochs != config.train.epochs:  # a new cap; the schedule keeps its period
            period = config.train.lr_period or config.train.epochs
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs,
                                                                           lr_period=period))
    else:
        if dist.is_main:
            check_run_folder(out_dir, overwrite=overwrite)
        if isinstance(recipe, str):
            recipe = get_recipe(recipe)
        if accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        config = run_config(config, epochs=epochs, batch_size=batch_size, kl_weight=kl_weight, use_text=use_text,
                            recipe=recipe, lr=lr, lr_period=lr_period, ema_decay=ema_decay, select=select,
                            val_window=val_window)
        settings = {"data_root": str(Path(data_root).resolve()), "embeddings": str(Path(embeddings_path).resolve()),
                    "seed": seed, "use_text": use_text, "table_limits": dataclasses.asdict(table_limits),
                    "recipe": recipe.to_dict() if recipe is not None else None, "accumulate": accumulate,
                    "source_mpp": check_source_mpp(source_mpp if source_mpp is not None else
                                                   recipe.source_mpp if recipe is not None else None)}
    data_root, seed, use_text = Path(settings["data_root"]), settings["seed"], settings["use_text"]
    accumulate = int(settings.get("accumulate", 1))
    recipe_info = settings.get("recipe")
    table_limits = TableLimits(**settings.get("table_limits", {}))
    shards = dist.world_size * accumulate
    if config.train.batch_size % shards:
        raise DistributedError(
            f"batch size {config.train.batch_size} (the global batch of one step) does not split into "
            f"{dist.world_size} process(es) x {accumulate} accumulation step(s); choose a batch size that is a "
            f"multiple of {shards}, or fewer processes")
    if hardware.sync_bn and dist.enabled and dist.device.type != "cuda":
        raise DistributedError("--sync-bn needs --device cuda: torch's SyncBatchNorm runs on GPUs only (on CPU each "
                               "process normalises over its own share of the batch)")
    train_set = SegmentationDataset(data_root, "Train", image_size=config.model.image_size, augment=True, seed=seed,
                                    table_limits=table_limits)
    val_set = SegmentationDataset(data_root, "Val", image_size=config.model.image_size, require_text=False,
                                  table_limits=table_limits)
    expected = {key("Train", name): text for name, text in train_set.descriptions.items()} if use_text else {}
    embeddings = load_embeddings(settings["embeddings"], config, expected_texts=expected, data_root=data_root)
    texts = embeddings if use_text else None
    if embeddings.provenance.get("weights") == RANDOM_INIT and dist.is_main:
        warnings.warn(f"text embeddings {settings['embeddings']} come from a RANDOMLY INITIALISED CLIP tower: "
                      "they carry no language meaning", RandomTextTowerWarning, stacklevel=2)

    device = dist.device
    model = create_model(config, prompt_features=embeddings.prompt, seed=seed)
    if state is not None:
        model.load_state_dict(state.model)
    model.to(device)
    if hardware.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    scheduler = make_scheduler(optimizer, config)
    ema = WeightEMA(model, decay=config.train.ema_decay) if config.train.ema_decay > 0 and dist.is_main else None
    progress_state = {"epoch": 0, "step": 0, "best_val_dice": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}
    provenance = {"dataset": str(data_root), "train_images": len(train_set), "val_images": len(val_set),
                  "text_embeddings": settings["embeddings"], "clip_weights": embeddings.provenance.get("weights"),
                  "use_text": use_text, "seed": seed, "recipe": recipe_info,
                  "global_batch": config.train.batch_size, "processes": dist.world_size, "accumulate": accumulate,
                  "selected_weights": config.train.select,
                  "source_size": list(train_set.source_size),  # the training scale; mrdl-export copies it to model.json
                  "source_mpp": settings.get("source_mpp")}  # microns per pixel of the training images (None: unknown)
    if dist.is_main:
        _remove_leftover_temporaries(out_dir)
    if state is not None:
        load_optimizer_state(optimizer, state.optimizer)  # torch moves the moments to the weights' device
        scheduler.load_state_dict(state.scheduler)
        progress_state = state.progress
        restore_rng(state.rng)
        if ema is not None:
            ema.load_state_dict(state.ema, updates=progress_state["step"])
    elif dist.is_main:
        _clear_run(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _save_state(out_dir, model, optimizer, scheduler, settings, progress_state, provenance, ema)

    wrapped = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if hardware.sync_bn:
            wrapped = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = wrapped
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=not use_text)
    autocast, scaler, precision = _autocast_factory(hardware, device)
    if scaler is not None and state is not None and state.scaler:
        scaler.load_state_dict(state.scaler)
    engine = _Engine(model=model, wrapped=wrapped, optimizer=optimizer, scaler=scaler, autocast=autocast, dist=dist,
                     hardware=hardware, accumulate=accumulate, seed=seed, ema=ema)
    workers = hardware.workers if hardware.workers is not None else config.train.num_workers
    select_ema = config.train.select == "ema"
    start_line = (describe(get_recipe(recipe_info["name"]) if recipe_info else None, config)
                  + f"; {dist.world_size} process(es) x {accumulate} accumulation step(s), "
                    f"{config.train.batch_size // shards} image(s) per forward pass; {device}, {precision}"
                  + (f"; EMA decay {config.train.ema_decay:g}, best/early stop on "
                     f"{'EMA' if select_ema else 'raw'} weights" if config.train.ema_decay else "")
                  + (f"; best/early stop on the mean Val Dice of the last {config.train.val_window} epochs"
                     if config.train.val_window > 1 else ""))
    if on_start is not None and dist.is_main:
        on_start(start_line)
    if select_ema and dist.is_main:
        planned_steps = config.train.epochs * math.ceil(len(train_set) / config.train.batch_size)
        horizon = 1.0 / (1.0 - config.train.ema_decay)
        if planned_steps < horizon:
            warnings.warn(f"this run makes at most {planned_steps} optimizer steps, fewer than the EMA's averaging "
                          f"horizon (decay {config.train.ema_decay:g}: ~{horizon:.0f} steps), yet the best checkpoint "
                          "and early stopping use the EMA weights, which lag the trained ones; for a short run "
                          "pass --select raw (or --ema-decay 0)", ShortEmaRunWarning, stacklevel=2)

    history: list[dict] = progress_state["history"]
    interrupted = stopped_early = False
    trained_samples, trained_seconds = 0, 0.0
    epoch_bar = tqdm(total=config.train.epochs, initial=min(progress_state["epoch"], config.train.epochs),
                     desc="epochs", unit="epoch", disable=not progress)
    try:
        while progress_state["epoch"] < config.train.epochs:
            if progress_state["bad_epochs"] >= config.train.patience:
                stopped_early = True
                break
            epoch = progress_state["epoch"] + 1
            tic, cpu_tic = time.perf_counter(), time.process_time()
            train_set.set_epoch(epoch)
            sampler = DistributedSampler(train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                         seed=seed, drop_last=False)
            sampler.set_epoch(epoch)
            loader = DataLoader(train_set, batch_size=config.train.batch_size // dist.world_size, sampler=sampler,
                                num_workers=workers, pin_memory=device.type == "cuda")
            lr = optimizer.param_groups[0]["lr"]
            with tqdm(total=len(loader), desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress) as bar:
                losses, samples = _train_epoch(engine, loader, texts, config, progress_state["step"], bar)
            train_seconds, train_cpu = time.perf_counter() - tic, time.process_time() - cpu_tic
            trained_samples += samples
            trained_seconds += train_seconds
            _step_scheduler(scheduler, config, epoch)
            step = progress_state["step"] + len(loader)
            if dist.is_main:
                val_dice, val_iou = _validate(model, val_set, engine, config.train.batch_size)
                row = {"epoch": epoch, "step": step, "lr": lr, **losses, "val_dice": val_dice, "val_iou": val_iou}
                chosen, scored = (model, val_dice)
                if ema is not None:
                    ema_dice, ema_iou = _validate(ema.module, val_set, engine, config.train.batch_size)
                    row.update(val_dice_ema=ema_dice, val_iou_ema=ema_iou)
                    if select_ema:
                        chosen, scored = ema.module, ema_dice
                row["seconds"] = time.perf_counter() - tic
                history.append(row)
                progress_state.update(epoch=epoch, step=step)
                window = config.train.val_window
                if window > 1:  # the criterion is the trailing mean of the selected weights' last Val scores
                    column = "val_dice_ema" if select_ema else "val_dice"
                    recent = [r[column] for r in history[-window:]]
                    scored = float(np.mean(recent))
                if scored > progress_state["best_val_dice"]:
                    progress_state.update(best_val_dice=scored, best_epoch=epoch, bad_epochs=0)
                    best_iou = row["val_iou_ema"] if chosen is not model else val_iou
                    best_dice = row["val_dice_ema"] if chosen is not model else val_dice
                    extra = {"val_dice_smoothed": scored, "val_window": window} if window > 1 else {}
                    save_checkpoint(out_dir / BEST, chosen, provenance={
                        **provenance, "epoch": epoch, "step": step, "val_dice": best_dice, "val_iou": best_iou,
                        **extra})
                else:
                    progress_state["bad_epochs"] += 1
                _write_metrics(out_dir / METRICS_CSV, history)
                plot_training_curves(history, out_dir / CURVES)
                save_checkpoint(out_dir / LAST, model, provenance={**provenance, "epoch": epoch, "step": step})
                _save_state(out_dir, model, optimizer, scheduler, settings, progress_state, provenance, ema, scaler,
                            throughput={"samples_per_s": samples / train_seconds,
                                        "samples_per_cpu_s": samples / dist.world_size / max(train_cpu, 1e-9)})
            # the other ranks wait here for rank 0's verdict (their own entries are overwritten)
            best, best_epoch, bad_epochs = dist.broadcast_flags(
                [progress_state["best_val_dice"], float(progress_state["best_epoch"]),
                 float(progress_state["bad_epochs"])])
            if not dist.is_main:
                progress_state.update(epoch=epoch, step=step, best_val_dice=best, best_epoch=int(best_epoch),
                                      bad_epochs=int(bad_epochs))
            epoch_bar.update(1)
            if dist.is_main:
                epoch_bar.set_postfix(val_dice=f"{history[-1]['val_dice']:.3f}",
                                      best=f"{progress_state['best_val_dice']:.3f}",
                                      samples_s=f"{samples / train_seconds:.1f}")
                if on_epoch_end is not None:
                    on_epoch_end(history[-1])
    except KeyboardInterrupt:
        interrupted = True
    finally:
        epoch_bar.close()
    return TrainResult(out_dir=out_dir, best_checkpoint=out_dir / BEST, last_checkpoint=out_dir / LAST,
                       best_val_dice=progress_state["best_val_dice"], best_epoch=progress_state["best_epoch"],
                       epochs_completed=progress_state["epoch"], stopped_early=stopped_early, interrupted=interrupted,
                       wall_seconds=time.perf_counter() - start_time, history=history,
                       samples_per_s=trained_samples / trained_seconds if trained_seconds else 0.0,
                       recipe=recipe_info["name"] if recipe_info else None)


def _save_state(out_dir: Path, model, optimizer, scheduler, settings: dict, progress_state: dict,
                provenance: dict, ema=None, scaler=None, throughput: dict | None = None) -> None:
    """Write the commit point resume.safetensors, then the readable summary run.json."""
    save_train_state(out_dir / RESUME, model=model, optimizer=optimizer, scheduler=scheduler, settings=settings,
                     progress=progress_state, provenance=provenance,
                     ema=ema.state_dict() if ema is not None else None,
                     scaler=scaler.state_dict() if scaler is not None else None)
    summary = {"settings": settings, "epoch": progress_state["epoch"], "best_val_dice": progress_state["best_val_dice"],
               "best_epoch": progress_state["best_epoch"]}
    if throughput is not None:  # the last epoch's training speed: wall clock (all ranks), and per CPU second of rank 0
        summary["last_epoch_throughput"] = {k: v for k, v in throughput.items() if math.isfinite(v)}
    with atomic_path(out_dir / RUN_JSON) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
