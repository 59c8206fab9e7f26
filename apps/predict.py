"""``mrdl predict``: segment image files with an exported model directory (no PyTorch needed at run time).

A thin click layer over :func:`mrdl_runtime.files.predict_files`. Exit status: 0 when every image
was segmented, 1 when any failed (each named in a summary at the end), 130 on Ctrl-C.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mrdl_apps.options import build, field_options
from mrdl_runtime.files import ON_ERROR
from mrdl_runtime.options import LoadOptions, PredictOptions
from mrdl_runtime.remote import ClientOptions


@click.command("predict")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for masks/<stem>.png (0/255) and overlays/<stem>.png.")
@field_options(LoadOptions)
@field_options(PredictOptions)
@click.option("--on-error", default=ON_ERROR[0], show_default=True, type=click.Choice(ON_ERROR),
              help="A bad image: skip it and go on, or stop the run; either way the failures are listed and "
                   "the exit status is 1.")
@click.option("--overwrite", is_flag=True, show_default=True,
              help="Write into an --out that holds another model's masks (its recorded outputs are deleted first).")
@click.option("--server", default=None, metavar="URL", show_default=True,
              help="Segment on a Triton server (mrdl serve) at http://HOST:PORT or grpc://HOST:PORT instead of "
                   "in-process, with the same predict options; MODEL_DIR is then the directory the server serves "
                   "(its model.json names the classes), no model file is loaded here and the load options "
                   "are the server's.")
@field_options(ClientOptions)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars on stderr.")
def predict(model_dir: Path, images: tuple[str, ...], out_dir: str, on_error: str, overwrite: bool,
            server: str | None, progress: bool, **fields) -> None:
    """Segment IMAGES (files, folders or glob patterns) with the model exported to MODEL_DIR."""
    from mrdl_runtime import MrdlError, Segmenter
    from mrdl_runtime.files import PredictInterrupted, predict_files

    try:
        load_options, predict_options = build(LoadOptions, fields), build(PredictOptions, fields)
        client_options = build(ClientOptions, fields)
        with (Segmenter.load(model_dir, load_options) if server is None
              else _ServedModel.connect(server, model_dir, client_options)) as segmenter:
            click.echo(f"backend: {segmenter.reason}")
            summary = predict_files(segmenter, images, out_dir, predict_options, progress=progress,
                                    on_error=on_error, overwrite=overwrite)
    except PredictInterrupted as exc:
        click.echo(f"interrupted: {exc.written} images written to {exc.out_dir}; run the same command again "
                   "to finish (images already written are segmented again)", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted: no images written", err=True)
        sys.exit(130)
    except MrdlError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary.line())
    click.echo(summary.tiling_line())
    for line in summary.failure_lines():
        click.echo(line, err=True)
    if summary.failed:
        sys.exit(1)


class _ServedModel:
    """A :class:`mrdl_runtime.RemoteSegmenter` with what ``predict_files`` reads of a Segmenter: the
    manifest of MODEL_DIR (names, classes, max_batch), a backend label and a call counter."""

    def __init__(self, remote, manifest) -> None:
        self.remote, self.manifest = remote, manifest
        self.backend, self.precision = "triton", "served"
        self.reason = f"Triton server {remote.url}, model {remote.model!r}"

    @classmethod
    def connect(cls, url: str, model_dir: Path, options: ClientOptions) -> "_ServedModel":
        from mrdl_runtime import RemoteError, RemoteSegmenter, load_manifest

        manifest = load_manifest(model_dir)
        remote = RemoteSegmenter(url, options)
        if remote.n_classes is not None and remote.n_classes != manifest.n_classes:
            remote.close()
            raise RemoteError(f"the server at {url} serves a model with {remote.n_classes} classes, but {model_dir} "
                             f"has {manifest.n_classes}: give the directory the server serves")
        return cls(remote, manifest)

    @property
    def runner(self):
        return self.remote  # .count: requests answered

    @property
    def mean_latency_ms(self) -> float:
        return self.remote.mean_latency_ms

    def predict_batch(self, images, options=None, **fields):
        return self.remote.predict_batch(images, options, **fields)

    def __enter__(self) -> "_ServedModel":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remote.close()
