"""The full-size trained fixture (M1 at 224x224 on digit scenes): checkpoint, generator, stated accuracy."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from evim_deploy.evaluate import evaluate_reference
from evim_deploy.preprocess import preprocess
from evim_deploy.testing import scenes as scene_gen
from evim_deploy.testing.scenes import CHECKPOINT, LABELS_FILE, PROVENANCE, STATED_ACCURACY
from evim_deploy.testing.train_scenes import MANIFEST, generate, normalized, save_checkpoint, train


def test_checkpoint_is_fp16_safetensors_that_loads_as_fp32(scenes_model):
    from safetensors import safe_open
    assert CHECKPOINT.stat().st_size <= 14_000_000
    with safe_open(str(CHECKPOINT), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert {p.dtype for p in scenes_model.state_dict().values() if p.is_floating_point()} == {torch.float32}
    manifest = scenes_model.manifest
    assert (manifest.variant, manifest.num_classes, manifest.input_size) == ("m1", 10, (224, 224))
    assert LABELS_FILE.read_text().split() == manifest.labels == scene_gen.LABELS
    facts = json.loads(PROVENANCE.read_text())
    assert facts["heldout_top1"] >= STATED_ACCURACY and facts["heldout_scenes"] == scene_gen.HELDOUT_SCENES


def test_scenes_are_drawn_at_the_size_m1_preprocessing_resizes_to(scenes_model):
    assert scenes_model.manifest.resize_size == (scene_gen.SCENE_SIDE,) * 2
    assert scenes_model.manifest.input_size == (scene_gen.INPUT_SIDE,) * 2 == MANIFEST.input_size
    image, label = scene_gen.scene("heldout", 0)
    assert image.shape == (scene_gen.SCENE_SIDE,) * 2 + (3,) and image.dtype == np.uint8 and 0 <= label <= 9


def test_generator_is_deterministic_in_split_index_and_seed():
    first, label = scene_gen.scene("heldout", 7)
    again, label_again = scene_gen.scene("heldout", 7)
    assert np.array_equal(first, again) and label == label_again
    assert not np.array_equal(first, scene_gen.scene("heldout", 8)[0])
    assert not np.array_equal(first, scene_gen.scene("heldout", 7, seed=1)[0])
    assert not np.array_equal(scene_gen.scene("train", 7)[0], scene_gen.scene("calib", 7)[0])


def test_calibration_and_held_out_scenes_show_disjoint_digit_samples():
    held_out = {scene_gen.digits("heldout")[0][scene_gen.digit_index("heldout", i)].tobytes()
                for i in range(scene_gen.HELDOUT_SCENES)}
    calib = {scene_gen.digits("train")[0][scene_gen.digit_index("calib", i)].tobytes()
             for i in range(scene_gen.CALIBRATION_SCENES)}
    assert len(held_out) == 360 and len(calib) == scene_gen.CALIBRATION_SCENES and not held_out & calib


def test_image_folders_have_the_imagenet_val_layout_and_hold_the_scenes(scenes):
    for split, count in (("heldout", 500), ("calib", scene_gen.CALIBRATION_SCENES)):
        assert sorted(p.name for p in scenes[split].iterdir()) == scene_gen.LABELS
        assert sum(1 for _ in scenes[split].rglob("*.png")) == count
    path = next(scenes["heldout"].rglob("0007.png"))
    image, label = scene_gen.scene("heldout", 7)
    assert np.array_equal(np.asarray(Image.open(path)), image) and path.parent.name == str(label)


def test_training_feeds_exactly_what_preprocess_produces():
    pixels, labels = generate("train", 2)
    for i in range(2):
        image, label = scene_gen.scene("train", i)
        assert label == int(labels[i])
        assert np.array_equal(normalized(pixels[i:i + 1])[0].numpy(), preprocess(Image.fromarray(image), MANIFEST))


def test_trained_fixture_reaches_its_stated_held_out_accuracy(scenes_model, scenes):
    result = evaluate_reference(scenes_model, scenes["heldout"])
    print(f"M1 scenes fixture fp32 reference held-out top-1 {result.top1:.2%}, top-5 {result.top5:.2%}")
    assert result.samples == 500 and result.top1 >= STATED_ACCURACY


def test_training_steps_and_fp16_checkpoint_round_trip(tmp_path):
    """Two CPU steps of the training code at 64x64, saved as fp16 safetensors and read back by create_model."""
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    labels = torch.arange(8) % 10
    model, facts = train(pixels, labels, (pixels, labels), epochs=1, batch=4, lr=1e-3, budget=0, device="cpu")
    assert facts["steps"] == 2
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, facts)
    (tmp_path / "labels.txt").write_text("\n".join(scene_gen.LABELS))
    from evim_deploy.model import create_model
    loaded = create_model("m1", path, labels=tmp_path / "labels.txt")
    x = normalized(pixels[:2])
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.half().float()(x), atol=1e-4)


def test_training_script_runs_as_a_module_of_the_installed_package(tmp_path):
    result = subprocess.run([sys.executable, "-m", "evim_deploy.testing.train_scenes", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--fast" in result.stdout and not result.stderr, result.stderr
