"""mrdl: Multimodal Representation Distribution Learning for medical image segmentation.

The top-level names are imported lazily, so ``import mrdl`` (or ``mrdl.config``) loads no torch
until a model is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "MRDL": "mrdl.model",
    "create_model": "mrdl.model",
    "MRDLConfig": "mrdl.config",
    "load_config": "mrdl.config",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mrdl' has no attribute {name!r}")
