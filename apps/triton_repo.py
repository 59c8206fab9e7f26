"""``mrdl triton-repo MODEL_DIR --out REPO``: a Triton model repository from an exported model directory.

A thin click layer over :func:`mrdl_export.triton.write_repository`: one bare model per precision
(``config.pbtxt`` from ``model.json``, every artifact verified before it is copied) and the front
model clients call (raw images in, masks out; Python backend with mrdl_runtime, docs/serving.md).
"""

from __future__ import annotations

from pathlib import Path

import click

from mrdl_runtime.manifest import PRECISIONS


@click.command("triton-repo")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The repository folder to write.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice([*PRECISIONS, "tensorrt"]),
              help="Artifacts to include (repeatable; default: every artifact model.json lists).")
@click.option("--prefix", default="mrdl", show_default=True, help="Models are named PREFIX_<precision>.")
@click.option("--max-batch", default=None, type=click.IntRange(min=1),
              help="Triton's max_batch_size (default: the model directory's max_batch).")
@click.option("--max-queue-delay-us", default=2000, show_default=True, type=click.IntRange(min=0),
              help="Dynamic batcher: how long a request may wait for others, in microseconds.")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(min=1), help="Instances per model.")
@click.option("--kind", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "gpu"]),
              help="Instance placement (auto: TensorRT engines on GPU, ONNX models on CPU).")
@click.option("--front/--no-front", default=True, show_default=True,
              help="Also write the front model PREFIX (Python backend with mrdl_runtime): raw uint8 images and the "
                   "tiling parameters in, masks at the original size out.")
@click.option("--front-precision", default="fp32", show_default=True, type=click.Choice(PRECISIONS),
              help="The artifact the front model runs in-process.")
@click.option("--max-queue", default=4, show_default=True, type=click.IntRange(min=1),
              help="Front model: requests that may wait; one more is refused with UNAVAILABLE (HTTP 503).")
@click.option("--force", is_flag=True, help="Replace a repository written before (never a folder with other files).")
def triton_repo(model_dir: Path, out: Path, precisions: tuple[str, ...], prefix: str, max_batch: int | None,
                max_queue_delay_us: int, instances: int, kind: str, front: bool, front_precision: str, max_queue: int,
                force: bool) -> None:
    """Write a Triton Inference Server model repository for the model exported to MODEL_DIR."""
    from mrdl_runtime import MrdlError

    from mrdl_export.triton import TritonRepoOptions, write_repository

    options = TritonRepoOptions(prefix=prefix, precisions=precisions or None, max_batch=max_batch,
                                max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind, force=force,
                                front=front, front_precision=front_precision, max_queue=max_queue)
    try:
        written = write_repository(model_dir, out, options)
    except MrdlError as exc:
        raise click.ClickException(str(exc)) from exc
    for name, folder in written.items():
        click.echo(f"{name}: {folder}")
    click.echo(f"Triton model repository written to {out}: tritonserver --model-repository {out}"
               + (f" (only the Python backend: --model-control-mode explicit --load-model {prefix})" if front else ""))
