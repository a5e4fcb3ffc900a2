"""Shared fixtures: the in-process CLI, real photos, and the trained fixture with its digit folders (cached per
session). Randomized models come from :mod:`evim_deploy.testing`, which the ``bench/`` scripts use too."""
from __future__ import annotations

from typing import Callable

import pytest
import torch

from evim_deploy.model import reparameterize
from evim_deploy.testing import scenes_trained_model, write_photos, write_scene_folders
from evim_deploy.testing.train_fixture import trained_model, write_image_folders

torch.set_num_threads(2)


@pytest.fixture
def cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """Run the CLI in-process: ``cli(*argv)`` returns (exit code, stdout, stderr)."""
    from evim_deploy.cli import main

    def run(*argv) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """scikit-image's photos in nested folders and mixed formats (:func:`evim_deploy.testing.write_photos`)."""
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The trained fixture's digit folders: ``heldout`` (ImageNet-val layout) and ``calib``."""
    return write_image_folders(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def trained():
    """EfficientViM ``tiny`` with the committed checkpoint trained on digits (evim_deploy.testing)."""
    return trained_model()


@pytest.fixture(scope="session")
def scenes_model():
    """EfficientViM M1 with the committed fp16 checkpoint trained on digit scenes, cast to fp32."""
    return scenes_trained_model()


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """The full-size fixture's digit scenes: ``heldout`` (500, ImageNet-val layout) and ``calib`` (256)."""
    return write_scene_folders(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="session")
def trained_deploy(trained):
    return reparameterize(trained, (64, 64))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, digits):
    """``export --target all`` of the trained fixture, fp16 and int8, TFLite with --int8-io: (exit code, folder).
    Shared by tests/test_bundle.py and tests/test_golden.py (one bundle: eight exports and verifies)."""
    from evim_deploy.cli import main
    from evim_deploy.testing.train_fixture import CHECKPOINT, LABELS_FILE
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    code = main(["export", "--target", "all", "--model", "tiny", "--checkpoint", str(CHECKPOINT), "--labels",
                 str(LABELS_FILE), "--precision", "fp16,int8", "--calib", str(digits["calib"]), "--int8-io",
                 "--images", str(digits["heldout"]), "--output", str(out)])
    return code, out
