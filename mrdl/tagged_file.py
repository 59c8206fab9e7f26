"""Tagged safetensors files: the one format helper behind checkpoints, resumable state and text embeddings.

A tagged file is a safetensors file whose header metadata names its kind in ``mrdl.format`` and,
for files written here, records ``mrdl.tensors_sha256`` (:func:`tensors_digest`, over every
tensor's name, dtype, shape and bytes) and ``mrdl.metadata_sha256`` (:func:`metadata_digest`, over
every other metadata entry, the tensor digest included), so a truncated or bit-flipped file, and
metadata edited in place (an epoch counter of 1e12), are refused with a message naming the problem. The other ``mrdl.*`` metadata entries are the caller's (JSON strings).
Files are written through :func:`mrdl_runtime.atomic.atomic_path`; nothing here can unpickle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch

from mrdl_runtime.atomic import atomic_path

FORMAT_KEY = "mrdl.format"
DIGEST_KEY = "mrdl.tensors_sha256"
METADATA_DIGEST_KEY = "mrdl.metadata_sha256"


def tensors_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def metadata_digest(metadata: dict[str, str]) -> str:
    """sha256 over every metadata entry but :data:`METADATA_DIGEST_KEY` (sorted JSON of the strings)."""
    entries = {key: value for key, value in metadata.items() if key != METADATA_DIGEST_KEY}
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def shape_mismatches(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> list[str]:
    """One line per tensor present in both whose shapes differ: name, expected and found shape."""
    return [f"tensor {name!r} has shape {tuple(given[name].shape)}, expected {tuple(tensor.shape)}"
            for name, tensor in expected.items() if name in given and given[name].shape != tensor.shape]


def dtype_mismatches(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> list[str]:
    """One line per tensor present in both whose dtype cannot stand for the expected one: name, found and expected
    dtype. A floating-point tensor may be given in any floating dtype (loading casts it); any other must match."""
    return [f"tensor {name!r} has dtype {given[name].dtype}, expected {tensor.dtype}"
            for name, tensor in expected.items() if name in given and given[name].dtype != tensor.dtype
            and not (tensor.is_floating_point() and given[name].is_floating_point())]


def non_finite_tensors(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> list[str]:
    """One line per floating tensor of ``given`` holding inf or NaN once cast to its ``expected`` dtype (a float64
    value beyond float32's range becomes inf): name and how many such values."""
    problems = []
    for name, tensor in given.items():
        if tensor.is_floating_point():
            cast = tensor.to(expected[name].dtype) if name in expected else tensor
            bad = int((~torch.isfinite(cast)).sum())
            if bad:
                problems.append(f"tensor {name!r} holds {bad} inf or NaN value{'s' if bad > 1 else ''}"
                                + (f" (as {cast.dtype})" if cast.dtype != tensor.dtype else ""))
    return problems


def write_tagged(path: str | Path, tensors: dict[str, torch.Tensor], *, file_format: str,
                 metadata: dict[str, str]) -> Path:
    """Write ``tensors`` (moved to the CPU, contiguous) with ``metadata``, the format tag and the digest, atomically."""
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    header = {**metadata, FORMAT_KEY: file_format, DIGEST_KEY: tensors_digest(tensors)}
    header[METADATA_DIGEST_KEY] = metadata_digest(header)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def read_tagged(path: str | Path, *, file_format: str, kind: str, error: Callable[[str], Exception],
                tensors: bool = True, require_digest: bool = True,
                require_metadata_digest: bool = False) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and (``tensors=True``) the verified tensors of a tagged file of format ``file_format``.

    Raises ``error(message)`` for a file safetensors cannot read (missing, truncated, not safetensors), another format (the
    message names ``kind``, e.g. "an mrdl checkpoint") or tensors that do not match the recorded
    digest. ``require_digest=False`` accepts a file without a digest (written before it was recorded).
    The metadata digest is checked whenever the file has one (also with ``tensors=False``);
    ``require_metadata_digest=True`` refuses a file without it (written before it was recorded, or
    with the entry deleted).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:  # one open: metadata and tensors
            metadata = handle.metadata() or {}
            found = metadata.get(FORMAT_KEY)
            state = {name: handle.get_tensor(name) for name in handle.keys()} if tensors and found == file_format else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise error(f"{path} is not a readable safetensors file (corrupt or truncated?): {exc}") from exc
    if found != file_format:
        raise error(f"{path} is not {kind} (format {found!r}, expected {file_format!r})")
    recorded_metadata = metadata.get(METADATA_DIGEST_KEY)
    if (recorded_metadata is not None or require_metadata_digest) and metadata_digest(metadata) != recorded_metadata:
        raise error(f"{path} was edited or is corrupt: its metadata does not match the digest recorded when it was "
                    "written (" + ("no digest recorded" if recorded_metadata is None else "an entry was changed") + ")")
    recorded = metadata.get(DIGEST_KEY)
    if tensors and (recorded is not None or require_digest) and tensors_digest(state) != recorded:
        raise error(f"{path} is corrupt: its tensors do not match the digest recorded when it was written")
    return metadata, state
