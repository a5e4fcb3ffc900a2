"""LayerNormalization as primitive ONNX ops, so that NNAPI takes the whole graph.

NNAPI has no LayerNormalization: on random-weight M1 fp32 its ten nodes split the graph into 8 NNAPI
partitions (230 of 240 nodes). Written as ``ReduceMean, Sub, Pow(2), ReduceMean, Add(eps), Sqrt, Div, Mul,
Add``, NNAPI takes 320 of 320 nodes in one partition, and ONNX Runtime's CPU optimizer fuses exactly this
pattern back into LayerNormalization: same optimized graph, bit-identical outputs, same speed. The cost: the
CoreML EP's legacy NeuralNetwork format has no ReduceMean (M1: 10 -> 18 partitions; MLProgram stays one),
so :func:`.onnx.export_onnx` keeps the fused op on request (``fused_layer_norm=True``).

Applied to the finished graph (after simplification, fp16 conversion and INT8 quantization), so the quantizer
sees the graph it always did and nothing re-fuses the pattern before it is written.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

STEPS = ("ReduceMean", "Sub", "Pow", "ReduceMean_1", "Add", "Sqrt", "Div", "Mul", "Add_1")


def _opset(model: onnx.ModelProto) -> int:
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _primitive_nodes(node: onnx.NodeProto, dtype: np.dtype, opset: int,
                     constants: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """The nine nodes that compute ``node`` (a last-axis LayerNormalization), named in its scope."""
    scope = node.name.rpartition("/")[0] if "/" in node.name else node.name
    name = {step: f"{scope}/{step}" for step in STEPS}
    out = {step: f"{name[step]}_output_0" for step in STEPS}
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    two, epsilon, axes = f"{scope}/two", f"{scope}/epsilon", f"{scope}/axes"
    constants += [numpy_helper.from_array(np.array(2, dtype), two),
                  numpy_helper.from_array(np.array(eps, dtype), epsilon)]
    if opset >= 18:  # ReduceMean takes its axes as an input from opset 18, as an attribute before
        constants.append(numpy_helper.from_array(np.array([-1], np.int64), axes))

    def mean(source: str, step: str) -> onnx.NodeProto:
        inputs, attrs = ([source, axes], {}) if opset >= 18 else ([source], {"axes": [-1]})
        return helper.make_node("ReduceMean", inputs, [out[step]], name[step], keepdims=1, **attrs)

    x, scale, bias = node.input[0], node.input[1], node.input[2] if len(node.input) > 2 else ""
    nodes = [mean(x, "ReduceMean"),
             helper.make_node("Sub", [x, out["ReduceMean"]], [out["Sub"]], name["Sub"]),
             helper.make_node("Pow", [out["Sub"], two], [out["Pow"]], name["Pow"]),
             mean(out["Pow"], "ReduceMean_1"),
             helper.make_node("Add", [out["ReduceMean_1"], epsilon], [out["Add"]], name["Add"]),
             helper.make_node("Sqrt", [out["Add"]], [out["Sqrt"]], name["Sqrt"]),
             helper.make_node("Div", [out["Sub"], out["Sqrt"]], [out["Div"]], name["Div"])]
    if not bias:
        return nodes + [helper.make_node("Mul", [out["Div"], scale], [node.output[0]], name["Mul"])]
    return nodes + [helper.make_node("Mul", [out["Div"], scale], [out["Mul"]], name["Mul"]),
                    helper.make_node("Add", [out["Mul"], bias], [node.output[0]], name["Add_1"])]


def _decomposable(node: onnx.NodeProto, ranks: dict[str, int], dequantized: set[str]) -> bool:
    """A LayerNormalization over the last axis alone, whose mean and inverse deviation nobody reads, and whose
    input is no DequantizeLinear's output: ONNX Runtime gives each consumer of a DequantizeLinear its own copy,
    and the two means then read different tensors, so its CPU optimizer would not fuse the pattern back."""
    if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx") or node.input[0] in dequantized:
        return False
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    rank = ranks.get(node.input[0])
    return (axis == -1 or (rank is not None and axis == rank - 1)) and not any(node.output[1:])


def decompose_layer_norms(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its LayerNormalizations written as primitive ops where :func:`_decomposable` (in place)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*inferred.value_info, *inferred.input] if v.type.tensor_type.HasField("shape")}
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    opset, constants, nodes = _opset(model), [], []
    for node in graph.node:
        if not _decomposable(node, ranks, dequantized):
            nodes.append(node)
            continue
        scale = inits.get(node.input[1])
        dtype = helper.tensor_dtype_to_np_dtype(scale.data_type) if scale is not None else np.dtype(np.float32)
        nodes += _primitive_nodes(node, dtype, opset, constants)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    return model
