"""``export --target all``: one folder with every mobile target and precision, verified, ready to drop into an app.

The folder holds the files, ``labels.txt``, ``manifest.json`` (:class:`Bundle` as JSON), a ``README.md``
for app developers (:mod:`.readme`) and ``golden/``: a photo, each file's exact input and logits, and the
generated device tests that check them on the phone (:mod:`.golden`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..calibration import CalibrationSet
from ..console import console
from ..errors import EvimError, UsageError
from ..files import BUNDLE_MANIFEST, BUNDLE_README, artifact_bytes, artifact_digest, staged_output
from ..targets import export, get_target, load, mobile_targets
from .golden import GOLDEN_DIR, Golden
from .readme import render_readme

__all__ = ["Bundle", "BundleFile", "build_bundle", "plan"]


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
    coverage: list[dict[str, Any]] | None = None  # what each accelerator takes of it (formats.Coverage)
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
    top1_judged: bool = True  # False with random weights: top-1 agreement is reported, not judged

    @property
    def passed(self) -> bool:
        return all(f.status == "PASS" for f in self.files)


def plan(targets: list[str], precisions: list[str] | None) -> list[tuple[str, str]]:
    """(target, precision) pairs: every precision asked for that the target writes (all by default)."""
    pairs = []
    for target in targets:
        spec = get_target(target)
        pairs += [(target, p) for p in (precisions or spec.precisions) if p in spec.precisions]
    if not pairs:
        written = dict.fromkeys(p for target in targets for p in get_target(target).precisions)
        raise UsageError(f"no target writes precision(s) {', '.join(precisions or [])}",
                         f"choose from {', '.join(written)}")
    return pairs


def _verify(path: Path, reference: torch.nn.Module, trained: bool, images: Path | None,
            golden: Golden | None = None) -> tuple[dict, dict]:
    """verify's report (as a dict) and the file's I/O as an app sees it; ``golden`` records the file's golden
    data under the bounds it was judged by. With random weights (not ``trained``) top-1 agreement is noise
    (near-tied logits): reported, not judged."""
    from ..verify import thresholds_for, verify
    with load(path) as runtime:
        bounds = thresholds_for(runtime.manifest, trained)
        unjudged = None if trained or "top1" not in bounds else {k: v for k, v in bounds.items() if k != "top1"}
        report = verify(runtime, reference, images, trained=trained, bounds=unjudged).to_dict()
        report["file"] = path.name
        if golden is not None:
            golden.add(path.name, runtime.name, runtime.manifest.precision, runtime, report["thresholds"])
        return report, runtime.io()


def build_bundle(reference: torch.nn.Module, deploy: torch.nn.Module, output: str | Path,
                 targets: list[str] | None = None, precisions: list[str] | None = None,
                 calibration: CalibrationSet | None = None, force: bool = False, trained: bool = False,
                 options: dict[str, dict[str, Any]] | None = None, images: Path | None = None) -> Bundle:
    """Export, verify (on ``images``, default the sample photos) and document every (target, precision);
    write the folder atomically; ``force`` replaces a previous bundle, never a folder holding anything else
    (:func:`~evim_deploy.files.foreign`). Without ``trained`` weights top-1 agreement is reported, not judged.
    ``options`` are per target; each file gets those that apply to its precision
    (:meth:`~evim_deploy.targets.TargetSpec.export_options`)."""
    pairs = plan(list(targets or mobile_targets()), precisions)
    manifest = deploy.manifest
    with staged_output(output, force, bundle=True) as staged:
        staged.mkdir()
        bundle = Bundle(Path(output), {}, top1_judged=trained)
        golden = Golden(staged / GOLDEN_DIR, reference, manifest, images)
        for target, precision in pairs:
            spec = get_target(target)
            entry = BundleFile(f"model-{precision}{spec.suffix}", target, precision)
            bundle.files.append(entry)
            console.print(f"{target} {precision} → {entry.file}", style="bold")
            try:
                path = export(deploy, target, staged / entry.file, precision, calibration,
                              **spec.export_options(precision, (options or {}).get(target, {})))
                entry.bytes, entry.sha256 = artifact_bytes(path), artifact_digest(path)
                entry.coverage = [c.to_dict() for c in spec.summary(path).coverage]
                entry.verify, entry.io = _verify(path, reference, trained, images, golden)
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
        common["golden"] = golden.finish(common)
        bundle.manifest = common
        (staged / BUNDLE_MANIFEST).write_text(json.dumps(common, indent=2))
        (staged / BUNDLE_README).write_text(render_readme(bundle))
    return bundle
