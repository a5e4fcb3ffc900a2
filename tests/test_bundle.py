"""``export --target all``: the mobile bundle of the trained fixture. Its README's snippets must describe each
file's real I/O (shape, layout, dtype, int8 scale), and labels, manifest and verify results travel with it."""
from __future__ import annotations

import json
import re

import pytest

from evim_deploy.testing.extras import require
from evim_deploy.targets import TARGETS, load, mobile_targets
from evim_deploy.testing.train_fixture import LABELS_FILE

require("coremltools", "coreml")
require("ai_edge_litert", "tflite")
pytestmark = pytest.mark.slow  # six exports and verifies


@pytest.fixture
def bundle(tiny_bundle):
    """conftest's session bundle (fp16 and int8 of every mobile target, TFLite with --int8-io), shared with
    tests/test_golden.py."""
    return tiny_bundle


MOBILE_SUFFIXES = [TARGETS[name].suffix for name in mobile_targets()]  # the table's, ExecuTorch's .pte included


def _section(readme: str, file: str) -> str:
    return readme.split(f"### `{file}`", 1)[1].split("\n### ", 1)[0]


def test_every_file_is_written_verified_and_listed(bundle):
    code, out = bundle
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    files = {f["file"]: f for f in manifest["files"]}
    assert set(files) == {f"model-{p}{suffix}" for p in ("fp16", "int8") for suffix in MOBILE_SUFFIXES}
    assert all(f["verify"]["passed"] and (out / name).exists() for name, f in files.items())
    assert files["model-int8.tflite"]["verify"]["metrics"]["images"]["samples"] == 64  # judged on --images
    assert (out / "labels.txt").read_text().splitlines() == LABELS_FILE.read_text().splitlines()
    readme = (out / "README.md").read_text()
    assert all(f"| `{name}` |" in readme for name in files)
    assert "calibration" in manifest and "images" in manifest["calibration"]


def test_kotlin_snippets_match_the_tflite_files_real_io(bundle):
    _, out = bundle
    readme = (out / "README.md").read_text()
    for name in ("model-fp16.tflite", "model-int8.tflite"):
        with load(out / name) as backend:
            node = backend.io()["inputs"][0]
            output = backend.io()["outputs"][0]
        text = _section(readme, name)
        n, h, w, c = node["shape"]
        assert (n, c) == (1, 3) and f"input [1, {h}, {w}, 3] NHWC {node['dtype']}" in text
        assert f"ByteBuffer.allocateDirect({h} * {w} * 3 * {1 if node['dtype'] == 'int8' else 4})" in text
        assert f"getPixels(it, 0, {w}, 0, 0, {w}, {h})" in text
        if node["dtype"] == "int8":  # --int8-io: the snippet quantizes with the file's own scale and zero point
            q = node["quantization"]
            scale, zero = re.search(r"x / ([0-9.e-]+)f\)\.roundToInt\(\) \+ (-?\d+)", text).groups()
            assert float(scale) == pytest.approx(q["scale"]) and int(zero) == q["zero_point"]
            assert output["dtype"] == "int8" and "ByteArray(10)" in text and "quantizationParams()" in text
        else:
            assert "input.putFloat(x)" in text and "FloatArray(10)" in text


def test_swift_snippets_name_the_compiled_model_and_the_image_input(bundle):
    _, out = bundle
    readme = (out / "README.md").read_text()
    for name in ("model-fp16.mlpackage", "model-int8.mlpackage"):
        text = _section(readme, name)
        with load(out / name) as backend:
            image = backend.io()["inputs"][0]
        _, h, w, channels = image["shape"]  # an image input: height x width RGB pixels
        assert channels == 3
        assert image["kind"] == "image" and f"`{image['name']}`" in text and "RGB image" in text
        assert f'forResource: "{name.removesuffix(".mlpackage")}", withExtension: "mlmodelc"' in text
        assert f"takes a {h}x{w} RGB image" in text


def test_random_weights_report_top1_without_judging_it(tmp_path, capsys):
    """The demo's bundle (no checkpoint): top-1 of near-tied random logits is shown, never a FAIL; with a
    checkpoint the same file is judged on it as before."""
    from evim_deploy.bundle import _verify, build_bundle
    from evim_deploy.commands.common import print_bundle
    from evim_deploy.samples import sample_calibration
    from evim_deploy.testing import deploy_model, randomized_model
    from evim_deploy.verify import TRAINED_INT8
    model, deploy = randomized_model("tiny"), deploy_model("tiny", (64, 64))
    bundle = build_bundle(model, deploy, tmp_path / "b", targets=["onnx"], precisions=["int8"],
                          calibration=sample_calibration(deploy.manifest, count=16))
    (entry,) = bundle.files
    assert "top1" not in entry.verify["thresholds"] and "cosine" in entry.verify["thresholds"]
    assert "top1" in entry.verify["metrics"]["images"] and not any("top-1" in f for f in entry.verify["failures"])
    print_bundle(bundle)
    assert "top-1: reported, not judged (random weights)" in " ".join(capsys.readouterr().err.split())
    judged, _ = _verify(tmp_path / "b" / entry.file, model, True, None)
    assert judged["thresholds"]["top1"] == TRAINED_INT8["top1"]


def test_golden_data_and_device_tests_travel_with_the_bundle(bundle):
    """``golden/`` (photo, each file's input and logits, the generated device tests) is listed in the manifest,
    counts as the bundle's own (``--force`` may replace it), and the README says how to run the tests."""
    from evim_deploy.files import foreign
    _, out = bundle
    golden = json.loads((out / "manifest.json").read_text())["golden"]
    tests = [test["file"] for test in golden["tests"]]
    assert tests == ["EvimDeployGoldenTests.swift", "GoldenTest.kt", "ExecuTorchGoldenTest.kt"]
    assert all((out / golden["folder"] / name).is_file() for name in [*tests, golden["photo"], "manifest.json"])
    assert foreign(out, bundle=True) is None
    device = (out / "README.md").read_text().split("## Device tests", 1)[1]
    assert all(name in device for name in tests) and "connectedAndroidTest" in device and "MIL interpreter" in device
