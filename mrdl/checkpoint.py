"""Checkpoints: one safetensors file holding the weights, the config and the provenance.

A checkpoint is a tagged safetensors file (:mod:`mrdl.tagged_file`, format ``mrdl-checkpoint/1``)
whose header metadata also carries ``mrdl.config`` (JSON) and ``mrdl.provenance`` (JSON: mrdl
version, dataset, prompt, CLIP model and weights, training step, the training images' size
``source_size`` and resolution ``source_mpp``, ...). The tensor digest refuses a truncated or
bit-flipped file with a message naming the problem; a config that cannot describe a model (not a JSON
object, a wrong type, a size beyond :data:`mrdl.config.MODEL_LIMITS`), a tensor of another shape or of
a non-floating dtype where the model holds floats, and a tensor holding inf or NaN are refused with one
line naming it. Floating tensors of another precision (float16, bfloat16, float64) are cast to the
model's float32 on load: exact for the former two, a rounding for float64. Writes go to a temporary
name and are renamed.
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
from .tagged_file import dtype_mismatches, non_finite_tensors, read_tagged, shape_mismatches, write_tagged

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
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; expected a .safetensors file (an mrdl checkpoint)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    metadata, state = read_tagged(path, file_format=FORMAT, kind="an mrdl checkpoint", error=CheckpointError)
    try:
        config = config_from_dict(json.loads(metadata["mrdl.config"]))
    except (KeyError, ValueError, RecursionError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(f"{path} has an unreadable config: {exc}") from exc
    try:
        provenance = json.loads(metadata.get("mrdl.provenance", "{}"))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} has unreadable provenance: {exc}") from exc
    if not isinstance(provenance, dict):
        raise CheckpointError(f"{path} has unreadable provenance: expected a JSON object, got {provenance!r:.80}")
    return Checkpoint(config=config, state_dict=state, provenance=provenance)


def load_checkpoint(path: str | Path, *, expected_config: str | MRDLConfig | None = None, **overrides) -> tuple[torch.nn.Module, Checkpoint]:
    """Build the model a checkpoint describes and load its weights.

    The tensors are checked against the model built on the meta device first, so a config whose sizes
    its tensors do not have is refused before the model's memory is allocated.

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
    with torch.device("meta"):  # shapes and dtypes only: a config edited to sizes its tensors lack allocates nothing
        skeleton = _build(path, ckpt, config, prompt.to("meta"))
    _check_tensors(path, ckpt, skeleton.state_dict())
    model = _build(path, ckpt, config, prompt)
    model.load_state_dict(ckpt.state_dict)
    return model, ckpt


def _build(path: Path, ckpt: Checkpoint, config: MRDLConfig, prompt: torch.Tensor) -> MRDL:
    try:
        return MRDL(config, prompt)
    except ValueError as exc:  # wrong prompt_features shape
        raise CheckpointError(f"{path} does not match its own config {ckpt.config.name!r}: {exc}") from exc


def _check_tensors(path: Path, ckpt: Checkpoint, built: dict[str, torch.Tensor]) -> None:
    """Refuse checkpoint tensors that are not the ``built`` model's (names, shapes, dtypes) or hold inf or NaN."""
    problems = (shape_mismatches(built, ckpt.state_dict) + dtype_mismatches(built, ckpt.state_dict))[:3]
    missing = sorted(set(built) - set(ckpt.state_dict))
    unexpected = sorted(set(ckpt.state_dict) - set(built))
    if missing:
        problems.append(f"missing tensors {missing[:5]}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}")
    if problems:
        raise CheckpointError(f"{path} does not match its own config {ckpt.config.name!r} (edited, or written by "
                              f"another mrdl version?): {'; '.join(problems)}")
    diverged = non_finite_tensors(built, ckpt.state_dict)
    if diverged:
        more = f" (and {len(diverged) - 1} more tensors)" if len(diverged) > 1 else ""
        raise CheckpointError(f"{path} is unusable: {diverged[0]}{more}; a diverged training run or a damaged "
                              "file: use an earlier checkpoint of the run")
