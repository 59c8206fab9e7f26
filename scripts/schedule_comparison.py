"""Which training schedule earns its time? Held-out Dice per schedule over seeds (issue 24), at a chosen scale.

The data is split so that no selection criterion sees the held-out images: of MoNuSeg's 24 Train images,
every fourth (sorted by name, 6 images) becomes a held-out Test split; the other 18 train; Val (6
images) stays the selection set that picks best.safetensors and drives early stopping. Each run is an
ordinary :func:`mrdl.train.train_model` run; its best checkpoint is then scored on the held-out split
(:func:`mrdl.evaluate.evaluate_checkpoint`, threshold 0.5 at the model size, mean per-image Dice).
Text features come from a randomly initialised text tower (no CLIP weights offline). The model is
``--config``'s architecture (optionally at another ``--image-size``) trained with the ``small`` config's
training settings (batch 4, AdamW lr 1e-3 by the MoNuSeg recipe, min lr 1e-5) and the schedule's overrides.

Schedules (``SCHEDULES``; epochs scaled by ``--scale`` from the full-size defaults of issue 24):

* ``cosine-run``: cosine over the whole run, raw-weights selection, no early stop (the previous default);
* ``cosine-hold-ema``: cosine over a period, then the minimum learning rate, EMA selection, patience
  with any gain restarting it (the default before min_delta);
* ``cosine-hold-ema-min-delta``: the same with ``min_delta`` 0.001 (a gain must exceed 0.1 Dice point).

    python scripts/schedule_comparison.py --data DATA --out RUNS [--config tiny] [--image-size 128] [--seeds 0 1 2]
        [--scale 0.1] [--cap-periods 10]

writes RUNS/results.json (one record per run) and prints a markdown table (mean and spread over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path

FULL = {"period": 100, "patience": 50}  # the full-size default schedule of configs/small.json (cap 1000: 10 periods)


def schedules(scale: float, cap_periods: float) -> dict[str, dict]:
    """Each schedule's TrainOptions overrides at ``scale`` times the full-size epochs, the cap ``cap_periods``
    learning-rate periods (the full default's is 10)."""
    period, patience = (max(1, round(FULL[k] * scale)) for k in ("period", "patience"))
    cap = max(period, round(cap_periods * period))
    return {
        "cosine-run": dict(epochs=period, lr_period=period, ema_decay=0.0, select="raw", patience=cap),
        "cosine-hold-ema": dict(epochs=cap, lr_period=period, ema_decay=0.99, select="ema", patience=patience,
                                min_delta=0.0),
        "cosine-hold-ema-min-delta": dict(epochs=cap, lr_period=period, ema_decay=0.99, select="ema",
                                          patience=patience, min_delta=0.001),
    }


def split_dataset(source: Path, out: Path) -> Path:
    """OUT with Train (18 of source Train), Val (source Val) and Test (the other 6 Train images) in LViT's layout."""
    from mrdl.data.dataset import list_samples

    train = list_samples(source, "Train")
    held_out = {sample.name for index, sample in enumerate(sorted(train, key=lambda s: s.name)) if index % 4 == 3}
    for split, samples in (("Train", [s for s in train if s.name not in held_out]),
                           ("Test", [s for s in train if s.name in held_out]),
                           ("Val", list_samples(source, "Val", require_text=False))):
        folder = out / f"{split}_Folder"
        for sub in ("img", "labelcol"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        rows = ["Image,Description"]
        for sample in samples:
            shutil.copyfile(sample.image_path, folder / "img" / sample.image_path.name)
            shutil.copyfile(sample.mask_path, folder / "labelcol" / sample.mask_path.name)
            text = (sample.description or "").replace('"', '""')
            rows.append(f'{sample.name},"{text}"')
        (folder / f"{split}_text.csv").write_text("\n".join(rows) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="MoNuSeg in LViT's layout (Train_Folder, Val_Folder)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the split data, the runs and results.json")
    parser.add_argument("--config", default="tiny", help="config name [default: tiny]")
    parser.add_argument("--image-size", type=int, default=None, help="the model's input side [default: the config's]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of the full-size epochs [default: 0.1]")
    parser.add_argument("--cap-periods", type=float, default=10.0,
                        help="epoch cap of the early-stopped schedules, in lr periods [default: 10, as the full default]")
    parser.add_argument("--only", nargs="*", default=None, help="run only these schedules")
    args = parser.parse_args()

    import torch

    from mrdl.config import load_config
    from mrdl.data.embeddings import compute_embeddings
    from mrdl.evaluate import evaluate_checkpoint
    from mrdl.recipes import apply_recipe, get_recipe
    from mrdl.train import TrainOptions, train_model

    torch.set_num_threads(1)
    recipe = get_recipe("monuseg")
    config = dataclasses.replace(load_config(args.config), train=load_config("small").train)  # small's schedule
    if args.image_size is not None:
        config = config.replace_model(image_size=args.image_size)
    data = args.out / "data"
    if not data.exists():
        split_dataset(args.data, data)
    embeddings = args.out / "text.safetensors"
    if not embeddings.exists():
        compute_embeddings(data, apply_recipe(config, recipe), out=embeddings, random_init=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["schedule"], r["seed"]) for r in results}
    for name, overrides in schedules(args.scale, args.cap_periods).items():
        if args.only and name not in args.only:
            continue
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            run = args.out / "runs" / f"{name}-seed{seed}"
            options = TrainOptions(recipe="monuseg", batch_size=4, data_root=data, embeddings=embeddings,
                                   out_dir=run, seed=seed, overwrite=True, **overrides)
            tic = time.perf_counter()
            trained = train_model(options, config=config, progress=False)
            seconds = time.perf_counter() - tic
            held_out = evaluate_checkpoint(trained.best_checkpoint, data, "Test", run / "held_out")
            results.append({"schedule": name, "seed": seed, "epochs": trained.epochs_completed,
                            "best_epoch": trained.best_epoch, "stopped_early": trained.stopped_early,
                            "seconds": seconds, "seconds_to_best": trained.seconds_to_best,
                            "val_dice": trained.best_val_dice, "held_out_dice": held_out["dice"],
                            "held_out_iou": held_out["iou"], "config": args.config,
                            "image_size": config.model.image_size, "scale": args.scale,
                            "cap": overrides["epochs"]})
            results_path.write_text(json.dumps(results, indent=1))
            print(json.dumps(results[-1]), flush=True)
    print(table(results))


def table(results: list[dict]) -> str:
    """Markdown: per schedule, epochs and seconds (mean), held-out Dice mean and spread (sample std, min-max)."""
    lines = ["| schedule | seeds | epochs (mean; each) | time s (mean) | best epoch (each) | held-out Dice % mean ± std "
             "(min-max) | Val Dice % (mean) |", "|---|---|---|---|---|---|---|"]
    order = list(schedules(1.0, 1.0))
    for name in sorted(dict.fromkeys(r["schedule"] for r in results), key=order.index):
        rows = [r for r in results if r["schedule"] == name]
        dice = [100 * r["held_out_dice"] for r in rows]
        spread = statistics.stdev(dice) if len(dice) > 1 else 0.0
        lines.append(f"| {name} | {len(rows)} | {statistics.mean(r['epochs'] for r in rows):.0f}; "
                     f"{', '.join(str(r['epochs']) for r in rows)} | {statistics.mean(r['seconds'] for r in rows):.0f} | "
                     f"{', '.join(str(r['best_epoch']) for r in rows)} | {statistics.mean(dice):.2f} ± {spread:.2f} "
                     f"({min(dice):.2f}-{max(dice):.2f}) | {100 * statistics.mean(r['val_dice'] for r in rows):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
