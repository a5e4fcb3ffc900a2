"""evim-deploy: EfficientViM from a PyTorch checkpoint to verified, benchmarked ONNX, Core ML and TFLite files."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import EvimError  # noqa: E402
from .manifest import Manifest  # noqa: E402
from .model import create_model, reparameterize  # noqa: E402

__all__ = ["__version__", "EvimError", "Manifest", "create_model", "reparameterize"]
