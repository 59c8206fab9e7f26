"""``mrdl predict-slide``: segment whole-slide images (SVS, pyramidal TIFF, OME-TIFF) at the model's resolution.

A thin click layer over :class:`mrdl_runtime.slide.SlideSegmenter` (docs/slides.md). Each slide is
independent: one that fails is reported and the others go on. Exit status: 0 when every slide was
segmented, 1 when any failed, 130 on Ctrl-C (rerun with ``--resume`` to continue where it stopped).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mrdl_apps.options import build, field_options
from mrdl_runtime.options import LoadOptions
from mrdl_runtime.remote import ClientOptions
from mrdl_runtime.slide import SlideOptions


@click.command("predict-slide")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("slides", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for <slide>.mask.ome.tif, <slide>.geojson, <slide>.json (and probabilities)")
@field_options(LoadOptions)
@field_options(SlideOptions)
@click.option("--server", default=None, metavar="URL",
              help="Send the windows to a Triton server (mrdl serve) at http://HOST:PORT or grpc://HOST:PORT "
                   "instead of running the model here; MODEL_DIR is the directory the server serves")
@field_options(ClientOptions)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a bar per slide on stderr")
def predict_slide(model_dir: Path, slides: tuple[str, ...], out_dir: Path, server: str | None, progress: bool,
                  **fields) -> None:
    """Segment SLIDES (files, folders or CSV lists of paths) with the model exported to MODEL_DIR."""
    from mrdl_runtime import MrdlError, Segmenter, load_manifest
    from mrdl_runtime.slide import SlideSegmenter, prepare_out_dir, slide_paths
    from mrdl_runtime.slide_reader import SlideError

    try:
        load_options, client_options = build(LoadOptions, fields), build(ClientOptions, fields)
        options = build(SlideOptions, fields).with_fields(progress=progress)
        paths = slide_paths(list(slides))
        prepare_out_dir(out_dir)  # an unwritable --out fails once, before the model loads
        if server is None:
            model = Segmenter.load(model_dir, load_options)
            segmenter = SlideSegmenter.in_process(model)
            click.echo(f"backend: {model.reason}")
        else:
            from mrdl_runtime import RemoteSegmenter

            model = RemoteSegmenter(server, client_options)
            segmenter = SlideSegmenter.remote(model, load_manifest(model_dir))
            click.echo(f"backend: Triton server {model.url}, model {client_options.model_name!r}")
    except MrdlError as exc:
        raise click.ClickException(str(exc)) from exc
    failed = []
    with model:
        for path in paths:
            try:
                result = segmenter.predict_slide(path, out_dir, options)
            except KeyboardInterrupt:
                click.echo(f"interrupted: {path}; run the same command with --resume to continue from its last "
                           "finished band", err=True)
                sys.exit(130)
            except (MrdlError, OSError, ValueError) as exc:
                failed.append(path)
                reason = exc.reason if isinstance(exc, SlideError) else exc  # the path is printed once, here
                click.echo(f"failed: {path}: {reason}", err=True)
                continue
            click.echo(result.line())
    click.echo(f"{len(paths) - len(failed)} of {len(paths)} slides segmented into {out_dir}")
    if failed:
        sys.exit(1)
