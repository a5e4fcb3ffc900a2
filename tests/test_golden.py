"""``golden/`` of a bundle and its generated device tests, proven on Linux.

Every file's golden expectation is reproduced through our runtimes (ONNX Runtime, LiteRT, ExecuTorch, and Core ML
through the numpy MIL interpreter) and meets its own stated tolerance; feeding it the golden photo with mean and std
swapped, or in the other layout, must miss it. The generated Swift and Kotlin are parsed with tree-sitter's real
grammars, and the names, shapes and files they use are read out of the syntax trees and checked against the files.

Core ML cannot predict on Linux: the XCTest case is proven here only by its parse, its identifiers and the MIL
interpreter's reproduction of the golden logits; its Core ML numbers are first checked on a device.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evim_deploy.testing.extras import require
from evim_deploy.bundle.golden import GOLDEN_DIR, logits_output, misses, read_tensor
from evim_deploy.preprocess import normalize
from evim_deploy.targets import TARGETS, load, mobile_targets, target_for_path

require("coremltools", "coreml")
require("ai_edge_litert", "tflite")
pytestmark = pytest.mark.slow  # the session's bundle of the tiny fixture (eight exports), then ~2 s


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    """conftest's session bundle of the trained tiny fixture: fp16 and int8 of every mobile target (TFLite with
    int8 input and output), shared with tests/test_bundle.py."""
    code, out = tiny_bundle
    assert code == 0
    return out


@pytest.fixture(scope="module")
def golden(bundle):
    return json.loads((bundle / GOLDEN_DIR / "manifest.json").read_text())


def _mutations(native: np.ndarray, entry: dict, pixels: np.ndarray, runtime) -> dict[str, np.ndarray]:
    """The golden input made the two classic app mistakes: the other layout, and mean and std swapped (a file
    whose input is the image itself normalizes inside the model, so only its layout can go wrong)."""
    nchw = entry["input"]["layout"] == "NCHW"
    moved = np.moveaxis(native, 1, -1) if nchw else np.moveaxis(native, -1, 1)
    found = {"layout": np.ascontiguousarray(moved).reshape(native.shape)}
    if entry["input"].get("kind") != "image":
        m = runtime.manifest
        found["mean/std"] = runtime.from_nchw(normalize(pixels, m.replace(mean=m.std, std=m.mean))[None])
    return found


@pytest.fixture(scope="module")
def runs(bundle, golden):
    """Per file: its I/O, its misses on the golden input, on each mutated input, and with each other kernel set
    its runtime offers (the table's runtime options: TFLite's reference kernels), a stand-in for another device."""
    folder = bundle / GOLDEN_DIR
    pixels = read_tensor(folder, golden["pixels"]["file"], golden["pixels"]["shape"], "uint8")[0]
    found = {}
    for entry in golden["files"]:
        expected = read_tensor(folder, entry["expected"]["logits"], entry["expected"]["shape"], "float32")
        native = read_tensor(folder, entry["input"]["file"], entry["input"]["shape"], entry["input"]["dtype"])
        with load(bundle / entry["file"]) as runtime:
            mutated = _mutations(native, entry, pixels, runtime)
            found[entry["file"]] = {
                "io": runtime.io(), "misses": misses(entry, runtime.predict(native), expected),
                "mutations": {k: misses(entry, runtime.predict(x), expected) for k, x in mutated.items()}}
        found[entry["file"]]["kernels"] = {}
        for option in target_for_path(entry["file"]).runtime_options:
            with load(bundle / entry["file"], **{option.dest: True}) as other:
                found[entry["file"]]["kernels"][option.flag] = misses(entry, other.predict(native), expected)
    return found


def test_golden_holds_one_photo_and_every_files_input_and_logits(bundle, golden):
    folder = bundle / GOLDEN_DIR
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["golden"]["folder"] == GOLDEN_DIR and golden["photo"] == "photo.png"  # the first of --images
    assert {e["file"] for e in golden["files"]} == {f["file"] for f in manifest["files"]}
    for entry in golden["files"]:
        node = entry["input"]
        assert (folder / node["file"]).stat().st_size == np.prod(node["shape"]) * np.dtype(node["dtype"]).itemsize
        assert (folder / entry["expected"]["logits"]).stat().st_size == 4 * entry["expected"]["shape"][-1]
        assert 0 < entry["tolerance"]["cosine"] < 1 and entry["tolerance"]["verify_bound"]
    by_file = {e["file"]: e for e in golden["files"]}
    assert by_file["model-int8.tflite"]["input"]["dtype"] == "int8"  # --int8-io: the quantized tensor itself
    assert by_file["model-fp16.mlpackage"]["input"]["file"] == golden["pixels"]["file"]  # the image input: pixels
    assert sum(1 for p in folder.iterdir()) < 30 and sum(p.stat().st_size for p in folder.iterdir()) < 2e6


def test_every_file_reproduces_its_golden_logits_here(runs):
    """ONNX Runtime, LiteRT, ExecuTorch and the MIL interpreter (Core ML's numbers on Linux) meet each file's
    stated tolerance on its golden input."""
    assert {name: r["misses"] for name, r in runs.items() if r["misses"]} == {}
    assert {Path(name).suffix for name in runs} == {TARGETS[t].suffix for t in mobile_targets()}


def test_other_kernels_meet_the_stated_tolerance_too(runs):
    """The tolerance is meant for another device's kernels: TFLite's reference kernels (not XNNPACK) meet it."""
    other = {(name, flag): found for name, r in runs.items() for flag, found in r["kernels"].items()}
    assert other and not {k: v for k, v in other.items() if v}


def test_the_classic_app_mistakes_fail_the_golden_check(runs):
    """Mutation test: swapping mean and std, or NHWC for NCHW, in the golden input makes the reproduction fail."""
    passed = {(name, kind) for name, r in runs.items() for kind, found in r["mutations"].items() if not found}
    assert not passed
    assert sum(len(r["mutations"]) for r in runs.values()) >= 2 * len(runs) - 2  # two packages take the image


# ------------------------------------------------------------------------------------------ generated code
def _parse(path: Path):
    """The tree-sitter tree of a generated Swift or Kotlin file and the syntax errors in it."""
    tree_sitter = require("tree_sitter", "dev")
    import tree_sitter_kotlin
    import tree_sitter_swift
    grammar = tree_sitter_swift if path.suffix == ".swift" else tree_sitter_kotlin
    tree = tree_sitter.Parser(tree_sitter.Language(grammar.language())).parse(path.read_bytes())
    errors, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            errors.append(f"{path.name}:{node.start_point[0] + 1}: {node.type} {node.text.decode()[:60]!r}")
        stack += node.children
    return tree, errors


def _arguments(call) -> dict:
    """A call's arguments: labelled ones (Swift ``label:``, Kotlin ``name =``) by label, the others by position."""
    suffix = call.named_children[-1]
    holder = suffix.named_children[0] if suffix.type == "call_suffix" else suffix
    found = {}
    for i, arg in enumerate(a for a in holder.named_children if a.type == "value_argument"):
        label = arg.child_by_field_name("name")
        if label is None and any(c.type == "=" for c in arg.children):
            label = arg.named_children[0]
        found[label.text.decode() if label else i] = _value(arg.child_by_field_name("value") or arg.named_children[-1])
    return found


def _value(node):
    """A literal of the generated code as Python: strings, numbers, arrays, ranges, booleans, null, calls."""
    text = node.text.decode()
    if node.type in ("line_string_literal", "string_literal"):
        return text[1:-1]
    if node.type == "call_expression":  # intArrayOf(...) and friends are arrays; any other call, its arguments
        found = _arguments(node)
        return list(found.values()) if node.named_children[0].text.decode().endswith("Of") else found
    if node.type in ("array_literal", "range_expression"):
        return [_value(child) for child in node.named_children]
    if text in ("true", "false", "null", "nil"):
        return {"true": True, "false": False}.get(text)
    number = text.rstrip("fL")
    return int(number) if number.lstrip("-").isdigit() else float(number)


def _nodes(tree, kind: str):
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        stack += node.children
        if node.type == kind:
            yield node


def _calls(tree, name: str) -> list[dict]:
    """The arguments of every call of ``name``."""
    return [_arguments(n) for n in _nodes(tree, "call_expression") if n.named_children[0].text.decode() == name]


def _property(tree, name: str):
    """The value of the property ``name`` (Swift ``let``, Kotlin ``val``)."""
    for node in _nodes(tree, "property_declaration"):
        declared = node.child_by_field_name("name") or next(c for c in node.named_children
                                                            if c.type == "variable_declaration")
        if declared.text.decode() == name:
            return _value(node.child_by_field_name("value") or node.named_children[-1])
    raise AssertionError(f"no property {name}")


def _tests(golden: dict, target: str) -> str:
    return next(t["file"] for t in golden["tests"] if t["target"] == target)


@pytest.mark.parametrize("target", [name for name in mobile_targets() if TARGETS[name].app_test])
def test_generated_device_tests_parse_cleanly(bundle, golden, target):
    path = bundle / GOLDEN_DIR / _tests(golden, target)
    tree, errors = _parse(path)
    assert not errors and not tree.root_node.has_error
    broken = path.with_name("broken" + path.suffix)
    broken.write_text(path.read_text().replace("}", "", 1))  # the grammar must see a real mistake
    assert _parse(broken)[1]
    broken.unlink()


def test_the_swift_test_names_each_packages_real_io(bundle, golden, runs):
    tree, _ = _parse(bundle / GOLDEN_DIR / _tests(golden, "coreml"))
    calls = {call["model"] + ".mlpackage": call for call in _calls(tree, "Golden")}
    entries = {e["file"]: e for e in golden["files"] if e["file"].endswith(".mlpackage")}
    assert set(calls) == set(entries)
    for file, call in calls.items():
        io = runs[file]["io"]
        image = io["inputs"][0]
        assert (call["inputName"], call["shape"], call["image"]) == (image["name"], image["shape"], True)
        assert call["output"] == logits_output(io)["name"]
        assert (bundle / GOLDEN_DIR / call["input"]).exists() and (bundle / GOLDEN_DIR / call["logits"]).exists()
        assert call["expectedTop5"] == entries[file]["expected"]["top5"]
        assert call["tolerance"]["cosine"] == entries[file]["tolerance"]["cosine"]
        engine = entries[file].get("tolerance_fp16", entries[file]["tolerance"])  # fp32: the Neural Engine's fp16
        assert call["neuralEngine"]["cosine"] == engine["cosine"]
    assert _property(tree, "labelsFile") == golden["labels_file"] and (bundle / golden["labels_file"]).exists()


def test_the_kotlin_tests_name_each_files_real_io(bundle, golden, runs):
    tree, _ = _parse(bundle / GOLDEN_DIR / _tests(golden, "tflite"))
    calls = {call["file"]: call for call in _calls(tree, "Golden")}
    assert set(calls) == {e["file"] for e in golden["files"] if e["file"].endswith(".tflite")}
    for file, call in calls.items():
        node = runs[file]["io"]["inputs"][0]
        assert (call["inputName"], call["shape"], call["dtype"]) == (node["name"], node["shape"], node["dtype"])
        q = node.get("quantization") or {"scale": 0.0, "zero_point": 0}
        assert call["scale"] == pytest.approx(q["scale"], rel=1e-6) and call["zeroPoint"] == q["zero_point"]
        assert (bundle / call["input"]).exists() and (bundle / call["logits"]).exists() and (bundle / file).exists()
    assert (bundle / _property(tree, "LABELS")).exists() and (bundle / _property(tree, "PIXELS")).exists()
    tree, _ = _parse(bundle / GOLDEN_DIR / _tests(golden, "executorch"))
    programs = {call[0]: call for call in _calls(tree, "Program")}
    assert set(programs) == {e["file"] for e in golden["files"] if e["file"].endswith(".pte")}
    for file, call in programs.items():
        assert call[2] == runs[file]["io"]["inputs"][0]["shape"] and (bundle / call[1]).exists()


def test_an_fp32_file_states_its_own_tolerance_and_the_fp16_one(tmp_path, trained, trained_deploy):
    """fp32 is judged against float64 (verify's own_ratio and relative bounds, turned into an angle); an fp32 file
    also states what a device computing it in fp16 (Core ML's Neural Engine) must meet: verify's fp16 bound. The
    reference's own export is the cheapest fp32 file."""
    from evim_deploy.bundle.golden import Golden
    from evim_deploy.targets import export
    from evim_deploy.verify import THRESHOLDS, thresholds_for
    path = export(trained_deploy, "torch", tmp_path / "tiny.pt2")
    golden = Golden(tmp_path / GOLDEN_DIR, trained, trained_deploy.manifest)
    with load(path) as runtime:
        golden.add(path.name, runtime.name, "fp32", runtime, thresholds_for(runtime.manifest, trained=True))
        (entry,) = golden.files
        node = entry["input"]
        logits = runtime.predict(read_tensor(golden.folder, node["file"], node["shape"], node["dtype"]))
    expected = read_tensor(golden.folder, entry["expected"]["logits"], entry["expected"]["shape"], "float32")
    assert "own_ratio" in entry["tolerance"]["verify_bound"]
    assert 1 > entry["tolerance"]["cosine"] > entry["tolerance_fp16"]["cosine"] > THRESHOLDS["fp16"]["cosine"] - 1e-3
    assert not misses(entry, logits, expected) and not misses(entry, logits, expected, "tolerance_fp16")
    assert misses(entry, logits[:, ::-1], expected)
