"""TFLite export: deploy form -> LiteRT flatbuffer through litert-torch, manifest in a metadata buffer.

* ``fp32``: as converted (the converter turns the NCHW convolutions into TFLite's NHWC ones and
  cancels the transposes it can).
* ``fp16``: float16 weights (litert-torch's fp16 recipe through ai-edge-quantizer); the interpreter
  dequantizes them once at load and computes in float32.
* ``int8``: litert-torch's PT2E path, int8 weights and activations with a float policy, full integer
  on request (see :mod:`.tflite_int8`). litert's static conversion gives int8 input and output
  tensors; unless ``int8_io`` is set, a QUANTIZE and a DEQUANTIZE are put back at the boundaries so
  apps feed and read float32 as in every other file.

``layout="nhwc"`` (default) takes ``[1, H, W, 3]``, as Android camera pipelines deliver; the deploy
model is wrapped with litert-torch's ``to_channel_last_io`` and the converter folds the permute into
the first convolution. ``layout="nchw"`` keeps ``[1, 3, H, W]``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..calibration import CalibrationSet
from ..console import console, quiet
from ..errors import UsageError
from ..formats import tflite as tflite_format
from . import artifact_manifest, require_calibration

if TYPE_CHECKING:
    import torch

LAYOUTS = ("nhwc", "nchw")
# Kept float unless the caller says otherwise (measured trade-off in docs/tflite.md).
DEFAULT_FLOAT_GROUPS = ("stem_input", "block_depthwise", "token_mixer", "head", "residual")
# Random-weight M1-M4 calibrated on other photos than the ones judged: images cosine 0.9929-0.9939 with the
# histogram search against 0.9897-0.9903 with min/max (docs/tflite.md).
DEFAULT_CALIB_METHOD = "percentile"
IO_GROUPS = ("stem_input", "head")  # float groups that would leave the graph's input or output float


def with_layout(model: "torch.nn.Module", layout: str) -> "torch.nn.Module":
    """The module to convert: the deploy model, taking NHWC input when ``layout`` is ``nhwc``."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}", f"choose {' or '.join(LAYOUTS)}")
    if layout == "nchw":
        return model
    import litert_torch
    return litert_torch.to_channel_last_io(model, args=[0]).eval()


def sample_input(model: "torch.nn.Module", layout: str) -> "torch.Tensor":
    import torch
    height, width = model.input_size
    return torch.zeros((1, height, width, 3) if layout == "nhwc" else (1, 3, height, width))


def convert(model: "torch.nn.Module", precision: str = "fp32", calibration: CalibrationSet | None = None,
            layout: str = "nhwc", float_groups: Iterable[str] = (), per_channel: bool = True,
            calib_method: str | None = None) -> bytes:
    """The flatbuffer of ``model`` (deploy form) in ``precision``; int8 keeps litert's int8 I/O."""
    import litert_torch
    module, sample = with_layout(model, layout), sample_input(model, layout)
    quant_config = None
    if precision == "fp16":
        from litert_torch.generative.quantize.quant_recipes import full_fp16_recipe
        quant_config = full_fp16_recipe()
    elif precision == "int8":
        from .tflite_int8 import quantize
        calibration = require_calibration(calibration, precision)
        module, quant_config = quantize(module, model, sample, calibration, layout, float_groups, per_channel,
                                        calib_method or DEFAULT_CALIB_METHOD)
    elif precision != "fp32":
        raise UsageError(f"tflite does not support precision {precision!r}", "choose fp32, fp16 or int8")
    litert_torch.config.show_progress = False  # its progress tree; evim-deploy prints its own summary
    with quiet():
        return bytes(litert_torch.convert(module, (sample,), quant_config=quant_config).model_content())


def _opcode(model, builtin: int) -> int:
    """Index of ``builtin`` in the model's operator codes, added if missing."""
    from ai_edge_litert import schema_py_generated as schema
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    model.operatorCodes.append(schema.OperatorCodeT(deprecatedBuiltinCode=min(builtin, 127), version=2,
                                                    builtinCode=builtin))
    return len(model.operatorCodes) - 1


def float_io(content: bytes) -> bytes:
    """Give integer graph inputs a QUANTIZE from float32, and integer outputs a DEQUANTIZE to float32.

    The inverse of TensorFlow's ``modify_model_interface``: the file then takes and returns float32,
    and its first and last ops do the (de)quantization with the calibrated scale and zero point.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    signature_maps = [m for sig in model.signatureDefs or [] for m in (sig.inputs or []) + (sig.outputs or [])]
    for tensors, builtin in ((graph.inputs, schema.BuiltinOperator.QUANTIZE),
                             (graph.outputs, schema.BuiltinOperator.DEQUANTIZE)):
        for position, index in enumerate(tensors):
            quantized = graph.tensors[index]
            if quantized.type == schema.TensorType.FLOAT32:
                continue
            floating = copy.copy(quantized)
            floating.type, floating.quantization, floating.buffer = schema.TensorType.FLOAT32, None, 0
            quantized.name = quantized.name + b"_int8" if isinstance(quantized.name, bytes) else quantized.name + "_int8"
            graph.tensors.append(floating)
            new = len(graph.tensors) - 1
            op = schema.OperatorT()
            op.opcodeIndex = _opcode(model, builtin)
            if builtin == schema.BuiltinOperator.QUANTIZE:
                op.inputs, op.outputs = [new], [index]
                graph.operators.insert(0, op)
            else:
                op.inputs, op.outputs = [index], [new]
                graph.operators.append(op)
            tensors[position] = new
            for entry in signature_maps:
                if entry.tensorIndex == index:
                    entry.tensorIndex = new
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_tflite(model: "torch.nn.Module", output: Path, precision: str = "fp32",
                  calibration: CalibrationSet | None = None, layout: str = "nhwc", int8_io: bool = False,
                  calib_method: str | None = None, per_channel: bool = True, float_groups: Iterable[str] | None = None,
                  **_: Any) -> Path:
    """Write ``model`` (deploy form) to ``output`` as a ``.tflite`` flatbuffer in ``precision``.

    INT8 options: ``calib_method`` (:data:`.tflite_int8.CALIBRATION_OBSERVERS`, default
    :data:`DEFAULT_CALIB_METHOD`), ``per_channel`` weight scales, ``float_groups`` kept float
    (:mod:`evim_deploy.quantize.groups`; default :data:`DEFAULT_FLOAT_GROUPS`) and ``int8_io``.
    """
    from .tflite_int8 import CALIBRATION_OBSERVERS
    calib_method = calib_method or DEFAULT_CALIB_METHOD
    if int8_io and precision != "int8":
        raise UsageError("--int8-io needs --precision int8", "add --precision int8 (with --calib DIR), or drop it")
    if float_groups is None:  # int8 I/O needs the first convolution and the classifier in int8
        float_groups = tuple(g for g in DEFAULT_FLOAT_GROUPS if not (int8_io and g in IO_GROUPS))
    float_groups = tuple(float_groups)
    clash = sorted(set(float_groups) & set(IO_GROUPS)) if int8_io else []
    if clash:
        raise UsageError(f"--int8-io needs the {' and '.join(clash)} group(s) in int8",
                         f"drop {', '.join(clash)} from --float-groups, or drop --int8-io")
    content = convert(model, precision, calibration, layout, float_groups, per_channel, calib_method)
    extra: dict[str, Any] = {"layout": layout}
    if precision == "int8":
        if int8_io and None in tflite_format.io_quantization(content).values():
            raise UsageError("--int8-io needs the input and output quantized, but --float-groups keeps one float",
                             "drop the stem/head groups from --float-groups, or drop --int8-io")
        if not int8_io:
            content = float_io(content)
        extra.update(int8_io=int8_io, io_quantization=tflite_format.io_quantization(content),
                     float_groups=list(float_groups), calibration=calibration.describe(), calib_method=calib_method,
                     calib_observer=CALIBRATION_OBSERVERS[calib_method], per_channel=per_channel)
    manifest = artifact_manifest(model, "tflite", precision, **extra).replace(layout=layout)
    output.write_bytes(tflite_format.embed_manifest(content, manifest))
    summary = tflite_format.summary(output)
    summary.details["line"] = (f"{summary.details['line'][0]} {layout.upper()}",)
    console.print(summary.line(f"tflite {precision}", top=5))
    return output
