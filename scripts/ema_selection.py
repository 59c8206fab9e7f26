"""Does an EMA of the weights, or a smoothed Val criterion, select better checkpoints? (issue 15)

One run per seed trains mrdl's `small` config on MoNuSeg with the MoNuSeg recipe's settings (batch 2,
AdamW lr 1e-3, cosine over the run, lambda_3 = 1) on 18 of the 24 Train images; the other 6 Train
images are a held-out set that no criterion sees. After every epoch it scores, on Val (6 images, the
selection set) and on the held-out set, the raw weights and an EMA of them (mrdl.ema.WeightEMA,
timm ModelEmaV3's warmup rule, power 2/3, decay cap 0.999). Criteria are compared afterwards by the held-out
Dice of the epoch each one selects. Writes one JSON line per epoch to OUT/epochs.jsonl.

    mrdl embed-text DATA --config small --random-init --out E
    python scripts/ema_selection.py --data DATA --embeddings E --seed S --epochs 12 --out ROOT/seedS
    python scripts/ema_selection_report.py ROOT 12
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mrdl.config import load_config
from mrdl.data.dataset import SegmentationDataset
from mrdl.data.embeddings import load_embeddings
from mrdl.ema import WeightEMA
from mrdl.evaluate import predict_dataset, score_masks
from mrdl.losses import segmentation_loss
from mrdl.model import create_model


class View:
    """A subset of a SegmentationDataset with the interface predict_dataset/score_masks use."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

    def raw(self, i):
        return self.dataset.raw(self.indices[i])

    @property
    def names(self):
        return [self.dataset.names[i] for i in self.indices]


def dice(model, dataset) -> float:
    return float(np.mean([s["dice"] for s in score_masks(predict_dataset(model, dataset, batch_size=6), dataset)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="MoNuSeg in LViT's layout (Train_Folder, Val_Folder)")
    parser.add_argument("--embeddings", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config("small")
    size = config.model.image_size
    train_all = SegmentationDataset(args.data, "Train", image_size=size, augment=True, seed=args.seed)
    plain = SegmentationDataset(args.data, "Train", image_size=size, augment=False)
    val = SegmentationDataset(args.data, "Val", image_size=size, require_text=False)
    held = [i for i in range(len(train_all)) if i % 4 == 3]  # 6 of 24, fixed across seeds
    used = [i for i in range(len(train_all)) if i % 4 != 3]
    holdout = View(plain, held)
    embeddings = load_embeddings(args.embeddings, config)
    model = create_model(config, prompt_features=embeddings.prompt, seed=args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    emas = {"ema_p0.67": WeightEMA(model, decay=0.999, warmup_power=2 / 3)}
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "epochs.jsonl", "a")
    batch = 2
    for epoch in range(1, args.epochs + 1):
        tic = time.perf_counter()
        train_all.set_epoch(epoch)
        order = torch.randperm(len(used), generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
        model.train()
        losses = []
        for start in range(0, len(used), batch):
            items = [train_all[used[int(j)]] for j in order[start : start + batch]]
            images = torch.stack([it["image"] for it in items])
            masks = torch.stack([it["mask"] for it in items])
            text = embeddings.for_split("Train", [it["name"] for it in items])
            out = model(images, text)
            terms = segmentation_loss(out.logits, masks, out.kl, config.loss)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            for ema in emas.values():
                ema.update(model)
            losses.append(float(terms.total.detach()))
        scheduler.step()
        train_s = time.perf_counter() - tic
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "train_s": train_s,
               "val": {"raw": dice(model, val)}, "holdout": {"raw": dice(model, holdout)}}
        for name, ema in emas.items():
            row["val"][name] = dice(ema.module, val)
            row["holdout"][name] = dice(ema.module, holdout)
        row["seconds"] = time.perf_counter() - tic
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
