"""``evaluate`` / ``evim-deploy eval``: folder-to-class mapping, top-k arithmetic, files and the reference."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from evim_deploy.errors import UsageError
from evim_deploy.evaluate import class_indices, evaluate, labelled_images, topk_accuracy
from evim_deploy.manifest import Manifest

LABELS = ["cat", "dog", "fox"]


def _manifest(labels=LABELS) -> Manifest:
    return Manifest(variant="tiny", num_classes=len(labels), input_size=(64, 64), labels=list(labels))


def _folder(root, classes: dict[str, int]):
    """``classes`` folder -> image count; each image's colour encodes its folder's position."""
    for position, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (70, 70), (80 * position, 10 * i, 0)).save(root / name / f"{i}.png")
    return root


def test_topk_accuracy_counts_hits_within_k():
    logits = np.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    targets = np.array([0, 2, 0])
    assert topk_accuracy(logits, targets, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, targets, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, targets, 5) == 1.0  # k capped at the number of classes


def test_folders_named_after_labels_map_to_their_index():
    mapping, rule = class_indices(["fox", "cat"], LABELS)
    assert mapping == {"fox": 2, "cat": 0} and "label" in rule


def test_sorted_folder_order_when_counts_match():
    mapping, rule = class_indices(["n03", "n01", "n02"], LABELS)
    assert mapping == {"n01": 0, "n02": 1, "n03": 2} and "sorted" in rule


def test_json_label_map_takes_indices_or_labels(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"a": 2, "b": "dog"}))
    assert class_indices(["a", "b"], LABELS, path)[0] == {"a": 2, "b": 1}


def test_text_label_map_is_line_order_like_imagenet_synsets(tmp_path):
    path = tmp_path / "LOC_synset_mapping.txt"
    path.write_text("n01 tabby cat\nn02 dog, doggo\n\nn03 red fox\n")
    assert class_indices(["n03", "n01"], LABELS, path)[0] == {"n03": 2, "n01": 0}


@pytest.mark.parametrize("folders, content, message", [
    (["cat", "wolf"], None, "match neither"),
    (["a"], {"a": 7}, "outside 0..2"),
    (["a", "b"], {"a": 0}, "no entry for folder(s) b"),
    (["a"], {"a": "zebra"}, "neither a class index"),
    (["a"], [1, 2], "holds a JSON list"),
])
def test_bad_mappings_are_refused_with_a_fix(tmp_path, folders, content, message):
    path = None
    if content is not None:
        path = tmp_path / "map.json"
        path.write_text(json.dumps(content))
    with pytest.raises(UsageError, match=re.escape(message)) as err:
        class_indices(folders, LABELS, path)
    assert err.value.fix


def test_loose_images_without_a_class_folder_are_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(UsageError, match="directly inside"):
        labelled_images(tmp_path, LABELS)


def test_evaluate_scores_a_predictor_and_skips_unreadable_files(tmp_path):
    data = _folder(tmp_path / "data", {"cat": 3, "dog": 2, "fox": 2})
    (data / "dog" / "broken.png").write_bytes(b"not an image")

    def predict(x):  # the normalized red level encodes the folder: a perfect classifier
        red = x[:, 0].mean(axis=(1, 2))
        return np.stack([-(red - r) ** 2 for r in (-2.1, -0.7, 0.7)], axis=1)

    result = evaluate(predict, _manifest(), data, batch=2)
    assert result.samples == 7 and len(result.skipped) == 1
    assert result.logits.shape == (7, 3)
    assert result.top1 == pytest.approx(topk_accuracy(result.logits, result.targets, 1))
    assert result.top1 == 1.0  # the skipped file did not shift images against their labels
    assert set(result.to_dict()) >= {"top1", "top5", "samples", "mapping", "skipped"}
    assert "logits" not in result.to_dict()


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("eval") / "data", {"0": 3, "1": 3})


def test_cli_eval_of_reference_and_of_its_onnx_file_agree(tmp_path, cli, colour_data):
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n1\n")
    model_args = ["--model", "tiny", "--num-classes", "2", "--labels", labels, "--seed", "3"]
    code, out, _ = cli("eval", "--data", colour_data, "--json", tmp_path / "ref.json", *model_args)
    assert code == 0 and "top-1" in out
    ref = json.loads((tmp_path / "ref.json").read_text())
    assert ref["samples"] == 6 and ref["mapping"] == "folder name = manifest label"

    onnx_file = tmp_path / "tiny.onnx"
    code, _, _ = cli("export", "--target", "onnx", "--output", onnx_file, "--no-verify", *model_args)
    assert code == 0
    code, out, _ = cli("eval", onnx_file, "--data", colour_data, "--agreement",
                           "--json", tmp_path / "file.json")
    assert code == 0
    result = json.loads((tmp_path / "file.json").read_text())
    assert result["target"] == "onnx" and result["top1"] == ref["top1"] and result["top5"] == ref["top5"]
    assert result["agreement"]["top1"] == 1.0 and result["agreement"]["cosine"] > 0.99999


def test_cli_eval_refuses_folders_that_fit_no_label(tmp_path, cli):
    data = _folder(tmp_path / "data", {"cat": 1, "dog": 1, "fox": 1})
    code, _, err = cli("eval", "--model", "tiny", "--num-classes", "10", "--data", data)
    assert code == 2 and "--label-map" in err
