"""mrdl_runtime: run exported MRDL models with numpy + onnxruntime or TensorRT; never imports torch.

    from mrdl_runtime import Segmenter
    with Segmenter.load("deploy/") as segmenter:
        prediction = segmenter.predict(rgb)   # HxWx3 uint8 -> mask (H, W), probabilities (C, H, W)
"""

from .backends import BACKENDS, select_backend
from .imaging import ImageInputError, preprocess
from .manifest import IntegrityError, Manifest, ManifestError, load_manifest
from .runner import BackendUnavailableError, Runner
from .remote import RemoteError, RemoteSegmenter
from .segmenter import Prediction, Segmenter

__all__ = ["BACKENDS", "BackendUnavailableError", "ImageInputError", "IntegrityError", "Manifest", "ManifestError",
           "Prediction", "RemoteError", "RemoteSegmenter", "Runner", "Segmenter", "load_manifest", "preprocess",
           "select_backend"]
