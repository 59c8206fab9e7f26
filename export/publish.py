"""The output folder of ``mrdl-export``: replace only what is provably ours, publish atomically.

An export is written into ``.<NAME>.partial-<pid>`` beside ``--out`` and renamed onto it when
every step passed; a folder it replaces is first renamed to ``.<NAME>.old-<pid>`` and deleted
after. The pid names the owner, so a later export of the same ``--out`` removes the leftovers of
a killed one (owner no longer alive, nothing inside but mrdl artifact files) and never touches a
running export's folder.

``--force`` replaces only an mrdl deploy directory (a ``model.json`` whose format starts with
``mrdl-deploy/`` and nothing but the files it lists or mrdl's own artifact names) or an empty
folder; never a folder that holds the checkpoint, the image folders or the timing cache of the
export, whatever else it holds.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mrdl_runtime.atomic import is_temporary_name
from mrdl_runtime.manifest import (ARTIFACT_FILES, ARTIFACT_NAME_PATTERN, FORMAT, MANIFEST_NAME, MAX_MANIFEST_BYTES,
                                   ManifestError, parse_json)

from .errors import ExportError

DEPLOY_FORMAT_PREFIX = FORMAT.rsplit("/", 1)[0] + "/"  # "mrdl-deploy/": a deploy directory of any version
KNOWN_FILES = frozenset([MANIFEST_NAME, *ARTIFACT_FILES.values()])


def temp_folder(out_dir: Path, kind: str, pid: int | None = None) -> Path:
    """``.<NAME>.<kind>-<pid>`` beside ``out_dir`` (kind: ``partial`` or ``old``)."""
    return out_dir.parent / f".{out_dir.name}.{kind}-{os.getpid() if pid is None else pid}"


def _listed_files(folder: Path) -> set[str] | None:
    """The file names an mrdl ``model.json`` in ``folder`` lists; None when there is no such manifest."""
    path = folder / MANIFEST_NAME
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        doc = parse_json(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, ManifestError):
        return None
    if not isinstance(doc, dict) or not str(doc.get("format", "")).startswith(DEPLOY_FORMAT_PREFIX):
        return None
    artifacts = doc.get("artifacts")
    entries = artifacts.values() if isinstance(artifacts, dict) else ()
    names = {entry.get("file") if isinstance(entry, dict) else entry for entry in entries}  # /2 records, /1 names
    return {name for name in names if isinstance(name, str) and ARTIFACT_NAME_PATTERN.fullmatch(name)}


def foreign_entries(folder: Path, *, temporary: bool = False) -> list[str]:
    """Entries of ``folder`` that mrdl-export did not write; empty when the folder is all ours.

    Ours: regular files named ``model.json``, an mrdl artifact name, or a file the folder's mrdl
    ``model.json`` lists; in a temporary folder (``temporary``) also files being written atomically.
    """
    allowed = KNOWN_FILES | (_listed_files(folder) or set())
    foreign = []
    for entry in sorted(folder.iterdir()):
        being_written = temporary and is_temporary_name(entry.name)  # atomic_path's ".<8 hex>.tmp"
        if entry.is_symlink() or not entry.is_file() or not (being_written or entry.name in allowed):
            foreign.append(entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
    return foreign


def check_out_dir(out_dir: Path, *, force: bool, protected: dict[str, Path]) -> None:
    """Refuse an ``out_dir`` that the export must not replace; touch nothing.

    ``protected``: what the export reads (label -> path); ``out_dir`` may be none of them nor a
    folder above one. An existing non-empty ``out_dir`` needs ``force`` and must be an mrdl
    deploy directory.
    """
    resolved = out_dir.resolve()
    for label, path in protected.items():
        target = path.resolve()
        if target == resolved or resolved in target.parents:
            raise ExportError(f"--out {out_dir} {'is' if target == resolved else 'holds'} the {label} {path}; "
                              f"the export replaces --out as a whole, so it refuses this folder. "
                              f"Choose a new folder for --out, e.g. {out_dir / 'deploy'}")
    if out_dir.is_symlink():
        raise ExportError(f"--out {out_dir} is a symbolic link; give the folder it points to, or a new folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output {out_dir} exists and is not a folder; choose a folder path for --out")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not force:
        raise ExportError(f"output folder {out_dir} already exists and is not empty; pass --force to replace it")
    if _listed_files(out_dir) is None:
        raise ExportError(f"--force replaces only a deploy directory written by mrdl-export, and {out_dir} has no "
                          f"mrdl {MANIFEST_NAME}; nothing was touched. Choose a new folder for --out")
    foreign = foreign_entries(out_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ExportError(f"--force replaces only a deploy directory written by mrdl-export, and {out_dir} also "
                          f"holds {shown}; nothing was touched. Move those away or choose a new folder for --out")


def _owner_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_leftovers(out_dir: Path) -> list[Path]:
    """Delete ``.<NAME>.partial-<pid>`` / ``.old-<pid>`` folders of killed exports of ``out_dir``.

    Only folders whose owner process is gone and that hold nothing but mrdl artifact files;
    returns the folders removed.
    """
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(partial|old)-(?P<pid>[0-9]{{1,10}})")
    try:
        candidates = sorted(e for e in out_dir.parent.iterdir() if pattern.fullmatch(e.name))
    except OSError:  # no parent yet, or not ours to read: nothing to clean
        return []
    removed = []
    for entry in candidates:
        try:
            if (entry.is_symlink() or not entry.is_dir() or _owner_alive(int(pattern.fullmatch(entry.name)["pid"]))
                    or foreign_entries(entry, temporary=True)):
                continue
            shutil.rmtree(entry)
        except OSError:  # another user's folder, or it vanished meanwhile: leave it
            continue
        removed.append(entry)
    return removed


def make_partial(out_dir: Path) -> Path:
    """Create this process's private ``.<NAME>.partial-<pid>`` beside ``out_dir``."""
    tmp = temp_folder(out_dir, "partial")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(tmp, 0o700)
        except FileExistsError:
            raise ExportError(f"{tmp} exists: another export into {out_dir} is running in this process") from None
    except OSError as exc:
        raise ExportError(f"cannot write into {out_dir.parent}: {exc.strerror or exc}; "
                          "choose a writable --out") from exc
    return tmp


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, so an interrupt never falls between two renames."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def publish(tmp: Path, out_dir: Path, *, force: bool, protected: dict[str, Path]) -> None:
    """Rename the finished ``tmp`` onto ``out_dir``, replacing an old deploy directory only after success.

    ``out_dir`` is checked again first (it may have changed while the export ran). Temporary
    names are private (0700/0600); the published files get the umask's modes.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    for path in tmp.iterdir():
        os.chmod(path, 0o666 & ~umask)
    with _signals_held():
        check_out_dir(out_dir, force=force, protected=protected)
        old = temp_folder(out_dir, "old") if out_dir.exists() else None
        if old is not None:
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)  # what stays is removed by the next export (owner gone)
