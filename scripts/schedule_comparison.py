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

* ``cosine-run``: cosine over the whole run, raw-weights selection, no early stop (the default before issue 15);
* ``cosine-run-ema``: cosine over the whole run, EMA-weights selection, no hold, no early stop;
* ``cosine-hold-ema``: cosine over a period, then the minimum learning rate, EMA selection, patience
  with any gain restarting it (the default before min_delta);
* ``cosine-hold-ema-min-delta``: the same with ``min_delta`` 0.001 (a gain must exceed 0.1 Dice point).

Runs that share a trajectory are trained once per seed. Training is deterministic per seed, and the EMA
only watches the raw weights (it changes neither them nor the random state), so:

* ``cosine-hold-ema``'s first period *is* ``cosine-run-ema``'s run when the latter has the same patience
  (the hold schedule's). If that run ends at its cap, the hold run is its folder copied and resumed with
  the cap raised (``resume=True``, exact); if it stops early within the period, it *is* the hold run, and
  ``cosine-run-ema`` is trained again without early stopping;
* ``cosine-run``'s raw weights are the same as ``cosine-run-ema``'s: when the raw weights' best Val Dice
  is at the last epoch, ``cosine-run``'s best checkpoint is that run's ``last.safetensors`` (the raw
  weights) and is scored from it; otherwise ``cosine-run`` is trained on its own. Its derived time is
  the shared run's, which also validated the EMA weights each epoch (an upper bound: ``derived`` true).

The EMA decay keeps its horizon, 1 / (1 - decay) steps, in proportion to the period: the full-size
0.999 (1000 steps, two 100-epoch periods at 5 steps per epoch) becomes ``1 - 0.001 / scale``
(0.99 at scale 0.1, 0.995 at 0.2).

    python scripts/schedule_comparison.py --data DATA --out RUNS [--config tiny] [--image-size 128] [--seeds 0 1 2]
        [--scale 0.1] [--cap-periods 10] [--only SCHEDULE ...] [--jobs 2]
    python scripts/schedule_comparison.py --table RUNS/results.json [MORE.json ...]

writes RUNS/results.json (one record per run; finished runs are skipped when run again) and prints a
markdown table (mean and spread over seeds); ``--table`` prints the table of one or more results files.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import shutil
import statistics
import time
from pathlib import Path

FULL = {"period": 100, "patience": 50, "ema_decay": 0.999}  # the full-size hold schedule (configs/small.json before
# issue 24's comparison at scale 0.2; cap 1000: 10 periods)


def ema_decay(scale: float) -> float:
    """The full-size EMA decay with its horizon (1 / (1 - decay) steps) scaled like the period."""
    return 1.0 - (1.0 - FULL["ema_decay"]) / scale


def schedules(scale: float, cap_periods: float) -> dict[str, dict]:
    """Each schedule's TrainOptions overrides at ``scale`` times the full-size epochs, the cap ``cap_periods``
    learning-rate periods (the full default's is 10)."""
    period, patience = (max(1, round(FULL[k] * scale)) for k in ("period", "patience"))
    cap = max(period, round(cap_periods * period))
    decay = round(ema_decay(scale), 6)
    return {
        "cosine-run": dict(epochs=period, lr_period=period, ema_decay=0.0, select="raw", patience=cap),
        "cosine-run-ema": dict(epochs=period, lr_period=period, ema_decay=decay, select="ema", patience=cap),
        "cosine-hold-ema": dict(epochs=cap, lr_period=period, ema_decay=decay, select="ema", patience=patience,
                                min_delta=0.0),
        "cosine-hold-ema-min-delta": dict(epochs=cap, lr_period=period, ema_decay=decay, select="ema",
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
    parser.add_argument("--data", type=Path, help="MoNuSeg in LViT's layout (Train_Folder, Val_Folder)")
    parser.add_argument("--out", type=Path, help="folder for the split data, the runs and results.json")
    parser.add_argument("--config", default="tiny", help="config name [default: tiny]")
    parser.add_argument("--image-size", type=int, default=None, help="the model's input side [default: the config's]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of the full-size epochs [default: 0.1]")
    parser.add_argument("--cap-periods", type=float, default=10.0,
                        help="epoch cap of the early-stopped schedules, in lr periods [default: 10, as the full default]")
    parser.add_argument("--only", nargs="*", default=None, help="run only these schedules (in this order)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one torch thread each [default: 1]")
    parser.add_argument("--table", type=Path, nargs="+", default=None,
                        help="only print the table of these results files (merged)")
    args = parser.parse_args()
    if args.table:
        print(table([record for path in args.table for record in json.loads(path.read_text())]))
        return
    if args.data is None or args.out is None:
        parser.error("--data and --out are needed (or --table RESULTS.json)")
    if not 0.001 < args.scale or args.jobs < 1:
        parser.error(f"--scale must be > 0.001 (the EMA decay 1 - 0.001/scale must stay > 0) and --jobs >= 1; "
                     f"got {args.scale}, {args.jobs}")
    every = schedules(args.scale, args.cap_periods)
    unknown = sorted(set(args.only or ()) - set(every))
    if unknown:
        parser.error(f"unknown schedule(s) {unknown}; expected some of {sorted(every)}")

    from mrdl.data.embeddings import compute_embeddings
    from mrdl.recipes import apply_recipe, get_recipe

    data = args.out / "data"
    if not data.exists():
        split_dataset(args.data, data)
    embeddings = args.out / "text.safetensors"
    if not embeddings.exists():
        compute_embeddings(data, apply_recipe(run_config(args), get_recipe("monuseg")), out=embeddings,
                           random_init=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["schedule"], r["seed"]) for r in results}
    names = args.only or list(every)
    shared = "cosine-run-ema" in names and "cosine-hold-ema" in names
    if shared:  # cosine-run-ema is then the hold schedule's first period (its patience)
        every["cosine-run-ema"] = dict(every["cosine-run-ema"], patience=every["cosine-hold-ema"]["patience"])
    first = [(args, name, every[name], seed, shared and name == "cosine-run-ema", "cosine-run" in names)
             for seed in args.seeds for name in names
             if (name, seed) not in done and not (shared and name == "cosine-hold-ema")
             and not ("cosine-run-ema" in names and name == "cosine-run")]

    def save(records: list[dict]) -> None:
        for record in records:
            if (record["schedule"], record["seed"]) in done:
                continue
            done.add((record["schedule"], record["seed"]))
            results.append(record)
            print(json.dumps(record), flush=True)
        partial = results_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(results, indent=1))
        partial.replace(results_path)

    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        # spawned workers: the parent has used torch (embeddings), which a forked child must not inherit
        pending = {pool.submit(run_one, task) for task in first}
        if shared:  # a seed whose cosine-run-ema is already done still needs its hold run
            pending |= {pool.submit(hold_one, (args, every["cosine-hold-ema"], seed)) for seed in args.seeds
                        if ("cosine-run-ema", seed) in done and ("cosine-hold-ema", seed) not in done}
        while pending:
            finished, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                records, follow = future.result()
                save(records)
                pending |= {pool.submit(function, task) for function, task in follow}
    print(table(results))


def run_config(args: argparse.Namespace):
    """``--config``'s architecture (at ``--image-size``) with the ``small`` config's training settings."""
    from mrdl.config import load_config

    config = dataclasses.replace(load_config(args.config), train=load_config("small").train)
    if args.image_size is not None:
        config = config.replace_model(image_size=args.image_size)
    return config


def run_one(task: tuple) -> tuple[list[dict], list]:
    """Train one (schedule, seed) with one torch thread; score its best checkpoint on the held-out split.
    Returns the records and the follow-up tasks: for a shared cosine-run-ema, the hold run, and cosine-run
    when its raw best is not the last epoch (``derive_raw``: cosine-run was asked for)."""
    args, name, overrides, seed, shares_hold, derive_raw = task
    torch_threads()
    from mrdl.train import TrainOptions, train_model

    config = run_config(args)
    run = args.out / "runs" / f"{name}-seed{seed}"
    options = TrainOptions(recipe="monuseg", batch_size=4, data_root=args.out / "data",
                           embeddings=args.out / "text.safetensors", out_dir=run, seed=seed, overwrite=True,
                           **overrides)
    tic = time.perf_counter()
    trained = train_model(options, config=config, progress=False)
    seconds = time.perf_counter() - tic
    records = [record(args, name, seed, overrides, trained, seconds, trained.best_checkpoint, run / "held_out")]
    follow = []
    every = schedules(args.scale, args.cap_periods)
    if shares_hold and trained.stopped_early:  # it stopped within the period: it is the hold run, not cosine-run-ema
        hold = every["cosine-hold-ema"]
        records = [record(args, "cosine-hold-ema", seed, hold, trained, seconds, trained.best_checkpoint,
                          run / "held_out") | {"run": run.name}]
        follow.append((run_one, (args, name, every[name], seed, False, derive_raw)))  # without early stop
        derive_raw = False  # that run derives cosine-run
    elif shares_hold:
        records[0]["shares_hold_prefix"] = True
        follow.append((hold_one, (args, every["cosine-hold-ema"], seed)))
    if derive_raw and name == "cosine-run-ema":
        raw = every["cosine-run"]
        scores = [row["val_dice"] for row in trained.history]
        if not trained.stopped_early and len(scores) == raw["epochs"] and max(scores) == scores[-1] > max(scores[:-1]):
            derived = dataclasses.replace(trained, best_epoch=len(scores), best_val_dice=scores[-1],
                                          seconds_to_best=trained.seconds_to_best + trained.seconds_after_best)
            records.append(record(args, "cosine-run", seed, raw, derived, seconds, trained.last_checkpoint,
                                  args.out / "runs" / f"cosine-run-seed{seed}" / "held_out") | {"derived": True})
        else:
            follow.append((run_one, (args, "cosine-run", raw, seed, False, False)))
    return records, follow


def hold_one(task: tuple) -> tuple[list[dict], list]:
    """cosine-hold-ema for one seed: cosine-run-ema's run folder copied and resumed with the hold schedule's cap."""
    args, overrides, seed = task
    torch_threads()
    from mrdl.train import TrainOptions, train_model

    prefix, run = (args.out / "runs" / f"{name}-seed{seed}" for name in ("cosine-run-ema", "cosine-hold-ema"))
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(prefix, run, ignore=shutil.ignore_patterns("held_out"))
    trained = train_model(TrainOptions(out_dir=run, resume=True, epochs=overrides["epochs"]), progress=False)
    seconds = trained.seconds_to_best + trained.seconds_after_best  # both invocations (run.json's elapsed time)
    return [record(args, "cosine-hold-ema", seed, overrides, trained, seconds, trained.best_checkpoint,
                   run / "held_out") | {"resumed_from": prefix.name}], []


def torch_threads() -> None:
    import torch

    torch.set_num_threads(1)


def record(args: argparse.Namespace, name: str, seed: int, overrides: dict, trained, seconds: float,
           checkpoint: Path, held_out_dir: Path) -> dict:
    """One results.json record: the run's cost and selection, and ``checkpoint``'s held-out Dice and IoU."""
    from mrdl.evaluate import evaluate_checkpoint

    held_out = evaluate_checkpoint(checkpoint, args.out / "data", "Test", held_out_dir)
    return {"schedule": name, "seed": seed, "epochs": trained.epochs_completed,
            "best_epoch": trained.best_epoch, "stopped_early": trained.stopped_early,
            "seconds": seconds, "seconds_to_best": trained.seconds_to_best,
            "val_dice": trained.best_val_dice, "held_out_dice": held_out["dice"],
            "held_out_iou": held_out["iou"], "config": args.config, "image_size": run_config(args).model.image_size,
            "scale": args.scale, "cap": overrides["epochs"], "ema_decay": overrides["ema_decay"],
            "patience": overrides["patience"], "min_delta": overrides.get("min_delta", 0.0)}


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
