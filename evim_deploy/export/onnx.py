"""ONNX export: deploy form -> opset-18 graph, simplified, checked, manifest in ``metadata_props``."""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .. import host
from ..calibration import CalibrationSet
from ..console import console
from ..errors import UsageError
from ..formats import onnx as onnx_format
from ..formats.onnx import INPUT_NAME, OUTPUT_NAME
from . import artifact_manifest, require_calibration

if TYPE_CHECKING:
    import onnx
    import torch

NCHWC_BLOCK = 16  # channel block of ONNX Runtime's AVX-512 blocked convolutions
DEFAULT_CALIB_METHOD = "minmax"  # the best measured here (docs/onnx.md)
# Kept float by default (why, group by group: .onnx_int8). The head: pooled features go straight into the logits,
# and one GEMV of float is free (random-weight M1 calibrated on other photos than the ones judged: images cosine
# 0.9805 -> 0.9887; docs/onnx.md).
DEFAULT_FLOAT_GROUPS = ("stem_input", "mixer_input", "mixer_state", "residual", "depthwise", "head")


def ort_layout(model: "torch.nn.Module") -> "torch.nn.Module":
    """A copy of the deploy form laid out for ONNX Runtime: same outputs, state channels padded to NCHWc blocks."""
    from ..model.deploy import DeployHSMSSD
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, DeployHSMSSD):
            module.pad_state_channels(NCHWC_BLOCK)
    return model


def trace_to_onnx(model: "torch.nn.Module", opset: int = 18, dynamic_batch: bool = False) -> "onnx.ModelProto":
    """Torch -> ONNX through the TorchScript-based exporter (exact opset, no onnxscript rewrites)."""
    import onnx
    import torch
    dummy = torch.zeros(1, 3, *model.input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None)
    return onnx.load_from_string(buffer.getvalue())


def simplify(model: "onnx.ModelProto") -> "onnx.ModelProto":
    import onnxslim
    return onnxslim.slim(model)


def to_fp16(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Weights and activations in float16; input and output stay float32 so apps feed the same tensor."""
    from onnxconverter_common import float16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns once per weight below fp16's smallest subnormal
        return float16.convert_float_to_float16(model, keep_io_types=True)


def export_onnx(model: "torch.nn.Module", output: Path, precision: str = "fp32",
                calibration: CalibrationSet | None = None, opset: int = 18, dynamic_batch: bool = False,
                calib_method: str | None = None, per_channel: bool = True, float_groups: Iterable[str] | None = None,
                int8_format: str = "portable", fused_layer_norm: bool = False, **_: Any) -> Path:
    """Write ``model`` (deploy form) to ``output`` as ONNX in ``precision``.

    INT8 options: ``calib_method`` (minmax | entropy | percentile; default :data:`DEFAULT_CALIB_METHOD`),
    ``per_channel`` weight scales, ``float_groups`` kept in float (:mod:`evim_deploy.quantize.groups`;
    default :data:`DEFAULT_FLOAT_GROUPS`), and ``int8_format`` (a name of :data:`.onnx_int8.INT8_FORMATS`;
    ``portable``, the default, computes the same integers on every CPU). The manifest records the format and
    the host it was calibrated on (CPU, ISA flags, ONNX Runtime version). LayerNormalization is written as
    primitive ops for NNAPI (:mod:`.onnx_nnapi`; free on the CPU, which fuses it back) unless
    ``fused_layer_norm``, which suits the CoreML EP's legacy NeuralNetwork format (no ReduceMean there).
    """
    import onnx
    if opset < 17:
        raise UsageError(f"opset {opset} is too old (LayerNormalization needs 17)", "use --opset 17 or newer")
    graph = simplify(trace_to_onnx(ort_layout(model), opset, dynamic_batch))
    extra: dict[str, Any] = {"opset": opset, "dynamic_batch": dynamic_batch}
    if precision == "fp16":
        graph = to_fp16(graph)
    elif precision == "int8":
        from .onnx_int8 import INT8_FORMATS, quantize
        if int8_format not in INT8_FORMATS:
            raise UsageError(f"unknown ONNX INT8 format {int8_format!r}", f"choose one of {', '.join(INT8_FORMATS)}")
        calibration = require_calibration(calibration, precision)
        calib_method = calib_method or DEFAULT_CALIB_METHOD
        float_groups = DEFAULT_FLOAT_GROUPS if float_groups is None else tuple(float_groups)
        layout = INT8_FORMATS[int8_format]
        graph = quantize(graph, model, calibration, method=calib_method, per_channel=per_channel,
                         float_groups=float_groups, int8_format=layout)
        extra.update(calibration=calibration.describe(), calib_method=calib_method, per_channel=per_channel,
                     float_groups=list(float_groups), int8_format={"name": int8_format, **layout.describe(per_channel)},
                     calibrated_on=host.describe(("onnxruntime",)))
    if not fused_layer_norm:
        from .onnx_nnapi import decompose_layer_norms
        graph = decompose_layer_norms(graph)
    extra["layer_norm"] = "fused" if fused_layer_norm else "primitive"
    manifest = artifact_manifest(model, "onnx", precision, **extra)
    onnx_format.embed_manifest(graph, manifest)
    onnx.save(graph, output)
    onnx.checker.check_model(str(output), full_check=True)
    console.print(onnx_format.summary(output).line(f"onnx {precision}"))
    return output
