"""Core ML target: every precision of M1 (128x128) exported, opened and verified on Linux through the
numpy MIL interpreter; the spec an app sees; the ImageType path; a wrong file caught; nothing partial left.
"""
from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from evim_deploy.testing.extras import require

require("coremltools", "coreml")

from evim_deploy.calibration import load_calibration, synthetic_calibration  # noqa: E402
from evim_deploy.errors import TargetUnavailableError, UsageError  # noqa: E402
from evim_deploy.export.coreml import DEFAULT_FLOAT_GROUPS  # noqa: E402
from evim_deploy.formats import MANIFEST_KEY  # noqa: E402
from evim_deploy.formats.coreml import IMAGE_INPUT, LOGITS  # noqa: E402
from evim_deploy.manifest import Manifest  # noqa: E402
from evim_deploy.preprocess import load_image, normalize, resize_and_crop  # noqa: E402
from evim_deploy.samples import sample_images  # noqa: E402
from evim_deploy.targets import export, load  # noqa: E402
from evim_deploy.testing import deploy_model, randomized_model  # noqa: E402
from evim_deploy.verify import THRESHOLDS, verify  # noqa: E402

SIZE = (128, 128)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Callable[..., Path]:
    """``package(precision, input_kind="image", min_target="iOS16")``: M1 at 128x128, exported once per
    (precision, input, target) for the whole module."""
    workdir = tmp_path_factory.mktemp("coreml")
    files: dict[tuple[str, str, str], Path] = {}

    def get(precision: str, input_kind: str = "image", min_target: str = "iOS16") -> Path:
        key = (precision, input_kind, min_target)
        if key not in files:
            deploy = deploy_model("m1", SIZE)
            calibration = synthetic_calibration(deploy.manifest, 16) if precision == "w8a8" else None
            files[key] = export(deploy, "coreml", workdir / f"m1_{precision}_{input_kind}_{min_target}.mlpackage",
                                precision, calibration, input_kind=input_kind, min_target=min_target)
        return files[key]

    return get


def verified(path: Path, **kwargs):
    with load(path) as backend:
        return verify(backend, randomized_model("m1"), **kwargs), backend.interpreter


# --------------------------------------------------------------------------------- acceptance: verify
def test_fp32_file_matches_the_reference_within_1e4(package):
    report, interpreter = verified(package("fp32"))
    print(report.summary())
    assert report.passed and report.thresholds == THRESHOLDS["fp32"]
    assert all(m.max_abs <= 1e-4 for m in report.metrics.values())


def test_fp16_file_runs_in_fp16_and_keeps_cosine_0_9999(package):
    report, interpreter = verified(package("fp16"))
    print(report.summary())
    assert report.passed and report.thresholds == THRESHOLDS["fp16"]
    assert all(m.cosine >= 0.9999 for m in report.metrics.values())
    stored = {dtype for _, _, outputs in interpreter.steps for _, dtype in outputs if dtype is not None}
    assert np.dtype(np.float16) in stored  # activations are held in fp16 between ops


@pytest.mark.slow
def test_int8_weights_at_ios18_tensor_input_are_judged_as_int8_weights(package):
    path = package("int8", "tensor", "iOS18")
    report, interpreter = verified(path)
    print(report.summary())
    assert report.precision == "int8" and report.thresholds == THRESHOLDS["int8-weights"]
    assert report.passed and all(m.cosine >= 0.999 for m in report.metrics.values())
    assert "constexpr_blockwise_shift_scale" in interpreter.op_counts  # the iOS 18 form of int8 weights


@pytest.mark.slow
def test_w8a8_file_has_int8_weights_and_activations(package):
    """Quantize/dequantize pairs on the activations, constexpr int8 weights, iOS 17; the interpreter's
    kernels for both are checked against torch in test_coreml_interpreter.py. Calibrated on synthetic data
    here, so the cosine is only bounded loosely; calibrated on real photos, M1-M4 reach 0.993 (README, Core ML
    section), and the trained fixture's decisions are held to the trained bounds below."""
    path = package("w8a8")
    report, interpreter = verified(path)
    print(report.summary())
    counts = interpreter.op_counts
    assert counts["quantize"] == counts["dequantize"] > 50 and counts["constexpr_affine_dequantize"] > 20
    assert report.thresholds == THRESHOLDS["w8a8"]
    with load(path) as backend:
        extra = backend.manifest.extra
    assert extra["min_target"] == "iOS17"  # raised: activation quantization needs it
    assert extra["activations"] == "int8" and extra["float_groups"] == list(DEFAULT_FLOAT_GROUPS)
    assert report.metrics["images"].cosine > 0.9


@pytest.mark.slow
def test_w8a8_of_the_trained_fixture_passes_verify_on_held_out_digits(trained, trained_deploy, digits, tmp_path):
    path = export(trained_deploy, "coreml", tmp_path / "tiny_w8a8.mlpackage", "w8a8",
                  load_calibration(digits["calib"], trained_deploy.manifest, 64), min_target="iOS17")
    with load(path) as backend:
        report = verify(backend, trained, digits["heldout"], random_inputs=0, trained=True)
    print(report.summary())
    assert report.passed and report.thresholds["cosine"] == 0.995 and report.thresholds["top1"] == 0.99


# ------------------------------------------------------------------------------ acceptance: wrong file
def _perturb_first_conv_weight(path: Path, delta: float = 0.5) -> None:
    """Add ``delta`` to one float32 of the first conv's weight, in weight.bin on disk."""
    import coremltools as ct
    spec = ct.utils.load_spec(str(path))
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    conv = next(op for op in block.operations if op.type == "conv")
    weight = conv.inputs["weight"].arguments[0].name
    const = next(op for op in block.operations if op.type == "const" and op.outputs[0].name == weight)
    blob = const.attributes["val"].blobFileValue
    with open(path / "Data/com.apple.CoreML/weights/weight.bin", "r+b") as f:
        f.seek(blob.offset)
        sentinel, _, _, data_offset = struct.unpack("<IIQQ", f.read(24))
        assert sentinel == 0xDEADBEEF
        f.seek(data_offset)
        value = struct.unpack("<f", f.read(4))[0]
        f.seek(data_offset)
        f.write(struct.pack("<f", value + delta))


def test_verify_fails_when_one_weight_is_perturbed(package, tmp_path):
    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(package("fp32"), broken)
    _perturb_first_conv_weight(broken)
    report, _ = verified(broken)
    assert not report.passed and any("max|Δ|" in failure for failure in report.failures)


# ----------------------------------------------------------------------------- acceptance: ImageType
def test_uint8_rgb_image_equals_the_reference_on_the_normalized_image(package):
    path = package("fp32")
    with load(path) as backend:
        assert backend.input_shape == (1, *SIZE, 3) and backend.input_dtype == np.uint8
        manifest = backend.manifest
        pixels = np.stack([np.asarray(resize_and_crop(load_image(p), manifest)) for p in sample_images()])
        logits = backend.predict(pixels)  # native form: uint8 RGB, as a camera frame
        with pytest.raises(UsageError, match="uint8"):
            backend.predict(pixels.astype(np.float32))
    with torch.no_grad():
        expected = randomized_model("m1")(torch.from_numpy(normalize(pixels, manifest))).numpy()
    assert np.abs(logits - expected).max() <= 1e-4


# --------------------------------------------------------------------------------- acceptance: spec
def _class_labels(spec) -> list[str]:
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    classify = next(op for op in block.operations if op.type == "classify")
    values = classify.inputs["classes"].arguments[0].value.immediateValue.list.values
    return [v.immediateValue.tensor.strings.values[0] for v in values]


def test_spec_shows_inputs_outputs_labels_and_metadata(package):
    import coremltools as ct
    path = package("fp16")
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    description = spec.description
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion == 7  # iOS 16
    (image,) = description.input
    assert image.name == IMAGE_INPUT and image.type.WhichOneof("Type") == "imageType"
    assert (image.type.imageType.height, image.type.imageType.width) == SIZE
    assert image.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    outputs = {o.name: o for o in description.output}
    assert set(outputs) == {"classLabel", "classLabel_probs", LOGITS}
    logits = outputs[LOGITS].type.multiArrayType
    assert list(logits.shape) == [1, 1000] and logits.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert outputs["classLabel"].type.WhichOneof("Type") == "stringType"
    assert outputs["classLabel_probs"].type.WhichOneof("Type") == "dictionaryType"
    assert description.predictedFeatureName == "classLabel"
    assert description.predictedProbabilitiesName == "classLabel_probs"
    manifest = Manifest.from_json(description.metadata.userDefined[MANIFEST_KEY])
    assert _class_labels(spec) == manifest.labels and len(manifest.labels) == 1000
    assert manifest.target == "coreml" and manifest.precision == "fp16" and manifest.input_size == SIZE
    assert manifest.extra["input"] == "image" and manifest.extra["image_input"]["scale"] == pytest.approx(1 / 255)
    metadata = description.metadata
    assert metadata.author == "evim-deploy" and metadata.license and metadata.versionString
    assert "EfficientViM-M1" in metadata.shortDescription and "fp16" in metadata.shortDescription
    assert image.shortDescription and all(o.shortDescription for o in description.output)


def test_classifier_outputs_are_softmax_of_the_logits(package):
    from evim_deploy.runtime.mil_interpreter import MILInterpreter
    interpreter = MILInterpreter.from_package(package("fp16"))
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 3, *SIZE)).astype(np.float32)
    out = interpreter.run({IMAGE_INPUT: pixels})
    logits = out[LOGITS][0].astype(np.float64)
    probs = np.array(list(out["classLabel_probs"].values()))
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.abs(probs - expected).max() < 1e-3 and probs.sum() == pytest.approx(1, abs=1e-3)
    assert out["classLabel"] == list(out["classLabel_probs"])[int(np.argmax(logits))]


# ------------------------------------------------------------------------ acceptance: nothing partial
def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    from evim_deploy.formats import coreml as coreml_format
    deploy = deploy_model("m1", SIZE)
    target = tmp_path / "out" / "m1.mlpackage"

    def crash(*args, **kwargs):
        raise RuntimeError("simulated failure after conversion")

    monkeypatch.setattr(coreml_format, "embed_manifest", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        export(deploy, "coreml", target, "fp32")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with pytest.raises(UsageError, match="calibration"):
        export(deploy, "coreml", target, "w8a8")
    assert not target.exists()


# ------------------------------------------------------------------------------------- CLI, runtime
@pytest.mark.slow
def test_cli_export_verify_predict(tmp_path, cli):
    out = tmp_path / "m1.mlpackage"
    code, _, _ = cli("export", "--target", "coreml", "--model", "m1", "--resolution", "128",
                         "--precision", "fp16", "--output", out)
    assert code == 0 and (out / "Manifest.json").exists()
    assert cli("verify", out, "--json", tmp_path / "report.json")[0] == 0
    assert json.loads((tmp_path / "report.json").read_text())["passed"]
    code, text, _ = cli("predict", out, sample_images()[0], "--json")
    assert code == 0 and len(next(iter(json.loads(text).values()))) == 5


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS predicts with real Core ML")
def test_linux_backend_is_the_interpreter_and_says_so(package):
    path = package("fp16")
    with pytest.raises(TargetUnavailableError, match="macOS"):
        load(path, engine="coreml")
    with load(path) as backend:
        assert backend.engine == "interpreter" and "macOS" in backend.benchmark_unavailable
        io = backend.io()
    assert io["inputs"][0]["kind"] == "image" and io["inputs"][0]["shape"] == [1, *SIZE, 3]
    assert [o["name"] for o in io["outputs"]] == ["classLabel", "classLabel_probs", LOGITS]
    with pytest.raises(UsageError, match="compute units"):
        load(path, compute_units="gpu_only")
