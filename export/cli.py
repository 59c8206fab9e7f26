"""``mrdl-export`` / ``mrdl export``: a thin click layer over :func:`mrdl_export.export_model`.

Exit codes: 0 exported and verified; 1 bad input or a failed step (parity gate, TensorRT
check, an ``--out`` it must not replace); 2 usage error (click); 3 TensorRT or a CUDA GPU is
missing for ``--trt``; 130 interrupted (SIGINT), with nothing half-written under ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import click

from .quantize import CALIBRATION_METHODS, DEFAULT_CALIBRATION, KEEP_FP32, MODEL_SCOPES

EXIT_FAILURE = 1
EXIT_TENSORRT_MISSING = 3
EXIT_INTERRUPTED = 130

_PATH = click.Path(path_type=Path)
OPTIONS = [
    click.option("--ckpt", required=True, type=_PATH, help="mrdl checkpoint (.safetensors) to export."),
    click.option("--out", required=True, type=_PATH, help="Deploy directory to create (model.json, model*.onnx, ...)."),
    click.option("--config", "expected_config", default=None,
                 help="Refuse a checkpoint whose architecture differs from this config (tiny, small, base)."),
    click.option("--data", type=_PATH, default=None,
                 help="Parity images: an LViT dataset root or a folder of images (default: synthetic set)."),
    click.option("--parity-images", type=click.IntRange(min=1), default=8, show_default=True,
                 help="How many images the parity gate compares."),
    click.option("--atol", type=click.FloatRange(min=0), default=None,
                 help="Parity gate: max |delta probability| allowed (default 1e-3)."),
    click.option("--min-dice", type=click.FloatRange(0, 1), default=None,
                 help="Parity gate: minimum mean mask Dice agreement (default 0.99)."),
    click.option("--int8", is_flag=True, help="Also write model.int8.onnx (QDQ, static calibration)."),
    click.option("--calib-data", type=_PATH, default=None,
                 help="INT8 calibration images (dataset root or folder; default: --data, else synthetic)."),
    click.option("--calib-images", type=click.IntRange(min=1), default=32, show_default=True,
                 help="How many calibration images."),
    click.option("--calib-method", type=click.Choice(list(CALIBRATION_METHODS)), default=DEFAULT_CALIBRATION,
                 show_default=True, help="INT8 calibration: activation ranges from min/max, entropy or percentile."),
    click.option("--int8-keep-fp32", "int8_keep_fp32", type=click.Choice([*MODEL_SCOPES, "none"]), multiple=True,
                 default=KEEP_FP32, show_default=True,
                 help="Model parts left in FP32 in the INT8 model (repeatable; 'none' quantizes all but the phase)."),
    click.option("--int8-min-dice", type=click.FloatRange(0, 1), default=None,
                 help="Fail when INT8 mask Dice agreement is below this (default: report only)."),
    click.option("--fp16", is_flag=True, help="Also write model.fp16.onnx (FP32 IO, norms in FP32)."),
    click.option("--trt-check", is_flag=True, help="Fail when the TensorRT 10 report flags an unsupported op."),
    click.option("--trt", is_flag=True, help="Build model.engine with TensorRT (needs TensorRT and a GPU)."),
    click.option("--trt-precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
                 help="Engine precision (default: int8 with --int8, else fp16 with --fp16, else fp32)."),
    click.option("--min-batch", type=int, default=1, show_default=True, help="TensorRT profile: smallest batch."),
    click.option("--opt-batch", type=int, default=None, help="TensorRT profile: batch to tune for (default: midpoint)."),
    click.option("--max-batch", type=int, default=16, show_default=True,
                 help="Largest batch (TensorRT profile and manifest max_batch)."),
    click.option("--workspace", "workspace_mb", type=int, default=2048, show_default=True,
                 help="TensorRT workspace limit in MiB."),
    click.option("--timing-cache", type=_PATH, default=None, help="TensorRT timing cache file (read, then updated)."),
    click.option("--opset", type=click.IntRange(13, 20), default=20, show_default=True, help="ONNX opset (<= 20)."),
    click.option("--force", is_flag=True,
                 help="Replace an existing deploy directory written by mrdl-export (never a folder with other files)."),
    click.option("--print", "print_summary", is_flag=True, help="Print a summary table at the end."),
]


def with_export_options(function):
    for option in reversed(OPTIONS):
        function = option(function)
    return function


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def format_summary(result) -> str:
    """A plain-text table of artefacts, parity, TensorRT compatibility, folding and timings."""
    from .trt_report import TABLES

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
    lines.append(f"FLOPs per image: full {folding['flops_full'] / 1e9:.3f} G, deploy {folding['flops_deploy'] / 1e9:.3f} G "
                 f"(saved {folding['flops_saved'] / 1e6:.1f} M, {100 * saved:.2f}%)")
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    return "\n".join(lines)


def run_export(*, ckpt: Path, out: Path, print_summary: bool, atol: float | None, min_dice: float | None,
               int8_keep_fp32: tuple[str, ...] = KEEP_FP32, **options) -> None:
    """Run the export and turn its errors into exit codes 1, 3 and 130."""
    from mrdl.checkpoint import CheckpointError

    from .api import ExportError, export_model
    from .onnx_export import ExportSafetyError
    from .parity import DEFAULT_ATOL, DEFAULT_MIN_DICE, ParityError
    from .tensorrt_build import TensorRTUnavailable

    context = click.get_current_context()
    if "none" in int8_keep_fp32 and len(int8_keep_fp32) > 1:
        raise click.BadParameter("'none' cannot be combined with other scopes", param_hint="--int8-keep-fp32")
    options["int8_keep_fp32"] = tuple(scope for scope in int8_keep_fp32 if scope != "none")
    try:
        result = export_model(ckpt, out, atol=DEFAULT_ATOL if atol is None else atol,
                              min_dice=DEFAULT_MIN_DICE if min_dice is None else min_dice, progress=True, **options)
    except TensorRTUnavailable as exc:
        click.echo(f"mrdl-export: {exc}", err=True)
        context.exit(EXIT_TENSORRT_MISSING)
    except (ExportError, ParityError, ExportSafetyError, CheckpointError, FileNotFoundError, ValueError) as exc:
        click.echo(f"mrdl-export: error: {exc}", err=True)
        context.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        click.echo(f"mrdl-export: interrupted; nothing half-written is left under {out}. Run the command again "
                   "to export", err=True)
        context.exit(EXIT_INTERRUPTED)
    files = ", ".join(entry["file"] for entry in result.manifest["artifacts"].values())
    fp32 = result.parity["fp32"]
    click.echo(f"exported {ckpt} -> {result.out_dir} ({files}); "
               f"FP32 parity max|d| {fp32.max_abs_diff:.2e}, Dice {fp32.dice_agreement:.4f}")
    if print_summary:
        click.echo(format_summary(result))


@click.command("export")
@with_export_options
def export_command(**options) -> None:
    """Export a checkpoint to a verified deploy directory (ONNX FP32 [+INT8, FP16], TensorRT engine)."""
    run_export(**options)


@click.command("mrdl-export", context_settings={"help_option_names": ["-h", "--help"]})
@with_export_options
def main(**options) -> None:
    """Export a checkpoint to a verified deploy directory (ONNX FP32 [+INT8, FP16], TensorRT engine)."""
    run_export(**options)
