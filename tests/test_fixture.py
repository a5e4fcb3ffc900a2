"""The trained fixture (``tiny`` on scikit-learn digits): envelope, stated accuracy, deploy parity, training script."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from evim_deploy.evaluate import evaluate_reference
from evim_deploy.model import reparameterize
from evim_deploy.testing.train_fixture import (CHECKPOINT, LABELS, LABELS_FILE, STATED_ACCURACY, accuracy,
                                               load_split, train)
from evim_deploy.verify import Metrics


def test_checkpoint_is_a_small_official_envelope():
    assert CHECKPOINT.stat().st_size <= 5_000_000
    envelope = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert {"model", "model_ema"} <= set(envelope)
    assert LABELS_FILE.read_text().split() == LABELS


def test_image_folders_have_the_imagenet_val_layout(digits):
    for split, count in (("heldout", 360), ("calib", 512)):
        folders = sorted(p.name for p in digits[split].iterdir())
        assert folders == LABELS
        assert sum(1 for _ in digits[split].rglob("*.png")) == count


def test_trained_fixture_reaches_its_stated_held_out_accuracy(trained, digits):
    assert trained.manifest.labels == LABELS and trained.manifest.num_classes == 10
    result = evaluate_reference(trained, digits["heldout"])
    print(f"fixture fp32 reference held-out top-1 {result.top1:.2%}, top-5 {result.top5:.2%}")
    assert result.samples == 360 and result.top1 >= STATED_ACCURACY


def test_deploy_form_keeps_every_decision_of_the_trained_fixture(trained, digits):
    result = evaluate_reference(trained, digits["heldout"])
    deploy = reparameterize(trained, (64, 64))
    x = torch.from_numpy(np.stack([_preprocessed(p, trained) for p in sorted(digits["heldout"].rglob("*.png"))]))
    with torch.no_grad():
        metrics = Metrics.compare(result.logits, deploy(x).numpy())
    assert metrics.max_abs <= 1e-4 and metrics.top1 == 1.0


def _preprocessed(path, model):
    from evim_deploy.preprocess import preprocess
    return preprocess(path, model.manifest)


def test_cli_runs_the_pipeline_on_the_fixture(tmp_path, cli, digits):
    model_args = ["--model", "tiny", "--checkpoint", CHECKPOINT, "--labels", LABELS_FILE]
    code, out, _ = cli("info", *model_args)
    assert code == 0 and "10 (0, 1, ...)" in out
    onnx_file = tmp_path / "tiny.onnx"
    assert cli("export", "--target", "onnx", "--output", onnx_file, *model_args)[0] == 0
    code, _, _ = cli("eval", onnx_file, "--data", digits["heldout"], "--agreement",
                         "--checkpoint", CHECKPOINT, "--json", tmp_path / "eval.json")
    result = json.loads((tmp_path / "eval.json").read_text())
    assert code == 0 and result["top1"] >= STATED_ACCURACY and result["agreement"]["top1"] == 1.0


@pytest.mark.slow
def test_training_script_learns_the_digits(digits):
    """Eight epochs on the 512 calibration images: far above chance (10%); the full run reaches 99.4%."""
    model = train(digits["calib"], epochs=8)
    assert accuracy(model, *load_split(digits["heldout"], model.manifest)) >= 0.75


def test_training_script_runs_as_a_module_of_the_installed_package(tmp_path):
    result = subprocess.run([sys.executable, "-m", "evim_deploy.testing.train_fixture", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--images" in result.stdout and not result.stderr, result.stderr
