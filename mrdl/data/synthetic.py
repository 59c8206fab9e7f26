"""The built-in synthetic dataset: H&E-like tiles with dark purple nuclei-like blobs, their masks and a
template sentence about the nuclei's density and location.

Every sample is a pure function of ``(index, seed)`` computed with numpy only, so the export parity gate,
the benchmarks and the runtime tests can draw the same images without torch. The mask is predictable from
the image (nuclei are darker and bluer than the stroma around them), so a short training run learns it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND_RGB = np.array([236.0, 176.0, 206.0])  # pale pink stroma (eosin)
NUCLEUS_RGB = np.array([92.0, 52.0, 138.0])  # dark purple nuclei (haematoxylin)

DENSITIES = (("sparse", 4, 8), ("moderately dense", 10, 18), ("dense", 22, 34))
REGIONS = {
    "upper left": (0.25, 0.25),
    "upper right": (0.25, 0.75),
    "lower left": (0.75, 0.25),
    "lower right": (0.75, 0.75),
    "centre": (0.5, 0.5),
}
SPREAD_WORDS = ("clustered in the", "scattered around the")


def _rng(index: int, seed: int) -> np.random.Generator:
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x6D72646C]))


def synthetic_sample(index: int, *, size: int = 224, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """One synthetic sample: (image HxWx3 uint8 RGB, mask HxW uint8 in {0, 1}, description sentence).

    Deterministic from ``(index, seed)``; the sentence states the density (sparse / moderately dense /
    dense) and where the nuclei are concentrated (a quadrant or the centre).
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = _rng(index, seed)
    density, lo, hi = DENSITIES[int(rng.integers(len(DENSITIES)))]
    region = list(REGIONS)[int(rng.integers(len(REGIONS)))]
    spread = SPREAD_WORDS[int(rng.integers(len(SPREAD_WORDS)))]
    n_blobs = int(rng.integers(lo, hi + 1))
    cy, cx = REGIONS[region]
    sigma = 0.12 if spread == SPREAD_WORDS[0] else 0.2

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)  # (H, W) each, in [0, 1)
    mask = np.zeros((size, size), dtype=bool)
    shade = np.zeros((size, size), dtype=np.float32)  # per-pixel nucleus darkness factor
    for _ in range(n_blobs):
        by = float(np.clip(rng.normal(cy, sigma), 0.04, 0.96))
        bx = float(np.clip(rng.normal(cx, sigma), 0.04, 0.96))
        ry, rx = rng.uniform(0.035, 0.07, size=2)
        angle = rng.uniform(0.0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        dy, dx = yy - by, xx - bx
        u, v = (c * dx + s * dy) / rx, (-s * dx + c * dy) / ry
        inside = u * u + v * v <= 1.0
        mask |= inside
        shade = np.maximum(shade, inside * np.float32(rng.uniform(0.8, 1.0)))

    texture = rng.normal(0.0, 1.0, size=(size // 8 + 1, size // 8 + 1)).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8), dtype=np.float32))[:size, :size]  # (H, W) blotchy stain
    base = BACKGROUND_RGB[None, None, :] + 8.0 * texture[:, :, None]
    colour = base * (1.0 - shade[:, :, None]) + NUCLEUS_RGB[None, None, :] * shade[:, :, None]
    colour += rng.normal(0.0, 10.0, size=colour.shape)  # (H, W, 3) pixel noise
    image = np.clip(colour, 0.0, 255.0).astype(np.uint8)

    sentence = f"{density} nuclei {spread} {region} of the image"
    return image, mask.astype(np.uint8), sentence


def _write_split(folder: Path, split: str, indices: range, *, size: int, seed: int) -> None:
    from openpyxl import Workbook

    img_dir = folder / f"{split}_Folder" / "img"
    mask_dir = folder / f"{split}_Folder" / "labelcol"
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    book = Workbook()
    sheet = book.active
    sheet.append(["Image", "Description"])
    for index in indices:
        image, mask, sentence = synthetic_sample(index, size=size, seed=seed)
        name = f"synthetic_{index:04d}.png"
        Image.fromarray(image).save(img_dir / name)
        Image.fromarray(mask * np.uint8(255)).save(mask_dir / name)
        sheet.append([name, sentence])
    book.save(folder / f"{split}_Folder" / f"{split}_text.xlsx")


def write_synthetic_dataset(root: Path, *, n_train: int = 16, n_val: int = 8, size: int = 224, seed: int = 0) -> Path:
    """Write the synthetic dataset in LViT's layout under ``root`` and return ``root``.

    Layout (as LViT ships MoNuSeg): ``root/{Train,Val}_Folder/{img,labelcol}/synthetic_NNNN.png`` (masks
    0/255) and ``root/{Train,Val}_Folder/{Train,Val}_text.xlsx`` (columns Image, Description keyed by the
    mask file name). Train uses
    indices ``0..n_train-1`` and Val ``n_train..n_train+n_val-1``. Written into a temporary sibling folder
    and renamed into place; an existing ``root`` is refused.
    """
    root = Path(root)
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} already exists and is not empty; choose another folder or remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a dataset is meant to be shared
    try:
        _write_split(tmp, "Train", range(n_train), size=size, seed=seed)
        _write_split(tmp, "Val", range(n_train, n_train + n_val), size=size, seed=seed)
        if root.exists():
            root.rmdir()
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
