"""Runtimes, one module per target (``runtime/<target>.py``): an exported file opened for prediction.

Every runtime implements :class:`Runtime`. :func:`evim_deploy.targets.load` picks the runtime from the file's
suffix through the target table.
"""
from __future__ import annotations

from .base import Runtime, softmax, top_k

__all__ = ["Runtime", "softmax", "top_k"]
