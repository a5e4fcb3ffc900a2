"""The float-group vocabulary (named and layer groups), ONNX node-to-group mapping and the fewest-float-groups
search (with a scripted scorer)."""
from __future__ import annotations

import pytest

from evim_deploy.errors import UsageError
from evim_deploy.export.onnx_int8 import nodes_in_layer_groups, onnx_module_path
from evim_deploy.quantize.fidelity import FidelityChoice, choose_float_groups
from evim_deploy.quantize.groups import in_groups, layer_groups, split_groups
from evim_deploy.quantize.sensitivity import Score
from evim_deploy.testing import deploy_model


def test_layer_groups_cover_every_block_part_in_order():
    groups = layer_groups(deploy_model("tiny", (64, 64)))
    assert groups[0] == "stem" and groups[-1] == "head"
    assert groups[1:7] == [f"stages.0.0.{p}" for p in ("dwconv1", "mixer", "dwconv2", "fc1", "fc2", "residual")]
    assert "downsamples.0" in groups and "downsamples.1" in groups and "downsamples.2" not in groups
    assert len(groups) == 1 + 3 * 6 + 2 + 1
    assert len(layer_groups(deploy_model("m1"))) == 1 + 6 * 6 + 2 + 1


@pytest.mark.parametrize("node, path", [
    ("/stem/stem.0/stem.0.0/Conv", "stem.0.0"),
    ("/stages.1.0/mixer/norm/LayerNormalization", "stages.1.0.mixer.norm"),
    ("/stages.1.0/Add_1", "stages.1.0"),
    ("/downsamples.0/downsamples.0.3/fc1/Conv", "downsamples.0.3.fc1"),
    ("/head/fc/Gemm", "head.fc"),
    ("/Reshape_output_0", ""),
])
def test_onnx_node_names_map_back_to_module_paths(node, path):
    assert onnx_module_path(node) == path


def test_group_membership_is_by_whole_path_components():
    assert in_groups("stages.1.0.mixer.norm", ["stages.1.0.mixer"])
    assert not in_groups("stages.1.10.mixer", ["stages.1.1"])
    assert not in_groups("stages.1.0", ["stages.1.0.mixer"])  # the block's residual ops are not the mixer's
    assert in_groups("stages.1.0", ["stages.1.0.residual"])
    assert not in_groups("stages.1.0.mixer", ["stages.1.0.residual"])


def test_named_groups_expand_aliases_and_unknown_names_are_refused():
    deploy = deploy_model("tiny", (64, 64))
    named, layers = split_groups(["depthwise", "head", "stages.0.0.mixer", "block_depthwise"], deploy)
    assert named == ("block_depthwise", "downsample_depthwise", "head") and layers == ("stages.0.0.mixer",)
    with pytest.raises(UsageError, match="unknown float group 'stages.9.0.mixer'") as err:
        split_groups(["stages.9.0.mixer"], deploy)
    assert "stem_input" in err.value.fix and "downsamples.<i>" in err.value.fix


def test_the_token_mixer_splits_into_its_state_path_and_its_two_state_projections():
    """``token_mixer`` (an alias) is ``mixer_state`` and ``mixer_projections``: disjoint, together every node of each
    mixer but its input projection, in ONNX node names and in the PT2E exporters' module paths."""
    import re

    from evim_deploy.export.onnx import ort_layout, simplify, trace_to_onnx
    from evim_deploy.export.onnx_int8 import dynamic_products, nodes_in_named_groups
    from evim_deploy.export.tflite_int8 import MODULE_PATTERNS, dynamic_modules
    deploy = deploy_model("tiny", (64, 64))
    assert split_groups(["token_mixer"], deploy)[0] == ("mixer_state", "mixer_projections")
    graph = simplify(trace_to_onnx(ort_layout(deploy)))
    state, products = (set(nodes_in_named_groups(graph, [g])) for g in ("mixer_state", "mixer_projections"))
    mixer = {n.name for n in graph.graph.node if "/mixer/" in n.name and "/bcdt_proj/" not in n.name}
    assert state and products and not state & products and state | products == mixer
    assert {n.op_type for n in graph.graph.node if n.name in state} >= {"Softmax", "MatMul", "LayerNormalization"}
    assert sorted(dynamic_products(graph, ["mixer_projections"])) == sorted(products)  # 2 MatMuls a block
    assert len(products) == 2 * 3
    paths = [name for name, _ in deploy.named_modules() if ".mixer" in name]
    matched = {g: {p for p in paths if re.search(MODULE_PATTERNS[g], p)} for g in ("mixer_state", "mixer_projections")}
    assert matched["mixer_projections"] == {p for p in paths if p.endswith(("hz_proj", "out_proj"))}
    assert not matched["mixer_state"] & matched["mixer_projections"]
    assert "stages.0.0.mixer.norm" in matched["mixer_state"]
    # the projections run dynamic INT8 unless a named or a layer group keeps them float
    assert len(dynamic_modules(deploy, [])) == 6 and dynamic_modules(deploy, ["token_mixer"]) == []
    assert dynamic_modules(deploy, ["stages.0.0.mixer"]) == dynamic_modules(deploy, [])[2:]


def test_every_onnx_node_of_a_group_is_found():
    from evim_deploy.export.onnx import ort_layout, simplify, trace_to_onnx
    graph = simplify(trace_to_onnx(ort_layout(deploy_model("tiny", (64, 64)))))
    mixer = nodes_in_layer_groups(graph, ["stages.0.0.mixer"])
    assert mixer and all(name.startswith("/stages.0.0/mixer/") for name in mixer)
    assert {n.op_type for n in graph.graph.node if n.name in mixer} >= {"Softmax", "MatMul", "LayerNormalization"}
    covered = set(nodes_in_layer_groups(graph, layer_groups(deploy_model("tiny", (64, 64)))))
    uncovered = {n.op_type for n in graph.graph.node if n.name not in covered}
    assert uncovered <= {"Reshape", "Transpose"}, uncovered  # only the final layout change is in no group
    residual = {n.op_type for n in graph.graph.node if n.name in nodes_in_layer_groups(graph, ["stages.0.0.residual"])}
    assert {"Add", "Mul"} <= residual
    assert nodes_in_layer_groups(graph, []) == []


class ScriptedScorer:
    """Cosines from a table (missing sets: 1 - the sum of their groups' damage)."""

    target = "fake"

    def __init__(self, damage: dict[str, float], table: dict[frozenset, float] | None = None) -> None:
        self.groups, self.damage, self.table, self.calls = list(damage), damage, table or {}, set()

    @property
    def evaluations(self) -> int:
        return len(self.calls)

    def __call__(self, float_groups=()):
        key = frozenset(float_groups)
        self.calls.add(key)
        cos = self.table.get(key, 1 - sum(d for g, d in self.damage.items() if g not in key))
        return Score(tuple(g for g in self.groups if g in key), cos, cos, 1.0)


def test_no_float_group_when_all_int8_already_reaches_the_target():
    choice = choose_float_groups(ScriptedScorer({"a": 0.001, "b": 0.001}), 0.995)
    assert choice.float_groups == () and choice.record()["float_groups"] == []


def test_greedy_takes_the_most_sensitive_group_first():
    choice = choose_float_groups(ScriptedScorer({"a": 0.001, "b": 0.004, "c": 0.0005, "d": 0.002}), 0.995)
    assert isinstance(choice, FidelityChoice)
    assert choice.float_groups == ("b",) and choice.score.cosine >= 0.995
    assert choice.all_int8.cosine == pytest.approx(1 - 0.0075)


def test_groups_made_unnecessary_by_later_ones_are_pruned():
    table = {frozenset(): 0.98, frozenset("a"): 0.99, frozenset("b"): 0.985, frozenset("c"): 0.984,
             frozenset("ab"): 0.993, frozenset("abc"): 0.997, frozenset("bc"): 0.996, frozenset("ac"): 0.99}
    choice = choose_float_groups(ScriptedScorer({"a": 0, "b": 0, "c": 0}, table), 0.995)
    assert choice.float_groups == ("b", "c") and choice.score.cosine == 0.996


def test_a_stand_in_ranker_only_orders_the_tries_the_target_decides():
    scorer = ScriptedScorer({"a": 0.001, "b": 0.006})
    ranker = ScriptedScorer({"a": 0.01, "b": 0.0})  # a misleading stand-in: it blames "a"
    ranker.target = "stand-in"
    choice = choose_float_groups(scorer, 0.995, ranker)
    assert choice.float_groups == ("b",) and choice.ranked_by == "stand-in"  # pruning dropped the wrong guess
    assert choice.score.cosine == pytest.approx(0.999)


def test_an_unreachable_target_is_an_error_with_a_fix():
    table = {frozenset("ab"): 0.99}
    with pytest.raises(UsageError, match="even with every layer group in float") as err:
        choose_float_groups(ScriptedScorer({"a": 0.02, "b": 0.02}, table), 0.999)
    assert "--fidelity" in err.value.fix


@pytest.mark.parametrize("bad", [0.0, 1.5, -1])
def test_fidelity_must_be_a_cosine(bad):
    with pytest.raises(UsageError, match="not a cosine"):
        choose_float_groups(ScriptedScorer({"a": 0.0}), bad)
