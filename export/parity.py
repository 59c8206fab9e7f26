"""The parity gate: an exported model in onnxruntime against the checkpoint in PyTorch.

Both run on the same preprocessed images (``mrdl.data.preprocess.preprocess``): real images
from a dataset folder when given, else the built-in synthetic set. Compared: probabilities
(max and mean |delta|) and binary masks (threshold 0.5, or argmax over classes) by Dice
agreement, averaged over images (two empty masks agree fully).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}
DEFAULT_ATOL = 1e-3  # FP32 ONNX vs PyTorch: float reassociation stays orders of magnitude below this
DEFAULT_MIN_DICE = 0.99  # mask agreement; pixels whose probability sits at 0.5 may flip


class ParityError(RuntimeError):
    """The exported model does not reproduce the checkpoint within the tolerances."""


@dataclass
class ParityResult:
    """Figures of one comparison (stored in the manifest under ``parity.<precision>``)."""

    max_abs_diff: float
    mean_abs_diff: float
    dice_agreement: float
    min_dice_agreement: float
    images: int
    source: str

    def to_dict(self) -> dict:
        return asdict(self)

    def passes(self, *, atol: float, min_dice: float) -> bool:
        return self.max_abs_diff <= atol and self.dice_agreement >= min_dice


EVALUATION_SPLITS = ("Val", "Test", "Train")
CALIBRATION_SPLITS = ("Train", "Val", "Test")


def image_files(data: Path, *, splits: tuple[str, ...] = EVALUATION_SPLITS) -> list[Path]:
    """Images of a dataset root in LViT's layout (first split of ``splits`` present) or of a plain folder."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data} is not a folder (expected an LViT dataset root or a folder of images)")
    for split in splits:
        folder = data / f"{split}_Folder" / "img"
        if folder.is_dir():
            data = folder
            break
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {data}")
    return files


def load_images(*, size: int, data: Path | None = None, count: int = 8,
                splits: tuple[str, ...] = EVALUATION_SPLITS, synthetic_offset: int = 0) -> tuple[np.ndarray, str]:
    """``count`` preprocessed images (count, 3, size, size) float32 and a description of their source.

    ``splits``: which LViT split of a dataset root to read first; ``synthetic_offset``: first synthetic
    index (calibration and parity use disjoint synthetic images).
    """
    from mrdl.data.preprocess import preprocess, read_rgb

    if count < 1:
        raise ValueError(f"the parity gate needs at least one image, got count={count}")
    if data is not None:
        files = image_files(data, splits=splits)[:count]
        return np.stack([preprocess(read_rgb(f), size) for f in files]), f"{files[0].parent} ({len(files)} images)"
    from mrdl.data.synthetic import synthetic_sample

    images = [preprocess(synthetic_sample(i, size=size, seed=0)[0], size)
              for i in range(synthetic_offset, synthetic_offset + count)]
    return np.stack(images), "synthetic"


def text_features_for(config, count: int) -> np.ndarray:
    """Seeded stand-in text features (count, L, D) for addition-fusion parity checks."""
    text = config.model.text
    return np.random.default_rng(0).standard_normal((count, text.context_length, text.width)).astype(np.float32)


def reference_probabilities(model, inputs: list[np.ndarray], *, batch: int = 4) -> np.ndarray:
    """The checkpoint's probabilities in PyTorch (eval mode, activation applied): (B, K, H, W)."""
    import torch

    from mrdl.losses import probabilities

    model = model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(inputs[0]), batch):
            chunk = [torch.from_numpy(x[start:start + batch]) for x in inputs]
            outputs.append(probabilities(model(*chunk).logits).numpy())
    return np.concatenate(outputs)


def onnx_probabilities(path: Path, inputs: list[np.ndarray], *, batch: int = 4) -> np.ndarray:
    """Probabilities of an ONNX model in onnxruntime (CPU), run ``batch`` images at a time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = []
    for start in range(0, len(inputs[0]), batch):
        feed = {name: x[start:start + batch] for name, x in zip(names, inputs)}
        outputs.append(session.run(["probabilities"], feed)[0])
    return np.concatenate(outputs)


def masks_of(probabilities: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """(B, K, H, W) probabilities -> (B, H, W) integer masks (threshold for one class, else argmax)."""
    if probabilities.shape[1] == 1:
        return (probabilities[:, 0] > threshold).astype(np.int64)
    return probabilities.argmax(axis=1)


def dice_agreement(a: np.ndarray, b: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Per-image Dice between two mask stacks (B, H, W), averaged over foreground classes.

    A class absent from both masks is skipped; an image where every class is absent from both scores 1.
    """
    scores = np.zeros(len(a))
    counted = np.zeros(len(a))
    for cls in range(1, max(n_classes, 2)):
        fa = (a == cls).reshape(len(a), -1)
        fb = (b == cls).reshape(len(b), -1)
        total = fa.sum(axis=1) + fb.sum(axis=1)
        present = total > 0
        scores += np.where(present, 2.0 * (fa & fb).sum(axis=1) / np.maximum(total, 1), 0.0)
        counted += present
    return np.where(counted == 0, 1.0, scores / np.maximum(counted, 1))


def compare(reference: np.ndarray, candidate: np.ndarray, *, source: str) -> ParityResult:
    """Figures comparing two probability stacks of the same shape."""
    if reference.shape != candidate.shape:
        raise ParityError(f"output shape {candidate.shape} differs from PyTorch's {reference.shape}")
    delta = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    dice = dice_agreement(masks_of(reference), masks_of(candidate), n_classes=reference.shape[1])
    return ParityResult(max_abs_diff=float(delta.max()), mean_abs_diff=float(delta.mean()),
                        dice_agreement=float(dice.mean()), min_dice_agreement=float(dice.min()),
                        images=len(reference), source=source)
