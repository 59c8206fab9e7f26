"""Command-line options built from options dataclasses: a setting is written once, in its field.

Every command whose settings are an options object (:class:`mrdl_runtime.LoadOptions`,
:class:`mrdl_runtime.PredictOptions`, :class:`mrdl_runtime.serving.ServeOptions`,
:class:`mrdl_runtime.slide.SlideOptions`, :class:`mrdl_runtime.remote.ClientOptions`,
:class:`mrdl_export.options.ExportOptions`, :class:`mrdl.train_options.TrainOptions` and
:class:`~mrdl.train_options.Hardware`; all written with :func:`mrdl_runtime.options.option`) gets one
click option per field that has a command-line flag (:func:`field_options`): the flag, help,
choices and range from the metadata, the default from the field, shown in ``--help``. The
command's function receives the values and rebuilds the object with :func:`build`. Also here:
the project's one ``--version`` option and help settings, which every command uses.
"""

from __future__ import annotations

import typing
from dataclasses import Field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from mrdl_runtime.options import command_line_flag, field_kind, from_text, to_text

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}
PACKAGE = "mrdl"
EMPTY = "none"  # a repeatable option's value that stands for "none of them" (its default is not empty)


def version_option(function: Callable) -> Callable:
    """``--version``: the installed mrdl distribution's version (the same on every command)."""
    return click.version_option(package_name=PACKAGE)(function)


def _is_text_or_flag(options_class: type, option_field: Field) -> bool:
    """A ``str | bool`` field such as ``tile``: ``--tile auto|true|false``, ``--tile`` alone meaning true."""
    hint = typing.get_type_hints(options_class)[option_field.name]
    return set(typing.get_args(hint)) >= {str, bool}


def _without_empty(context: click.Context, parameter: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    if EMPTY in values and len(values) > 1:
        raise click.BadParameter(f"{EMPTY!r} cannot be combined with other values", context, parameter)
    return tuple(value for value in values if value != EMPTY)


def _field_option(options_class: type, option_field: Field, default: Any) -> Callable:
    rules, name, flag = option_field.metadata, option_field.name, command_line_flag(option_field)
    settings: dict[str, Any] = {"help": rules.get("help"), "default": default, "show_default": True}
    kind = field_kind(options_class, name)
    if _is_text_or_flag(options_class, option_field):
        return click.option(flag, name, type=click.Choice([to_text(c) for c in rules["choices"]]), is_flag=False,
                            flag_value="true", **{**settings, "default": to_text(default)})
    if kind is bool:
        flags = f"{flag}/--no-{flag[2:]}" if default and "/" not in flag else flag
        return click.option(flags, name, is_flag=True, **settings)
    if kind is tuple and rules.get("choices") is not None:  # repeatable; EMPTY stands for none of them
        return click.option(flag, name, multiple=True, callback=_without_empty,
                            type=click.Choice([*map(to_text, rules["choices"]), EMPTY]), **settings)
    if rules.get("choices") is not None:
        settings["type"] = click.Choice([to_text(c) for c in rules["choices"]])
    elif rules.get("low") is not None or rules.get("high") is not None:
        number_range = click.IntRange if kind is int else click.FloatRange
        settings["type"] = number_range(min=rules.get("low"), max=rules.get("high"),
                                        min_open=bool(rules.get("low_open")), max_open=bool(rules.get("high_open")))
    else:
        settings["type"] = (click.Path(path_type=Path, file_okay=rules.get("path") != "dir",
                                       dir_okay=rules.get("path") != "file") if kind is Path else kind)
    return click.option(flag, name, **settings)


def field_options(options_class: type, *, defaults: Any = None, only: Iterable[str] | None = None) -> Callable:
    """A decorator adding one click option per command-line field of ``options_class`` (in field order).

    ``defaults``: an instance whose values are the command's defaults (e.g. ``mrdl serve``'s lower
    ``max_pixels``); ``only``: just these fields.
    """
    defaults = defaults if defaults is not None else options_class()
    chosen = [f for f in fields(options_class) if command_line_flag(f) is not None and (only is None or f.name in only)]

    def decorate(function: Callable) -> Callable:
        for option_field in reversed(chosen):
            function = _field_option(options_class, option_field, getattr(defaults, option_field.name))(function)
        return function

    return decorate


def build(options_class: type, values: dict[str, Any], *, defaults: Any = None) -> Any:
    """Take ``options_class``'s command-line fields out of ``values`` (a command's keyword arguments) and
    return the options object (``defaults`` for the fields the command line does not set)."""
    names = {f.name for f in fields(options_class) if command_line_flag(f) is not None}
    taken = {name: values.pop(name) for name in list(values) if name in names}
    for option_field in fields(options_class):
        if option_field.name in taken and _is_text_or_flag(options_class, option_field):
            taken[option_field.name] = from_text(options_class, option_field.name, taken[option_field.name])
    defaults = defaults if defaults is not None else options_class()
    return replace(defaults, **taken) if taken else defaults
