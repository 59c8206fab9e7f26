"""The export's error, below :mod:`mrdl_export.options` and :mod:`mrdl_export.manifest`, which both raise it."""

from __future__ import annotations

from mrdl_runtime.errors import MrdlError


class ExportError(MrdlError, RuntimeError):
    """Bad input or a failed export step; the message says what was expected."""
