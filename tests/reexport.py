"""Change a field of an exported model directory the way a re-export would (for tests).

``model.json`` is verified as a whole against the copy mrdl-export embeds in each ONNX file
(``mrdl_runtime.integrity.check_embedded_manifest``), so a test that needs another threshold or
``source_size`` cannot just edit the JSON: :func:`rewrite_manifest` changes the document, embeds
it into every ONNX file again and rewrites the artifact records (sizes, SHA-256) and ``model.json``
through ``mrdl_export.manifest.write_deploy_manifest``, as the export does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def rewrite_manifest(model_dir: Path, change: Callable[[dict[str, Any]], None] | dict[str, Any]) -> Path:
    """Apply ``change`` (a function of the document, or fields to set) to ``model_dir``'s manifest and
    write it as mrdl-export writes one; return ``model_dir``."""
    from mrdl_export.manifest import write_deploy_manifest

    doc = json.loads((Path(model_dir) / "model.json").read_text())
    if callable(change):
        change(doc)
    else:
        doc.update(change)
    doc["artifacts"] = {key: {"file": entry["file"], "precision": entry["precision"]}
                        for key, entry in doc["artifacts"].items()}
    write_deploy_manifest(model_dir, doc)
    return Path(model_dir)
