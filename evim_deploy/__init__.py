"""evim-deploy: EfficientViM from a PyTorch checkpoint to verified, benchmarked ONNX, Core ML and TFLite files.

    checkpoint -> create_model() -> reparameterize() -> targets.export() -> targets.load() -> verify() / bench

Attributes are imported lazily, and the target table imports no converter or framework until one is used,
so running an exported file never imports torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"create_model": "evim_deploy.model", "reparameterize": "evim_deploy.model",
         "load": "evim_deploy.targets", "TARGETS": "evim_deploy.targets",
         "Manifest": "evim_deploy.manifest", "EvimError": "evim_deploy.errors"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evim_deploy' has no attribute {name!r}")
