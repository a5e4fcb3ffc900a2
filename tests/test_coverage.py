"""Accelerator coverage per exported file (issue 17): ONNX Runtime's mobile usability checker for the NNAPI and
CoreML execution providers, XNNPACK's partitions in LiteRT, documented Neural Engine limits of a Core ML
package (MLComputePlan placement on macOS), ExecuTorch's recorded delegation; one shape, stored in the bundle
manifest and printed by ``info``. Files are the trained tiny fixture at 64x64, exported once for the module."""
from __future__ import annotations

import json
import sys

import pytest

from evim_deploy.testing.extras import require
from evim_deploy.bundle import build_bundle
from evim_deploy.calibration import load_calibration
from evim_deploy.console import quiet
from evim_deploy.formats import Coverage
from evim_deploy.formats import coreml as coreml_format
from evim_deploy.formats import executorch as executorch_format
from evim_deploy.targets import export, get_target, target_for_path

require("coremltools", "coreml")
require("ai_edge_litert", "tflite")

FILES = (("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("tflite", "fp32"), ("coreml", "fp16"),
         ("coreml", "fp32"))


@pytest.fixture(scope="module")
def folder(trained_deploy, digits, tmp_path_factory):
    """The tiny fixture's ONNX (fp32, fp16, int8), TFLite fp32 and Core ML (fp16, fp32) files in one folder."""
    out = tmp_path_factory.mktemp("coverage")
    calibration = load_calibration(digits["calib"], trained_deploy.manifest, samples=32)
    for target, precision in FILES:
        export(trained_deploy, target, out / f"tiny-{precision}{get_target(target).suffix}", precision,
               calibration if precision == "int8" else None)
    return out


def _summary(path):
    return target_for_path(path).summary(path)


def test_onnx_eps_count_the_file_nodes_and_name_the_ops_that_split_them(folder):
    for precision in ("fp32", "fp16", "int8"):
        summary = _summary(folder / f"tiny-{precision}.onnx")
        eps = {c.accelerator: c for c in summary.coverage}
        assert set(eps) == {"NNAPI", "CoreML MLProgram", "CoreML NeuralNetwork"}
        for c in eps.values():  # analysed as written: the checker's node count is the file's
            assert 0 < c.taken <= c.total == summary.count and c.partitions >= 1
            assert sum(c.left.values()) == c.total - c.taken and set(c.left) <= set(summary.ops)
        nnapi = eps["NNAPI"]  # NNAPI has no LayerNormalization: the export writes it as primitive ops
        mlprogram, legacy = eps["CoreML MLProgram"], eps["CoreML NeuralNetwork"]
        assert set(legacy.left) >= {"ReduceMean"} and legacy.partitions > 1  # the legacy format's cost
        if precision == "int8":  # QDQ is no op of the CoreML EP: it takes the float islands between them
            assert {"QuantizeLinear", "DequantizeLinear"} <= set(mlprogram.left) and mlprogram.partitions > 10
            # one LayerNorm reads a DequantizeLinear and stays fused (the CPU could not re-fuse it)
            assert nnapi.left.get("LayerNormalization") == summary.ops.get("LayerNormalization") == 1
        else:  # the whole graph in one partition on both
            assert (nnapi.taken, nnapi.partitions, nnapi.causes) == (nnapi.total, 1, [])
            assert (mlprogram.taken, mlprogram.partitions) == (mlprogram.total, 1)


def test_a_free_batch_dimension_is_named_as_what_breaks_nnapi(trained_deploy, tmp_path):
    path = export(trained_deploy, "onnx", tmp_path / "dynamic.onnx", dynamic_batch=True)
    nnapi = next(c for c in _summary(path).coverage if c.accelerator == "NNAPI")
    assert nnapi.taken < nnapi.total // 2
    assert any("dynamic input shape" in cause and "input" in cause for cause in nnapi.causes), nnapi.causes


def test_tflite_fp32_runs_as_one_xnnpack_partition(folder):
    summary = _summary(folder / "tiny-fp32.tflite")
    (xnnpack,) = summary.coverage
    assert (xnnpack.accelerator, xnnpack.taken, xnnpack.total, xnnpack.partitions) == \
        ("XNNPACK", summary.count, summary.count, 1)
    assert xnnpack.left == {} and xnnpack.causes == []


def test_coreml_fp16_leaves_only_the_input_scale_and_bias_and_fp32_leaves_everything(folder):
    fp16, fp32 = (_summary(folder / f"tiny-{p}.mlpackage") for p in ("fp16", "fp32"))
    (ane16,), (ane32,) = fp16.coverage[:1], fp32.coverage[:1]
    assert ane16.left == {"add float32": 1, "mul float32": 1} and ane16.taken == ane16.total - 2
    assert ane16.partitions == 1 and "2 on the input before its cast" in ane16.causes[0]
    assert "Typed Execution" in ane16.causes[0]  # each rule names its source
    assert (ane32.taken, ane32.partitions) == (0, 0) and ane32.total == ane16.total
    assert ane32.causes[0].startswith("fp32 compute: conv") and "before its cast" not in ane32.causes[0]
    assert {op.split()[0] for op in ane32.left} <= set(fp32.ops)


def test_the_neural_engine_rules_flag_flexible_shapes_and_computed_gather_indices():
    ct = coreml_format.import_coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol, types

    @mb.program(input_specs=[mb.TensorSpec((get_new_symbol(), 4)), mb.TensorSpec((2,), dtype=types.int32)],
                opset_version=ct.target.iOS16)
    def program(x, indices):
        return mb.gather(x=mb.relu(x=x), indices=indices, axis=0)

    with quiet():
        model = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                           inputs=[ct.TensorType(name="x", shape=ct.Shape((ct.RangeDim(1, 8), 4))),
                                   ct.TensorType(name="indices", shape=(2,), dtype=types.int32)],
                           skip_model_load=True)
    ane = coreml_format.ane_rules(model.get_spec())
    assert (ane.taken, ane.total, ane.partitions) == (0, 2, 0)
    dynamic, gather = ane.causes
    assert dynamic.startswith("dynamic shape: inputs x, relu 1: ") and "coremltools issues #1764" in dynamic
    assert gather.startswith("gather: gather 1: ") and "unsupported-layers.md" in gather


@pytest.mark.skipif(sys.platform != "darwin", reason="MLComputePlan needs macOS (Core ML's compiler and "
                    "device planner): on Linux only the documented Neural Engine rules are checked")
def test_macos_compute_plan_places_each_op(folder):
    summary = _summary(folder / "tiny-fp16.mlpackage")
    plan = summary.coverage[1]
    assert plan.accelerator.startswith("Neural Engine (MLComputePlan") and plan.total == summary.coverage[0].total
    assert 0 <= plan.taken <= plan.total and sum(plan.left.values()) == plan.total - plan.taken


def test_executorch_delegation_has_the_common_shape():
    delegation = {"backend": "XnnpackBackend", "delegated": 214, "subgraphs": 20,
                  "not_delegated": {"split_with_sizes_copy": 12, "native_layer_norm": 10, "mean": 4}}
    c = executorch_format.coverage(delegation)
    assert c == Coverage("XNNPACK", 214, 240, 20, delegation["not_delegated"], c.causes, c.method)
    assert c.line() == ("XNNPACK 214/240 (89%), 20 partitions; "
                        "left split_with_sizes_copy 12, native_layer_norm 10, mean 4")
    assert c.line(top=1).endswith("left split_with_sizes_copy 12, ...") and len(c.causes) == 3


def test_the_bundle_manifest_stores_each_files_coverage(trained, trained_deploy, tmp_path):
    build_bundle(trained, trained_deploy, tmp_path / "bundle", targets=["onnx"], precisions=["fp32"], trained=True)
    (entry,) = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["files"]
    assert [c["accelerator"] for c in entry["coverage"]] == ["NNAPI", "CoreML MLProgram", "CoreML NeuralNetwork"]
    assert entry["coverage"][0]["left"] == {} and entry["coverage"][0]["partitions"] == 1
    assert entry["coverage"][1]["partitions"] == 1


def test_info_prints_one_row_per_file_with_each_accelerator(cli, folder):
    code, _, err = cli("info", folder)  # tables go to stderr, as bench's do
    assert code == 0
    for text in ["tiny-fp32.onnx", "NNAPI", "CoreML MLProgram", "XNNPACK", "Neural Engine", "tiny-int8.onnx"]:
        assert text in err, err
