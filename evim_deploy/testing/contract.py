"""The contract every target of :data:`evim_deploy.targets.TARGETS` keeps, as plain functions a test suite calls.

A new target (one module per role and one table row) passes these, or it is not done:

* :func:`check_spec`: the row is consistent (suffix, precisions, calibration, float policy, options, runtime);
* :func:`check_file`: an exported file round-trips: the suffix names its target, its runtime loads it, the
  manifest it carries is the model's, ``io()`` describes the real tensors, ``predict`` takes images and
  arrays, ``verify`` passes, and the format's summary reads it;
* :func:`check_refuses_existing_output` and :func:`check_atomic_write`: an export never overwrites a file
  without ``force`` and never leaves a partial file behind.
"""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import CalibrationSet
from ..errors import UsageError
from ..files import artifact_digest
from ..formats import FileSummary
from ..quantize.groups import split_groups
from ..runtime import Runtime
from ..samples import sample_images
from ..targets import TARGETS, TargetSpec, export, load, target_for_path
from ..verify import verify


def check_spec(spec: TargetSpec, deploy: Any) -> None:
    """The row's declarations agree with each other and with the exporter and runtime it points to."""
    assert TARGETS.get(spec.name) is spec, f"{spec.name} is not the table's row"
    assert spec.suffix.startswith(".") and spec.suffix == spec.suffix.lower(), spec.suffix
    assert [s.name for s in TARGETS.values() if s.suffix == spec.suffix] == [spec.name], "suffix not unique"
    assert spec.default_precision in spec.precisions
    assert set(spec.calibrated) <= set(spec.precisions)
    assert issubclass(spec.runtime, Runtime) and spec.runtime.name == spec.name
    if spec.default_float_groups:
        assert spec.mixed_precision and spec.calibrated, "a float policy needs a quantized, mixed-precision precision"
        split_groups(spec.default_float_groups, deploy)  # raises on a name outside the vocabulary
    parameters = inspect.signature(spec.exporter).parameters
    for option in spec.options:
        assert option.dest in parameters, f"{spec.name} declares {option.flag} but its exporter has no {option.dest}"
    if spec.mixed_precision:
        assert "float_groups" in parameters, f"{spec.name} is mixed-precision but its exporter takes no float_groups"
    for option in spec.runtime_options:
        assert option.dest in inspect.signature(spec.runtime).parameters, f"{spec.name} runtime lacks {option.dest}"


def export_for_contract(spec: TargetSpec, deploy: Any, precision: str, folder: Path,
                        calibration: CalibrationSet | None) -> Path:
    output = folder / f"contract-{precision}{spec.suffix}"
    return export(deploy, spec.name, output, precision, calibration if spec.needs_calibration(precision) else None)


def check_file(spec: TargetSpec, path: Path, reference: Any, precision: str, images: Path | None = None,
               trained: bool = False) -> dict[str, Any]:
    """Load ``path`` through the table and hold it to the contract; return its ``io()`` and verify report."""
    assert path.exists() and path.suffix == spec.suffix
    assert target_for_path(path) is spec
    expected = reference.manifest
    with load(path) as runtime:
        assert isinstance(runtime, spec.runtime)
        manifest = runtime.manifest
        assert (manifest.target, manifest.precision) == (spec.name, precision)
        assert (manifest.variant, manifest.num_classes, tuple(manifest.input_size), list(manifest.labels)) == (
            expected.variant, expected.num_classes, tuple(expected.input_size), list(expected.labels))
        io = runtime.io()
        assert io["inputs"] and io["outputs"]
        first = io["inputs"][0]
        assert list(first["shape"]) == list(runtime.input_shape) and first["dtype"] == str(runtime.input_dtype)
        assert any(entry.get("shape") and entry["shape"][-1] == expected.num_classes for entry in io["outputs"])
        photos = sample_images()[:2]
        logits = runtime.predict(photos)
        assert logits.shape == (len(photos), expected.num_classes) and logits.dtype == np.float32
        assert np.isfinite(logits).all()
        native = np.zeros((1, *runtime.input_shape[1:]), dtype=runtime.input_dtype)
        assert runtime.predict(native).shape == (1, expected.num_classes)
        report = verify(runtime, reference, images, trained=trained)
    assert report.passed, f"{path.name}: {report.summary()}"
    summary = spec.summary(path)
    assert isinstance(summary, FileSummary) and summary.count > 0 and sum(summary.ops.values()) == summary.count
    return {"io": io, "verify": report}


def check_refuses_existing_output(spec: TargetSpec, deploy: Any, path: Path) -> None:
    """A second export onto an existing file is refused and leaves the file as it was."""
    before = artifact_digest(path)
    try:
        export(deploy, spec.name, path, spec.default_precision)
    except UsageError as err:
        assert "already exists" in str(err) and "--force" in str(err)
    else:
        raise AssertionError(f"{spec.name} overwrote {path} without force")
    assert artifact_digest(path) == before


def check_atomic_write(spec: TargetSpec, deploy: Any, folder: Path, monkeypatch: Any) -> None:
    """An exporter that fails after writing leaves nothing at the output and no temporary sibling."""
    def failing(model: Any, output: Path, **kwargs: Any) -> Path:
        spec.exporter(model, output, **kwargs)
        assert output.exists(), "the exporter wrote nothing"
        raise RuntimeError("exporter failed after writing")

    monkeypatch.setitem(TARGETS, spec.name, dataclasses.replace(spec, exporter=failing))
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / f"atomic{spec.suffix}"
    try:
        export(deploy, spec.name, output, spec.default_precision)
    except RuntimeError as err:
        assert "failed after writing" in str(err)
    else:
        raise AssertionError("the failing exporter did not fail")
    assert list(folder.iterdir()) == [], f"left behind: {[p.name for p in folder.iterdir()]}"
