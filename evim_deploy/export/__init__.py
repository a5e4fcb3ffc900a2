"""Exporters, one module per target (``export/<target>.py``, INT8 in ``<target>_int8.py``): deploy model -> file.

Each exporter takes ``(model, output, precision, calibration, **options)`` and writes ``output``.
Choosing the exporter, checking the precision and the output name, and the atomic write live in
:func:`evim_deploy.targets.export`, which is what callers use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..calibration import CalibrationSet
from ..errors import UsageError
from ..manifest import Manifest

if TYPE_CHECKING:
    import torch

__all__ = ["artifact_manifest", "require_calibration"]


def artifact_manifest(model: "torch.nn.Module", target: str, precision: str, **extra: Any) -> Manifest:
    """The manifest to embed in a file: the model's card plus target, precision and export details."""
    manifest: Manifest | None = getattr(model, "manifest", None)
    if manifest is None:
        raise UsageError("the model has no manifest", "build it with evim_deploy.create_model(...)")
    return manifest.replace(target=target, precision=precision, extra={**manifest.extra, **extra})


def require_calibration(calibration: CalibrationSet | None, precision: str) -> CalibrationSet:
    """The calibration set a quantized precision needs; none, or an empty one, is a one-line error."""
    if calibration is None:
        raise UsageError(f"{precision.upper()} needs calibration images",
                         "pass --calib DIR (or --calib-synthetic for a smoke test)")
    if len(calibration) == 0:
        raise UsageError("the calibration set is empty", "pass --calib DIR with at least one image")
    return calibration
