"""Artifacts checked against ``model.json`` before and after a backend loads them.

Before: :func:`read_artifact` opens the file an artifact record names (a regular file inside the
model directory, never a link out of it), checks its size and, unless the caller opts out, its
SHA-256, and returns the bytes it checked. The backend loads those bytes, so the file is read once
and cannot change between the check and the load.

After: :func:`check_embedded_manifest` compares the identity an ONNX file carries in its
``mrdl.manifest`` metadata (``export_id`` and precision) with ``model.json``, which catches the
INT8 file renamed to ``model.onnx`` or another export's ``model.onnx`` even when the hash was
skipped; :func:`check_unedited_manifest` then compares the whole of ``model.json`` with that
embedded copy, so that no field of it (``source_size``, the threshold, ...) can be edited without
the verified file saying otherwise; :func:`check_graph` compares the graph's inputs and outputs (names, dtypes, non-batch
dimensions) with the manifest's. Every mismatch is an :class:`IntegrityError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from typing import Any, Mapping, Sequence

from .manifest import MANIFEST_NAME, METADATA_KEY, IntegrityError, Manifest, ManifestError, TensorSpec, parse_json

logger = logging.getLogger("mrdl_runtime")
REEXPORT = "copy the whole directory of one export, or re-export it"


def read_artifact(manifest: Manifest, key: str, *, verify: bool = True) -> bytes:
    """The bytes of artifact ``key`` once its location, size and (with ``verify``) SHA-256 match
    its record in ``model.json``; ``verify=False`` skips only the hash and logs a warning saying so."""
    record = manifest.artifact(key)
    path = manifest.model_dir / record.file
    try:
        resolved, root = path.resolve(strict=True), manifest.model_dir.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise ManifestError(f"{MANIFEST_NAME} lists artifact '{key}' as {record.file}, but {path} does not exist") \
            from None
    if not resolved.is_relative_to(root):
        raise IntegrityError(f"{path} links to {resolved}, outside the model directory; an artifact must be a file "
                             "inside it: copy the file in, or re-export")
    try:
        descriptor = os.open(resolved, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    except OSError as exc:
        raise IntegrityError(f"{path} cannot be read ({exc.strerror}); {MANIFEST_NAME} lists it as the '{key}' "
                             "artifact") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise IntegrityError(f"{path} is not a regular file; {MANIFEST_NAME} lists it as the '{key}' artifact")
        size, data = info.st_size, b""
        if size == record.bytes:
            with os.fdopen(descriptor, "rb", closefd=False) as handle:
                data = handle.read(record.bytes + 1)
            size = len(data)  # the file may change while it is read
    finally:
        os.close(descriptor)
    if size != record.bytes:
        raise IntegrityError(f"{path}: {size} bytes, but {MANIFEST_NAME} records {record.bytes} "
                             "(file truncated, replaced or corrupt); " + REEXPORT)
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if digest != record.sha256:
            raise IntegrityError(f"{path}: sha256 {digest[:16]}… differs from the {record.sha256[:16]}… recorded in "
                                 f"{MANIFEST_NAME} (file changed or corrupt); " + REEXPORT)
    else:
        identity = "; its embedded export_id and precision are still checked" if key != "tensorrt" else ""
        logger.warning("%s: SHA-256 not verified (verify=False / --no-verify): only its name and size were "
                       "checked%s", path, identity)
    return data


def check_embedded_manifest(manifest: Manifest, key: str, metadata: Mapping[str, str]) -> None:
    """The ONNX file of artifact ``key`` carries model.json's export_id and the precision its record gives."""
    record = manifest.artifact(key)
    path = manifest.model_dir / record.file
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise IntegrityError(f"{path} carries no '{METADATA_KEY}' metadata, so no mrdl-export wrote it for this "
                             "directory; " + REEXPORT)
    embedded = parse_json(text, f"{path} metadata '{METADATA_KEY}'")
    if not isinstance(embedded, dict):
        raise IntegrityError(f"{path} metadata '{METADATA_KEY}' is not a JSON object; " + REEXPORT)
    if embedded.get("export_id") != manifest.export_id:
        raise IntegrityError(f"{path} comes from export {embedded.get('export_id')!r}, but {MANIFEST_NAME} is export "
                             f"{manifest.export_id!r}: the file belongs to another export; " + REEXPORT)
    if embedded.get("precision") != record.precision:
        raise IntegrityError(f"{path} holds {embedded.get('precision')} weights (its embedded manifest says so), but "
                             f"{MANIFEST_NAME} lists it as the {record.precision} artifact; was a file renamed? "
                             + REEXPORT)


def check_unedited_manifest(manifest: Manifest, key: str, metadata: Mapping[str, str]) -> None:
    """The whole of ``model.json`` equals the copy mrdl-export embedded in the (verified) ONNX file of
    artifact ``key`` (:func:`embedded_copy`): an edited field is refused, named; run after
    :func:`check_embedded_manifest` and :func:`check_graph`, whose messages are more specific."""
    path = manifest.model_dir / manifest.artifact(key).file
    embedded = parse_json(metadata.get(METADATA_KEY, "null"), f"{path} metadata '{METADATA_KEY}'")
    edited = manifest_differences(embedded_copy(manifest.raw, manifest.artifact(key).precision), embedded)
    if edited:
        raise IntegrityError(f"{manifest.model_dir / MANIFEST_NAME} was edited after export: {'; '.join(edited)} "
                             f"(what mrdl-export embedded in {path}); restore it, or re-export to change a field "
                             "(e.g. mrdl-export --source-size)")


def embedded_copy(doc: Mapping[str, Any], precision: str) -> dict[str, Any]:
    """The manifest mrdl-export embeds in the ONNX file of ``precision`` for the ``model.json`` ``doc``: the
    same document with that precision and each artifact record reduced to its file and precision (a file
    cannot hold its own size and hash); the whole of it is compared, so no field vouches for itself."""
    artifacts = doc.get("artifacts")
    return {**doc, "precision": precision,
            "artifacts": {key: {"file": entry.get("file"), "precision": entry.get("precision")}
                          for key, entry in artifacts.items()} if isinstance(artifacts, dict) else artifacts}


def manifest_differences(expected: Any, embedded: Any, where: str = "", *, limit: int = 3) -> list[str]:
    """Up to ``limit`` fields where ``model.json`` (``expected``) and the embedded copy differ, as
    ``source_size is [1, 1], not [128, 128]``."""
    if isinstance(expected, list) and isinstance(embedded, list) and len(expected) == len(embedded):
        found = []
        for index, (item, copy) in enumerate(zip(expected, embedded)):
            found += manifest_differences(item, copy, f"{where}[{index}]", limit=limit)
            if len(found) >= limit:
                break
        return found[:limit]
    if isinstance(expected, dict) and isinstance(embedded, dict):
        found = []
        for key in sorted(set(expected) | set(embedded), key=str):
            name = f"{where}.{key}" if where else str(key)
            if key not in embedded:
                found.append(f"{name} was added")
            elif key not in expected:
                found.append(f"{name} was removed")
            else:
                found += manifest_differences(expected[key], embedded[key], name, limit=limit)
            if len(found) >= limit:
                break
        return found[:limit]
    if expected == embedded and type(expected) is type(embedded):
        return []
    shown = [text if len(text) <= 60 else text[:57] + "..." for text in (json.dumps(expected), json.dumps(embedded))]
    return [f"{where or 'the manifest'} is {shown[0]}, not {shown[1]}"]


def check_graph(manifest: Manifest, key: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """The loaded graph's inputs and outputs equal the manifest's (names, dtypes, batch axis and other dims)."""
    path = manifest.model_dir / manifest.artifact(key).file
    for kind, listed, found in (("inputs", manifest.inputs, inputs), ("outputs", manifest.outputs, outputs)):
        expected = sorted(spec.describe() for spec in listed)
        got = sorted(spec.describe() for spec in found)
        if expected != got:
            raise IntegrityError(f"{path}: the graph's {kind} are {'; '.join(got)}, but {MANIFEST_NAME} lists "
                                 f"{'; '.join(expected)}; the file and {MANIFEST_NAME} do not belong together: "
                                 + REEXPORT)


def graph_spec(name: str, shape: Sequence[object], dtype: str) -> TensorSpec:
    """A backend's view of one graph tensor in the manifest's terms: a dynamic first axis is ``"batch"``."""
    dims = tuple(d if type(d) is int and d > 0 else str(d) for d in shape)
    if dims:
        dims = (dims[0] if type(dims[0]) is int else "batch", *dims[1:])
    return TensorSpec(name, dims, dtype)
