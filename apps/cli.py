"""The ``mrdl`` command: one click group whose subcommands are imported only when used.

Lazy loading keeps ``mrdl --help`` fast and lets a subcommand's heavy dependencies (onnx,
onnxruntime, tensorrt) stay optional until that subcommand runs. Every subcommand gets the
group's help settings (``-h``, defaults shown) and ``--version`` (added here when it has none);
an :class:`~mrdl_runtime.MrdlError` a subcommand does not handle itself ends it with one line
(``Error: ...``) and exit status 1, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from mrdl_apps.errors import os_errors_reported
from mrdl_apps.extras import SUBCOMMAND_EXTRAS, missing_extra_command, missing_modules
from mrdl_apps.options import CONTEXT_SETTINGS, version_option
from mrdl_runtime.atomic import stop_on_sigterm_as_on_ctrl_c
from mrdl_runtime.errors import MrdlError

# name -> "module:attribute" of a click command
SUBCOMMANDS = {
    "embed-text": "mrdl_apps.embed:embed_text",
    "train": "mrdl_apps.train:train",
    "evaluate": "mrdl_apps.train:evaluate",
    "export": "mrdl_apps.export:export_command",
    "predict": "mrdl_apps.predict:predict",
    "predict-slide": "mrdl_apps.predict_slide:predict_slide",
    "demo": "mrdl_apps.demo:demo",
    "serve": "mrdl_apps.serve:serve",
    "triton-repo": "mrdl_apps.triton_repo:triton_repo",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {n for n in SUBCOMMANDS if self._available(n)})

    @staticmethod
    def _available(name: str) -> bool:
        module = SUBCOMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in SUBCOMMANDS and self._available(name):
            extra = SUBCOMMAND_EXTRAS.get(name)
            missing = missing_modules(extra) if extra else []
            if missing:  # a runtime-only install: one line naming the extra, not an import traceback
                return _with_version(missing_extra_command(name, f"mrdl {name}", extra, missing))
            module, attribute = SUBCOMMANDS[name].split(":")
            return _with_version(getattr(importlib.import_module(module), attribute))
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            with os_errors_reported():  # a full disk, read-only folder, name too long...: one line, exit 1
                return super().invoke(ctx)
        except MrdlError as exc:  # the project's one error type: one line, exit 1
            raise click.ClickException(str(exc)) from exc


def _with_version(command: click.Command) -> click.Command:
    """``command`` with the project's ``--version`` option (added once, where it has none)."""
    if not any("--version" in getattr(parameter, "opts", ()) for parameter in command.params):
        version_option(command)
    return command


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@version_option
def main() -> None:
    """mrdl: text-guided medical image segmentation (MRDL, IJCAI 2024) from training to deployment."""
    stop_on_sigterm_as_on_ctrl_c()
