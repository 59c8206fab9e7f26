"""``mrdl-bench``: the command-line face of :func:`mrdl_bench.bench.run_benchmark`.

Only click, the report's constants and the backend names are imported at start-up, so
``mrdl-bench --help`` works without torch, onnxruntime, TensorRT or CUDA. Exit codes: 0 measured, every backend reproduces the
checkpoint; 1 a backend marked PARITY FAILED or a model directory exported from another checkpoint (the reports are
written first), or a model directory whose files fail the runtime's integrity checks; 2 usage
error, or the 'bench' extra (torch, onnx, psutil) is not installed (one line names the command that adds it).
"""

from __future__ import annotations

import click

from mrdl_apps.extras import require_extra
from mrdl_apps.options import CONTEXT_SETTINGS, version_option
from mrdl_bench.report import DEFAULT_INT8_MIN_DICE, DEFAULT_MIN_DICE
from mrdl_bench.runners import BENCH_BACKENDS

EXIT_FAILURE = 1


@click.command(context_settings=CONTEXT_SETTINGS)
@version_option
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="mrdl checkpoint (.safetensors): the PyTorch model and the parity reference.")
@click.option("--model-dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Model directory written by mrdl-export from the same checkpoint (holds model.json).")
@click.option("--backends", default=",".join(BENCH_BACKENDS), show_default=True,
              help="Comma-separated backends; those that cannot run here are skipped with the reason. Add 'triton' "
                   "to serve the model with mrdl serve and drive it with --concurrency clients.")
@click.option("--batch", "batches", default="1", show_default=True, help="Comma-separated batch sizes, e.g. 1,4,8.")
@click.option("--data", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Real images: an LViT-layout root (its first split of Val, Test, Train) or a folder of images, "
                   "as mrdl-export reads --data. Default: synthetic.")
@click.option("--images", default=8, show_default=True, type=click.IntRange(min=1),
              help="Input pool size (batches cycle over it; parity is computed on all of it).")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0), help="Untimed warm-up iterations.")
@click.option("--iters", default=20, show_default=True, type=click.IntRange(min=1), help="Timed iterations.")
@click.option("--phase-iters", default=None, type=click.IntRange(min=1),
              help="Timed passes for the export-safe phase's share of latency. Default: --iters.")
@click.option("--threads", default=0, type=click.IntRange(min=0),
              help="CPU threads of every backend (torch, ONNX Runtime, OpenVINO intra-op threads, the same for all); "
                   "0: the runtime's default, one per physical core available to the process "
                   "(mrdl_runtime.threads.default_threads).")
@click.option("--include-prepost/--exclude-prepost", default=False, show_default=True,
              help="Time preprocessing (resize, /255) and postprocessing (resize back, threshold) too.")
@click.option("--device", default="cpu", show_default=True, help="torch device for the PyTorch backends (cpu, cuda).")
@click.option("--profile-dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Write onnxruntime profiles (JSON traces) of the ORT backends here.")
@click.option("--min-dice", default=DEFAULT_MIN_DICE, show_default=True, type=click.FloatRange(0, 1),
              help="Parity threshold for FP32/FP16 backends: mask Dice agreement with torch-fft below it "
                   "marks the backend PARITY FAILED (exit 1).")
@click.option("--int8-min-dice", default=DEFAULT_INT8_MIN_DICE, show_default=True, type=click.FloatRange(0, 1),
              help="Parity threshold for INT8 backends (ort-int8, an INT8 TensorRT engine).")
@click.option("--concurrency", default="1,4,16", show_default=True,
              help="With the triton backend: numbers of concurrent clients driving the model behind mrdl serve "
                   "(throughput, p50/p99, dynamic-batch sizes, mask agreement with the in-process runtime).")
@click.option("--serving-protocol", default="grpc", show_default=True, type=click.Choice(["grpc", "http"]),
              help="With the triton backend: the protocol the clients use.")
@click.option("--serving-instances", default=1, show_default=True, type=click.IntRange(1, 64),
              help="With the triton backend: model instances in the server (mrdl serve --instances), sharing "
                   "--threads between them.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default="bench-report", show_default=True,
              help="Folder for bench.json, bench.md and bench.png.")
def main(ckpt: str, model_dir: str, backends: str, batches: str, data: str | None, images: int, warmup: int,
         iters: int, phase_iters: int | None, threads: int, include_prepost: bool, device: str,
         profile_dir: str | None, min_dice: float, int8_min_dice: float, concurrency: str, serving_protocol: str,
         serving_instances: int, out: str) -> None:
    """Compare PyTorch eager, torch.compile, ONNX Runtime FP32/INT8/FP16 and TensorRT on the same inputs."""
    require_extra("mrdl-bench", "bench")
    from mrdl_runtime import MrdlError

    from mrdl_bench.bench import BenchError, parse_backends, parse_batches, run_benchmark
    from mrdl_bench.inputs import InputError
    from mrdl_bench.report import format_table

    context = click.get_current_context()
    try:
        report = run_benchmark(ckpt=ckpt, model_dir=model_dir, backends=parse_backends(backends),
                               batches=parse_batches(batches), data=data, images=images, warmup=warmup, iters=iters,
                               phase_iters=phase_iters, threads=threads, include_prepost=include_prepost,
                               device=device, out=out, profile_dir=profile_dir, min_dice=min_dice,
                               int8_min_dice=int8_min_dice, concurrency=concurrency,
                               serving_protocol=serving_protocol, serving_instances=serving_instances)
    except (BenchError, InputError) as exc:
        raise click.UsageError(str(exc)) from exc
    except MrdlError as exc:  # e.g. a model directory that fails the runtime's integrity checks: one line, exit 1
        click.echo(f"mrdl-bench: error: {exc}", err=True)
        context.exit(EXIT_FAILURE)
    click.echo(format_table(report))
    click.echo(f"report written to {out}: " + ", ".join(sorted(report.files.values())))
    if report.failures:
        for failure in report.failures:
            click.echo(f"mrdl-bench: error: {failure}", err=True)
        context.exit(EXIT_FAILURE)


if __name__ == "__main__":
    main()
