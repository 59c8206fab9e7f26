"""Safetensors metadata that vouched for itself (issue 21, item 3).

``resume.safetensors``' digest covered its tensors but not its JSON metadata: an epoch counter
edited to 1e12 gave exit 0, "best ... at epoch 1000000000000", and trained nothing. Every tagged
file (checkpoint, resumable state, text embeddings; mrdl.tagged_file) now records a digest of its
metadata too; an edited entry is refused, and a resumable state without that digest as well.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner


def edit_metadata(path: Path, key: str, change) -> None:
    """Rewrite one ``__metadata__`` entry of a safetensors file in place, as a hand edit would (the
    header's length is updated; the tensors' bytes and offsets stay valid)."""
    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + length])
    header["__metadata__"][key] = change(header["__metadata__"][key])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])


def test_edited_epoch_counter_is_refused_on_resume(tmp_path):
    from mrdl_apps.cli import main

    run = tmp_path / "run"
    runner = CliRunner()
    trained = runner.invoke(main, ["train", "--config", "tiny", "--epochs", "1", "--out", str(run), "--batch-size", "8"])
    assert trained.exit_code == 0, trained.output

    def far_future(text: str) -> str:
        progress = json.loads(text)
        assert "epoch" in progress, progress
        return json.dumps({**progress, "epoch": 10**12})

    edit_metadata(run / "resume.safetensors", "mrdl.progress", far_future)
    resumed = runner.invoke(main, ["train", "--out", str(run), "--resume", "--epochs", "2"])
    assert resumed.exit_code != 0, resumed.output
    assert "resume.safetensors was edited or is corrupt: its metadata does not match the digest" in resumed.output
    assert "1000000000000" not in resumed.output and "Traceback" not in resumed.output


def test_resume_state_without_a_metadata_digest_is_refused(tmp_path):
    from mrdl.resume import FORMAT, ResumeError, read_train_metadata
    from mrdl.tagged_file import METADATA_DIGEST_KEY, write_tagged

    import torch

    write_tagged(tmp_path / "resume.safetensors", {"model/w": torch.zeros(2)}, file_format=FORMAT,
                 metadata={"mrdl.progress": json.dumps({"epoch": 1})})
    edit_metadata(tmp_path / "resume.safetensors", METADATA_DIGEST_KEY, lambda _: "0" * 64)
    with pytest.raises(ResumeError, match="an entry was changed"):
        read_train_metadata(tmp_path)
    data = tmp_path / "resume.safetensors"
    (length,) = struct.unpack_from("<Q", data.read_bytes())
    header = json.loads(data.read_bytes()[8:8 + length])
    del header["__metadata__"][METADATA_DIGEST_KEY]  # deleting the digest does not help either
    text = json.dumps(header).encode()
    data.write_bytes(struct.pack("<Q", len(text)) + text + data.read_bytes()[8 + length:])
    with pytest.raises(ResumeError, match="no digest recorded"):
        read_train_metadata(tmp_path)


def test_edited_checkpoint_provenance_is_refused(tiny_model, tmp_path):
    """A checkpoint's provenance (its source_size, copied into model.json by mrdl-export) cannot be
    edited in place either."""
    from mrdl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path / "ckpt.safetensors", tiny_model, provenance={"source_size": [1000, 1000]})
    load_checkpoint(path)
    edit_metadata(path, "mrdl.provenance", lambda text: json.dumps({**json.loads(text), "source_size": [1, 1]}))
    with pytest.raises(CheckpointError, match="was edited or is corrupt: its metadata does not match"):
        load_checkpoint(path)
