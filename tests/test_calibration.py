"""Calibration: image folders (scikit-image's bundled photos), seeded sampling, the ORT reader protocol,
the refusals, and the percentile histogram that works on numpy 2."""
from __future__ import annotations

import numpy as np
import pytest

from evim_deploy.calibration import CalibrationSet, load_calibration, resolve_calibration, synthetic_calibration
from evim_deploy.errors import UsageError
from evim_deploy.export.onnx_int8 import _safe_histogram_collector, calibration_reader
from evim_deploy.manifest import Manifest
from evim_deploy.targets import load
from evim_deploy.testing.photos import PHOTOS

MANIFEST = Manifest("m1", 10, (64, 96), [str(i) for i in range(10)])


def test_folder_is_read_recursively_in_every_format(photo_dir):
    calib = load_calibration(photo_dir, MANIFEST, samples=100)
    assert len(calib) == len(PHOTOS) and not calib.skipped and not calib.synthetic
    assert calib.images.shape == (len(PHOTOS), 3, 64, 96) and calib.images.dtype == np.float32
    # normalized with the manifest's mean/std: roughly zero-centred, not 0..255
    assert -3 < calib.images.mean() < 3 and calib.images.std() > 0.3


def test_sampling_is_seeded_and_capped(photo_dir):
    a, b = (load_calibration(photo_dir, MANIFEST, samples=3, seed=7) for _ in range(2))
    c = load_calibration(photo_dir, MANIFEST, samples=3, seed=8)
    assert len(a) == 3 and np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_reader_follows_the_ort_protocol():
    calib = CalibrationSet(np.arange(3 * 3 * 4 * 4, dtype=np.float32).reshape(3, 3, 4, 4), "test")
    reader = calibration_reader(calib, "input")
    batches = [reader.get_next() for _ in range(4)]
    assert [b is None for b in batches] == [False, False, False, True]
    for image, batch in zip(calib.images, batches):
        assert set(batch) == {"input"} and batch["input"].shape == (1, 3, 4, 4)
        assert np.array_equal(batch["input"][0], image)


def test_empty_calibration_dir_is_refused(tmp_path):
    with pytest.raises(UsageError, match="has no files") as err:
        load_calibration(tmp_path, MANIFEST)
    assert "--calib" in err.value.fix


def test_dir_of_non_images_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(UsageError, match="2 files but no images"):
        load_calibration(tmp_path, MANIFEST)


def test_dir_of_unreadable_images_is_refused(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UsageError, match="none of the 1 images"):
        load_calibration(tmp_path, MANIFEST)


def test_int8_without_calibration_is_refused():
    with pytest.raises(UsageError, match="INT8 needs calibration images") as err:
        resolve_calibration(None, False, MANIFEST)
    assert "--calib DIR" in err.value.fix and "--calib-synthetic" in err.value.fix


def test_synthetic_calibration_warns_loudly(capsys):
    calib = resolve_calibration(None, True, MANIFEST, samples=5)
    err = " ".join(capsys.readouterr().err.split())
    assert "WARNING" in err and "SYNTHETIC" in err and "NOT representative" in err
    assert calib.synthetic and len(calib) == 5 and "SYNTHETIC" in calib.describe()


def test_synthetic_is_seeded_and_in_the_pixel_range():
    a, b = synthetic_calibration(MANIFEST, 4, seed=1), synthetic_calibration(MANIFEST, 4, seed=1)
    assert np.array_equal(a.images, b.images)
    low = (0 - np.array(MANIFEST.mean)) / np.array(MANIFEST.std)
    high = (1 - np.array(MANIFEST.mean)) / np.array(MANIFEST.std)
    assert (a.images.min(axis=(0, 2, 3)) >= low - 1e-5).all() and (a.images.max(axis=(0, 2, 3)) <= high + 1e-5).all()


# ------------------------------------------------------------------------------------------------ percentile
def _collector():
    return _safe_histogram_collector(method="percentile", symmetric=True, num_bins=2048, num_quantized_bins=128,
                                     percentile=99.999, scenario="same")


@pytest.mark.parametrize("values", [np.full(64, 1e5, np.float32),                          # constant, large
                                    np.linspace(1000, 1000.01, 64, dtype=np.float32)])  # narrow band
def test_percentile_histogram_survives_what_breaks_ort_on_numpy_2(values):
    from onnxruntime.quantization.calibrate import HistogramCollector
    stock = HistogramCollector(method="percentile", symmetric=True, num_bins=2048, num_quantized_bins=128,
                               percentile=99.999, scenario="same")
    with pytest.raises(ValueError, match="Too many bins"):
        stock.collect({"t": [values]})
    ours = _collector()
    ours.collect({"t": [values]})
    low, high = ours.compute_collection_result()["t"][:2]
    assert float(low) == pytest.approx(values.min()) and float(high) == pytest.approx(values.max(), rel=1e-3)


def test_percentile_clips_rare_outliers_and_keeps_the_sign():
    rng = np.random.default_rng(0)
    data = rng.standard_normal(200_000).astype(np.float32)
    data[:2] = [-60.0, 70.0]  # 2 in 200k: beyond the 99.999th percentile of |x|
    collector = _collector()
    collector.collect({"t": [data[:100_000]]})
    collector.collect({"t": [data[100_000:] * 1.5]})  # a second batch widens the range: bins are extended
    low, high = collector.compute_collection_result()["t"][:2]
    assert -10 < float(low) < -3 and 3 < float(high) < 10


def test_cli_percentile_export_of_a_small_model(tmp_path, cli, photo_dir):
    out = tmp_path / "p.onnx"
    code, _, err = cli("export", "--target", "onnx", "--resolution", "64", "--precision", "int8",
                           "--calib", photo_dir, "--calib-method", "percentile", "--output", out, "--no-verify")
    assert code == 0, err
    with load(out) as backend:
        assert backend.manifest.extra["calib_method"] == "percentile"
        assert np.isfinite(backend.predict(np.zeros((1, 3, 64, 64), np.float32))).all()
