"""``torch.export`` archive of the deploy form (``.pt2``), run by eager PyTorch: the reference runtime."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..formats import torch as torch_format
from . import artifact_manifest

if TYPE_CHECKING:
    import torch as torch_module


def export_torch(model: "torch_module.nn.Module", output: Path, precision: str = "fp32", **_: Any) -> Path:
    import torch
    program = torch.export.export(model, (torch.zeros(1, 3, *model.input_size),))
    torch_format.save(program, output, artifact_manifest(model, "torch", precision))
    return output
