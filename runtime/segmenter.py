"""The runtime's entry point: load a model directory, then segment images.

``Segmenter.load`` reads ``model.json``, picks a backend (see :mod:`mrdl_runtime.backends`) and
opens its runner, which verifies the artifact against the manifest (:mod:`mrdl_runtime.integrity`)
before the backend loads it. ``predict`` preprocesses exactly as training did, runs the model and
returns the mask and probabilities at the image's original size (or at the model's size, LViT's
evaluation protocol, with ``at_model_size=True``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .backends import make_runner, select_backend
from .imaging import ImageInputError, mask_at_size, preprocess, probabilities_to_mask, resize_probabilities
from .manifest import Manifest, load_manifest
from .runner import Runner

logger = logging.getLogger("mrdl_runtime")


@dataclass(frozen=True)
class Prediction:
    """One image's result: ``mask`` (H, W) uint8 (0/1, or class index for several classes) and
    ``probabilities`` (n_classes, H, W) float32, at the original size unless asked otherwise
    (None when the caller asked for masks only)."""

    mask: np.ndarray
    probabilities: np.ndarray | None


class Segmenter:
    """A loaded model: manifest + open runner. Use ``Segmenter.load``; close it (or use ``with``)."""

    def __init__(self, manifest: Manifest, runner: Runner, *, backend: str, precision: str, reason: str) -> None:
        self.manifest = manifest
        self.runner = runner
        self.backend = backend
        self.precision = precision
        self.reason = reason

    @classmethod
    def load(cls, model_dir: str | Path, *, backend: str = "auto", precision: str = "fp32", verify: bool = True,
             device_id: int = 0, intra_op_threads: int = 0, cache_dir: str | Path | None = None) -> Segmenter:
        """Read ``model_dir/model.json``, choose the backend, verify its artifact and open it.

        ``backend``: "auto", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt" or
        "tensorrt"; ``precision``: "fp32", "int8" or "fp16" (the matching exported artifact).
        The artifact must match its record in ``model.json``: a regular file inside the directory,
        its size, its SHA-256 (``verify=False`` skips only the hash, with a logged warning), the
        export and precision an ONNX file carries, and the graph's inputs and outputs. A mismatch
        raises :class:`IntegrityError`.
        """
        manifest = load_manifest(model_dir)
        chosen, reason = select_backend(manifest, backend, precision)
        if backend == "auto":
            logger.info("%s: %s", manifest.model_dir, reason)
        runner = make_runner(manifest, chosen, precision, verify=verify, device_id=device_id,
                             intra_op_threads=intra_op_threads, cache_dir=cache_dir)
        runner.open()
        held = manifest.artifact("tensorrt" if chosen == "tensorrt" else precision).precision  # verified on open
        return cls(manifest, runner, backend=chosen, precision=held, reason=reason)

    @property
    def mean_latency_ms(self) -> float:
        """Mean model latency per batch (inference only, no pre/postprocessing) since loading."""
        return self.runner.mean_latency_ms

    def _text_batch(self, text_features: np.ndarray | None, count: int) -> np.ndarray | None:
        spec = self.manifest.text_input
        if spec is None:
            if text_features is not None:
                raise ValueError(f"model {self.manifest.name} (fusion {self.manifest.fusion}) takes no text features")
            return None
        expected = (count, *spec.fixed_shape)
        if text_features is None:
            raise ValueError(f"model {self.manifest.name} uses fusion 'addition' and needs text_features of shape "
                             f"{expected[1:]} per image (precomputed CLIP token features)")
        text = np.asarray(text_features, dtype=np.float32)
        if text.shape == expected[1:]:
            text = np.broadcast_to(text, expected)
        if text.shape != expected:
            raise ValueError(f"text_features must have shape {expected[1:]} (one for all) or {expected}, got {text.shape}")
        return np.ascontiguousarray(text)

    def infer(self, batch: np.ndarray, text_features: np.ndarray | None = None) -> np.ndarray:
        """Preprocessed (B, 3, H, W) float32 -> probabilities (B, n_classes, H, W), in chunks of max_batch."""
        expected = self.manifest.image_input.fixed_shape
        if batch.ndim != 4 or batch.shape[1:] != expected or batch.dtype != np.float32:
            raise ImageInputError(f"infer expects a float32 batch of shape (B, {', '.join(map(str, expected))}); "
                                  f"got {batch.dtype} {batch.shape}")
        text = self._text_batch(text_features, len(batch))
        step = self.manifest.max_batch
        name_image, name_out = self.manifest.image_input.name, self.manifest.outputs[0].name
        chunks = []
        for start in range(0, len(batch), step):
            feeds = {name_image: np.ascontiguousarray(batch[start:start + step])}
            if text is not None:
                feeds[self.manifest.text_input.name] = text[start:start + step]
            chunks.append(self.runner.infer(feeds)[name_out])
        return np.concatenate(chunks).astype(np.float32, copy=False)  # (B, n_classes, H, W)

    def predict_batch(self, images: Sequence[np.ndarray], *, text_features: np.ndarray | None = None,
                      at_model_size: bool = False, channel_order: str = "RGB",
                      with_probabilities: bool = True) -> list[Prediction]:
        """Segment several images (any sizes); the model runs in batches of at most ``max_batch``.

        Images go through :func:`~mrdl_runtime.imaging.to_rgb8` (uint8, uint16, bool, floats in
        [0, 1] or [0, 255]). ``with_probabilities=False`` returns masks only (``probabilities`` is
        None): each class's map is then resized and thresholded in row strips, so a large image
        never holds its n_classes full-size float maps; the masks are the same.
        """
        if len(images) == 0:
            return []
        batch = np.stack([preprocess(image, self.manifest.size, scale=self.manifest.scale,
                                     channel_order=channel_order) for image in images])  # (B, 3, H, W)
        threshold = self.manifest.threshold
        results = []
        for image, probs in zip(images, self.infer(batch, text_features)):  # probs (C, h, w)
            if not (at_model_size or with_probabilities):
                results.append(Prediction(mask_at_size(probs, image.shape[:2], threshold=threshold), None))
                continue
            if not at_model_size:
                probs = resize_probabilities(probs, image.shape[:2])
            results.append(Prediction(probabilities_to_mask(probs, threshold=threshold),
                                      probs if with_probabilities else None))
        return results

    def predict(self, image: np.ndarray, *, text_features: np.ndarray | None = None, at_model_size: bool = False,
                channel_order: str = "RGB", with_probabilities: bool = True) -> Prediction:
        """Segment one image (HxWx3 RGB, gray HxW / HxWx1, gray+alpha, RGBA; uint8, uint16 or float)."""
        return self.predict_batch([image], text_features=text_features, at_model_size=at_model_size,
                                  channel_order=channel_order, with_probabilities=with_probabilities)[0]

    def close(self) -> None:
        """Release the backend."""
        self.runner.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Segmenter({self.manifest.name!r}, backend={self.backend}, precision={self.precision})"
