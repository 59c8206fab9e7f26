"""mrdl: Multimodal Representation Distribution Learning for medical image segmentation."""

__version__ = "0.1.0"

from .config import MRDLConfig, load_config  # noqa: E402
from .model import MRDL, create_model  # noqa: E402

__all__ = ["MRDL", "MRDLConfig", "create_model", "load_config", "__version__"]
