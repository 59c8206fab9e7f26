"""Typed configuration: dataclasses plus named JSON architectures in ``mrdl/configs/``.

A config file holds three sections, ``model``, ``loss`` and ``train``; any key left out takes
the dataclass default. ``load_config("base")`` reads ``mrdl/configs/base.json``; a path to a
JSON file works too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrdl_runtime.errors import MrdlError

CONFIG_DIR = Path(__file__).parent / "configs"

FUSION_MODES = ("distribution", "addition")
PHASE_MODES = ("fft", "matmul")


class ConfigError(MrdlError, ValueError):
    """A config that cannot describe a valid model."""


@dataclass(frozen=True)
class TextTowerConfig:
    """The frozen open_clip text tower that produces per-token features F'_T (L x width)."""

    clip_model: str = "ViT-B-32"  # open_clip architecture name; "custom" builds from the fields below
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the MRDL network (docs/architecture.md, "The model")."""

    image_size: int = 224
    in_channels: int = 3
    base_width: int = 64  # C: width of x1 and of the joint space H
    num_learnable: int = 32  # K: learnable features F_L
    n_classes: int = 1  # 1 -> sigmoid mask; >1 -> softmax
    heads: int = 8
    mlp_ratio: float = 4.0
    fusion: str = "distribution"  # "distribution" (the paper) or "addition" (its ablation)
    phase: str = "fft"  # "fft" (training reference) or "matmul" (export-safe)
    prompt: str = "a histopathology image of cell nuclei"
    variance_eps: float = 1e-6
    learnable_init_noise: float = 0.1
    text: TextTowerConfig = field(default_factory=TextTowerConfig)

    @property
    def grid_size(self) -> int:
        """Side of the token grid: N = grid_size**2 tokens (14 at 224x224)."""
        return self.image_size // 16

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def validate(self) -> None:
        if self.image_size % 16 or self.image_size < 32:
            raise ConfigError(f"image_size must be a multiple of 16 and >= 32, got {self.image_size}")
        if self.base_width % 2 or self.base_width < 2:
            raise ConfigError(f"base_width must be an even number >= 2, got {self.base_width}")
        if self.base_width % self.heads:
            raise ConfigError(f"base_width ({self.base_width}) must be divisible by heads ({self.heads})")
        if self.num_learnable < 2:
            raise ConfigError(f"num_learnable (K) must be >= 2 to estimate a std, got {self.num_learnable}")
        if self.n_classes < 1:
            raise ConfigError(f"n_classes must be >= 1, got {self.n_classes}")
        if self.fusion not in FUSION_MODES:
            raise ConfigError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        if self.phase not in PHASE_MODES:
            raise ConfigError(f"phase must be one of {PHASE_MODES}, got {self.phase!r}")


@dataclass(frozen=True)
class LossConfig:
    """L = dice_weight * Dice + ce_weight * CE + kl_weight * L_KL (paper: 0.5, 0.5, 1)."""

    dice_weight: float = 0.5
    ce_weight: float = 0.5
    kl_weight: float = 1.0


LR_SCHEDULES = ("cosine", "cosine-restarts", "constant")
MIN_DELTA_MODES = ("absolute", "relative")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. A run ends after ``epochs``, or earlier when ``patience`` epochs pass without a Val
    gain (the ``small``/``base`` defaults set patience to the cap: a fixed cosine run, chosen by
    docs/training-schedule.md). The learning rate follows ``lr_schedule`` with a period:
    ``cosine`` anneals from ``lr`` to ``min_lr`` over ``lr_period`` epochs and then stays there,
    ``cosine-restarts`` repeats that anneal every ``lr_period`` epochs (SGDR, as LViT's code),
    ``constant`` keeps ``lr``. ``lr_period`` 0 means the epoch cap (what runs before it existed did).
    ``ema_decay`` > 0 also keeps an EMA of the weights (:mod:`mrdl.ema`); ``select`` says which
    weights Val scores to pick the best checkpoint and to stop early: ``raw`` or ``ema``; with
    ``val_window`` > 1 the criterion is the mean of those weights' last ``val_window`` Val Dice scores.
    ``batch_size`` is the global batch: it is split over processes (torchrun) and accumulation steps.
    A Val gain counts for early stopping only when it exceeds ``min_delta``: in Dice
    (``min_delta_mode`` ``absolute``, as Keras' and Lightning's ``min_delta``) or as a fraction of
    the best score so far (``relative``); smaller gains still update the best checkpoint, but do not
    restart the patience count.
    """

    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 200
    patience: int = 50
    num_workers: int = 0
    lr_schedule: str = "cosine"
    lr_period: int = 0
    min_lr: float = 0.0
    ema_decay: float = 0.0
    select: str = "raw"
    val_window: int = 1
    min_delta: float = 0.0
    min_delta_mode: str = "absolute"

    def validate(self) -> None:
        if self.batch_size < 1 or self.epochs < 0 or self.patience < 1:
            raise ConfigError(f"train needs batch_size >= 1, epochs >= 0, patience >= 1; got {self.batch_size}, "
                              f"{self.epochs}, {self.patience}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.lr_period < 0 or not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError(f"lr_period must be >= 0 and 0 <= min_lr <= lr; got {self.lr_period}, {self.min_lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay}")
        if self.val_window < 1:
            raise ConfigError(f"val_window must be >= 1 (1 = the epoch's own Val Dice), got {self.val_window}")
        if not 0.0 <= self.min_delta < float("inf") or self.min_delta_mode not in MIN_DELTA_MODES:
            raise ConfigError(f"min_delta must be a finite number >= 0 and min_delta_mode one of {MIN_DELTA_MODES}; "
                              f"got {self.min_delta}, {self.min_delta_mode!r}")
        if self.select not in ("raw", "ema") or (self.select == "ema" and self.ema_decay == 0.0):
            raise ConfigError(f"select must be 'raw' or 'ema' (the latter with ema_decay > 0), got {self.select!r} "
                              f"with ema_decay {self.ema_decay}")


@dataclass(frozen=True)
class MRDLConfig:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace_model(self, **changes: Any) -> "MRDLConfig":
        """A copy with some model fields changed (e.g. ``phase="matmul"``)."""
        model = dataclasses.replace(self.model, **changes)
        model.validate()
        return dataclasses.replace(self, model=model)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; expected some of {sorted(known)}")
    return cls(**values)


def config_from_dict(data: dict[str, Any]) -> MRDLConfig:
    """Build a validated config from a (possibly partial) nested dict."""
    data = dict(data)
    name = data.pop("name", "custom")
    model = dict(data.pop("model", {}))
    text = _build(TextTowerConfig, model.pop("text", {}), "model.text")
    cfg = MRDLConfig(
        name=name,
        model=_build(ModelConfig, {**model, "text": text}, "model"),
        loss=_build(LossConfig, data.pop("loss", {}), "loss"),
        train=_build(TrainConfig, data.pop("train", {}), "train"),
    )
    if data:
        raise ConfigError(f"unknown section(s) {sorted(data)}; expected model, loss, train")
    cfg.model.validate()
    cfg.train.validate()
    return cfg


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name_or_path: str | Path) -> MRDLConfig:
    """Load a named config (``tiny``, ``small``, ``base``) or a JSON file."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ConfigError(f"no config named {name_or_path!r}; available: {available_configs()}")
    elif not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
    data.setdefault("name", path.stem)
    return config_from_dict(data)
