"""``mrdl predict``: segment image files with an exported model directory (no PyTorch needed at run time).

A thin click layer over :func:`mrdl_runtime.files.predict_files`.
"""

from __future__ import annotations

from pathlib import Path

import click


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
@click.option("--progress/--no-progress", default=True, help="show a progress bar")
def predict(model_dir: Path, images: tuple[str, ...], out_dir: Path, backend: str, precision: str,
            progress: bool) -> None:
    """Segment IMAGES (files, folders or glob patterns) with the model exported to MODEL_DIR."""
    from mrdl_runtime import BackendUnavailableError, ImageInputError, ManifestError, Segmenter
    from mrdl_runtime.files import InputFilesError, predict_files

    try:
        with Segmenter.load(model_dir, backend=backend, precision=precision) as segmenter:
            click.echo(f"backend: {segmenter.reason}")
            summary = predict_files(segmenter, images, out_dir, progress=progress)
    except (ManifestError, BackendUnavailableError, InputFilesError, ImageInputError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary.line())
