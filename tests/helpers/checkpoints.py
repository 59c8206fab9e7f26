"""Crafted checkpoints for the hostile-input tests: a real checkpoint with some tensors or its config changed."""

from __future__ import annotations

from pathlib import Path


def rewritten_checkpoint(source: Path, target: Path, *, tensors: dict | None = None,
                         config: str | None = None) -> Path:
    """``source`` with some tensors replaced and/or its ``mrdl.config`` text replaced, both digests re-signed
    (so only the content is hostile, never the file's integrity)."""
    from safetensors import safe_open

    from mrdl.tagged_file import write_tagged

    with safe_open(str(source), framework="pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k in ("mrdl.config", "mrdl.provenance")}
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    state.update(tensors or {})
    if config is not None:
        metadata["mrdl.config"] = config
    return write_tagged(target, state, file_format="mrdl-checkpoint/1", metadata=metadata)
