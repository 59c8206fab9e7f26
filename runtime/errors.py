"""The one base of every mrdl error, in the runtime's lowest layer (the C++ runtime's ``mrdl::Error``).

Every exception class the project defines derives from :class:`MrdlError` and keeps the builtin base
it had (``class ManifestError(MrdlError, ValueError)``), so ``except ValueError`` callers still
work and a command catches ``MrdlError`` once to print one line. The errors of several modules
live here: :class:`BackendUnavailableError` (every layer's "cannot run here"), :class:`OptionsError` (a
setting outside its choices or range), :class:`NotOpenError` (a runner or Segmenter used while closed) and
:class:`SlideError` (a slide that cannot be segmented as asked).
Nothing here imports anything.
"""

from __future__ import annotations


class MrdlError(Exception):
    """Base of every error mrdl raises on purpose: its message says what was expected and what to do next."""


class BackendUnavailableError(MrdlError, RuntimeError):
    """A backend that was asked for by name but cannot run here (library, GPU or artifact missing).

    The one "cannot run here" error of every mrdl layer: the layers above raise it, or errors derived
    from it, and a caller that can do without the backend catches it and reports the message.
    """


class OptionsError(MrdlError, ValueError):
    """A load, predict or serve setting outside its choices or range (the message names the setting)."""


class NotOpenError(MrdlError, RuntimeError):
    """A runner used before ``open()`` or after ``close()``, or a :class:`mrdl_runtime.Segmenter` after ``close()``
    (the message says what to do: open the runner, load the model again)."""


class SlideError(MrdlError, ValueError):
    """A slide that cannot be segmented as asked: unreadable, no resolution, no level fine enough.

    ``reason`` is the message without the slide's path; ``str()`` puts ``slide`` (when given) in
    front, so a caller that prints the path itself (``failed: PATH: ...``) prints ``reason`` alone.
    """

    def __init__(self, reason: str, *, slide: object = None) -> None:  # slide: its path (str or Path)
        self.reason, self.slide = reason, slide
        super().__init__(reason if slide is None else f"{slide}: {reason}")
