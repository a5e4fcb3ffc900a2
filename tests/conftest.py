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
