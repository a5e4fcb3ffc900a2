"""Every target x precision of the table keeps the target contract (:mod:`evim_deploy.testing.contract`) on the
trained ``tiny`` fixture at 64x64: export -> load -> io() -> predict -> verify, the manifest round trip, the
format's summary, refusing an existing output and the atomic write. Plus what the table promises as a whole:
it is the only place that names a target, and reading it imports no heavy library."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evim_deploy.calibration import load_calibration
from evim_deploy.targets import TARGETS
from evim_deploy.testing import contract

PACKAGE = Path(__file__).resolve().parents[1] / "evim_deploy"
# INT8 conversions of the slower converters take most of this module's time: the slow tier
SLOW = {("tflite", "int8"), ("tflite", "fp16"), ("coreml", "w8a8"), ("executorch", "int8")}
CASES = [pytest.param(name, precision, id=f"{name}-{precision}",
                      marks=[pytest.mark.slow] if (name, precision) in SLOW else [])
         for name, spec in TARGETS.items() for precision in spec.precisions]


@pytest.fixture(scope="module")
def judged_digits(digits, tmp_path_factory):
    """Six held-out digits of each class (the folder verify judges on; it reads at most 64 images)."""
    folder = tmp_path_factory.mktemp("judged")
    for class_dir in sorted(p for p in digits["heldout"].iterdir() if p.is_dir()):
        (folder / class_dir.name).mkdir()
        for image in sorted(class_dir.iterdir())[:6]:
            shutil.copy(image, folder / class_dir.name / image.name)
    return folder


@pytest.fixture(scope="module")
def calibration(digits, trained_deploy):
    return load_calibration(digits["calib"], trained_deploy.manifest, samples=128)


@pytest.mark.parametrize("name", list(TARGETS))
def test_the_row_is_consistent(name, trained_deploy):
    contract.check_spec(TARGETS[name], trained_deploy)


@pytest.mark.parametrize("name, precision", CASES)
def test_export_load_io_predict_verify(name, precision, trained, trained_deploy, calibration, judged_digits,
                                       tmp_path, monkeypatch):
    spec = TARGETS[name]
    spec.check_installed()  # the test environment installs every extra: a missing one is a failure, not a skip
    path = contract.export_for_contract(spec, trained_deploy, precision, tmp_path, calibration)
    result = contract.check_file(spec, path, trained, precision, judged_digits, trained=True)
    assert result["verify"].metrics["images"].samples == 60
    if precision == spec.default_precision:
        contract.check_refuses_existing_output(spec, trained_deploy, path)
        contract.check_atomic_write(spec, trained_deploy, tmp_path / "atomic", monkeypatch)


def test_reading_the_table_imports_no_converter_or_framework():
    """The runtimes are loaded through the table, so the table must stay light: a TFLite or ONNX app process
    must not pay for torch, and a missing extra must not break ``load`` of another target."""
    heavy = ("torch", "onnx", "onnxruntime", "coremltools", "litert_torch", "ai_edge_litert", "tensorflow")
    code = ("import sys, evim_deploy.targets, evim_deploy.cli; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_only_the_table_and_the_target_modules_name_a_target():
    """``grep '"onnx"|"coreml"|"tflite"|"torch"'`` outside targets.py and the per-target modules finds only
    user-facing text (help strings and messages), never a rule."""
    names = "|".join(re.escape(name) for name in TARGETS)
    literal = re.compile(rf"""["']({names})["']""")
    own = {PACKAGE / "targets.py"} | {PACKAGE / role / f"{name}{tail}.py" for role in ("export", "runtime", "formats")
                                      for name in TARGETS for tail in ("", "_int8")}
    rules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in own or path.parts[-2] == "gpu":  # gpu/: "torch" there names the torch kernels, not the target
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if literal.search(code) and not re.search(r"""help=|f["']|UsageError\(|warn\(|print\(""", code):
                rules.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not rules, "\n".join(rules)
