"""Typed configuration: dataclasses plus named JSON architectures in ``mrdl/configs/``.

A config file holds three sections, ``model``, ``loss`` and ``train``; any key left out takes
the dataclass default. ``load_config("base")`` reads ``mrdl/configs/base.json``; a path to a
JSON file works too. A config also travels inside checkpoints, so every value is checked before a
model is built: its type (JSON gives ``"64"`` or ``true`` as easily as ``64``) and its range, with
upper bounds on every size (:data:`MODEL_LIMITS`, :data:`TEXT_LIMITS`) so an edited
``image_size`` of 2**20 is refused by name instead of allocating 137 GB.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrdl_runtime.errors import MrdlError

CONFIG_DIR = Path(__file__).parent / "configs"

FUSION_MODES = ("distribution", "addition")
PHASE_MODES = ("fft", "matmul")


class ConfigError(MrdlError, ValueError):
    """A config that cannot describe a valid model."""


# Ranges [low, high] of the sizes (checked by :func:`check_section`): the upper bounds lie far above the named
# configs (base: 224 px, base_width 64, 8 heads; text 77 x 512, 8 heads, 12 layers: open_clip's ViT-B-32) and
# far below the sizes whose weights alone exhaust a machine's memory (the deepest width is 8 * base_width).
MODEL_LIMITS = {"image_size": (32, 4096), "in_channels": (1, 64), "base_width": (2, 512),
                "num_learnable": (2, 1024),  # K >= 2 to estimate a std
                "n_classes": (1, 256),  # masks are uint8
                "heads": (1, 64), "mlp_ratio": (0.25, 16.0), "variance_eps": (1e-12, 1.0),
                "learnable_init_noise": (0.0, 100.0)}
TEXT_LIMITS = {"context_length": (1, 1024), "vocab_size": (1, 1_000_000), "width": (1, 4096), "heads": (1, 64),
               "layers": (1, 64)}
TRAIN_LIMITS = {"batch_size": (1, 65536), "num_workers": (0, 1024)}


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
        check_section(self.text, "model.text", TEXT_LIMITS)
        check_section(self, "model", MODEL_LIMITS)
        if self.text.width % self.text.heads:
            raise ConfigError(f"model.text.width ({self.text.width}) must be divisible by model.text.heads "
                              f"({self.text.heads})")
        if self.image_size % 16:
            raise ConfigError(f"model.image_size must be a multiple of 16, got {self.image_size}")
        if self.base_width % 2:
            raise ConfigError(f"model.base_width must be an even number, got {self.base_width}")
        if self.base_width % self.heads:
            raise ConfigError(f"model.base_width ({self.base_width}) must be divisible by model.heads ({self.heads})")
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
        check_section(self, "train", TRAIN_LIMITS)
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


@functools.cache
def _field_types(cls: type) -> dict[str, type]:
    return typing.get_type_hints(cls)


def check_section(section: Any, where: str, limits: dict[str, tuple[float, float]]) -> None:
    """Refuse a field of the config dataclass ``section`` whose value is not of the field's type (an int for
    ``int``, a finite int or float for ``float``, text for ``str``; never a bool) or outside its ``limits``."""
    for config_field in dataclasses.fields(section):
        name, value = config_field.name, getattr(section, config_field.name)
        kind = _field_types(type(section))[name]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{name} must be an integer, got {value!r}")
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise ConfigError(f"{where}.{name} must be a finite number, got {value!r}")
        if kind is str and not isinstance(value, str):
            raise ConfigError(f"{where}.{name} must be a string, got {value!r}")
        if name in limits and not limits[name][0] <= value <= limits[name][1]:
            low, high = limits[name]
            raise ConfigError(f"{where}.{name} must be in [{low:g}, {high:g}], got {value!r}")


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a JSON object of settings, got {values!r:.80}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; expected some of {sorted(known)}")
    return cls(**values)


def config_from_dict(data: dict[str, Any]) -> MRDLConfig:
    """Build a validated config from a (possibly partial) nested dict; :class:`ConfigError` names what is wrong."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object with sections model, loss, train; got {data!r:.80}")
    data = dict(data)
    name = data.pop("name", "custom")
    if not isinstance(name, str):
        raise ConfigError(f"a config's name must be a string, got {name!r:.80}")
    model = data.pop("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"model must be a JSON object of settings, got {model!r:.80}")
    model = dict(model)
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
    check_section(cfg.loss, "loss", {})
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
