"""A cache of ONNX Runtime's optimized CPU graphs, so that loading a model does not redo them.

ONNX Runtime optimizes a graph each time a session opens it (constant folding, fusions, the
QDQ -> integer-kernel rewrites of INT8 models, the NCHWc layout for FP32 convolutions). On the
``small`` and ``base`` models that is a third to a half of the load time. The optimized graph is
saved once and loaded with optimizations off afterwards.

Why a cache on the loading machine and not an export artifact: with all optimizations on, the
saved graph holds layout ops chosen for the CPU it was optimized on (onnxruntime says so itself:
"should only be used in the same environment"), and its contrib ops tie it to one onnxruntime
version. So an entry is keyed by everything it depends on (:func:`cache_key`): the SHA-256 of the
model bytes that were loaded (the artifact ``model.json`` verified), the onnxruntime version,
the execution provider, the session options that shape the graph, and the CPU (model name and
instruction-set flags).

Integrity: an entry is never run unless it is the file written for that key. Each entry
(``<key>.onnx``) has a record (``<key>.json``) with its size and SHA-256 taken at write time;
both are written through a temporary name and renamed, the record last, so a crash leaves no
record pointing at a partial file. On load the bytes are read once, checked against the record,
and those same bytes go to onnxruntime. A mismatch (a tampered, truncated or swapped file), a
missing or unreadable record, or a cache folder that other users may write to is never run: the
entry is removed and rebuilt from the verified artifact, with a warning. So is an entry that
matches its record but not the model (another export's graph under a rewritten record): the
caller's ``check`` of the cached session (the runner compares its embedded manifest and graph
with model.json) fails, or onnxruntime cannot load it, and the entry is rebuilt on that same load
instead of failing every later one. The folder is created private (0700); one that is
group/world-writable or owned by someone else is not used at all.

Ownership: the cache deletes only what it can prove is its own. The folder carries a marker file
(:data:`MARKER`) written when the cache created it or adopted it (an empty folder, or one holding
only entry names of this cache); a folder with other files and no marker (``MRDL_ORT_CACHE``
pointed at a folder of one's own) is not used, and nothing in it is touched. Pruning removes only
``<64 hex digits>.json`` records of this format and their ``.onnx``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import stat
from pathlib import Path
from typing import Any, Callable

from .atomic import atomic_path

logger = logging.getLogger("mrdl_runtime")

CACHE_FORMAT = "mrdl-ort-optimized/1"
CACHE_ENV = "MRDL_ORT_CACHE"  # a folder, or "off" to disable
DEFAULT_OPTIMIZED_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mrdl" / "ort-optimized"
MAX_ENTRIES = 32  # oldest entries beyond this are removed when a new one is written
MARKER = ".mrdl-ort-cache"  # the file that marks a folder as this cache's (it holds CACHE_FORMAT)
ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.(onnx|json)")
TEMPORARY_NAME = re.compile(r"\.([0-9a-f]{64}\.[^/]*|[0-9a-f]{8})\.tmp")  # atomic_path's, and older versions' temporaries
MAX_RECORD_BYTES = 4096  # a record is a few hundred bytes


def default_cache_dir() -> Path | None:
    """``$MRDL_ORT_CACHE`` (None when it says ``off``), else ``~/.cache/mrdl/ort-optimized``."""
    value = os.environ.get(CACHE_ENV)
    if value is None or value == "":
        return DEFAULT_OPTIMIZED_CACHE
    return None if value.lower() in ("off", "0", "false", "no") else Path(value)


def cpu_fingerprint() -> str:
    """The CPU model and its instruction-set flags (Linux), else the platform's processor string."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return f"{platform.machine()} {fields.get('model name', '')} {fields.get('flags', fields.get('Features', ''))}"


def cache_key(source_sha256: str, *, ort_version: str, provider: str, options: dict[str, Any]) -> str:
    """The entry name: SHA-256 of the source model's hash, onnxruntime version, provider, options and CPU."""
    material = json.dumps({"format": CACHE_FORMAT, "source_sha256": source_sha256, "onnxruntime": ort_version,
                           "provider": provider, "options": options, "cpu": cpu_fingerprint()}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def usable_folder(folder: Path) -> bool:
    """Create ``folder`` private if needed; False (with a warning) when it is not safe or not writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = folder.stat()
    except OSError as exc:
        logger.warning("optimized-model cache %s cannot be used (%s); loading without it", folder, exc.strerror)
        return False
    if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()) \
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        logger.warning("optimized-model cache %s is not a private folder of this user (owner, or group/world "
                       "write permission); loading without it", folder)
        return False
    return os.access(folder, os.W_OK) and owned(folder)


def owned(folder: Path) -> bool:
    """Whether ``folder`` is this cache's: it holds the :data:`MARKER` file, or it is adopted now (marker
    written) because every name in it is an entry or temporary name of this cache (an empty folder, or a
    cache written before the marker existed). False, with a warning, for a folder with other files."""
    marker = folder / MARKER
    try:
        if stat.S_ISREG(os.lstat(marker).st_mode):
            return True
    except FileNotFoundError:
        pass
    except OSError:
        return False
    with os.scandir(folder) as listing:
        foreign = next((entry.name for entry in listing
                        if not (ENTRY_NAME.fullmatch(entry.name) or TEMPORARY_NAME.fullmatch(entry.name))), None)
    if foreign is not None:
        logger.warning("optimized-model cache %s holds files that are not its own (%s, ...) and no %s marker; "
                       "loading without it, and nothing in it is touched: point %s at an empty or new folder",
                       folder, foreign, MARKER, CACHE_ENV)
        return False
    try:
        with open(marker, "x") as handle:
            handle.write(CACHE_FORMAT + "\n")
    except FileExistsError:
        pass  # another process adopted it first
    return True


def own_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path`` when it is one of this cache's (its name, size and format), else None."""
    if not ENTRY_NAME.fullmatch(path.name) or path.suffix != ".json":
        return None
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode) or os.lstat(path).st_size > MAX_RECORD_BYTES:
            return None
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("format") == CACHE_FORMAT and record.get("key") == path.stem:
        return record
    return None


def read_entry(folder: Path, key: str) -> bytes | None:
    """The entry's bytes when its record matches them (size, SHA-256, key); None when absent.

    An entry that does not match its record, or has none, is removed (with a warning) and None returned.
    """
    model, record_path = folder / f"{key}.onnx", folder / f"{key}.json"
    if not model.exists() and not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        if not stat.S_ISREG(os.lstat(model).st_mode):
            raise ValueError("not a regular file")
        data = model.read_bytes()
        ok = (isinstance(record, dict) and record.get("format") == CACHE_FORMAT and record.get("key") == key
              and record.get("bytes") == len(data) and record.get("sha256") == hashlib.sha256(data).hexdigest())
    except (OSError, ValueError) as exc:
        ok, data, record = False, b"", {"error": str(exc)}
    if ok:
        return data
    logger.warning("optimized-model cache entry %s does not match its record (changed, truncated or "
                   "incomplete); it is removed and rebuilt from the verified model", model)
    remove_entry(folder, key)
    return None


def remove_entry(folder: Path, key: str) -> None:
    for suffix in (".json", ".onnx"):
        try:
            (folder / f"{key}{suffix}").unlink()
        except FileNotFoundError:
            pass


def write_record(folder: Path, key: str, data: bytes, *, source_sha256: str, ort_version: str) -> None:
    """Write the record of entry ``key`` (whose bytes are ``data``), private, then prune the oldest entries."""
    record = {"format": CACHE_FORMAT, "key": key, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "source_sha256": source_sha256, "onnxruntime": ort_version}
    with atomic_path(folder / f"{key}.json", mode=0o600) as tmp:
        tmp.write_text(json.dumps(record))
    prune(folder)


def prune(folder: Path, *, keep: int = MAX_ENTRIES) -> None:
    """Remove the oldest entries beyond ``keep`` (by the record's modification time); only this cache's
    records (:func:`own_record`) count and are removed, with their ``.onnx``."""
    records = []
    for path in folder.iterdir():
        if own_record(path) is not None:
            try:
                records.append((path.stat().st_mtime, path))
            except OSError:
                continue
    for _, record in sorted(records, reverse=True)[keep:]:
        remove_entry(folder, record.stem)


def open_session(ort, model: bytes, *, source_sha256: str, options, providers: list, folder: Path | None,
                 graph_options: dict[str, Any], check: Callable[[Any], None] | None = None):
    """An InferenceSession of ``model`` (verified bytes whose SHA-256 is ``source_sha256``) through the cache.

    Returns (session, how: "cached" | "optimized and cached" | "uncached"). ``options`` are the
    caller's SessionOptions (graph optimization level set); ``graph_options`` the settings that
    shape the optimized graph, part of the key. ``check(session)`` raises when a session is not the
    verified model's (embedded manifest, graph): a cached entry that fails it, or that onnxruntime
    cannot load, is removed and rebuilt from ``model`` here.
    """
    provider = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if folder is None or not usable_folder(folder):
        return ort.InferenceSession(model, sess_options=options, providers=providers), "uncached"
    key = cache_key(source_sha256, ort_version=ort.__version__, provider=provider, options=graph_options)
    cached, refused = read_entry(folder, key), None
    if cached is not None:
        level, options.graph_optimization_level = (options.graph_optimization_level,
                                                   ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # already done
        try:
            session = ort.InferenceSession(cached, sess_options=options, providers=providers)
            if check is not None:
                check(session)
            return session, "cached"
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with an entry, the verified model decides
            refused = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            remove_entry(folder, key)
            options.graph_optimization_level = level
    session = None
    try:  # onnxruntime writes the optimized graph to the temporary name; renamed only once the session exists
        with atomic_path(folder / f"{key}.onnx", mode=0o600) as written:
            options.optimized_model_filepath = str(written)
            session = ort.InferenceSession(model, sess_options=options, providers=providers)
            data = written.read_bytes()
        write_record(folder, key, data, source_sha256=source_sha256, ort_version=ort.__version__)
    except OSError as exc:
        if session is None:
            raise
        logger.warning("optimized-model cache %s: cannot write entry (%s); next load optimizes again",
                       folder, exc.strerror)
        remove_entry(folder, key)
        return session, "uncached"
    if refused is not None:  # the entry, not the model, was at fault when the model's own session passes
        if check is not None:
            check(session)
        logger.warning("optimized-model cache entry %s matched its record but not the model (%s); it was "
                       "removed and rebuilt from the verified model", folder / f"{key}.onnx", refused)
    return session, "optimized and cached"
