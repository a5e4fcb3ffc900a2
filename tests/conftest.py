"""Shared fixtures: small randomized models and their deploy forms, and the trained fixture with its digit
folders, cached per session."""
from __future__ import annotations

import functools

import pytest
import torch

from evim_deploy.model import create_model, reparameterize
from evim_deploy.model.randomize import randomize_

torch.set_num_threads(2)


@functools.lru_cache(maxsize=None)
def randomized_model(variant: str = "m1", seed: int = 0, num_classes: int = 1000):
    """A reference model whose BN stats, gates, A, D and fusion weights are all random."""
    return randomize_(create_model(variant, num_classes=num_classes, seed=seed), seed)


@functools.lru_cache(maxsize=None)
def deploy_model(variant: str = "m1", size: tuple[int, int] = (224, 224), seed: int = 0):
    return reparameterize(randomized_model(variant, seed), size)


@pytest.fixture
def m1():
    return randomized_model("m1")


@pytest.fixture
def m1_deploy():
    return deploy_model("m1")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    from evim_deploy.cli import main
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The trained fixture's digit folders: ``train``, ``heldout`` (ImageNet-val layout) and ``calib``."""
    from fixtures.train_fixture import write_image_folders
    return write_image_folders(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def trained():
    """EfficientViM ``tiny`` with the committed checkpoint trained on digits (tests/fixtures)."""
    from fixtures.train_fixture import CHECKPOINT, LABELS_FILE
    return create_model("tiny", CHECKPOINT, labels=LABELS_FILE)


@pytest.fixture(scope="session")
def trained_deploy(trained):
    return reparameterize(trained, (64, 64))
