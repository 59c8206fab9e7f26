"""Which optional extra a command needs, and one clear line (exit 2) when it is not installed.

A runtime-only install (``pip install '.[runtime]'``) holds every command, but ``mrdl train``,
``mrdl-export``, ``mrdl-bench`` and the others need torch and onnx. Instead of the
``ModuleNotFoundError`` traceback of their first heavy import, they check the extra's modules
first (:func:`require_extra`) and name the command that adds it::

    mrdl-export: needs mrdl's 'export' extra, which is not installed here (missing: torch, onnx, ...);
    add it with: pip install 'mrdl[export]'

``pip install 'mrdl[EXTRA]'`` works once mrdl is installed (from the source tree or a wheel): pip
keeps the installed mrdl and fetches only the extra's packages. The check looks for import names
without importing anything, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib.util

import click

EXIT_MISSING_EXTRA = 2

# extra -> the import names of its packages (pyproject.toml's optional-dependencies, self-references
# expanded; tests/test_packaging.py checks that the two agree)
_TRAIN = ("torch", "torchvision", "open_clip", "safetensors", "openpyxl", "matplotlib")
_EXPORT = (*_TRAIN, "onnx", "onnxscript", "onnxruntime")
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": _TRAIN,
    "export": _EXPORT,
    "bench": (*_EXPORT, "psutil"),
    "slide": ("tifffile", "tiffslide", "imagecodecs", "shapely"),
}

# `mrdl` subcommand -> the extra it needs (subcommands not listed need none, or check their own)
SUBCOMMAND_EXTRAS = {
    "embed-text": "train",
    "train": "train",
    "evaluate": "train",
    "export": "export",
    "demo": "bench",
    "predict-slide": "slide",
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a broken module spec
        return False


def missing_modules(extra: str) -> list[str]:
    """The import names of ``extra``'s packages that cannot be found here ([] when all can)."""
    if extra not in EXTRA_MODULES:
        raise ValueError(f"extra must be one of {sorted(EXTRA_MODULES)}, got {extra!r}")
    return [module for module in EXTRA_MODULES[extra] if not _importable(module)]


def missing_extra_message(command: str, extra: str, missing: list[str]) -> str:
    """The one line a command prints when ``extra`` is missing."""
    named = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (f"{command}: needs mrdl's '{extra}' extra, which is not installed here (missing: {named}); "
            f"add it with: pip install 'mrdl[{extra}]'  (docs/install.md)")


def require_extra(command: str, extra: str) -> None:
    """Return when ``extra`` is installed; otherwise print one line naming it and exit 2."""
    missing = missing_modules(extra)
    if missing:
        click.echo(missing_extra_message(command, extra, missing), err=True)
        raise SystemExit(EXIT_MISSING_EXTRA)


def missing_extra_command(name: str, command: str, extra: str, missing: list[str]) -> click.Command:
    """A stand-in for subcommand ``name`` whose extra is missing: any invocation prints the line and exits 2."""

    def refuse(args: tuple[str, ...]) -> None:
        click.echo(missing_extra_message(command, extra, missing), err=True)
        raise SystemExit(EXIT_MISSING_EXTRA)

    return click.Command(name, callback=refuse, params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
                         short_help=f"not installed: pip install 'mrdl[{extra}]'",
                         help=f"Not installed: needs mrdl's '{extra}' extra (pip install 'mrdl[{extra}]').",
                         add_help_option=False, context_settings={"ignore_unknown_options": True})
