"""The ``torch.export`` archive (``.pt2``): the manifest rides in the archive's extra files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..manifest import Manifest
from . import FileSummary, op_histogram

MANIFEST_FILE = "evim_deploy_manifest.json"


def save(program: Any, path: str | Path, manifest: Manifest) -> None:
    import torch
    torch.export.save(program, path, extra_files={MANIFEST_FILE: manifest.to_json()})


def load(path: str | Path) -> tuple[Any, Manifest]:
    """``(ExportedProgram, manifest)`` of an archive; a file that is none is a one-line error."""
    import torch
    extra = {MANIFEST_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as err:  # torch raises many types for a bad archive
        raise UsageError(f"{path} is not a torch.export archive ({type(err).__name__})",
                         "export it with evim-deploy export --target torch") from None
    if not extra[MANIFEST_FILE]:
        raise UsageError(f"{path} carries no evim-deploy manifest", "export it with evim-deploy")
    return program, Manifest.from_json(extra[MANIFEST_FILE])


def summary(path: str | Path) -> FileSummary:
    program, _ = load(path)
    ops = [str(node.target).split(".")[1] if str(node.target).startswith("aten.") else str(node.target)
           for node in program.graph.nodes if node.op == "call_function"]
    return FileSummary(op_histogram(ops), len(ops), Path(path).stat().st_size, "aten ops")
