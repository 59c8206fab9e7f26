"""Resumable training state in one safetensors file, never a pickle.

``resume.safetensors`` holds, as one atomically written generation: the model weights
(``model/<name>``), the EMA of the weights when the run keeps one (``ema/<name>``), the optimizer's tensors (``optimizer/<param index>/<key>``), the torch RNG state
(``rng/torch``, uint8) and numpy's MT19937 key (``rng/numpy_key``), plus JSON metadata: the config,
the run's settings and provenance, its progress (epoch, step, best score, early-stop counter,
history), the optimizer's param groups and scalar state, the scheduler's and the float16 gradient scaler's
state and the remaining RNG scalars (numpy position and cached Gaussian, Python's ``random`` state). It is a
tagged safetensors file (:mod:`mrdl.tagged_file`, format ``mrdl-train-resume/1``): its tensor digest refuses
a damaged file. Reading it needs safetensors and ``json`` only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrdl_runtime.errors import MrdlError

from .config import MRDLConfig, config_from_dict
from .tagged_file import read_tagged, write_tagged

RESUME = "resume.safetensors"
LEGACY_STATE = "last.state.pt"
FORMAT = "mrdl-train-resume/1"
_JSON_FIELDS = ("config", "settings", "progress", "provenance", "optimizer", "scheduler", "rng")


class ResumeError(MrdlError, RuntimeError):
    """A run folder that cannot be resumed: no resumable state, an old pickle state, or a damaged file."""


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped."""

    config: MRDLConfig
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # as torch's Optimizer.state_dict(), param groups from JSON
    scheduler: dict[str, Any]
    rng: dict[str, Any]  # as capture_rng()
    settings: dict[str, Any]
    progress: dict[str, Any]
    provenance: dict[str, Any]
    ema: dict[str, torch.Tensor] | None = None  # the EMA weights, when the run keeps an EMA
    scaler: dict[str, Any] | None = None  # torch.amp.GradScaler's state (float16 CUDA training)


def capture_rng() -> dict[str, Any]:
    """The torch, numpy and Python global RNG states."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def _rng_parts(states: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    name, key, position, has_gauss, cached_gaussian = states["numpy"]
    version, python_state, gauss_next = states["python"]
    tensors = {"rng/torch": states["torch"].clone(), "rng/numpy_key": torch.from_numpy(key.astype(np.int64))}
    scalars = {"numpy": {"name": name, "position": int(position), "has_gauss": int(has_gauss),
                         "cached_gaussian": float(cached_gaussian)},
               "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next}}
    return tensors, scalars


def _rng_from_parts(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    numpy, python = scalars["numpy"], scalars["python"]
    key = tensors["rng/numpy_key"].numpy().astype(np.uint32)
    return {"torch": tensors["rng/torch"],
            "numpy": (numpy["name"], key, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]),
            "python": (python["version"], tuple(python["state"]), python["gauss_next"])}


def _optimizer_parts(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": scalars}


def _optimizer_from_parts(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, entry = name.split("/", 2)
        state.setdefault(int(index), {})[entry] = tensor
    for index, entries in scalars["state"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": scalars["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a state read from JSON, turning lists back into tuples where the optimizer keeps tuples (betas)."""
    groups = [{k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in group.items()}
              for group, current in zip(saved["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({"state": saved["state"], "param_groups": groups})


def save_train_state(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, settings: dict, progress: dict, provenance: dict,
                     ema: dict[str, torch.Tensor] | None = None, scaler: dict[str, Any] | None = None) -> Path:
    """Write the whole resumable state to ``path`` in one atomic rename."""
    optimizer_tensors, optimizer_scalars = _optimizer_parts(optimizer.state_dict())
    rng_tensors, rng_scalars = _rng_parts(capture_rng())
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(optimizer_tensors)
    tensors.update(rng_tensors)
    if ema is not None:
        tensors.update({f"ema/{k}": v for k, v in ema.items()})
    fields = {"config": json.loads(model.config.to_json()), "settings": settings, "progress": progress,
              "provenance": provenance, "optimizer": optimizer_scalars, "scheduler": scheduler.state_dict(),
              "rng": rng_scalars}
    if scaler is not None:
        fields["scaler"] = scaler
    metadata = {f"mrdl.{name}": json.dumps(value, default=str if name == "provenance" else None)
                for name, value in fields.items()}
    return write_tagged(path, tensors, file_format=FORMAT, metadata=metadata)


def _missing_state_error(run_dir: Path) -> ResumeError:
    if (run_dir / LEGACY_STATE).is_file():
        return ResumeError(
            f"cannot resume {run_dir}: it was written by an older mrdl whose resumable state, {LEGACY_STATE}, is a "
            "pickle file; mrdl never unpickles files (that can run arbitrary code), so this run cannot be continued. "
            f"Its best.safetensors and last.safetensors are still usable checkpoints; start a new run in another "
            "folder (or in this one with --overwrite, which replaces them)")
    return ResumeError(f"cannot resume {run_dir}: expected {RESUME} there (not a training run folder, or one "
                       "stopped before its first state was saved); start a new run without --resume")


def read_train_metadata(run_dir: str | Path) -> dict[str, Any]:
    """The JSON fields of a run's resumable state (no tensors read): settings, progress, config, ..."""
    metadata, _ = _read(Path(run_dir), tensors=False)
    return _json_fields(Path(run_dir) / RESUME, metadata)


def _read(run_dir: Path, *, tensors: bool) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The verified metadata and (``tensors``) tensors of ``run_dir``'s resumable state."""
    if not (run_dir / RESUME).is_file():
        raise _missing_state_error(run_dir)
    return read_tagged(run_dir / RESUME, file_format=FORMAT, kind="an mrdl resumable state", error=ResumeError,
                       tensors=tensors, require_metadata_digest=True)  # an edited epoch counter is refused


def _json_fields(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    try:
        fields = {name: json.loads(metadata[f"mrdl.{name}"]) for name in _JSON_FIELDS}
        if "mrdl.scaler" in metadata:
            fields["scaler"] = json.loads(metadata["mrdl.scaler"])
        return fields
    except (KeyError, ValueError) as exc:
        raise ResumeError(f"{path} has unreadable metadata ({exc}); it cannot be resumed") from exc


def read_train_state(run_dir: str | Path) -> TrainState:
    """Read and verify ``run_dir``'s resumable state."""
    run_dir = Path(run_dir)
    path = run_dir / RESUME
    metadata, tensors = _read(run_dir, tensors=True)
    fields = _json_fields(path, metadata)
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optimizer": {}, "rng": {}, "ema": {}}
    for name, tensor in tensors.items():
        if name.split("/", 1)[0] not in groups:
            raise ResumeError(f"{path} holds an unexpected tensor {name!r}; it was not written by mrdl train")
        groups[name.split("/", 1)[0]][name] = tensor
    try:
        config = config_from_dict(fields["config"])
        rng = _rng_from_parts(groups["rng"], fields["rng"])
        optimizer = _optimizer_from_parts(groups["optimizer"], fields["optimizer"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ResumeError(f"{path} holds an incomplete state ({exc}); it cannot be resumed") from exc
    model = {name.split("/", 1)[1]: tensor for name, tensor in groups["model"].items()}
    ema = {name.split("/", 1)[1]: tensor for name, tensor in groups["ema"].items()} or None
    if config.train.ema_decay > 0 and ema is None:
        raise ResumeError(f"{path} is from a run that keeps an EMA of its weights but holds none; it cannot be resumed")
    return TrainState(config=config, model=model, optimizer=optimizer, scheduler=fields["scheduler"], rng=rng,
                      settings=fields["settings"], progress=fields["progress"], provenance=fields["provenance"],
                      ema=ema, scaler=fields.get("scaler"))
