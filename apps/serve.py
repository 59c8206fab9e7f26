"""``mrdl serve MODEL_DIR``: the exported model behind a real Triton Inference Server.

A thin click layer over :func:`mrdl_runtime.serving.run_server` (the server, its request
contract and its shutdown are documented there). Its options are built from the fields of
:class:`~mrdl_runtime.serving.ServeOptions`, :class:`~mrdl_runtime.LoadOptions` and
:class:`~mrdl_runtime.PredictOptions` (the server's defaults for requests, ``--max-pixels``
lower than ``mrdl predict``'s). Exit status: 0 after a clean stop (SIGTERM / Ctrl-C), 1 when the
server cannot start.
"""

from __future__ import annotations

from pathlib import Path

import click

from mrdl_apps.options import build, field_options
from mrdl_runtime.options import LoadOptions, PredictOptions
from mrdl_runtime.serving import SERVE_PREDICT_DEFAULTS, ServeOptions


@click.command("serve")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@field_options(ServeOptions)
@field_options(LoadOptions)
@field_options(PredictOptions, defaults=SERVE_PREDICT_DEFAULTS)
def serve(model_dir: Path, **fields) -> None:
    """Serve the model exported to MODEL_DIR with Triton Inference Server (HTTP, gRPC, metrics) until SIGTERM."""
    from mrdl_runtime import MrdlError
    from mrdl_runtime.serving import run_server

    try:
        options = build(ServeOptions, fields).with_fields(
            load=build(LoadOptions, fields), predict=build(PredictOptions, fields, defaults=SERVE_PREDICT_DEFAULTS))
        run_server(model_dir, options, echo=lambda line: click.echo(line, err=True))
    except MrdlError as exc:
        raise click.ClickException(str(exc)) from exc
