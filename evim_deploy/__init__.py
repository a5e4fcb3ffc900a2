"""evim-deploy: EfficientViM from a PyTorch checkpoint to verified, benchmarked ONNX, Core ML and TFLite files.

Attributes are imported lazily so that ``evim_deploy.runtime`` can run a file without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"create_model": "evim_deploy.model", "reparameterize": "evim_deploy.model",
         "load": "evim_deploy.runtime",
         "Manifest": "evim_deploy.manifest", "EvimError": "evim_deploy.errors"}

__all__ = ["__version__", "export", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "export":  # the subpackage, callable as evim_deploy.export(model, target=...)
        return importlib.import_module("evim_deploy.export")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evim_deploy' has no attribute {name!r}")
