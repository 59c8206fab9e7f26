"""Atomic file writes: the one helper every layer writes its files through.

:func:`atomic_path` yields a temporary path in the target's folder; the caller writes the whole
file there, and only when the block ends without an exception is the file flushed to disk and
renamed onto the target (``os.replace``: readers see the old file or the new one, never a part).
On an exception the temporary file is removed and the target is left as it was.

The temporary name is short and fixed in length, ``.<8 hex digits>.tmp`` (:data:`TEMPORARY_NAME`),
not the target's name plus a suffix, so any legal target name works, even one of 255 bytes.
Checkpoints, resumable training state, exports, predict outputs and the ONNX Runtime cache all
write through it; code that cleans up after a killed write recognises leftovers with
:func:`is_temporary_name`.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMPORARY_NAME = re.compile(r"\.[0-9a-f]{8}\.tmp")  # what atomic_path names its temporary files
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what uninterruptible holds back


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` (a file name, no folder) is one of :func:`atomic_path`'s temporary names."""
    return TEMPORARY_NAME.fullmatch(name) is not None


def _create_temporary(folder: Path, mode: int) -> Path:
    """Create a new empty file ``.<8 hex>.tmp`` in ``folder`` (exclusively: never an existing file)."""
    while True:
        candidate = folder / f".{secrets.token_hex(4)}.tmp"
        try:
            descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        os.close(descriptor)
        return candidate


class AtomicFile:
    """A temporary file beside ``path`` that a writer fills over time, then :meth:`commit` renames onto ``path``.

    For writers that stay open across calls (a streaming GeoJSON writer); :func:`atomic_path` is the
    same for one block. The file is created with ``mode`` less the umask, in ``folder`` when given (a
    folder of the caller's on the same file system, so that a killed write's leftover is found and
    removed with it), else beside ``path``.
    """

    def __init__(self, path: str | Path, *, mode: int = 0o666, folder: str | Path | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = _create_temporary(self.path.parent if folder is None else Path(folder), mode)

    def commit(self) -> None:
        """Flush the temporary file to disk and rename it onto ``path``."""
        with open(self.temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        """Remove the temporary file (``path`` is left as it was); harmless after :meth:`commit`."""
        self.temporary.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, *, mode: int = 0o666, folder: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (or in ``folder``, as :class:`AtomicFile`); fsync it and rename
    it onto ``path`` only if the block succeeds.

    The file is created with ``mode`` less the umask, as ``open(path, "w")`` does for 0o666 (pass
    0o600 for a private file). Missing parent folders of ``path`` are created.
    """
    file = AtomicFile(path, mode=mode, folder=folder)
    try:
        yield file.temporary
        file.commit()
    finally:
        file.discard()


@contextmanager
def uninterruptible() -> Iterator[None]:
    """Hold back Ctrl-C and SIGTERM until the block ends (main thread only), so that files that belong together
    (an image's overlay, mask and record entry; an epoch's metrics, curves and checkpoints) are written together;
    the held signals are then raised to the usual handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in HELD_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


def stop_on_sigterm_as_on_ctrl_c() -> None:
    """Make SIGTERM (``kill``, ``timeout``, a container or batch-system stop) end this process as Ctrl-C does.

    The commands' Ctrl-C paths record what was written (``predict.json``, a slide's resume state), and
    :func:`uninterruptible` holds the signal back while files that belong together are written; without
    this, SIGTERM ends the process at once and leaves outputs that no record names. The handler raises
    KeyboardInterrupt (also where SIGINT is ignored, as in a job started in the background without job
    control). Main thread only; commands call it at start, a server replaces it with its own stop handler
    while serving.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
