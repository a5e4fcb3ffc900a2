"""INT8 for ONNX Runtime: ``quant_pre_process``, calibration on the user's images, static QDQ quantization.

Weights are int8 (per output channel unless ``per_channel=False``), activations uint8 (asymmetric):
u8 x s8 is what the VNNI ``vpdpbusd`` kernels of ONNX Runtime's CPU provider multiply.

Which nodes stay float is a speed *and* accuracy decision, measured with ORT's profiler (see
``docs/onnx.md``). The weight-heavy convolutions (stem, FFN, downsamples) run in int8; these groups of
:mod:`evim_deploy.quantize.groups` stay float by default (:data:`.onnx.DEFAULT_FLOAT_GROUPS`):

* ``stem_input``: the first convolution sees 3 channels; its int8 kernel is 3x slower than the fp32
  one, and quantizing the raw image costs accuracy;
* ``mixer_input`` and ``token_mixer``: HSM-SSD works on tiny tensors (N x C states, N <= 64), so int8
  saves nothing and its Q/DQ pairs and transposes cost more than they save; ORT also pins a quantized
  softmax to [0, 1] in 1/255 steps, which wipes out a softmax over 196 tokens;
* ``residual``: the mix of the mixer output into the residual stream, in float with the mixer;
* ``depthwise``: every depthwise conv (blocks and downsamples). Most carry a folded residual (identity
  in the centre tap), so per-channel int8 leaves the small taps a few levels; and ORT's int8
  depthwise kernel is slower than its fp32 blocked one on these small maps;
* ``head``: the pooled features go straight into the logits, and its one GEMV costs nothing in float.

Named groups translate to ORT's ``nodes_to_exclude`` through :data:`NODE_PATTERNS` (regular expressions on
the exported node names); layer groups through the TorchScript exporter's scope names.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import onnx

from ..calibration import CalibrationSet
from ..console import quiet
from ..errors import UsageError
from ..quantize.groups import in_groups, split_groups

if TYPE_CHECKING:
    import torch

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")

# Each named group of evim_deploy.quantize.groups in ONNX Runtime's syntax: a regex on the exported node names.
NODE_PATTERNS: dict[str, str] = {
    "stem_input": r"^/stem/stem\.0/",
    "mixer_input": r"/mixer/bcdt_proj/",
    "token_mixer": r"/mixer/(?!bcdt_proj/)",
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


def quantize(graph: onnx.ModelProto, deploy: "torch.nn.Module", calibration: CalibrationSet, method: str,
             per_channel: bool, float_groups: Iterable[str]) -> onnx.ModelProto:
    """Static QDQ INT8 of a float ONNX graph of ``deploy``, calibrated on ``calibration``; ``float_groups``
    (named and layer groups of :mod:`evim_deploy.quantize.groups`) stay float."""
    from onnxruntime.quantization import QDQQuantizer, QuantType
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process
    named, layers = split_groups(float_groups, deploy)
    layer_nodes = nodes_in_layer_groups(graph, layers)
    with tempfile.TemporaryDirectory(prefix="evim-int8-") as tmp, quiet():
        workdir = Path(tmp)
        onnx.save(graph, workdir / "float.onnx")
        quant_pre_process(str(workdir / "float.onnx"), str(workdir / "pre.onnx"), skip_symbolic_shape=True)
        ranges = calibrate(workdir / "pre.onnx", calibration, method, workdir)
        model = onnx.load(str(workdir / "pre.onnx"))
        exclude = sorted(set(nodes_in_named_groups(model, named)) | set(layer_nodes))
        op_types = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))  # quantize_static's default
        quantizer = QDQQuantizer(model, per_channel, False, QuantType.QInt8, QuantType.QUInt8, ranges, None, exclude,
                                 op_types, {"ActivationSymmetric": False, "WeightSymmetric": True})
        quantizer.quantize_model()
        quantizer.model.topological_sort()
    return quantizer.model.model
