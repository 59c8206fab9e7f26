"""Checkpoints: one safetensors file holding the weights, the config and the provenance.

The safetensors header metadata carries ``mrdl.format``, ``mrdl.config`` (JSON), ``mrdl.provenance``
(JSON: mrdl version, dataset, prompt, CLIP model and weights, training step, ...) and
``mrdl.tensors_sha256``, a digest over every tensor's bytes, so a truncated or bit-flipped file
is refused with a message naming the problem. Writes go to a temporary name and are renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from mrdl_runtime.errors import MrdlError

from . import __version__
from .config import MRDLConfig, config_from_dict

FORMAT = "mrdl-checkpoint/1"


class CheckpointError(MrdlError, ValueError):
    """A checkpoint that cannot be loaded: not ours, corrupt, truncated or of another config."""


@dataclass
class Checkpoint:
    config: MRDLConfig
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the permissions an ordinary ``open(path, "w")`` would give (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def tensors_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def shape_mismatches(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> list[str]:
    """One line per tensor present in both whose shapes differ: name, expected and found shape."""
    return [f"tensor {name!r} has shape {tuple(given[name].shape)}, expected {tuple(tensor.shape)}"
            for name, tensor in expected.items() if name in given and given[name].shape != tensor.shape]


def save_checkpoint(path: str | Path, model: torch.nn.Module, *, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights, config and provenance atomically to ``path`` (.safetensors)."""
    from safetensors.torch import save_file

    config: MRDLConfig = model.config
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    provenance = {"mrdl_version": __version__, "torch_version": torch.__version__,
                  "prompt": config.model.prompt, "clip_model": config.model.text.clip_model,
                  **(provenance or {})}
    metadata = {
        "mrdl.format": FORMAT,
        "mrdl.config": config.to_json(),
        "mrdl.provenance": json.dumps(provenance, sort_keys=True, default=str),
        "mrdl.tensors_sha256": tensors_digest(state),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint file without building a model."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:  # one open: metadata and tensors
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {exc}") from exc
    if metadata.get("mrdl.format") != FORMAT:
        raise CheckpointError(f"{path} is not an mrdl checkpoint (format {metadata.get('mrdl.format')!r}, expected {FORMAT!r})")
    if tensors_digest(state) != metadata.get("mrdl.tensors_sha256"):
        raise CheckpointError(f"{path} is corrupt: its tensors do not match the digest recorded when it was written")
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
    from .config import load_config
    from .model import MRDL

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
