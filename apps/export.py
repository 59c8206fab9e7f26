"""``mrdl-export`` / ``mrdl export``: a thin click layer over :class:`mrdl_export.Exporter`.

Its options are built from :class:`mrdl_export.ExportOptions`' fields (flag, help, choices, range
and default, all written there once), plus ``--ckpt``, ``--out`` and ``--print``. An INT8-only
option given without ``--int8`` is refused, even at its default value. The export's warnings
(:attr:`mrdl_export.ExportResult.warnings`) go to stderr and into the ``--print`` summary.

Exit codes: 0 exported and verified; 1 bad input or a failed step (parity gate, TensorRT
check, an ``--out`` it must not replace); 2 usage error (click); 3 TensorRT or a CUDA GPU is
missing for ``--trt``; 130 interrupted (SIGINT), with nothing half-written under ``--out``.
Without torch and onnx (a runtime-only install) it prints one line naming the 'export' extra
and exits 2.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from mrdl_apps.extras import require_extra
from mrdl_apps.options import CONTEXT_SETTINGS, field_options, version_option
from mrdl_export.options import INT8_ONLY, ExportOptions, check_int8_only
from mrdl_runtime.atomic import stop_on_sigterm_as_on_ctrl_c

EXIT_FAILURE = 1
EXIT_TENSORRT_MISSING = 3
EXIT_INTERRUPTED = 130
_PATH = click.Path(path_type=Path)
_GIVEN = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)  # set by the user


def export_options(function):
    """Add ``--ckpt``, ``--out``, one option per command-line field of :class:`ExportOptions`, and ``--print``."""
    function = click.option("--print", "print_summary", is_flag=True, help="Print a summary table at the end.")(function)
    function = field_options(ExportOptions)(function)
    function = click.option("--out", required=True, type=_PATH,
                            help="Deploy directory to create (model.json, model*.onnx, ...).")(function)
    return click.option("--ckpt", required=True, type=_PATH, help="mrdl checkpoint (.safetensors) to export.")(function)


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def format_summary(result) -> str:
    """A plain-text table of artefacts, parity, TensorRT compatibility, folding and timings."""
    from mrdl_export.trt_report import TABLES

    rows = [("artefact", "size")] + [(name, _size(size)) for name, size in result.sizes.items()]
    lines = [f"{a:<28}{b}" for a, b in rows]
    lines.append("")
    lines.append(f"{'parity vs PyTorch':<20}{'max|d|':>11}{'mean|d|':>11}{'Dice':>9}{'min Dice':>10}  images")
    for key, p in result.parity.items():
        lines.append(f"{key:<20}{p.max_abs_diff:>11.2e}{p.mean_abs_diff:>11.2e}{p.dice_agreement:>9.4f}"
                     f"{p.min_dice_agreement:>10.4f}  {p.images} ({p.source})")
    drift = result.training_phase_parity
    if drift is not None:
        lines.append(f"{'fp32 vs fft phase':<20}{drift.max_abs_diff:>11.2e}{drift.mean_abs_diff:>11.2e}"
                     f"{drift.dice_agreement:>9.4f}{drift.min_dice_agreement:>10.4f}  (training reference)")
    lines.append("")
    report = result.trt_report
    for line in TABLES:
        bad = report.unsupported(line)
        lines.append(f"TensorRT {line}: {'compatible' if not bad else 'UNSUPPORTED ' + ', '.join(bad)}")
    flagged = [f"{o.op} ({'; '.join(o.notes) or ', '.join(f'{k}: {v}' for k, v in o.status.items())})"
               for o in report.flagged()]
    lines.append(f"flagged ops: {', '.join(flagged) if flagged else 'none'}")
    lines.append(f"ops ({sum(result.ops.values())} nodes): " + ", ".join(f"{k} {v}" for k, v in result.ops.items()))
    folding = result.folding
    if folding["folded"]:
        saved = folding["flops_saved"] / max(folding["flops_full"], 1)
        lines.append(f"folded: {'; '.join(folding['folded'])}")
        lines.append(f"dropped: {', '.join(folding['dropped'])}")
    else:
        saved = 0.0
    for key, label in (("replaced", "replaced"), ("int8_replaced", "replaced in the INT8 model")):
        if folding.get(key):  # "name: what" -> what: how many
            kinds = Counter(line.split(": ", 1)[-1] for line in folding[key])
            lines.append(f"{label}: " + "; ".join(f"{what} (x{count})" for what, count in kinds.items()))
    rewrites = (result.int8 or {}).get("rewrites")
    if rewrites:
        lines.append("INT8 rewrites: " + ", ".join(f"{name.replace('_', ' ')} {count}"
                                                   for name, count in rewrites.items()))
    lines.append(f"FLOPs per image: full {folding['flops_full'] / 1e9:.3f} G, "
                 f"deploy {folding['flops_deploy'] / 1e9:.3f} G "
                 f"(saved {folding['flops_saved'] / 1e6:.1f} M, {100 * saved:.2f}%)")
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    lines.extend(f"warning: {warning}" for warning in result.warnings)
    return "\n".join(lines)


def run_export(*, ckpt: Path, out: Path, print_summary: bool, **options) -> None:
    """Run the export and turn its errors into exit codes 1, 3 and 130 (2 without the 'export' extra)."""
    context = click.get_current_context()
    require_extra(context.command_path, "export")
    from mrdl_export import Exporter
    from mrdl_export.tensorrt_build import TensorRTUnavailable
    from mrdl_runtime import MrdlError

    from mrdl_apps.errors import os_error_line

    given = [name for name in INT8_ONLY if context.get_parameter_source(name) in _GIVEN]
    try:
        export_options = ExportOptions(progress=True, **options)
        check_int8_only(export_options, given=given)
        result = Exporter(export_options).run(ckpt, out)
    except TensorRTUnavailable as exc:
        click.echo(f"mrdl-export: {exc}", err=True)
        context.exit(EXIT_TENSORRT_MISSING)
    except (MrdlError, FileNotFoundError, ValueError) as exc:  # builtins: argument checks of the libraries below
        click.echo(f"mrdl-export: error: {exc}", err=True)
        context.exit(EXIT_FAILURE)
    except OSError as exc:  # a full disk, read-only folder, name too long...: one line (mrdl_apps.errors)
        click.echo(f"mrdl-export: error: {os_error_line(exc)}", err=True)
        context.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        click.echo(f"mrdl-export: interrupted; nothing half-written is left under {out}. Run the command again "
                   "to export", err=True)
        context.exit(EXIT_INTERRUPTED)
    files = ", ".join(entry["file"] for entry in result.manifest["artifacts"].values())
    fp32 = result.parity["fp32"]
    click.echo(f"exported {ckpt} -> {result.out_dir} ({files}); "
               f"FP32 parity max|d| {fp32.max_abs_diff:.2e}, Dice {fp32.dice_agreement:.4f}")
    for warning in result.warnings:
        click.echo(f"mrdl-export: warning: {warning}", err=True)
    if options.get("triton") is not None:
        click.echo(f"Triton model repository: {options['triton']} (tritonserver --model-repository {options['triton']})")
    if print_summary:
        click.echo(format_summary(result))


@click.command("export")
@export_options
def export_command(**options) -> None:
    """Export a checkpoint to a verified deploy directory (ONNX FP32 [+INT8, FP16], TensorRT engine)."""
    run_export(**options)


@click.command("mrdl-export", context_settings=CONTEXT_SETTINGS)
@export_options
@version_option
def main(**options) -> None:
    """Export a checkpoint to a verified deploy directory (ONNX FP32 [+INT8, FP16], TensorRT engine)."""
    stop_on_sigterm_as_on_ctrl_c()
    run_export(**options)
