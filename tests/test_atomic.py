"""mrdl_runtime.atomic: the one atomic write (checkpoints, resumable state, exports, predict outputs, ORT cache)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mrdl_runtime.atomic import TEMPORARY_NAME, AtomicFile, atomic_path, is_temporary_name

ROOT = Path(__file__).resolve().parents[1]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~_umask()
    with atomic_path(tmp_path / "private.json", mode=0o600) as tmp:
        tmp.write_text("{}")
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600


def test_the_temporary_file_is_short_beside_the_target_and_gone_after(tmp_path):
    target = tmp_path / "sub" / "model.onnx"  # the folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and TEMPORARY_NAME.fullmatch(tmp.name) and is_temporary_name(tmp.name)
        assert tmp.exists() and not target.exists()  # nothing at the target until the block succeeds
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["model.onnx"]
    assert not is_temporary_name(".model.onnx.x1y2.tmp") and not is_temporary_name("0a1b2c3d.tmp")


@pytest.mark.parametrize("length", [254, 255])
def test_a_target_name_of_the_longest_legal_length_can_be_written(tmp_path, length):
    """NAME_MAX is 255 bytes: a temporary name made of the target's name plus a suffix would not fit."""
    name = "m" * (length - len(".json")) + ".json"
    assert len(name) == length
    with atomic_path(tmp_path / name) as tmp:
        assert len(tmp.name) == len(".01234567.tmp")
        tmp.write_text("{}")
    assert (tmp_path / name).read_text() == "{}"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "best.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["best.safetensors"]


def test_every_writer_uses_the_one_atomic_write():
    """No second copy: no source outside runtime/atomic.py makes its own temporary file and renames it."""
    offenders = []
    for folder in ("mrdl", "export", "runtime", "benchmarks", "apps"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            if path != ROOT / "runtime" / "atomic.py" and re.search(r"mkstemp\(|NamedTemporaryFile\(", text) \
                    and re.search(r"os\.(replace|rename)\(", text):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_a_streaming_writer_commits_or_discards(tmp_path):
    target = tmp_path / ("g" * 250 + ".json")
    target.write_text("old")
    kept = AtomicFile(target)
    kept.temporary.write_text("partial")
    kept.discard()
    assert target.read_text() == "old" and os.listdir(tmp_path) == [target.name]
    written = AtomicFile(target, mode=0o600)
    with open(written.temporary, "w") as stream:
        stream.write("new")
    written.commit()
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o600


def test_export_manifest_imports_no_torch():
    """mrdl_export.manifest writes model.json through the runtime's atomic write, not torch's checkpoint module."""
    code = "import sys, mrdl_export.manifest; print(sorted(m for m in ('torch', 'mrdl.checkpoint') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


def test_uninterruptible_holds_ctrl_c_until_the_block_has_written_everything(tmp_path):
    import signal

    from mrdl_runtime.atomic import uninterruptible

    written = []
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    try:
        with pytest.raises(KeyboardInterrupt):
            with uninterruptible():
                signal.raise_signal(signal.SIGINT)  # a Ctrl-C in the middle of the block
                for name in ("metrics.csv", "curves.png"):
                    with atomic_path(tmp_path / name) as tmp:
                        tmp.write_text(name)
                    written.append(name)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the usual handler is back
    finally:
        signal.signal(signal.SIGINT, outer)
    assert written == ["metrics.csv", "curves.png"] and all((tmp_path / n).exists() for n in written)
