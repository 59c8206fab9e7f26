"""mrdl_export: checkpoint -> deploy module -> verified ONNX (FP32/FP16/INT8) and TensorRT engines.

``Exporter(ExportOptions(...)).run(ckpt, out_dir)``, or ``export_model(ckpt, out_dir, ...)``, is the
library entry point (:mod:`mrdl_export.exporter`, its options in :mod:`mrdl_export.options`);
``mrdl-export`` / ``mrdl export`` its command line (``mrdl_apps.export``).
"""

from .exporter import ExportResult, Exporter, export_model
from .options import ExportError, ExportOptions
from .parity import ParityError

__all__ = ["ExportError", "ExportOptions", "ExportResult", "Exporter", "ParityError", "export_model"]
