"""Exporters: deploy model -> file. ``export()`` dispatches through the backend table and writes atomically."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ..backends import get_backend
from ..calibration import CalibrationSet
from ..errors import UsageError
from ..manifest import Manifest

__all__ = ["export", "staged_output", "artifact_manifest"]


@contextmanager
def staged_output(output: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``output`` only if the block finishes.

    Nothing partial is ever left at ``output``: an exception, Ctrl-C or a failed check removes the
    temporary file or directory.
    """
    output = Path(output)
    if output.exists() and not force:
        raise UsageError(f"{output} already exists", "pass --force to overwrite it, or choose another --output")
    parent = output.parent if str(output.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=parent))
    except OSError as err:
        raise UsageError(f"cannot write to {parent} ({err.strerror or err})",
                         "choose a writable --output location") from None
    staged = tmp_dir / output.name
    try:
        yield staged
        if not staged.exists():
            raise RuntimeError(f"exporter wrote nothing to {staged}")
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(staged, output)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def artifact_manifest(model: torch.nn.Module, target: str, precision: str, **extra: Any) -> Manifest:
    """The manifest to embed in a file: the model's card plus target, precision and export details."""
    manifest: Manifest | None = getattr(model, "manifest", None)
    if manifest is None:
        raise UsageError("the model has no manifest", "build it with evim_deploy.create_model(...)")
    return manifest.replace(target=target, precision=precision, extra={**manifest.extra, **extra})


def export(model: torch.nn.Module, target: str = "onnx", output: str | Path | None = None,
           precision: str | None = None, calibration: CalibrationSet | None = None, force: bool = False,
           **options: Any) -> Path:
    """Export a deploy model (from :func:`evim_deploy.reparameterize`) to ``target``; return the file's path."""
    spec = get_backend(target)
    precision = precision or spec.default_precision
    if precision not in spec.precisions:
        raise UsageError(f"{target} does not support precision {precision!r}",
                         f"choose one of {', '.join(spec.precisions)}")
    if not hasattr(model, "input_size"):
        raise UsageError("export takes the deploy form", "pass evim_deploy.reparameterize(model, input_size)")
    output = Path(output or f"{model.manifest.variant}_{precision}{spec.suffix}")
    if output.suffix != spec.suffix:  # runtimes pick the backend by suffix: a mismatch would never load
        raise UsageError(f"{target} writes {spec.suffix} files, not {output.name!r}",
                         f"name the output {output.with_suffix(spec.suffix).name}, or pick the target for "
                         f"{output.suffix or 'that name'}")
    exporter = spec.load_exporter()
    fidelity = options.pop("fidelity", None)
    with staged_output(output, force) as staged:
        if fidelity is not None:  # mixed precision: the fewest float layer groups that reach this cosine
            from ..quantize_report import with_fidelity
            model, options = with_fidelity(model, target, precision, calibration, fidelity, options)
        exporter(model, staged, precision=precision, calibration=calibration, **options)
    return output


class _CallableModule(types.ModuleType):
    """Lets ``evim_deploy.export(model, target="onnx", ...)`` call :func:`export` while the subpackage stays."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
