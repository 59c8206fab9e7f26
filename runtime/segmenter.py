"""The runtime's entry point: load a model directory, then segment images.

``Segmenter.load`` reads ``model.json``, picks a backend (see :mod:`mrdl_runtime.backends`) and
opens its runner, which verifies the artifact against the manifest (:mod:`mrdl_runtime.integrity`)
before the backend loads it. ``predict`` preprocesses exactly as training did, runs the model and
returns the mask and probabilities at the image's original size (or at the model's size, LViT's
evaluation protocol, with ``at_model_size=True``). Images much larger than the training images are
segmented in overlapping windows at the training scale (``tile``; :mod:`mrdl_runtime.tiling`,
docs/tiling.md). The settings of both calls are :class:`~mrdl_runtime.options.LoadOptions` and
:class:`~mrdl_runtime.options.PredictOptions`, passed whole or as keywords naming their fields.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import REGISTRY, make_runner, select_backend
from .errors import NotOpenError, OptionsError
from .imaging import ImageInputError, check_image, mask_at_size, preprocess, probabilities_to_mask, resize_probabilities
from .manifest import Manifest, load_manifest
from .options import LoadOptions, PredictOptions
from .resample import resample_rgb
from .runner import Runner
from .tiling import mask_at, plan_tiles, probabilities_at, should_tile, stitch

logger = logging.getLogger("mrdl_runtime")


@dataclass(frozen=True)
class Prediction:
    """One image's result: ``mask`` (H, W) uint8 (0/1, or class index for several classes) and
    ``probabilities`` (n_classes, H, W) float32, at the original size unless asked otherwise
    (None when the caller asked for masks only); ``tiled``: whether it was segmented in windows at
    the training scale (docs/tiling.md) rather than resized whole to the model size."""

    mask: np.ndarray
    probabilities: np.ndarray | None
    tiled: bool = False


def _image_size(image: object) -> tuple[int, int]:
    """(H, W) of an input image, after the layout check that names what was expected."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        check_image(image)  # raises ImageInputError
    return image.shape[0], image.shape[1]


class Segmenter:
    """A loaded model: manifest + open runner. Use ``Segmenter.load``; close it (or use ``with``).

    Threads: one Segmenter may be shared by several threads; ``predict``, ``predict_batch`` and
    ``infer`` may run concurrently and give the same results as serial calls
    (``tests/test_threads.py``: 8 threads). Its own state is read-only after ``load``, the
    runner's latency counters are updated under a lock, ONNX Runtime sessions run concurrent
    calls side by side, and the native ``tensorrt`` backend serializes them (one execution
    context). ``close`` only after every thread is done. ``LoadOptions.threads`` (``threads=N``)
    sets ONNX Runtime's intra-op threads (the cores one model call may use; 0, the default: one per
    physical core available): with several threads calling at once, a small N per call (e.g.
    cores / threads) avoids oversubscribing the CPU. ``mrdl predict --threads N`` is the same setting.
    """

    def __init__(self, manifest: Manifest, runner: Runner, *, backend: str, precision: str, reason: str,
                 options: LoadOptions | None = None) -> None:
        self.manifest = manifest
        self.runner = runner
        self.backend = backend
        self.precision = precision
        self.reason = reason
        self.options = options or LoadOptions()

    @classmethod
    def load(cls, model_dir: str | Path, options: LoadOptions | None = None, **fields) -> Segmenter:
        """Read ``model_dir/model.json``, choose the backend, verify its artifact and open it.

        ``options`` (:class:`LoadOptions`; keywords name its fields, e.g. ``backend="onnxruntime-cpu"``):
        ``backend`` "auto" or a name in :data:`mrdl_runtime.backends.REGISTRY`; ``precision`` "fp32",
        "int8" or "fp16" (the matching exported artifact); ``verify``, ``threads``, ``device_id``,
        ``cache_dir``. The artifact must match its record in ``model.json``: a regular file inside
        the directory, its size, its SHA-256 (``verify=False`` skips only the hash, with a logged
        warning), the export and precision an ONNX file carries, and the graph's inputs and
        outputs. A mismatch raises :class:`IntegrityError`.
        """
        options = LoadOptions.of(options, **fields)
        manifest = load_manifest(model_dir)
        chosen, reason = select_backend(manifest, options.backend, options.precision)
        if options.backend == "auto":
            logger.info("%s: %s", manifest.model_dir, reason)
        runner = make_runner(manifest, chosen, options.precision, options)
        runner.open()
        held = manifest.artifact(REGISTRY[chosen].artifact_key(options.precision)).precision  # verified on open
        return cls(manifest, runner, backend=chosen, precision=held, reason=reason, options=options)

    @property
    def mean_latency_ms(self) -> float:
        """Mean model latency per batch (inference only, no pre/postprocessing) since loading."""
        return self.runner.mean_latency_ms

    def _text_batch(self, text_features: np.ndarray | None, count: int) -> np.ndarray | None:
        spec = self.manifest.text_input
        if spec is None:
            if text_features is not None:
                raise OptionsError(f"model {self.manifest.name} (fusion {self.manifest.fusion}) takes no text features")
            return None
        expected = (count, *spec.fixed_shape)
        if text_features is None:
            raise OptionsError(f"model {self.manifest.name} uses fusion 'addition' and needs text_features of shape "
                             f"{expected[1:]} per image (precomputed CLIP token features)")
        text = np.asarray(text_features, dtype=np.float32)
        if text.shape == expected[1:]:
            text = np.broadcast_to(text, expected)
        if text.shape != expected:
            raise OptionsError(f"text_features must have shape {expected[1:]} (one for all) or {expected}, got {text.shape}")
        return np.ascontiguousarray(text)

    def _check_open(self) -> None:
        if not self.runner.is_open:
            raise NotOpenError(f"this Segmenter of {self.manifest.model_dir} was closed; load it again "
                               "(Segmenter.load) to segment more images")

    def infer(self, batch: np.ndarray, text_features: np.ndarray | None = None) -> np.ndarray:
        """Preprocessed (B, 3, H, W) float32, B >= 1 -> probabilities (B, n_classes, H, W), in chunks of max_batch."""
        self._check_open()
        shape = self.manifest.image_input.fixed_shape
        expected = f"a float32 numpy array, a batch of shape (B, {', '.join(map(str, shape))}) with B >= 1"
        if not isinstance(batch, np.ndarray):
            raise ImageInputError(f"infer expects {expected}; got {type(batch).__name__}")
        if batch.ndim != 4 or batch.shape[1:] != shape or batch.dtype != np.float32 or len(batch) == 0:
            raise ImageInputError(f"infer expects {expected}; got {batch.dtype} {batch.shape}")
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

    def predict_batch(self, images: Iterable[np.ndarray], options: PredictOptions | None = None, *,
                      text_features: np.ndarray | None = None, **fields) -> list[Prediction]:
        """Segment several images (a list, or any iterable; any sizes); the model runs in batches of at most
        ``max_batch``.

        Images go through :func:`~mrdl_runtime.imaging.to_rgb8` (uint8, uint16, bool, floats in
        [0, 1] or [0, 255]). ``options`` (:class:`PredictOptions`; keywords name its fields):
        ``with_probabilities=False`` returns masks only (``probabilities`` is None): each class's
        map is then resized and thresholded in row strips, so a large image never holds its
        n_classes full-size float maps; the masks are the same.

        ``tile`` (docs/tiling.md): "auto" segments an image more than 1.5 times the model's
        ``source_size`` (the training images' size, from model.json) along either axis in
        overlapping model-size windows at the training scale, others whole; True tiles every image
        (it needs ``source_size``), False none. ``overlap`` in [0, 1) is the fraction of a window
        shared with its neighbour, ``blend`` "gaussian" (MONAI's weights) or "constant". A tiled
        image's ``at_model_size`` result is at the training scale (its resampled size);
        ``progress`` shows a bar of each tiled image's windows on stderr.
        """
        options = PredictOptions.of(options, **fields)
        self._check_open()
        if not isinstance(images, Iterable) or isinstance(images, (str, bytes)):
            raise ImageInputError(f"predict_batch expects a list (or any iterable) of image arrays; got "
                                  f"{type(images).__name__} (one image: predict)")
        images = list(images)
        if not images:
            return []
        text = self._text_batch(text_features, len(images))
        source_size = self.manifest.source_size
        tiled = [should_tile(_image_size(image), source_size, options.tile) for image in images]
        results: list[Prediction | None] = [None] * len(images)
        whole = [i for i, tiles in enumerate(tiled) if not tiles]
        if whole:
            batch = np.stack([preprocess(images[i], self.manifest.size, scale=self.manifest.scale,
                                         channel_order=options.channel_order) for i in whole])  # (B, 3, H, W)
            for i, probs in zip(whole, self.infer(batch, None if text is None else text[whole])):  # probs (C, h, w)
                results[i] = self._finish(probs, images[i].shape[:2], options)
        for i in (i for i, tiles in enumerate(tiled) if tiles):
            results[i] = self._predict_tiled(images[i], None if text is None else text[i], options)
        return results

    def _finish(self, probs: np.ndarray, size: tuple[int, int], options: PredictOptions) -> Prediction:
        """The untiled path's postprocessing of one image's (C, h, w) model output."""
        threshold = self.manifest.threshold
        at_model_size, with_probabilities = options.at_model_size, options.with_probabilities
        if not (at_model_size or with_probabilities):
            return Prediction(mask_at_size(probs, size, threshold=threshold), None)
        if not at_model_size:
            probs = resize_probabilities(probs, size)
        return Prediction(probabilities_to_mask(probs, threshold=threshold), probs if with_probabilities else None)

    def _predict_tiled(self, image: np.ndarray, text: np.ndarray | None, options: PredictOptions) -> Prediction:
        """One image in blended windows at the training scale (docs/tiling.md), streamed in row strips."""
        manifest = self.manifest
        at_model_size, with_probabilities = options.at_model_size, options.with_probabilities
        rgb = check_image(image, channel_order=options.channel_order)
        size = rgb.shape[:2]
        plan = plan_tiles(size, manifest.source_size, manifest.size, options.overlap, max_pixels=options.max_pixels)
        resampled = resample_rgb(rgb, plan.resampled_size)  # (h, w, 3) uint8
        del rgb  # a converted copy (uint16, float, gray input) is not kept while the windows run
        stitched = stitch(resampled, plan, lambda batch: self.infer(batch, text), model_size=manifest.size,
                          n_classes=manifest.n_classes, max_batch=manifest.max_batch, scale=manifest.scale,
                          options=options, progress=options.progress)  # (C, h, w)
        del resampled  # not held while the maps are resized to the input size
        threshold = manifest.threshold
        if at_model_size:
            stitched = np.ascontiguousarray(stitched)
            return Prediction(probabilities_to_mask(stitched, threshold=threshold),
                              stitched if with_probabilities else None, tiled=True)
        if not with_probabilities:
            return Prediction(mask_at(stitched, size, threshold=threshold), None, tiled=True)
        probs = probabilities_at(stitched, size)
        return Prediction(probabilities_to_mask(probs, threshold=threshold), probs, tiled=True)

    def predict(self, image: np.ndarray, options: PredictOptions | None = None, *,
                text_features: np.ndarray | None = None, **fields) -> Prediction:
        """Segment one image (HxWx3 RGB, gray HxW / HxWx1, gray+alpha, RGBA; uint8, uint16 or float);
        ``options`` and keywords as in :meth:`predict_batch`."""
        return self.predict_batch([image], PredictOptions.of(options, **fields), text_features=text_features)[0]

    def close(self) -> None:
        """Release the backend."""
        self.runner.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Segmenter({self.manifest.name!r}, backend={self.backend}, precision={self.precision})"
