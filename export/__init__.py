"""mrdl_export: checkpoint -> deploy module -> verified ONNX (FP32/FP16/INT8) and TensorRT engines.

``export_model(ckpt, out_dir, ...)`` is the library entry point; ``mrdl-export`` / ``mrdl export``
its command line (``mrdl_export.cli``).
"""

from .api import ExportError, ExportResult, export_model
from .parity import ParityError

__all__ = ["ExportError", "ExportResult", "ParityError", "export_model"]
