"""Parity: an exported model's probabilities against a reference's on the same images.

The one comparison for ``mrdl-export``'s gate (onnxruntime against the checkpoint in PyTorch) and
``mrdl-bench``'s parity columns (every backend against torch-fft). Both run on the same
preprocessed images (:func:`mrdl.data.sources.load_images`: a dataset folder when given, else the
built-in synthetic set). Compared: probabilities (max and mean |delta|) and masks by **mask Dice
agreement**: each probability map becomes a mask by the runtime's rule
(:func:`mrdl_runtime.imaging.probabilities_to_mask`: ``p > threshold`` for one class, else
argmax); per image, Dice is computed for every foreground class (labels 1..K-1; label 1 for one
class) present in either mask and averaged over those classes; an image where no foreground
class is present in either mask agrees fully (1). The result is averaged over images (and its
minimum kept). For one class this is the plain foreground Dice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mrdl_runtime.errors import MrdlError
from mrdl_runtime.imaging import probabilities_to_mask

DEFAULT_ATOL = 1e-3  # FP32 ONNX vs PyTorch: float reassociation stays orders of magnitude below this
DEFAULT_MIN_DICE = 0.99  # mask agreement; pixels whose probability sits at 0.5 may flip


class ParityError(MrdlError, RuntimeError):
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


def onnx_probabilities(path: Path | bytes, inputs: list[np.ndarray], *, batch: int = 4) -> np.ndarray:
    """Probabilities of an ONNX model (a file, or its serialized bytes) in onnxruntime (CPU), ``batch`` images at a time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = []
    for start in range(0, len(inputs[0]), batch):
        feed = {name: x[start:start + batch] for name, x in zip(names, inputs)}
        outputs.append(session.run(["probabilities"], feed)[0])
    return np.concatenate(outputs)


def masks_of(probabilities: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """(B, K, H, W) probabilities -> (B, H, W) uint8 masks by the runtime's rule, image by image."""
    return np.stack([probabilities_to_mask(image, threshold=threshold) for image in probabilities])


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


def compare(reference: np.ndarray, candidate: np.ndarray, *, source: str, threshold: float = 0.5) -> ParityResult:
    """Figures comparing two probability stacks (B, K, H, W) of the same shape; masks at ``threshold``."""
    if reference.shape != candidate.shape:
        raise ParityError(f"output shape {candidate.shape} differs from the reference's {reference.shape}")
    delta = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    dice = dice_agreement(masks_of(reference, threshold=threshold), masks_of(candidate, threshold=threshold),
                          n_classes=reference.shape[1])
    return ParityResult(max_abs_diff=float(delta.max()), mean_abs_diff=float(delta.mean()),
                        dice_agreement=float(dice.mean()), min_dice_agreement=float(dice.min()),
                        images=len(reference), source=source)


def constant_prediction(probabilities: np.ndarray, *, threshold: float = 0.5) -> str | None:
    """What is constant about (B, K, H, W) probabilities whose masks are one class on every pixel of every image
    (e.g. "every mask is class 0 (probabilities 0.46 to 0.47)"): a model that ignores its input, for which any two
    runtimes' masks agree trivially; None when the masks vary."""
    classes = np.unique(masks_of(probabilities, threshold=threshold))
    if len(classes) > 1:
        return None
    low, high = float(np.min(probabilities)), float(np.max(probabilities))
    spread = f"every probability {low:.3g}" if low == high else f"probabilities {low:.3g} to {high:.3g}"
    return f"every mask is class {int(classes[0])} everywhere ({spread})"


# ----------------------------------------------------------------------------- task accuracy (INT8 gate)

DEFAULT_MAX_DICE_DROP = 0.5  # points of task Dice (x100) an INT8 model may lose against FP32


def ground_truth(data: str | Path | None, names: list[str], *, size: int,
                 splits: tuple[str, ...]) -> np.ndarray | None:
    """The label masks (N, size, size) uint8 of images drawn by :func:`mrdl.data.sources.load_images`.

    An LViT split's ``labelcol`` folder beside its ``img`` (the mask with the image's file stem), or
    None where there are none: a plain image folder, any image without its mask, and the built-in
    synthetic tiles (``data`` None), whose blobs say nothing about a model's task accuracy.
    Masks are resized nearest-neighbour to the model size, as evaluation does.
    """
    from mrdl.data.dataset import read_mask
    from mrdl.data.preprocess import resize_mask
    from mrdl.data.sources import image_folder

    if data is None:
        return None
    folder = image_folder(data, splits=splits)
    labels = folder.parent / "labelcol"
    if folder.name != "img" or not labels.is_dir():
        return None
    by_stem = {p.stem: p for p in sorted(labels.iterdir()) if p.is_file() and not p.name.startswith(".")}
    stems = [Path(name).stem for name in names]
    if any(stem not in by_stem for stem in stems):
        return None
    return np.stack([resize_mask(read_mask(by_stem[stem]), size) for stem in stems])


def task_dice(probabilities: np.ndarray, labels: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """Per-image Dice of the masks of (B, K, H, W) probabilities against (B, H, W) labels (LViT's rule:
    foreground = label > 0, both empty scores 1)."""
    predicted = (masks_of(probabilities, threshold=threshold) > 0).reshape(len(labels), -1)
    truth = (labels > 0).reshape(len(labels), -1)
    sizes = predicted.sum(1) + truth.sum(1)
    return np.where(sizes == 0, 1.0, 2.0 * (predicted & truth).sum(1) / np.maximum(sizes, 1))


@dataclass
class TaskAccuracy:
    """INT8 against FP32 on labelled images: task Dice of each against ground truth, and mask agreement."""

    images: int
    source: str
    fp32_dice: float  # mean per-image Dice of the FP32 model against ground truth
    int8_dice: float
    drop_points: float  # 100 * (fp32_dice - int8_dice)
    max_drop_points: float
    agreement: float  # mean mask Dice agreement INT8 vs FP32
    min_agreement: float

    @property
    def passes(self) -> bool:
        return self.drop_points <= self.max_drop_points

    def to_dict(self) -> dict:
        return {**asdict(self), "passes": self.passes}


def task_accuracy(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray, *, source: str, max_drop_points: float,
                  threshold: float = 0.5) -> TaskAccuracy:
    """:class:`TaskAccuracy` of INT8 probabilities ``int8`` against FP32 ones ``fp32`` (both (B, K, H, W))."""
    reference, candidate = task_dice(fp32, labels, threshold=threshold), task_dice(int8, labels, threshold=threshold)
    agreement = dice_agreement(masks_of(fp32, threshold=threshold), masks_of(int8, threshold=threshold),
                               n_classes=fp32.shape[1])
    return TaskAccuracy(images=len(labels), source=source, fp32_dice=float(reference.mean()),
                        int8_dice=float(candidate.mean()), drop_points=float(100 * (reference.mean() - candidate.mean())),
                        max_drop_points=max_drop_points, agreement=float(agreement.mean()),
                        min_agreement=float(agreement.min()))
