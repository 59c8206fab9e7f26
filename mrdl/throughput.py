"""How fast the training data pipeline alone delivers batches: a model-free loop over the same loader.

``python -m mrdl.throughput --data DATA [--config small] [--batch-size 2] [--workers 0] [--epochs 3]``
iterates the training DataLoader exactly as ``mrdl train`` builds it (the Train split with LViT's
augmentation, DistributedSampler, the per-epoch reseeding) and looks up each batch's text features,
but runs no model, and prints samples per second (wall clock, and per CPU second of the process,
which a busy machine does not change; with workers, their CPU time is not counted). Compare it with
what ``mrdl train`` reports (``run.json``: ``last_epoch_throughput``): when the pipeline is many
times faster, it is not the bottleneck.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .config import load_config
from .data.dataset import SegmentationDataset


def data_pipeline_rate(data_root: str | Path, *, image_size: int, batch_size: int, workers: int = 0,
                       epochs: int = 3, seed: int = 0, embeddings=None) -> dict:
    """Samples per second of the training loader alone (decoding and resizing happen once, before timing)."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    dataset = SegmentationDataset(data_root, "Train", image_size=image_size, augment=True, seed=seed)
    samples, tic, cpu_tic = 0, time.perf_counter(), time.process_time()
    for epoch in range(1, epochs + 1):
        dataset.set_epoch(epoch)
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        for batch in DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers):
            if embeddings is not None:
                embeddings.for_split("Train", batch["name"])
            samples += int(batch["image"].shape[0])
            torch.as_tensor(batch["image"]).sum()  # touch the batch as the model would
    seconds, cpu = time.perf_counter() - tic, time.process_time() - cpu_tic
    return {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
            "samples_per_cpu_s": samples / max(cpu, 1e-9), "workers": workers,
            "batch_size": batch_size, "images": len(dataset)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root in LViT's layout")
    parser.add_argument("--config", default="small")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--embeddings", type=Path, default=None, help="text embedding file (looked up per batch)")
    args = parser.parse_args()
    config = load_config(args.config)
    embeddings = None
    if args.embeddings is not None:
        from .data.embeddings import load_embeddings

        embeddings = load_embeddings(args.embeddings, config)
    result = data_pipeline_rate(args.data, image_size=config.model.image_size, batch_size=args.batch_size,
                                workers=args.workers, epochs=args.epochs, embeddings=embeddings)
    print(f"data pipeline alone: {result['samples_per_s']:.1f} samples/s, {result['samples_per_cpu_s']:.1f} per CPU "
          f"second of this process ({result['samples']} samples in "
          f"{result['seconds']:.2f} s, batch {result['batch_size']}, {result['workers']} workers, "
          f"{result['images']} images)")


if __name__ == "__main__":
    main()
