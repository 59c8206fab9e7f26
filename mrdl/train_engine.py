"""The mechanics of one training run: the engine, one epoch over the shards, validation, the schedule.

:mod:`mrdl.train` drives these per epoch; the numerics (shards, seeds, accumulation) are described
there. Nothing here writes files.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .config import MRDLConfig
from .data.dataset import SegmentationDataset
from .data.embeddings import TextEmbeddings
from .distributed import Distributed
from .evaluate import predict_dataset, score_masks
from .losses import segmentation_loss
from .train_options import Hardware


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


def step_scheduler(scheduler, config: MRDLConfig, epoch: int) -> None:
    """Advance the schedule after ``epoch``; ``cosine`` holds ``min_lr`` once its period is over."""
    t = config.train
    if t.lr_schedule == "cosine" and epoch > (t.lr_period or max(t.epochs, 1)):
        return
    scheduler.step()


@dataclass
class Engine:
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


def train_epoch(engine: Engine, loader, texts: TextEmbeddings | None, config: MRDLConfig, first_step: int,
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


def validate(model: torch.nn.Module, dataset: SegmentationDataset, engine: Engine, batch_size: int) -> tuple[float, float]:
    """Mean per-image Dice and IoU of ``model`` (eval mode) on ``dataset``, LViT's protocol."""
    device = engine.dist.device
    masks = predict_dataset(model, dataset, batch_size=batch_size, device=device, autocast=engine.autocast,
                            channels_last=engine.hardware.channels_last and device.type == "cuda")
    scores = score_masks(masks, dataset)
    return float(np.mean([s["dice"] for s in scores])), float(np.mean([s["iou"] for s in scores]))


def autocast_factory(hardware: Hardware, device: torch.device) -> tuple[Callable, torch.amp.GradScaler | None, str]:
    """The forward pass's autocast, the gradient scaler (float16 only) and a name for the precision."""
    if device.type != "cuda" or not hardware.amp:
        return contextlib.nullcontext, None, "float32"
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast(device_type="cuda", dtype=dtype)), scaler, str(dtype).removeprefix("torch.")
