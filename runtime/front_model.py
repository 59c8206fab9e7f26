"""The front model's folder in a Triton repository: ``config.pbtxt`` and ``model.py`` for
:mod:`mrdl_runtime.triton_model` (written by ``mrdl serve`` into its temporary repository and by
``mrdl triton-repo``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from .atomic import atomic_path
from .errors import OptionsError

# A Triton model name is a folder of the repository: one path component, not hidden (Triton skips folders
# whose name starts with '.'), so never '.' or '..' either.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
NAME_RULE = "use letters, digits, '_', '.', '-' (at most 128), not starting with '.' (Triton skips hidden folders)"

MODEL_PY = '''"""mrdl's front model for Triton's Python backend (written by mrdl): raw UINT8 [b, H, W, 3] in,
the mask at each image's size out; needs mrdl_runtime in the Python backend's Python (pip install mrdl)."""

from mrdl_runtime.triton_model import TritonPythonModel  # noqa: F401
'''


def _text(value: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def model_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a model in a Triton repository (the rule of :data:`NAME_PATTERN`), or None."""
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
        return None
    return f"model name {name!r}: {NAME_RULE}"


def front_model_config(name: str, *, n_classes: int, max_batch: int, max_queue_delay_us: int, max_queue: int,
                       instances: int, parameters: Mapping[str, str]) -> str:
    """config.pbtxt of the front model: Python backend, the request contract above, a dynamic batcher whose
    queue holds at most ``max_queue`` requests (more are refused with UNAVAILABLE), the latest version served."""
    entries = "\n".join(f"parameters {{ key: {_text(key)} value: {{ string_value: {_text(value)} }} }}"
                        for key, value in parameters.items())
    return f"""name: {_text(name)}
backend: "python"
max_batch_size: {max_batch}
version_policy: {{ latest: {{ num_versions: 1 }} }}
input [ {{ name: "image" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }} ]
output [
  {{ name: "mask" data_type: TYPE_UINT8 dims: [ -1, -1 ] }},
  {{ name: "tiled" data_type: TYPE_BOOL dims: [ 1 ] }},
  {{ name: "probabilities" data_type: TYPE_FP32 dims: [ {n_classes}, -1, -1 ] }}
]
dynamic_batching {{
  preferred_batch_size: [ {max_batch} ]
  max_queue_delay_microseconds: {max_queue_delay_us}
  default_queue_policy {{ max_queue_size: {max_queue} }}
}}
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
{entries}
"""


def write_front_model(folder: Path, name: str, manifest, options, model_dir: str, *, version: int = 1) -> Path:
    """Write ``folder/config.pbtxt`` and ``folder/<version>/model.py`` for ``options`` (a ``ServeOptions``);
    ``model_dir``: the exported model directory, absolute or relative to the version folder. Returns the
    version folder. :class:`OptionsError` for a ``name`` that cannot name a model folder."""
    problem = model_name_problem(name)
    if problem is not None:
        raise OptionsError(problem)
    max_batch = options.max_batch or manifest.max_batch
    artifact = manifest.artifacts.get(options.load.precision)
    parameters = {"model_dir": model_dir, "serve_options": options.to_json(), "export_id": manifest.export_id,
                  "model_name": manifest.name or "", "sha256": getattr(artifact, "sha256", "") or "",
                  "max_request_pixels": str(options.predict.max_pixels), "max_side": str(options.max_side),
                  "max_windows": str(options.max_windows)}
    version_dir = folder / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    config = front_model_config(name, n_classes=manifest.n_classes, max_batch=max_batch,
                                max_queue_delay_us=options.max_queue_delay_us, max_queue=options.max_queue,
                                instances=options.instances, parameters=parameters)
    for path, text in ((folder / "config.pbtxt", config), (version_dir / "model.py", MODEL_PY)):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return version_dir
