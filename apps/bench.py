"""``mrdl-bench``: the command-line face of :func:`mrdl_bench.bench.run_benchmark`.

Its options are the fields of :class:`mrdl_bench.options.BenchOptions` (``--ckpt`` and ``--model-dir``
aside). Only click, the options and the backend names are imported at start-up, so
``mrdl-bench --help`` works without torch, onnxruntime, TensorRT or CUDA. Exit codes: 0 measured, every backend reproduces the
checkpoint; 1 a backend marked PARITY FAILED or a model directory exported from another checkpoint (the reports are
written first), or a model directory whose files fail the runtime's integrity checks; 2 usage
error, or the 'bench' extra (torch, onnx, psutil) is not installed (one line names the command that adds it).
"""

from __future__ import annotations

import click

from mrdl_apps.extras import require_extra
from mrdl_runtime.atomic import stop_on_sigterm_as_on_ctrl_c
from mrdl_apps.options import CONTEXT_SETTINGS, build, field_options, version_option
from mrdl_bench.options import DEFAULT_OUT, BenchOptions

EXIT_FAILURE = 1


@click.command(context_settings=CONTEXT_SETTINGS)
@version_option
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="mrdl checkpoint (.safetensors): the PyTorch model and the parity reference.")
@click.option("--model-dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Model directory written by mrdl-export from the same checkpoint (holds model.json).")
@field_options(BenchOptions, defaults=BenchOptions(out=DEFAULT_OUT))
def main(ckpt: str, model_dir: str, **values) -> None:
    """Compare PyTorch eager, torch.compile, ONNX Runtime FP32/INT8/FP16 and TensorRT on the same inputs."""
    stop_on_sigterm_as_on_ctrl_c()
    require_extra("mrdl-bench", "bench")
    from mrdl_runtime import MrdlError

    from mrdl_bench.bench import BenchError, run_benchmark
    from mrdl_bench.inputs import InputError
    from mrdl_bench.report import format_table

    context = click.get_current_context()
    options = build(BenchOptions, values, defaults=BenchOptions(out=DEFAULT_OUT))
    try:
        report = run_benchmark(options, ckpt=ckpt, model_dir=model_dir)
    except (BenchError, InputError) as exc:
        raise click.UsageError(str(exc)) from exc
    except MrdlError as exc:  # e.g. a model directory that fails the runtime's integrity checks: one line, exit 1
        click.echo(f"mrdl-bench: error: {exc}", err=True)
        context.exit(EXIT_FAILURE)
    click.echo(format_table(report))
    click.echo(f"report written to {options.out}: " + ", ".join(sorted(report.files.values())))
    if report.failures:
        for failure in report.failures:
            click.echo(f"mrdl-bench: error: {failure}", err=True)
        context.exit(EXIT_FAILURE)


if __name__ == "__main__":
    main()
