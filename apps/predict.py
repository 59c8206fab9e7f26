"""``mrdl predict``: segment image files with an exported model directory (no PyTorch needed at run time).

A thin click layer over :func:`mrdl_runtime.files.predict_files`. Exit status: 0 when every image
was segmented, 1 when any failed (each named in a summary at the end), 130 on Ctrl-C.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mrdl_runtime.imaging import DEFAULT_MAX_PIXELS
from mrdl_runtime.tiling import BLEND_MODES, DEFAULT_OVERLAP


@click.command("predict")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="folder for masks/<stem>.png (0/255) and overlays/<stem>.png")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"]),
              help="inference backend; a backend named here that cannot run is an error, never a fallback")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "int8", "fp16"]),
              help="which exported model to run")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1),
              help="refuse images with more pixels than this (checked from the file header, before decoding)")
@click.option("--on-error", default="skip", show_default=True, type=click.Choice(["skip", "stop"]),
              help="a bad image: skip it and go on, or stop the run; either way the failures are listed and "
                   "the exit status is 1")
@click.option("--overwrite", is_flag=True,
              help="write into an --out that holds another model's masks (its recorded outputs are deleted first)")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="check the model file's SHA-256 against model.json before loading it; --no-verify skips only "
                   "the hash (its size, export and graph are still checked) and warns that it did")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0),
              help="ONNX Runtime intra-op threads (the cores one model call may use); 0: one per physical "
                   "core available to the process. The native tensorrt backend ignores it")
@click.option("--server", default=None, metavar="URL",
              help="segment on a Triton server (mrdl serve) at http://HOST:PORT or grpc://HOST:PORT instead of "
                   "in-process; MODEL_DIR is then the directory the server serves (its model.json names the "
                   "classes), no model file is loaded here")
@click.option("--model-name", default="mrdl", show_default=True, help="with --server: the served model's name")
@click.option("--tile/--no-tile", default=None,
              help="segment in overlapping windows at the training scale (docs/tiling.md): --tile always (needs "
                   "the model's source_size), --no-tile never; default: only images more than 1.5 times the "
                   "training images' size (model.json source_size) along either axis; in-process models only")
@click.option("--overlap", default=DEFAULT_OVERLAP, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="tiling: fraction of a window shared with its neighbour")
@click.option("--blend", default="gaussian", show_default=True, type=click.Choice(BLEND_MODES),
              help="tiling: window weights, gaussian (sigma = window/8, as MONAI) or constant")
@click.option("--progress/--no-progress", default=True, help="show a progress bar")
def predict(model_dir: Path, images: tuple[str, ...], out_dir: Path, backend: str, precision: str,
            max_pixels: int, on_error: str, overwrite: bool, verify: bool, threads: int, server: str | None,
            model_name: str, tile: bool | None, overlap: float, blend: str, progress: bool) -> None:
    """Segment IMAGES (files, folders or glob patterns) with the model exported to MODEL_DIR."""
    from mrdl_runtime import BackendUnavailableError, ImageInputError, ManifestError, RemoteError, Segmenter
    from mrdl_runtime.files import InputFilesError, OutputFolderError, PredictInterrupted, predict_files

    if server is not None and tile:
        raise click.UsageError("--tile runs in-process only; a served model (--server) segments whole images")

    def load():
        if server is None:
            return Segmenter.load(model_dir, backend=backend, precision=precision, verify=verify,
                                  intra_op_threads=threads)
        return _ServedModel.connect(server, model_dir, model_name)

    try:
        with load() as segmenter:
            click.echo(f"backend: {segmenter.reason}")
            summary = predict_files(segmenter, images, out_dir, progress=progress, max_pixels=max_pixels,
                                    on_error=on_error, overwrite=overwrite,
                                    tile=False if server or tile is False else "auto" if tile is None else True,
                                    overlap=overlap, blend=blend)
    except PredictInterrupted as exc:
        click.echo(f"interrupted: {exc.written} images written to {exc.out_dir}; run the same command again "
                   "to finish (images already written are segmented again)", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted: no images written", err=True)
        sys.exit(130)
    except (ManifestError, BackendUnavailableError, InputFilesError, OutputFolderError, ImageInputError, RemoteError,
            ValueError, ImportError) as exc:
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
    def connect(cls, url: str, model_dir: Path, model_name: str) -> "_ServedModel":
        from mrdl_runtime import RemoteSegmenter, load_manifest

        manifest = load_manifest(model_dir)
        remote = RemoteSegmenter(url, model=model_name)
        if remote.n_classes is not None and remote.n_classes != manifest.n_classes:
            remote.close()
            raise ValueError(f"the server at {url} serves a model with {remote.n_classes} classes, but {model_dir} "
                             f"has {manifest.n_classes}: give the directory the server serves")
        return cls(remote, manifest)

    @property
    def runner(self):
        return self.remote  # .count: requests answered

    @property
    def mean_latency_ms(self) -> float:
        return self.remote.mean_latency_ms

    def predict_batch(self, images, **kwargs):
        return self.remote.predict_batch(images, **kwargs)

    def __enter__(self) -> "_ServedModel":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remote.close()
