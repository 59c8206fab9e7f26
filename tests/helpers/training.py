"""Run :func:`mrdl.train.train_model` from keyword arguments: the fields of ``TrainOptions`` and its own keywords."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from mrdl.train import TrainResult, train_model
from mrdl.train_options import TrainOptions

OPTION_FIELDS = frozenset(f.name for f in fields(TrainOptions))


def _split(kwargs: dict) -> tuple[dict, dict]:
    """(TrainOptions fields, train_model keywords) of ``kwargs``."""
    return ({k: v for k, v in kwargs.items() if k in OPTION_FIELDS},
            {k: v for k, v in kwargs.items() if k not in OPTION_FIELDS})


def train_run(config, data: tuple[Path, Path], out: Path, **kwargs) -> TrainResult:
    """A new run of ``config`` on ``data`` = (dataset root, embedding file) into ``out``, without progress bars."""
    root, embeddings = data
    options, keywords = _split(kwargs)
    keywords.setdefault("progress", False)
    return train_model(TrainOptions(data_root=root, embeddings=embeddings, out_dir=out, **options), config=config,
                       **keywords)


def resume_run(out: Path, **kwargs) -> TrainResult:
    """Continue the run in ``out`` (``epochs`` may change the cap), without progress bars."""
    options, keywords = _split(kwargs)
    keywords.setdefault("progress", False)
    return train_model(TrainOptions(out_dir=out, resume=True, **options), **keywords)
