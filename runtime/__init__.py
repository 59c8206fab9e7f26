"""mrdl_runtime: run exported MRDL models with numpy + onnxruntime or TensorRT; never imports torch.

    from mrdl_runtime import LoadOptions, PredictOptions, Segmenter
    with Segmenter.load("deploy/", LoadOptions(threads=2)) as segmenter:
        prediction = segmenter.predict(rgb)   # HxWx3 uint8 -> mask (H, W), probabilities (C, H, W)

Every setting is a field of :class:`LoadOptions` or :class:`PredictOptions` (keywords naming a
field work too: ``segmenter.predict(rgb, tile=True)``); every backend is an entry of
:data:`mrdl_runtime.backends.REGISTRY`; every error mrdl raises is a :class:`MrdlError`.
"""

from .backends import BACKENDS, REGISTRY, select_backend
from .errors import BackendUnavailableError, MrdlError, OptionsError
from .imaging import ImageInputError, preprocess
from .manifest import IntegrityError, Manifest, ManifestError, load_manifest
from .options import LoadOptions, PredictOptions
from .remote import RemoteError, RemoteSegmenter
from .runner import Runner
from .segmenter import Prediction, Segmenter

__all__ = ["BACKENDS", "BackendUnavailableError", "ImageInputError", "IntegrityError", "LoadOptions", "Manifest",
           "ManifestError", "MrdlError", "OptionsError", "Prediction", "PredictOptions", "REGISTRY", "RemoteError",
           "RemoteSegmenter", "Runner", "Segmenter", "load_manifest", "preprocess", "select_backend"]
