"""INT8 for ONNX Runtime: ``quant_pre_process``, calibration on the user's images, static QDQ quantization.

Weights are int8 (symmetric, per output channel unless ``per_channel=False``), activations uint8
(asymmetric): u8 x s8 is what ONNX Runtime's fastest x86 kernels multiply (VNNI ``vpdpbusd``; ``vpmaddubsw``
without VNNI), and what its ARM kernels take too. The file is **portable by construction**
(:data:`PORTABLE`): the weights of matrix products (every Conv but the depthwise ones, MatMul, Gemm) use 7
bits (``|w| <= 64``), so no pair of u8 x s8 products can exceed int16 (255 * 64 * 2 = 32640) and x86 hosts
without VNNI, whose kernels add pairs into a saturating int16, compute the same integers as VNNI hosts.
Depthwise convs keep 8-bit weights: ORT widens each of their products to 32 bits on every ISA. The old
layout (:data:`VNNI_ONLY`, 8-bit weights everywhere) lost up to 0.06 cosine on AVX2 hosts (docs/int8.md).

Which nodes stay float is a speed *and* accuracy decision, measured with ORT's profiler (see
``docs/onnx.md``). The weight-heavy convolutions (stem, FFN, downsamples) run in int8; these groups of
:mod:`evim_deploy.quantize.groups` stay float by default (:data:`.onnx.DEFAULT_FLOAT_GROUPS`):

* ``stem_input``: the first convolution sees 3 channels; its int8 kernel is 3x slower than the fp32
  one, and quantizing the raw image costs accuracy;
* ``mixer_input`` and ``mixer_state``: HSM-SSD's state path works on tiny tensors (N x C states, N <= 64), so
  int8 saves nothing and its Q/DQ pairs and transposes cost more than they save; ORT also pins a quantized
  softmax to [0, 1] in 1/255 steps, which wipes out a softmax over 196 tokens. Its two state projections
  (``mixer_projections``, 4.1 MB of M1's weights) run **dynamic** INT8 (``DYNAMIC_GROUPS`` of
  :mod:`evim_deploy.quantize.groups`, :func:`quantize_dynamic_products`): the hidden state the head pools
  changes range from image to image, and calibrated ranges failed random-weight ``verify`` (cosine 0.984);
* ``residual``: the mix of the mixer output into the residual stream, in float with the mixer;
* ``depthwise``: every depthwise conv (blocks and downsamples). Most carry a folded residual (identity
  in the centre tap), so per-channel int8 leaves the small taps a few levels; and ORT's int8
  depthwise kernel is slower than its fp32 blocked one on these small maps;
* ``head``: the pooled features go straight into the logits, and its one GEMV costs nothing in float.

Named groups translate to ORT's ``nodes_to_exclude`` through :data:`NODE_PATTERNS` (regular expressions on
the exported node names); layer groups through the TorchScript exporter's scope names.
"""
from __future__ import annotations

import copy
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import onnx

from ..calibration import CalibrationSet
from ..console import quiet
from ..errors import UsageError
from ..quantize.groups import DYNAMIC_GROUPS, in_groups, split_groups

if TYPE_CHECKING:
    import torch

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Format:
    """The integers of an INT8 file: operand types, and the weight bits of matrix products and depthwise convs."""

    activations: str = "uint8"          # uint8 (asymmetric) or int8
    weights: str = "int8"               # int8 (symmetric) or uint8 (asymmetric)
    product_weight_bits: int = 7        # 7: ORT's reduce_range, pair sums exact on x86 without VNNI
    depthwise_weight_bits: int = 8

    def describe(self, per_channel: bool) -> dict:
        """The manifest record (``int8_format``)."""
        return {**asdict(self), "per_channel": per_channel}


PORTABLE = Int8Format()                                    # the default: same integers on every CPU
VNNI_ONLY = Int8Format(product_weight_bits=8)              # the layout before: exact only with VNNI (or on ARM)
INT8_FORMATS = {"portable": PORTABLE, "vnni-only": VNNI_ONLY,
                "u8u8": Int8Format(weights="uint8", product_weight_bits=8),
                "s8s8": Int8Format(activations="int8", product_weight_bits=8)}

# Each named group of evim_deploy.quantize.groups in ONNX Runtime's syntax: a regex on the exported node names.
NODE_PATTERNS: dict[str, str] = {
    "stem_input": r"^/stem/stem\.0/",
    "mixer_input": r"/mixer/bcdt_proj/",
    "mixer_state": r"/mixer/(?!bcdt_proj/|hz_proj/|out_proj/)",
    "mixer_projections": r"/mixer/(hz_proj|out_proj)/",
    "residual": r"^/stages\.\d+\.\d+/(Mul|Add)$",
    "block_depthwise": r"^/stages\.\d+\.\d+/dwconv[12]/",
    "downsample_depthwise": r"^/downsamples\.\d+/downsamples\.\d+\.[025]/",
    "downsample": r"^/downsamples\.",
    "head": r"^/head/",
}


def onnx_module_path(node_name: str) -> str:
    """``/stages.0.0/mixer/norm/LayerNormalization`` -> ``stages.0.0.mixer.norm`` (TorchScript exporter scopes)."""
    path = ""
    for scope in node_name.strip("/").split("/")[:-1]:
        path = scope if (not path or scope.startswith(path + ".")) else f"{path}.{scope}"
    return path


def nodes_in_named_groups(model: onnx.ModelProto, groups: Iterable[str]) -> list[str]:
    """Names of the nodes of ``model`` in the named ``groups``."""
    patterns = [re.compile(NODE_PATTERNS[group]) for group in groups]
    return [node.name for node in model.graph.node if any(p.search(node.name) for p in patterns)]


def nodes_in_layer_groups(model: onnx.ModelProto, groups: Iterable[str]) -> list[str]:
    """Names of the nodes of ``model`` that belong to the layer ``groups``."""
    groups = list(groups)
    return [node.name for node in model.graph.node if groups and in_groups(onnx_module_path(node.name), groups)]


def calibration_reader(calibration: CalibrationSet, input_name: str):
    """ORT's one-method protocol (``get_next``) over a :class:`CalibrationSet`, one image per call."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = calibration.batches(1)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    return Reader()


def _safe_histogram_collector(**kwargs):
    """ORT's histogram collector with |x| histograms anchored at 0.

    ORT bins ``|x|`` over ``[min|x|, max|x|]``; a tensor whose magnitudes sit in a narrow band far from
    zero then asks for bins narrower than float32 can tell apart, and numpy 2 refuses
    ("Too many bins for data range"). Binning over ``[0, max|x|]`` gives bins of ``max|x| / num_bins``,
    always representable, and the percentile of ``|x|`` is the same.
    """
    from onnxruntime.quantization.calibrate import HistogramCollector

    class SafeHistogramCollector(HistogramCollector):
        def collect_absolute_value(self, name_to_arr):
            for tensor, arrays in name_to_arr.items():
                arrays = arrays if isinstance(arrays, list) else [arrays]
                data = np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays])
                data = data[np.isfinite(data)]
                low, high = (data.min(), data.max()) if data.size else (np.float32(0), np.float32(0))
                data = np.abs(data)
                peak = data.max() if data.size else np.float32(0)
                if tensor in self.histogram_dict:
                    hist, edges, old_low, old_high = self.histogram_dict[tensor]
                    low, high = min(low, old_low), max(high, old_high)
                    if peak > edges[-1]:  # extend with bins of the same width
                        width = edges[1] - edges[0]
                        extra = np.arange(1, int(np.ceil((peak - edges[-1]) / width)) + 1, dtype=np.float32)
                        edges = np.concatenate([edges, edges[-1] + width * extra])
                else:
                    hist, edges = None, np.linspace(0, peak if peak > 0 else 1, self.num_bins + 1, dtype=np.float32)
                counts = np.histogram(data, bins=edges)[0]
                if hist is not None:
                    counts[:len(hist)] += hist
                self.histogram_dict[tensor] = (counts, edges, np.float32(low), np.float32(high))

    return SafeHistogramCollector(**kwargs)


def calibrate(model_path: Path, calibration: CalibrationSet, method: str, workdir: Path):
    """Activation ranges (ORT ``TensorsData``) of every float tensor, by ``method``."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"unknown calibration method {method!r}", f"choose one of {', '.join(CALIBRATION_METHODS)}")
    ort_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[method]
    # ORT's entropy default (128 bins for 128 quantized bins) leaves no threshold to search: it equals minmax.
    options = {"num_bins": 256, "num_quantized_bins": 128} if method == "entropy" else {}
    calibrator = create_calibrator(model_path, None, augmented_model_path=str(workdir / "augmented.onnx"),
                                   calibrate_method=ort_method, extra_options=options)
    if method == "percentile":
        calibrator.collector = _safe_histogram_collector(
            method="percentile", symmetric=calibrator.symmetric, num_bins=calibrator.num_bins,
            num_quantized_bins=calibrator.num_quantized_bins, percentile=calibrator.percentile,
            scenario=calibrator.scenario)
    input_name = calibrator.infer_session.get_inputs()[0].name
    calibrator.collect_data(calibration_reader(calibration, input_name))
    return calibrator.compute_data()


def depthwise_weights(model: onnx.ModelProto) -> list[str]:
    """Weight initializers of the depthwise convolutions of ``model``."""
    inits = {i.name: i for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        group = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        weight = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is not None and group > 1 and len(weight.dims) == 4 and weight.dims[1] == 1:
            names.append(weight.name)
    return names


def weight_overrides(model: onnx.ModelProto, int8_format: Int8Format, per_channel: bool) -> dict[str, list[dict]]:
    """ORT ``TensorQuantOverrides`` that give depthwise weights their own bit width (ORT's ``reduce_range``)."""
    if int8_format.depthwise_weight_bits == int8_format.product_weight_bits:
        return {}
    override = {"reduce_range": int8_format.depthwise_weight_bits < 8, **({"axis": 0} if per_channel else {})}
    return {name: [dict(override)] for name in depthwise_weights(model)}


def calibrated(graph: onnx.ModelProto, calibration: CalibrationSet, method: str):
    """``(pre-processed graph, activation ranges)``: ORT's ``quant_pre_process`` of ``graph``, calibrated."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with tempfile.TemporaryDirectory(prefix="evim-int8-") as tmp, quiet():
        workdir = Path(tmp)
        onnx.save(graph, workdir / "float.onnx")
        quant_pre_process(str(workdir / "float.onnx"), str(workdir / "pre.onnx"), skip_symbolic_shape=True)
        ranges = calibrate(workdir / "pre.onnx", calibration, method, workdir)
        return onnx.load(str(workdir / "pre.onnx")), ranges


def dynamic_products(model: onnx.ModelProto, groups: Iterable[str]) -> list[str]:
    """The weight products (MatMul with a constant B) of the named ``groups``: the nodes that run dynamic INT8."""
    constants = {i.name for i in model.graph.initializer}
    return [name for name in nodes_in_named_groups(model, groups) if name in {
        n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants}]


def quantize_dynamic_products(model: onnx.ModelProto, nodes: list[str], per_channel: bool,
                              int8_format: Int8Format) -> onnx.ModelProto:
    """``nodes`` (MatMuls) as dynamic INT8: weights quantized like the static ones, the activation quantized per
    input at run time (``DynamicQuantizeLinear``, uint8) into ``MatMulInteger``, which ORT fuses."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode
    weights = QuantType.QInt8 if int8_format.weights == "int8" else QuantType.QUInt8
    with quiet():
        # built as static, so that it leaves the graph's Gemms alone (a dynamic one rewrites each as MatMul + Transpose)
        quantizer = ONNXQuantizer(model, per_channel, int8_format.product_weight_bits < 8, QuantizationMode.IntegerOps,
                                  True, weights, QuantType.QUInt8, None, nodes, None, ["MatMul"],
                                  {"MatMulConstBOnly": True})
        quantizer.static = False  # then quantizes the inputs of ``nodes`` at run time
        quantizer.quantize_model()
        quantizer.model.topological_sort()
    return quantizer.model.model


def quantize_calibrated(model: onnx.ModelProto, ranges, deploy: "torch.nn.Module", per_channel: bool,
                        float_groups: Iterable[str], int8_format: Int8Format = PORTABLE) -> onnx.ModelProto:
    """Static QDQ INT8 of a :func:`calibrated` graph in ``int8_format`` (``model`` is left untouched); the weight
    products of :data:`DYNAMIC_GROUPS` not kept float run dynamic INT8 (:func:`quantize_dynamic_products`)."""
    from onnxruntime.quantization import QDQQuantizer, QuantType
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    named, layers = split_groups(float_groups, deploy)
    model = copy.deepcopy(model)
    exclude = set(nodes_in_named_groups(model, named)) | set(nodes_in_layer_groups(model, layers))
    dynamic = [node for node in dynamic_products(model, [g for g in DYNAMIC_GROUPS if g not in named])
               if node not in exclude]
    exclude = sorted(exclude | set(dynamic))
    op_types = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))  # quantize_static's default
    options = {"ActivationSymmetric": False, "WeightSymmetric": int8_format.weights == "int8",
               "TensorQuantOverrides": weight_overrides(model, int8_format, per_channel)}
    with quiet():
        quantizer = QDQQuantizer(model, per_channel, int8_format.product_weight_bits < 8,
                                 types[int8_format.weights], types[int8_format.activations], ranges, None, exclude,
                                 op_types, options)
        quantizer.quantize_model()
        quantizer.model.topological_sort()
    model = quantizer.model.model
    return quantize_dynamic_products(model, dynamic, per_channel, int8_format) if dynamic else model


def quantize(graph: onnx.ModelProto, deploy: "torch.nn.Module", calibration: CalibrationSet, method: str,
             per_channel: bool, float_groups: Iterable[str], int8_format: Int8Format = PORTABLE) -> onnx.ModelProto:
    """Static QDQ INT8 of a float ONNX graph of ``deploy``, calibrated on ``calibration``, in ``int8_format``;
    ``float_groups`` (named and layer groups of :mod:`evim_deploy.quantize.groups`) stay float."""
    split_groups(float_groups, deploy)  # an unknown group is refused before calibrating
    model, ranges = calibrated(graph, calibration, method)
    return quantize_calibrated(model, ranges, deploy, per_channel, float_groups, int8_format)
