"""``torch.export`` archive of the deploy form (``.pt2``), manifest in its extra files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import artifact_manifest

MANIFEST_FILE = "evim_deploy_manifest.json"


def export_torch(model: torch.nn.Module, output: Path, precision: str = "fp32", **_: Any) -> Path:
    program = torch.export.export(model, (torch.zeros(1, 3, *model.input_size),))
    manifest = artifact_manifest(model, "torch", precision)
    torch.export.save(program, output, extra_files={MANIFEST_FILE: manifest.to_json()})
    return output
