"""``export --target all``: one folder with every target and precision, verified, ready to drop into an app."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backends import BACKENDS, get_backend
from .calibration import CalibrationSet
from .console import console
from .errors import EvimError, UsageError
from .export import export, staged_output

MOBILE_TARGETS = ("onnx", "coreml", "tflite")


@dataclass
class BundleFile:
    """One exported file of the bundle and what verify said of it."""

    file: str
    target: str
    precision: str
    bytes: int = 0
    sha256: str = ""
    verify: dict[str, Any] | None = None
    io: dict[str, Any] | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error:
            return f"FAILED: {self.error}"
        if self.verify is None:
            return "not verified"
        return "PASS" if self.verify["passed"] else "FAIL: " + "; ".join(self.verify["failures"])


@dataclass
class Bundle:
    """The bundle's contents; ``manifest.json`` is its JSON form."""

    path: Path
    manifest: dict[str, Any]
    files: list[BundleFile] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(f.status == "PASS" for f in self.files)


def plan(targets: list[str], precisions: list[str] | None) -> list[tuple[str, str]]:
    """(target, precision) pairs: every precision asked for that the target writes (all by default)."""
    pairs = []
    for target in targets:
        spec = get_backend(target)
        wanted = [p for p in (precisions or spec.precisions) if p in spec.precisions]
        pairs += [(target, p) for p in wanted]
    if not pairs:
        raise UsageError(f"no target writes precision(s) {', '.join(precisions or [])}",
                         "choose from fp32, fp16, int8 (and w8a8 for coreml)")
    return pairs


def _digest(path: Path) -> tuple[int, str]:
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    digest, total = hashlib.sha256(), 0
    for f in files:
        data = f.read_bytes()
        total += len(data)
        digest.update(data)
    return total, digest.hexdigest()


def _verify(path: Path, reference: torch.nn.Module, trained: bool, images: Path | None) -> tuple[dict, dict]:
    from .runtime import load
    from .verify import verify
    with load(path) as backend:
        report = verify(backend, reference, images, trained=trained).to_dict()
        report["file"] = path.name
        return report, backend.io()


def build_bundle(reference: torch.nn.Module, deploy: torch.nn.Module, output: str | Path,
                 targets: list[str] | None = None, precisions: list[str] | None = None,
                 calibration: CalibrationSet | None = None, force: bool = False, trained: bool = False,
                 options: dict[str, dict[str, Any]] | None = None, images: Path | None = None) -> Bundle:
    """Export, verify (on ``images``, default the sample photos) and document every (target, precision);
    write the folder atomically. ``options`` are per target; ``int8_io`` applies to its int8 file only."""
    targets = list(targets or MOBILE_TARGETS)
    pairs = plan(targets, precisions)
    manifest = deploy.manifest
    with staged_output(output, force) as staged:
        staged.mkdir()
        bundle = Bundle(Path(output), {})
        for target, precision in pairs:
            spec = BACKENDS[target]
            entry = BundleFile(f"model-{precision}{spec.suffix}", target, precision)
            bundle.files.append(entry)
            console.print(f"{target} {precision} → {entry.file}", style="bold")
            try:
                target_options = dict((options or {}).get(target, {}))
                if precision != "int8":
                    target_options.pop("int8_io", None)
                path = export(deploy, target, staged / entry.file, precision, calibration, **target_options)
                entry.bytes, entry.sha256 = _digest(path)
                entry.verify, entry.io = _verify(path, reference, trained, images)
            except EvimError as err:
                entry.error = str(err)
            except Exception as err:  # one broken exporter must not hide the others' results
                entry.error = f"internal error in the {target} exporter: {type(err).__name__}: {err}"
            console.print(f"  {entry.status}")
        (staged / "labels.txt").write_text("\n".join(manifest.labels) + "\n", encoding="utf-8")
        common = manifest.to_dict()
        for per_file in ("labels", "precision", "target", "extra"):  # labels go to labels.txt; the rest per file
            common.pop(per_file)
        common.update(labels_file="labels.txt", calibration=calibration.describe() if calibration else None,
                      files=[vars(f) for f in bundle.files])
        bundle.manifest = common
        (staged / "manifest.json").write_text(json.dumps(common, indent=2))
        from .bundle_docs import render_readme
        (staged / "README.md").write_text(render_readme(bundle))
    return bundle
