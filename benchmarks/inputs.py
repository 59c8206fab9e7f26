"""The images every backend sees in one benchmark run, and the pre/post-processing around them.

Inputs are either the built-in synthetic tiles (``mrdl.data.synthetic.synthetic_sample``) or the
images of a real dataset (an LViT-layout root, whose ``Val_Folder/img`` is used, or a plain folder
of images). Preprocessing is ``mrdl.data.preprocess.preprocess`` (Pillow bilinear, /255, NCHW);
postprocessing is the runtime's (resize the probabilities to the original size, then threshold).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrdl.data.dataset import IMAGE_SUFFIXES


class InputError(ValueError):
    """A data folder the benchmark cannot draw images from."""


@dataclass
class InputSet:
    """Raw images (original sizes, uint8 RGB) and the same images preprocessed to (N, 3, S, S)."""

    source: str  # "synthetic" or the folder the images came from
    names: list[str]
    raw: list[np.ndarray]  # each (H, W, 3) uint8
    tensors: np.ndarray  # (N, 3, S, S) float32
    size: int

    def __len__(self) -> int:
        return len(self.raw)

    def indices(self, step: int, batch: int) -> list[int]:
        """The images of batch number ``step``: consecutive indices, wrapping around the pool."""
        return [(step * batch + offset) % len(self) for offset in range(batch)]

    def batch(self, step: int, batch: int) -> np.ndarray:
        """Preprocessed batch number ``step``: (batch, 3, S, S) float32, contiguous."""
        return np.ascontiguousarray(self.tensors[self.indices(step, batch)])


def image_files(data: Path) -> list[Path]:
    """The image files of ``data``: ``Val_Folder/img`` of an LViT root, ``img/``, or the folder itself."""
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"data folder {data} does not exist; expected an LViT-layout root "
                         f"(with Val_Folder/img) or a folder of images")
    for folder in (data / "Val_Folder" / "img", data / "img", data):
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                return files
    raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {data}, {data}/img or {data}/Val_Folder/img")


def load_inputs(*, size: int, data: str | Path | None = None, count: int = 8, seed: int = 0) -> InputSet:
    """Load ``count`` images (all of a real folder's images when fewer) and preprocess them to ``size``."""
    from mrdl.data.preprocess import preprocess, read_rgb

    if count < 1:
        raise InputError(f"the number of images must be >= 1, got {count}")
    if data is None:
        from mrdl.data.synthetic import synthetic_sample

        raw = [synthetic_sample(index, size=size, seed=seed)[0] for index in range(count)]
        names = [f"synthetic_{index:04d}" for index in range(count)]
        source = "synthetic"
    else:
        files = image_files(Path(data))[:count]
        raw = [read_rgb(path) for path in files]
        names = [path.name for path in files]
        source = str(data)
    tensors = np.stack([preprocess(image, size) for image in raw])  # (N, 3, S, S)
    return InputSet(source=source, names=names, raw=raw, tensors=tensors, size=size)


def preprocess_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """Raw uint8 images -> (B, 3, size, size) float32, the training-time preprocessing."""
    from mrdl.data.preprocess import preprocess

    return np.stack([preprocess(image, size) for image in images])


def postprocess_batch(probabilities: np.ndarray, images: list[np.ndarray], *,
                      threshold: float = 0.5) -> list[np.ndarray]:
    """(B, n_classes, S, S) probabilities -> one uint8 mask per image at its original size."""
    from mrdl_runtime.imaging import probabilities_to_mask, resize_probabilities

    return [probabilities_to_mask(resize_probabilities(probs, image.shape[:2]), threshold=threshold)
            for probs, image in zip(probabilities, images)]
