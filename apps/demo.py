"""``mrdl demo``: the whole toolchain in one command, the README's main job.

data (built-in synthetic set, or ``--data`` in LViT's layout) -> text embeddings (random-init CLIP
tower unless ``--clip-weights``; said so) -> train briefly -> evaluate -> export FP32 + INT8 ONNX
through the parity gate -> benchmark -> a report folder with metrics, overlays, the benchmark table
and chart, and a REPORT.md that links them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from mrdl_runtime.atomic import atomic_path
from mrdl_runtime.options import MAX_THREADS


@dataclass
class DemoSettings:
    out_dir: Path
    data_root: Path | None = None
    config: str = "small"
    epochs: int = 6
    train_images: int = 16
    val_images: int = 8
    bench_iters: int = 10
    threads: int = 0  # 0: the runtime's default (mrdl_runtime.threads.default_threads)
    clip_weights: Path | None = None
    seed: int = 0


@dataclass
class DemoResult:
    report: Path
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    summary: dict = field(default_factory=dict)


def _step(title: str) -> None:
    click.secho(f"\n==> {title}", fg="cyan", bold=True)


def run_demo(settings: DemoSettings) -> DemoResult:
    """Run every stage into ``settings.out_dir`` and return where the report is."""
    import torch

    from mrdl.config import load_config
    from mrdl_runtime.threads import resolve_threads
    from mrdl.data.embeddings import compute_embeddings, default_embeddings_path
    from mrdl.data.synthetic import write_synthetic_dataset
    from mrdl.evaluate import evaluate_checkpoint
    from mrdl.train import TrainOptions, train_model
    from mrdl_bench.bench import run_benchmark
    from mrdl_export import export_model

    from .embed import loud_random_tower_warnings

    torch.set_num_threads(resolve_threads(settings.threads))
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(settings.config)
    steps: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[name] = round(now - clock, 1)
        clock = now

    _step("1/6 data")
    if settings.data_root is None:
        data_root = out / "data"
        if not data_root.exists():
            write_synthetic_dataset(data_root, n_train=settings.train_images, n_val=settings.val_images,
                                    size=config.model.image_size, seed=settings.seed)
        click.echo(f"built-in synthetic dataset: {data_root}")
    else:
        data_root = settings.data_root
        click.echo(f"dataset: {data_root}")
    lap("data")

    _step("2/6 text embeddings (frozen CLIP text tower, computed once)")
    embeddings = (out / "text_embeddings.safetensors" if settings.data_root is not None
                  else default_embeddings_path(data_root, config))
    with loud_random_tower_warnings():
        if not embeddings.exists():
            compute_embeddings(data_root, config, out=embeddings, clip_weights=settings.clip_weights,
                               random_init=settings.clip_weights is None, seed=settings.seed)
        click.echo(f"embeddings: {embeddings}")
        lap("embed-text")

        _step(f"3/6 train {config.name} for {settings.epochs} epochs")
        trained = train_model(TrainOptions(data_root=data_root, embeddings=embeddings, out_dir=out / "train",
                                           epochs=settings.epochs, lr_period=settings.epochs, seed=settings.seed,
                                           select="raw",  # a few dozen steps: far shorter than the EMA's horizon
                                           overwrite=True),  # the folder is reused
                              config=config)
    click.echo(f"best val Dice {trained.best_val_dice:.4f} at epoch {trained.best_epoch} -> {trained.best_checkpoint}")
    lap("train")

    _step("4/6 evaluate (threshold 0.5 at the model size, per-image Dice/IoU)")
    evaluation = evaluate_checkpoint(trained.best_checkpoint, data_root, "Val", out / "evaluate")
    click.echo(f"Val Dice {evaluation['dice']:.4f}  IoU {evaluation['iou']:.4f} over {evaluation['images']} images")
    lap("evaluate")

    _step("5/6 export FP32 + INT8 ONNX with the parity gate")
    exported = export_model(trained.best_checkpoint, out / "deploy", data=data_root, int8=True, force=True)
    for precision, parity in exported.parity.items():
        click.echo(f"parity {precision}: max|d| {parity.max_abs_diff:.2e}, "
                   f"mask Dice agreement {parity.dice_agreement:.4f}")
    lap("export")

    _step("6/6 benchmark PyTorch vs ONNX Runtime (same inputs, one run)")
    bench = run_benchmark(ckpt=trained.best_checkpoint, model_dir=exported.out_dir,
                          backends=["torch-fft", "torch-matmul", "ort-fp32", "ort-int8"], batches=[1], data=data_root,
                          images=4, warmup=2, iters=settings.bench_iters, threads=settings.threads, out=out / "bench")
    lap("bench")

    summary = {
        "config": config.name, "data": str(data_root), "synthetic": settings.data_root is None,
        "text_embeddings": str(embeddings), "epochs": trained.epochs_completed,
        "best_val_dice_during_training": trained.best_val_dice,
        "evaluation": {k: evaluation[k] for k in ("dice", "iou", "images", "image_size", "threshold")},
        "export": {"dir": str(exported.out_dir), "sizes": exported.sizes,
                   "parity": {k: v.to_dict() for k, v in exported.parity.items()},
                   "flops_saved_by_folding": exported.folding.get("flops_saved")},
        "bench": bench.files, "seconds": steps,
    }
    bench_table = Path(bench.files["markdown"]).read_text().split("\n", 1)[1]  # without its own title
    report = _write_report(out, summary, bench_markdown=bench_table)
    return DemoResult(report=report, steps=steps, summary=summary)


def _write_report(out: Path, summary: dict, *, bench_markdown: str) -> Path:
    """REPORT.md linking every artefact, plus summary.json."""
    ev, ex = summary["evaluation"], summary["export"]
    parity_rows = "\n".join(f"| {precision} | {p['max_abs_diff']:.2e} | {p['mean_abs_diff']:.2e} "
                            f"| {p['dice_agreement']:.4f} |" for precision, p in ex["parity"].items())
    size_rows = "\n".join(f"| {name} | {size / 1e6:.2f} MB |" for name, size in ex["sizes"].items())
    data_note = ("the built-in synthetic dataset; text embeddings from a RANDOMLY INITIALISED CLIP tower "
                 "(no language meaning)" if summary["synthetic"] else summary["data"])
    text = f"""# mrdl demo report

Config `{summary['config']}`, data: {data_note}.

## Training ({summary['epochs']} epochs)

![training curves](train/curves.png)

Metrics per epoch: [train/metrics.csv](train/metrics.csv). Best checkpoint: `train/best.safetensors`.

## Evaluation on Val (threshold 0.5 at {ev['image_size']}x{ev['image_size']}, averaged over {ev['images']} images)

| Dice | IoU |
| --- | --- |
| {ev['dice']:.4f} | {ev['iou']:.4f} |

![overlays](evaluate/overlays.png)

Per image: [evaluate/per_image.csv](evaluate/per_image.csv).

## Export (`deploy/`, parity against PyTorch)

| precision | max abs diff | mean abs diff | mask Dice agreement |
| --- | --- | --- | --- |
{parity_rows}

| file | size |
| --- | --- |
{size_rows}

## Benchmark

![benchmark](bench/bench.png)

{bench_markdown}

## Time per step (seconds)

{json.dumps(summary['seconds'])}
"""
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str))
    with atomic_path(out / "REPORT.md") as tmp:
        tmp.write_text(text)
    return out / "REPORT.md"


@click.command("demo")
@click.option("--data", "data_root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A dataset in LViT's layout [default: the built-in synthetic dataset].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/demo"),
              show_default=True, help="Report folder (reused: existing data and embeddings are kept).")
@click.option("--config", "config_name", default="small", show_default=True, help="Config to train.")
@click.option("--epochs", type=int, default=6, show_default=True, help="Training epochs (a brief run).")
@click.option("--threads", default=0, type=click.IntRange(min=0, max=MAX_THREADS),
              help="CPU threads of torch and every runtime backend; 0: the runtime's default, one per physical core "
                   "available to the process (mrdl_runtime.threads.default_threads).")
@click.option("--clip-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Local open_clip checkpoint for the text tower [default: random init, with a warning].")
@click.option("--seed", type=int, default=0,
              help="Seed of the synthetic data, the training run and the random text tower.")
def demo(data_root: Path | None, out_dir: Path, config_name: str, epochs: int, threads: int,
         clip_weights: Path | None, seed: int) -> None:
    """Run data -> embed-text -> train -> evaluate -> export (FP32 + INT8) -> benchmark, and write a report."""
    tic = time.perf_counter()
    result = run_demo(DemoSettings(out_dir=out_dir, data_root=data_root, config=config_name, epochs=epochs,
                                   threads=threads, clip_weights=clip_weights, seed=seed))
    click.secho(f"\ndemo finished in {time.perf_counter() - tic:.0f} s; report: {result.report.resolve()}",
                fg="green", bold=True)
