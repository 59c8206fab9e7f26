"""``LoadOptions`` and ``PredictOptions``: every setting of loading and running a model, each written once.

A setting is one dataclass field: its default in the field, its help, choices and range in the
field's metadata (:func:`option`, the pattern of :mod:`mrdl_export.options`). The objects travel
whole: ``mrdl predict`` and ``mrdl serve`` build their command-line options from the fields
(``mrdl_apps.options``), :func:`mrdl_runtime.files.predict_files`, :class:`mrdl_runtime.RemoteSegmenter`
and the server (:mod:`mrdl_runtime.serving`) pass them on unchanged, and
:meth:`mrdl_runtime.Segmenter.load` / :meth:`~mrdl_runtime.Segmenter.predict` read them. The
fields of :class:`PredictOptions` marked ``request=True`` travel to a server as request parameters,
spelled as on the command line (:func:`to_text` / :meth:`PredictOptions.from_request`). A new
predict option is one field here (and its use in the segmenter).

    from mrdl_runtime import LoadOptions, PredictOptions, Segmenter
    with Segmenter.load("deploy/", LoadOptions(threads=2)) as segmenter:
        prediction = segmenter.predict(rgb, PredictOptions(tile=True, overlap=0.5))
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from .backends import AUTO, RUN_PRECISIONS, backend_choices, get_backend
from .errors import OptionsError
from .imaging import CHANNEL_ORDERS, DEFAULT_MAX_PIXELS
from .tiling import BLEND_MODES, DEFAULT_OVERLAP, MAX_OVERLAP, TileOptions

TILE_TEXT = {"auto": "auto", "true": True, "false": False}  # tile's spelling on the command line and in requests
# The most CPU threads a threads option takes: a fixed number (options validate without probing the hardware), far
# above any CPU's cores, and far below the count at which a runtime's thread pool exhausts memory or hangs.
MAX_THREADS = 1024
MAX_STREAMS = 64  # concurrent parts of one batch (LoadOptions.streams): more than any batch a model directory takes
THREADS_HELP = ("CPU threads one model call may use (ONNX Runtime intra-op threads); 0: the runtime's default, one "
                "per physical core available to the process (mrdl_runtime.threads.default_threads; mrdl serve shares "
                "it among its --instances). The native tensorrt backend ignores it.")

Options = TypeVar("Options", bound="OptionsBase")


def option(default: Any, help: str, *, flag: str | None = None, cli: bool = True, request: bool = False,
           config: str | None = None, choices: Sequence[Any] | None = None, low: float | None = None,
           high: float | None = None, low_open: bool = False, high_open: bool = False, path: str | None = None) -> Any:
    """An options field with its ``default`` and ``help``: the one field helper of every options dataclass.

    Used by :class:`LoadOptions`, :class:`PredictOptions`, the server's, client's and slide's options,
    :class:`mrdl.train_options.TrainOptions`, :class:`mrdl_export.options.ExportOptions` and
    :class:`mrdl_bench.options.BenchOptions`; the command lines build their options from these fields
    (``mrdl_apps.options.field_options``).
    ``flag``: its command-line spelling (default: :func:`command_line_flag`; ``--a/--b`` for an on/off
    pair); ``cli=False``: library-only. ``request``: sent to a server with each request. ``config``:
    the section of a training config the field overrides (``train`` or ``loss``). ``choices`` and the
    range [``low``, ``high``] (open ends where ``low_open``/``high_open``) are checked by the
    options' own checks and by the command line's types alike. ``path``: what a path field names,
    ``"dir"`` or ``"file"`` (the command line then refuses the other kind).
    """
    if path not in (None, "dir", "file"):
        raise ValueError(f"path must be 'dir', 'file' or None, got {path!r}")
    return field(default=default, metadata={"help": help, "flag": flag, "cli": cli, "request": request,
                                            "config": config, "choices": None if choices is None else tuple(choices),
                                            "low": low, "high": high, "low_open": low_open, "high_open": high_open,
                                            "path": path})


def command_line_flag(option_field: Field) -> str | None:
    """The ``--flag`` of an options field: its ``flag``, else ``--`` and the field name with dashes; None for a
    library-only one (or a field without help)."""
    if not option_field.metadata.get("cli", "help" in option_field.metadata):
        return None
    return option_field.metadata.get("flag") or "--" + option_field.name.replace("_", "-")


def check_fields(options: object, *, skip: Sequence[str] = (), error: type[Exception] = OptionsError) -> None:
    """Raise ``error`` (default :class:`OptionsError`) for the first field (not in ``skip``) outside its choices,
    range or type, naming the field, what it must be and the value; a tuple (a repeatable option) is checked item
    by item. A ``bool`` field takes True or False only, an ``int`` field an int (not a bool, not a float): "false"
    is truthy, and a fraction of a pixel or thread means nothing."""
    kinds = _checked_kinds(type(options))
    for option_field in fields(options):
        value, rules, name = getattr(options, option_field.name), option_field.metadata, option_field.name
        if value is None or name in skip:
            continue
        choices = rules.get("choices")
        if choices is not None:
            unknown = [item for item in (value if isinstance(value, tuple) else (value,))
                       if not any(item is c or (type(item) is type(c) and item == c) for c in choices)]
            if unknown:
                raise error(f"{name} must be one of {', '.join(map(to_text, choices))}, "
                            f"got {', '.join(map(repr, unknown))}")
        low, high = rules.get("low"), rules.get("high")
        low_open, high_open = rules.get("low_open"), rules.get("high_open")
        limits = ("" if low is None and high is None
                  else f"{'>' if low_open else '>='} {low:g}" if high is None
                  else f"{'<' if high_open else '<='} {high:g}" if low is None
                  else f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        if limits and (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)
                       or (low is not None and (value < low or (low_open and value == low)))
                       or (high is not None and (value > high or (high_open and value == high)))):
            raise error(f"{name} must be a number {limits}, got {value!r}")
        kind = kinds.get(name)
        if kind is bool and not isinstance(value, bool):
            raise error(f"{name} must be True or False, got {value!r}")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise error(f"{name} must be an integer{' ' + limits if limits else ''}, got {value!r}")


@functools.cache
def _checked_kinds(options_class: type) -> dict[str, type]:
    """The fields of ``options_class`` whose type :func:`check_fields` checks, by :func:`field_kind`: ``bool``
    for ``bool`` (or ``bool | None``), ``int`` for ``int`` (or ``int | None``); a text-or-flag union such as
    ``str | bool`` (tile) is ``str``, left to its choices. Where a hint names a type imported only for type
    checkers, from the fields spelled ``bool`` or ``int`` (``| None``)."""
    try:
        kinds = {f.name: field_kind(options_class, f.name) for f in fields(options_class)}
    except NameError:
        spelled = {"bool": bool, "int": int}
        kinds = {f.name: spelled.get(str(f.type).removesuffix(" | None")) for f in fields(options_class)}
    return {name: kind for name, kind in kinds.items() if kind in (bool, int)}


def to_text(value: Any) -> str:
    """A field value as the command line and request parameters spell it: True -> "true", 0.25 -> "0.25"."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def field_kind(options_class: type, name: str) -> type:
    """``int`` for ``int | None``, ``bool`` for ``bool``, ``str`` for ``str | bool`` (a text-or-flag field such
    as ``tile``): the type a field's text is parsed to (``tuple`` for ``tuple[str, ...]``)."""
    hint = typing.get_type_hints(options_class)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        hint = str if str in args else args[0]
    return typing.get_origin(hint) or hint


def from_text(options_class: type, name: str, text: str) -> Any:
    """Parse one field's text (command line, request parameter) to its value; :class:`OptionsError` if it cannot."""
    kind = field_kind(options_class, name)
    text = str(text).strip()
    try:
        if name == "tile":
            return TILE_TEXT[text.lower()]
        if kind is bool:
            return {"true": True, "false": False}[text.lower()]
        if kind in (int, float):
            return kind(text)
    except (KeyError, ValueError):
        expected = ("one of " + ", ".join(TILE_TEXT) if name == "tile" else "true or false" if kind is bool
                    else f"a number ({kind.__name__})")
        raise OptionsError(f"{name} must be {expected}; got {text!r}") from None
    return Path(text) if kind is Path else text


class OptionsBase:
    """What every options dataclass shares: a copy with some fields changed, checked like the original."""

    def with_fields(self: Options, **changes: Any) -> Options:
        """A copy with ``changes`` applied (field names only; :class:`OptionsError` names an unknown one)."""
        if not changes:
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise OptionsError(f"{type(self).__name__} has no field {', '.join(unknown)} (it has {', '.join(sorted(known))})")
        return replace(self, **changes)

    @classmethod
    def of(cls: type[Options], options: Options | None = None, **changes: Any) -> Options:
        """``options`` (default: the defaults) with ``changes``: the keyword form of the library calls."""
        if options is not None and not isinstance(options, cls):
            raise OptionsError(f"expected {cls.__name__}, got {type(options).__name__}")
        return (options or cls()).with_fields(**changes)


@dataclass(frozen=True)
class LoadOptions(OptionsBase):
    """How :meth:`mrdl_runtime.Segmenter.load` opens a model directory (``mrdl predict`` / ``mrdl serve``)."""

    backend: str = option(AUTO, "Inference backend (mrdl_runtime.backends.REGISTRY); one named here that cannot "
                          "run is an error, never a fallback; auto: the fastest that can run.", choices=backend_choices())
    precision: str = option("fp32", "Which exported model to run (model.json's artifacts); bf16: model.onnx computed "
                            "in bfloat16 (backend openvino-cpu, on CPUs with AVX512_BF16 or AMX).",
                            choices=RUN_PRECISIONS)
    verify: bool = option(True, "Check the model file's SHA-256 against model.json before loading it; --no-verify "
                          "skips only the hash (its size, export and graph are still checked) and warns that it did.")
    threads: int = option(0, THREADS_HELP, low=0, high=MAX_THREADS)
    streams: int = option(
        1, "CPU backends: split each batch of several images (tiled windows, a whole slide's windows, a folder) into "
        "this many parts that run at once, each on threads/streams threads. Single-threaded operators then stop "
        "leaving cores idle (2 streams on 2 cores: 1.08-1.22x at batch 4, docs/measurements.md). Probabilities may "
        "differ from one call by float rounding, as between batch sizes. 1: one call uses every thread.",
        low=1, high=MAX_STREAMS)
    device_id: int = option(0, "GPU index for the CUDA and TensorRT backends.", low=0)
    cache_dir: Path | None = option(None, "ONNX Runtime TensorRT EP engine cache (default: ~/.cache/mrdl/ort-tensorrt).",
                                    cli=False)

    def __post_init__(self) -> None:
        if self.backend != AUTO:
            get_backend(self.backend)  # the registry as it is now (an entry added at run time counts too)
        check_fields(self, skip=("backend",))


@dataclass(frozen=True)
class PredictOptions(OptionsBase):
    """How :meth:`mrdl_runtime.Segmenter.predict` segments images (``mrdl predict``; ``mrdl serve``'s defaults).

    ``tile``, ``overlap`` and ``blend`` are the tiling contract of docs/tiling.md (validated as
    :class:`mrdl_runtime.tiling.TileOptions`); they travel to a server with every request.
    """

    tile: str | bool = option(
        "auto", "Segment in overlapping windows at the training scale (docs/tiling.md): true always (needs "
        "model.json's source_size), false never, auto only images more than 1.5 times the training images' size "
        "along either axis; --tile alone means true.", choices=("auto", True, False), request=True)
    overlap: float = option(DEFAULT_OVERLAP, "Tiling: fraction of a window shared with its neighbour.", low=0,
                            high=MAX_OVERLAP, request=True)
    blend: str = option("gaussian", "Tiling: window weights, gaussian (sigma = window / 8, as MONAI) or constant.",
                        choices=BLEND_MODES, request=True)
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS, "Refuse image files with more pixels than this (checked from the file header, before "
        "decoding). mrdl serve applies it to each request image and defaults to 16777216 (4096 x 4096): a server "
        "holds several requests in memory at once.", low=1)
    at_model_size: bool = option(False, "Return results at the model's size (LViT's evaluation protocol; a tiled "
                                 "image's at the training scale) instead of each image's own size.", cli=False)
    with_probabilities: bool = option(True, "Return the probabilities too; False: masks only, resized and "
                                      "thresholded in row strips.", cli=False)
    channel_order: str = option("RGB", "Channel order of 3-channel inputs.", choices=CHANNEL_ORDERS, cli=False)
    progress: bool = option(False, "Show a bar of each tiled image's windows on stderr.", cli=False)

    def __post_init__(self) -> None:
        TileOptions(self.tile, self.overlap, self.blend)  # the tiling contract's own checks and messages
        check_fields(self)

    def tiling(self) -> dict[str, Any]:
        """The tiling fields (predict.json's record of how images were tiled)."""
        return {"tile": self.tile, "overlap": self.overlap, "blend": self.blend}

    def request_parameters(self) -> dict[str, str]:
        """The ``request=True`` fields as a server's request parameters, spelled as on the command line."""
        return {f.name: to_text(getattr(self, f.name)) for f in fields(self) if f.metadata.get("request")}

    def from_request(self, parameters: Mapping[str, Any] | None) -> PredictOptions:
        """These options (a server's defaults) with a request's parameters applied (other parameters, e.g.
        Triton's own, are left alone); :class:`OptionsError` names a value out of its choices or range."""
        parameters = parameters or {}
        carried = [f.name for f in fields(self) if f.metadata.get("request") and f.name in parameters]
        try:
            return self.with_fields(**{name: from_text(PredictOptions, name, parameters[name]) for name in carried})
        except ValueError as exc:
            raise OptionsError(f"request parameter {exc}") from exc
