"""Checkpoints: one safetensors file holding the weights, the config and the provenance.

A checkpoint is a tagged safetensors file (:mod:`mrdl.tagged_file`, format ``mrdl-checkpoint/1``)
whose header metadata also carries ``mrdl.config`` (JSON) and ``mrdl.provenance`` (JSON: mrdl
version, dataset, prompt, CLIP model and weights, training step, the training images' size
``source_size`` and resolution ``source_mpp``, ...). The tensor digest refuses a truncated or
bit-flipped file with a message naming the problem. Writes go to a temporary name and are renamed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mrdl_runtime.errors import MrdlError

from . import __version__
from .config import MRDLConfig, config_from_dict, load_config
from .model import MRDL
from .tagged_file import read_tagged, shape_mismatches, write_tagged

FORMAT = "mrdl-checkpoint/1"


class CheckpointError(MrdlError, ValueError):
    """A checkpoint that cannot be loaded: not ours, corrupt, truncated or of another config."""


@dataclass
class Checkpoint:
    config: MRDLConfig
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: torch.nn.Module, *, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights, config and provenance atomically to ``path`` (.safetensors)."""
    config: MRDLConfig = model.config
    provenance = {"mrdl_version": __version__, "torch_version": torch.__version__,
                  "prompt": config.model.prompt, "clip_model": config.model.text.clip_model,
                  **(provenance or {})}
    metadata = {"mrdl.config": config.to_json(),
                "mrdl.provenance": json.dumps(provenance, sort_keys=True, default=str)}
    return write_tagged(path, model.state_dict(), file_format=FORMAT, metadata=metadata)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint file without building a model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    metadata, state = read_tagged(path, file_format=FORMAT, kind="an mrdl checkpoint", error=CheckpointError)
    try:
        config = config_from_dict(json.loads(metadata["mrdl.config"]))
        provenance = json.loads(metadata.get("mrdl.provenance", "{}"))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} has an unreadable config: {exc}") from exc
    return Checkpoint(config=config, state_dict=state, provenance=provenance)


def load_checkpoint(path: str | Path, *, expected_config: str | MRDLConfig | None = None, **overrides) -> tuple[torch.nn.Module, Checkpoint]:
    """Build the model a checkpoint describes and load its weights.

    ``expected_config``: refuse a checkpoint of another architecture (by name or by config).
    ``overrides`` change run-time model fields that do not touch the weights (``phase``).
    """
    ckpt = read_checkpoint(path)
    if expected_config is not None:
        expected = load_config(expected_config) if isinstance(expected_config, str) else expected_config
        if expected.model != ckpt.config.model:
            raise CheckpointError(f"{path} holds a {ckpt.config.name!r} model whose architecture differs from "
                                  f"the expected {expected.name!r} config")
    config = ckpt.config.replace_model(**overrides) if overrides else ckpt.config
    text = config.model.text
    prompt = ckpt.state_dict.get("prompt_features", torch.zeros(text.context_length, text.width))
    try:
        model = MRDL(config, prompt)
    except ValueError as exc:  # wrong prompt_features shape
        raise CheckpointError(f"{path} does not match its own config {ckpt.config.name!r}: {exc}") from exc
    problems = shape_mismatches(model.state_dict(), ckpt.state_dict)[:3]
    missing = sorted(set(model.state_dict()) - set(ckpt.state_dict))
    unexpected = sorted(set(ckpt.state_dict) - set(model.state_dict()))
    if missing:
        problems.append(f"missing tensors {missing[:5]}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}")
    if problems:
        raise CheckpointError(f"{path} does not match its own config {ckpt.config.name!r} (edited, or written by "
                              f"another mrdl version?): {'; '.join(problems)}")
    model.load_state_dict(ckpt.state_dict)
    return model, ckpt
