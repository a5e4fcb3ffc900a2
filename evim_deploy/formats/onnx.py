"""The ONNX file format: manifest in ``metadata_props``, graph summary, I/O as ONNX Runtime reports it, and
the integer matrix products of an INT8 file (which ones could saturate int16 pair sums on x86 without VNNI),
and what ONNX Runtime's mobile execution providers would take of it (:func:`coverage`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..errors import UsageError
from ..manifest import Manifest
from . import MANIFEST_KEY, Coverage, FileSummary, io_entry, op_histogram

if TYPE_CHECKING:
    import onnx

INPUT_NAME, OUTPUT_NAME = "input", "logits"
DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
          "tensor(int8)": np.int8}
# Ops whose integer form is a matrix product (ORT's QGEMM / ConvSym kernels); a depthwise Conv is not one.
PRODUCT_OPS = ("Conv", "MatMul", "Gemm", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm")
# |w| <= 64 keeps every pair of u8 x s8 products within int16: 255 * 64 * 2 = 32640 <= 32767.
PAIR_SAFE_WEIGHT = 64
# The execution providers ONNX Runtime's mobile usability checker knows: name -> its supported-ops table
# (onnxruntime/tools/mobile_helpers/*.md; None: NNAPI's). The CoreML EP builds a NeuralNetwork model unless
# the app asks for ModelFormat=MLProgram.
MOBILE_EPS = {"NNAPI": None, "CoreML MLProgram": "coreml_supported_mlprogram_ops.md",
              "CoreML NeuralNetwork": "coreml_supported_neuralnetwork_ops.md"}
USABILITY_METHOD = ("onnxruntime.tools.check_onnx_model_mobile_usability (mobile_helpers.usability_checker) "
                    "on the file as written")


def embed_manifest(model: "onnx.ModelProto", manifest: Manifest) -> None:
    """Put the manifest in ``metadata_props`` and a one-line I/O description in ``doc_string``."""
    import onnx
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {MANIFEST_KEY: manifest.to_json()})
    model.producer_name = "evim-deploy"
    height, width = manifest.input_size
    model.doc_string = (f"EfficientViM-{manifest.variant} {manifest.precision}, input {INPUT_NAME} [N,3,{height},"
                        f"{width}] RGB normalized (mean {manifest.mean}, std {manifest.std}); output {OUTPUT_NAME} "
                        f"[N,{manifest.num_classes}]")


def read_manifest(metadata: dict[str, str], path: str | Path) -> Manifest:
    """The manifest from ONNX Runtime's ``custom_metadata_map`` of ``path``."""
    if MANIFEST_KEY not in metadata:
        raise UsageError(f"{path} carries no evim-deploy manifest", "export it with evim-deploy")
    return Manifest.from_json(metadata[MANIFEST_KEY])


def summary(path: str | Path) -> FileSummary:
    """Node count, op histogram, opset and size of an ONNX file."""
    import onnx
    graph = onnx.load(str(path), load_external_data=False)
    opset = max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    return FileSummary(op_histogram(node.op_type for node in graph.graph.node), len(graph.graph.node),
                       Path(path).stat().st_size, "nodes", {"opset": opset, "line": (f"opset {opset}",)},
                       coverage(path))


def coverage(path: str | Path) -> list[Coverage]:
    """Nodes and partitions the NNAPI and CoreML execution providers would take, by ONNX Runtime's own mobile
    usability checker, and what breaks them (unsupported ops, dynamic shapes, rank).

    The checker's command line first optimizes the model for the CPU EP; that rewrites an fp16 file's ops
    that have no CPU fp16 kernel (Relu -> Max, Softmax -> Exp/ReduceSum, 166 Casts on M1), which an NNAPI
    or CoreML session partitions before. So the file is analysed as written (the checker's ``--skip_optimize``)."""
    from onnxruntime.tools.mobile_helpers import usability_checker as checker
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo
    model = ModelProtoWithShapeInfo(Path(path)).model_with_shape_info
    silent = logging.getLogger("evim_deploy.usability_checker")
    silent.disabled = True
    dynamic, _ = checker.check_shapes(model.graph, silent)
    found = []
    for ep, table in MOBILE_EPS.items():
        info = (checker.check_nnapi_partitions(model, True) if table is None
                else checker.check_coreml_partitions(model, True, table))
        taken = {node for group in info.supported_groups for node in group}
        left = op_histogram(n.op_type for n in model.graph.node if n not in taken)
        unsupported = sorted(op.split(":")[-1] for op in info.unsupported_ops)  # "ai.onnx:LayerNormalization"
        causes = [f"{op} ({left.get(op, 0)} nodes): not among the {ep} EP's ops" for op in unsupported]
        if info.nodes_unsupported_due_to_dynamic_input:
            causes.append(f"{info.nodes_unsupported_due_to_dynamic_input} nodes with a dynamic input shape "
                          f"(free dimension of {', '.join(i.name for i in dynamic) or 'an inner tensor'})")
        if info.num_unsupported_nodes_due_to_rank:
            causes.append(f"{info.num_unsupported_nodes_due_to_rank} nodes of rank > 5 "
                          f"({', '.join(sorted(info.ops_with_unsupported_rank))})")
        found.append(Coverage(ep, info.num_supported_nodes, info.num_nodes, info.num_partitions, left, causes,
                              USABILITY_METHOD))
    return found


def describe_io(nodes: Iterable[Any]) -> list[dict[str, Any]]:
    """ONNX Runtime ``NodeArg``s as I/O entries (a symbolic dimension is ``None``)."""
    return [io_entry(n.name, [d if isinstance(d, int) else None for d in n.shape],
                     str(np.dtype(DTYPES.get(n.type, np.float32)))) for n in nodes]


@dataclass(frozen=True)
class IntegerProduct:
    """One integer matrix product of an INT8 file: its node, operand types and the largest |weight|."""

    node: str
    op: str
    activation: str           # the name of the quantized (integer) input tensor
    weight: str               # the name of the integer weight initializer
    activations: str          # numpy dtype name of the quantized input: uint8 or int8
    weights: str              # numpy dtype name of the weight: int8 or uint8
    peak: int                 # max |w - zero point| over the weight
    depthwise: bool           # a depthwise Conv: ORT widens each product to 32 bits there, no pair sums

    @property
    def saturates_int16_pairs(self) -> bool:
        """Whether x86 kernels without VNNI can clip a pair sum of this product (ORT runs int8 activations as
        uint8 + 128 on x86, so either activation type counts)."""
        return not self.depthwise and self.weights == "int8" and self.peak > PAIR_SAFE_WEIGHT


def _dequantized(node: "onnx.NodeProto", index: int, inits: dict[str, np.ndarray],
                 producers: dict[str, "onnx.NodeProto"]) -> tuple[str, str] | None:
    """``(integer tensor, zero point)`` names behind input ``index`` of a QDQ node (its DequantizeLinear)."""
    dq = producers.get(node.input[index]) if index < len(node.input) else None
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or dq.input[2] not in inits:
        return None
    return dq.input[0], dq.input[2]


def _operands(node: "onnx.NodeProto", inits: dict[str, np.ndarray], producers: dict[str, "onnx.NodeProto"]):
    """Names ``(activation, its zero point, weight, its zero point)`` of a QDQ or QOperator product, else ``None``."""
    if node.op_type.startswith("QLinear") or node.op_type == "QGemm":      # x, xs, xzp, w, ws, wzp, ...
        names = (node.input[0], node.input[2], node.input[3], node.input[5]) if len(node.input) > 5 else ()
    elif node.op_type.endswith("Integer"):                                 # a, b, azp, bzp
        names = (node.input[0], node.input[2], node.input[1], node.input[3]) if len(node.input) > 3 else ()
    else:
        act, weight = _dequantized(node, 0, inits, producers), _dequantized(node, 1, inits, producers)
        names = (*act, *weight) if act and weight else ()
    return names if names and all(name in inits for name in names[1:]) else None


def _peak(weight: np.ndarray, zero: np.ndarray | None) -> int:
    """max |w - zero point|; a per-channel zero point lies on the first axis of a conv weight, the last of a matrix."""
    zero = np.zeros(1, np.int32) if zero is None else np.asarray(zero, np.int32).ravel()
    if zero.size > 1:
        zero = zero.reshape((-1,) + (1,) * (weight.ndim - 1)) if weight.shape[0] == zero.size else zero
    return int(np.abs(weight.astype(np.int32) - zero).max()) if weight.size else 0


def integer_products(model: "onnx.ModelProto") -> list[IntegerProduct]:
    """Every integer matrix product of ``model`` (QDQ or QOperator), with its weight's largest magnitude."""
    from onnx import helper, numpy_helper
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    products = []
    for node in model.graph.node:
        operands = node.op_type in PRODUCT_OPS and _operands(node, inits, producers)
        if not operands:
            continue
        activation, act_zero, weight_name, weight_zero = operands
        weight = inits[weight_name]
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        products.append(IntegerProduct(node.name, node.op_type, activation, weight_name, inits[act_zero].dtype.name,
                                       weight.dtype.name, _peak(weight, inits[weight_zero]),
                                       group > 1 and weight.ndim == 4 and weight.shape[1] == 1))
    return products


def pair_saturating_products(path: str | Path) -> list[IntegerProduct]:
    """The products of the file at ``path`` whose int16 pair sums can saturate on x86 without VNNI."""
    import onnx
    return [p for p in integer_products(onnx.load(str(path))) if p.saturates_int16_pairs]
