"""Unified runtime behaviour shared by every target: loading by suffix, prediction, thread safety."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from evim_deploy.runtime import top_k
from evim_deploy.samples import sample_images
from evim_deploy.targets import export, load
from evim_deploy.testing import randomized_model


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from evim_deploy import reparameterize
    return export(reparameterize(randomized_model("m1"), (64, 64)), target="onnx",
                  output=tmp_path_factory.mktemp("rt") / "m.onnx")


def test_predict_images_and_arrays_agree(onnx_file):
    from evim_deploy.preprocess import preprocess
    with load(onnx_file) as backend:
        photos = sample_images()
        from_images = backend.predict([str(p) for p in photos])
        from_array = backend.predict(np.stack([preprocess(p, backend.manifest) for p in photos]))
        assert from_images.shape == (len(photos), 1000)
        np.testing.assert_array_equal(from_images, from_array)
        (best,) = top_k(from_images[:1], backend.manifest.labels, k=1)
        assert best[0][0] in backend.manifest.labels and 0 < best[0][1] <= 1


def test_predict_is_thread_safe(onnx_file):
    """8 threads x 50 calls give exactly the single-threaded results."""
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((8, 1, 3, 64, 64)).astype(np.float32)
    with load(onnx_file, threads=1) as backend:
        expected = [backend.predict(x) for x in inputs]

        def worker(i: int) -> bool:
            return all(np.array_equal(backend.predict(inputs[i]), expected[i]) for _ in range(50))

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert all(pool.map(worker, range(8)))


def test_torch_export_archive_round_trip(tmp_path):
    from evim_deploy import reparameterize
    from evim_deploy.verify import verify
    model = randomized_model("m1", seed=3)
    path = export(reparameterize(model, (96, 128)), target="torch", output=tmp_path / "m1.pt2")
    with load(path) as backend:
        assert backend.manifest.input_size == (96, 128) and backend.input_shape == (1, 3, 96, 128)
        report = verify(backend, model)
    assert report.passed and report.metrics["random"].max_abs < 1e-5
