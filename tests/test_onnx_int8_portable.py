"""Portable ONNX INT8: the same integers on every x86 CPU, with or without VNNI.

ONNX Runtime's u8 x s8 kernels on x86 without VNNI add each pair of products into a saturating int16
(``vpmaddubsw``). The portable format keeps matrix-product weights within 7 bits, so no pair can saturate;
the checks here are the file's weights (a format check), the numpy emulation of the non-VNNI kernel, the
hazard ``verify`` names on such a host (``evim_deploy.host`` monkeypatched), the trained bounds, and, where
``qemu-x86_64`` is installed, ORT's real AVX2 kernels under an emulated AVX2-only CPU.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import numpy as np
import onnx
import pytest

from evim_deploy import host
from evim_deploy.calibration import load_calibration
from evim_deploy.errors import UsageError
from evim_deploy.evaluate import evaluate_file, evaluate_reference
from evim_deploy.formats.onnx import PAIR_SAFE_WEIGHT, integer_products, pair_saturating_products
from evim_deploy.preprocess import list_images, preprocess
from evim_deploy.runtime.onnx import kernel_hazard, pair_saturation
from evim_deploy.targets import export, load
from evim_deploy.verify import TRAINED_INT8, Metrics, reference_logits, verify

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})          # an AMD EPYC Zen 3 or Intel Haswell
VNNI = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}


@pytest.fixture(scope="module")
def digit_files(trained_deploy, digits, tmp_path_factory):
    """The tiny fixture's INT8 file in the portable and the VNNI-only format, every group INT8 (the harshest case:
    the old format's saturation shows most there), calibrated on calibration digits, never on held-out ones."""
    folder = tmp_path_factory.mktemp("portable")
    calibration = load_calibration(digits["calib"], trained_deploy.manifest, samples=64)
    return {name: export(trained_deploy, "onnx", folder / f"{name}.onnx", "int8", calibration, float_groups=[],
                         int8_format=name) for name in ("portable", "vnni-only")}


@pytest.fixture(scope="module")
def heldout_images(trained, digits):
    return np.stack([preprocess(p, trained.manifest.with_input_size((64, 64)))
                     for p in list_images(digits["heldout"])[::12]])


def test_portable_weights_cannot_saturate_an_int16_pair(digit_files):
    products = integer_products(onnx.load(str(digit_files["portable"])))
    matrix = [p for p in products if not p.depthwise]
    assert matrix and all(p.activations == "uint8" and p.weights == "int8" for p in products)
    assert max(p.peak for p in matrix) <= PAIR_SAFE_WEIGHT  # 255 * 64 * 2 = 32640 <= 32767
    assert max(p.peak for p in products if p.depthwise) == 127  # depthwise products are widened: 8 bits kept
    assert pair_saturating_products(digit_files["portable"]) == []
    old = pair_saturating_products(digit_files["vnni-only"])
    assert old and max(p.peak for p in old) == 127


def test_manifest_records_the_format_and_the_calibration_host(digit_files):
    with load(digit_files["portable"]) as backend:
        extra = backend.manifest.extra
    assert extra["int8_format"] == {"name": "portable", "activations": "uint8", "weights": "int8",
                                    "product_weight_bits": 7, "depthwise_weight_bits": 8, "per_channel": True}
    host_record = extra["calibrated_on"]
    assert host_record["onnxruntime"] == host.library_version("onnxruntime")
    assert host_record["isa"] == host.isa() and host_record["int16_pair_saturation"] == host.int16_pair_saturation()


def test_unknown_format_is_refused(trained_deploy, digits, tmp_path):
    calibration = load_calibration(digits["calib"], trained_deploy.manifest, samples=2)
    with pytest.raises(UsageError, match="unknown ONNX INT8 format 'u4'"):
        export(trained_deploy, "onnx", tmp_path / "x.onnx", "int8", calibration, int8_format="u4")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("flags, machine, hazard", [(AVX2_ONLY, "x86_64", True), (VNNI, "x86_64", False),
                                                    (AVX2_ONLY | {"avx_vnni"}, "x86_64", False),
                                                    (frozenset({"asimd", "asimddp"}), "aarch64", False)])
def test_kernel_hazard_names_the_old_format_on_a_host_without_vnni(digit_files, monkeypatch, flags, machine, hazard):
    monkeypatch.setattr(host, "cpu_flags", lambda: flags)
    monkeypatch.setattr(host.platform, "machine", lambda: machine)
    assert host.int16_pair_saturation() is hazard
    message = kernel_hazard(digit_files["vnni-only"])
    assert (message is not None) is hazard
    if hazard:
        assert "no VNNI" in message and "int16" in message and "re-export" in message and "; " in message
    assert kernel_hazard(digit_files["portable"]) is None
    with load(digit_files["vnni-only"]) as backend:
        assert backend.kernel_hazard() == message


def test_emulated_non_vnni_kernel_saturates_the_old_format_only(digit_files, heldout_images):
    """numpy emulation of vpmaddubsw on held-out digits: fraction of pair sums beyond int16, per product."""
    old = pair_saturation(digit_files["vnni-only"], heldout_images)
    new = pair_saturation(digit_files["portable"], heldout_images)
    assert set(old) == set(new) and len(new) >= 20
    assert max(old.values()) > 1e-3 and sum(v > 0 for v in old.values()) >= 5
    assert max(new.values()) == 0.0


def test_pair_saturation_counts_pairs_along_k(tmp_path):
    """A MatMul whose first input pair is 255 * 127 * 2 and second 255 * 64 * 2: one pair of two saturates."""
    from onnx import TensorProto, helper, numpy_helper
    weight = np.array([[127], [127], [64], [64]], np.int8)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
         helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
         helper.make_node("DequantizeLinear", ["w", "s", "wz"], ["wd"]),
         helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array(1.0, np.float32), "s"),
         numpy_helper.from_array(np.array(0, np.uint8), "z"), numpy_helper.from_array(np.array(0, np.int8), "wz")])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    assert pair_saturation(path, np.full((1, 4), 255.0, np.float32)) == {"mm": 0.5}
    assert [p.node for p in pair_saturating_products(path)] == ["mm"]


def test_portable_default_meets_the_trained_bounds(trained, trained_deploy, digits, tmp_path):
    """The default policy in the portable format, calibrated on other digits than the held-out ones judged."""
    calibration = load_calibration(digits["calib"], trained_deploy.manifest, samples=128)
    path = export(trained_deploy, "onnx", tmp_path / "t.onnx", "int8", calibration)
    with load(path) as backend:
        report = verify(backend, trained, digits["heldout"], trained=True)
    assert report.passed, report.summary()  # cosine >= 0.995, top-1 agreement >= 99% on held-out digits
    drop = evaluate_reference(trained, digits["heldout"]).top1 - evaluate_file(path, digits["heldout"]).top1
    assert drop <= 0.005


QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
AVX2_RUN = """
import sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    np.save(path + ".npy", np.concatenate([s.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))]))
"""


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None or not host.is_x86(), reason="needs qemu-x86_64 (apt-get install qemu-user-static)")
def test_real_avx2_kernels_compute_the_portable_file_exactly(digit_files, heldout_images, tmp_path):
    """ONNX Runtime under qemu's Haswell CPU model (AVX2, no VNNI, no AVX-512): MLAS picks its AVX2 kernels, so
    this runs the very instructions of an AVX2-only host. The portable file matches this host to float rounding;
    the VNNI-only file does not."""
    inputs = tmp_path / "x.npy"
    np.save(inputs, heldout_images[:8])
    files = {name: shutil.copy(path, tmp_path / f"{name}.onnx") for name, path in digit_files.items()}
    here = {}
    for name, path in files.items():
        with load(path) as backend:
            here[name] = np.concatenate([backend.predict(x[None]) for x in heldout_images[:8]])
    subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", AVX2_RUN, str(inputs), *map(str, files.values())],
                   check=True, capture_output=True, timeout=900)
    avx2 = {name: np.load(f"{path}.npy") for name, path in files.items()}
    scale = np.abs(here["portable"]).max()
    assert np.abs(avx2["portable"] - here["portable"]).max() <= 1e-5 * scale
    assert np.abs(avx2["vnni-only"] - here["vnni-only"]).max() > 1e-2 * scale


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from evim_deploy.testing import scenes_trained_model, write_scene_folders
    from evim_deploy.model import reparameterize
    reference = scenes_trained_model()
    return reference, reparameterize(reference, (224, 224)), write_scene_folders(tmp_path_factory.mktemp("scenes"))


@pytest.mark.slow
def test_trained_m1_portable_int8_meets_the_bounds_and_never_saturates(scenes, tmp_path):
    """The full-size fixture (M1 224x224 trained on digit scenes), calibrated on calibration scenes, judged on the
    held-out ones: the issue's bounds; and the emulated non-VNNI kernel clips pairs of the old format only."""
    reference, deploy, folders = scenes
    calibration = load_calibration(folders["calib"], deploy.manifest, samples=128)
    files = {name: export(deploy, "onnx", tmp_path / f"{name}.onnx", "int8", calibration, int8_format=name)
             for name in ("portable", "vnni-only")}
    paths = list_images(folders["heldout"])
    heldout = np.stack([preprocess(p, deploy.manifest) for p in paths])
    labels = np.array([int(p.parent.name) for p in paths])
    expected = reference_logits(reference, heldout)
    with load(files["portable"]) as backend:
        logits = np.concatenate([backend.predict(heldout[i:i + 50]) for i in range(0, len(heldout), 50)])
    metrics = Metrics.compare(expected, logits)
    assert metrics.cosine >= TRAINED_INT8["cosine"] and metrics.top1 >= TRAINED_INT8["top1"], metrics
    assert (expected.argmax(-1) == labels).mean() - (logits.argmax(-1) == labels).mean() <= 0.005
    images = heldout[::100]
    assert max(pair_saturation(files["portable"], images).values()) == 0.0
    assert max(pair_saturation(files["vnni-only"], images).values()) > 0.0


def test_verify_names_the_hazard_and_records_the_host(digit_files, trained, digits, monkeypatch):
    """On a host without VNNI, verify of a VNNI-only file carries the hazard as a warning; every report says where
    it ran (CPU, ISA, ORT version), which the bundle's manifest.json keeps per file."""
    monkeypatch.setattr(host, "cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.setattr(host.platform, "machine", lambda: "x86_64")
    for name, hazard in (("vnni-only", True), ("portable", False)):
        with load(digit_files[name]) as runtime:
            report = verify(runtime, trained, digits["heldout"], random_inputs=0, trained=True)
        assert bool(report.warnings) is hazard and all("no VNNI" in w for w in report.warnings)
        record = report.to_dict()["host"]
        assert record["onnxruntime"] == host.library_version("onnxruntime") and "avx2" in record["isa"]
        assert record["int16_pair_saturation"] is True
