"""Unified runtime: ``load(path)`` picks the backend from the file and returns a :class:`Backend`."""
from __future__ import annotations

from pathlib import Path

from ..backends import backend_for_path, get_backend
from .base import Backend, softmax, top_k

__all__ = ["Backend", "load", "softmax", "top_k"]


def load(path: str | Path, threads: int | None = None, provider: str | None = None, backend: str | None = None,
         **options) -> Backend:
    """Open an exported model file (``.onnx``, ``.mlpackage``, ``.tflite``, ``.pt``) for prediction."""
    spec = get_backend(backend) if backend else backend_for_path(path)
    return spec.load_runtime()(path, threads=threads, provider=provider, **options)
