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
import io
import os
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from ..calibration import CalibrationSet
from ..console import console
from ..errors import UsageError
from ..runtime.tflite import MANIFEST_NAME, graph_summary
from . import artifact_manifest

LAYOUTS = ("nhwc", "nchw")
IO_GROUPS = ("stem_input", "head")  # float groups that would leave the graph's input or output float


@contextmanager
def _quiet_litert() -> Iterator[None]:
    """litert-torch prints a progress tree and ai-edge-quantizer progress bars and sizes on every
    conversion; evim-deploy reports its own summary instead."""
    import litert_torch
    previous = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    litert_torch.config.show_progress = False
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            yield
    finally:
        if previous is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = previous


def with_layout(model: torch.nn.Module, layout: str) -> torch.nn.Module:
    """The module to convert: the deploy model, taking NHWC input when ``layout`` is ``nhwc``."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}", f"choose {' or '.join(LAYOUTS)}")
    if layout == "nchw":
        return model
    import litert_torch
    return litert_torch.to_channel_last_io(model, args=[0]).eval()


def sample_input(model: torch.nn.Module, layout: str) -> torch.Tensor:
    height, width = model.input_size
    return torch.zeros((1, height, width, 3) if layout == "nhwc" else (1, 3, height, width))


def convert(model: torch.nn.Module, precision: str = "fp32", calibration: CalibrationSet | None = None,
            layout: str = "nhwc", keep_float: Iterable[str] = (), float_layers: Iterable[str] = (),
            per_channel: bool = True, calib_method: str | None = None) -> bytes:
    """The flatbuffer of ``model`` (deploy form) in ``precision``; int8 keeps litert's int8 I/O."""
    import litert_torch
    module, sample = with_layout(model, layout), sample_input(model, layout)
    quant_config = None
    if precision == "fp16":
        from litert_torch.generative.quantize.quant_recipes import full_fp16_recipe
        quant_config = full_fp16_recipe()
    elif precision == "int8":
        from .tflite_int8 import DEFAULT_CALIB_METHOD, quantize
        if calibration is None:
            raise UsageError("INT8 needs calibration images", "pass --calib DIR")
        module, quant_config = quantize(module, sample, calibration, layout, keep_float, float_layers, per_channel,
                                        calib_method or DEFAULT_CALIB_METHOD)
    elif precision != "fp32":
        raise UsageError(f"tflite does not support precision {precision!r}", "choose fp32, fp16 or int8")
    with _quiet_litert():
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


def io_quantization(content: bytes) -> dict[str, dict[str, float] | None]:
    """Scale and zero point of the graph's input and output tensors (None where float)."""
    from ai_edge_litert import schema_py_generated as schema
    graph = schema.Model.GetRootAs(content, 0).Subgraphs(0)

    def params(index: int) -> dict[str, float] | None:
        tensor = graph.Tensors(index)
        quant = tensor.Quantization()
        if tensor.Type() == schema.TensorType.FLOAT32 or quant is None or not quant.ScaleLength():
            return None
        return {"scale": float(quant.Scale(0)), "zero_point": int(quant.ZeroPoint(0)),
                "dtype": "int8" if tensor.Type() == schema.TensorType.INT8 else "uint8"}

    return {"input": params(graph.Inputs(0)), "output": params(graph.Outputs(0))}


def embed_metadata(content: bytes, name: str, data: bytes) -> bytes:
    """``content`` with a metadata entry ``name`` pointing at a new buffer holding ``data``."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    model.buffers.append(schema.BufferT())
    model.buffers[-1].data = np.frombuffer(data, dtype=np.uint8)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if m.name not in (name, name.encode())] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def float_ops(path: str | Path) -> dict[str, int]:
    """Compute ops of an int8 file that still run in float32 (layout and (de)quantize ops left out)."""
    bookkeeping = ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "SLICE", "PAD", "CONCATENATION")
    return {op: n for op, n in graph_summary(path)["ops"].items()
            if op.endswith(" FLOAT32") and op.split()[0] not in bookkeeping}


def export_tflite(model: torch.nn.Module, output: Path, precision: str = "fp32",
                  calibration: CalibrationSet | None = None, layout: str = "nhwc", int8_io: bool = False,
                  calib_method: str | None = None, per_channel: bool = True, keep_float: Iterable[str] | None = None,
                  float_layers: Iterable[str] = (), **_: Any) -> Path:
    """Write ``model`` (deploy form) to ``output`` as a ``.tflite`` flatbuffer in ``precision``.

    INT8 options: ``calib_method`` (:data:`.tflite_int8.CALIBRATION_OBSERVERS`, default
    :data:`.tflite_int8.DEFAULT_CALIB_METHOD`), ``per_channel`` weight scales, what stays float
    (``keep_float``: :data:`.tflite_int8.FLOAT_GROUPS`, default :data:`.tflite_int8.DEFAULT_FLOAT_GROUPS`;
    ``float_layers``: deploy-form modules on top) and ``int8_io``.
    """
    from .tflite_int8 import CALIBRATION_OBSERVERS, DEFAULT_CALIB_METHOD, DEFAULT_FLOAT_GROUPS
    calib_method = calib_method or DEFAULT_CALIB_METHOD
    if int8_io and precision != "int8":
        raise UsageError("--int8-io needs --precision int8", "add --precision int8 (with --calib DIR), or drop it")
    if keep_float is None:  # int8 I/O needs the first convolution and the classifier in int8
        keep_float = tuple(g for g in DEFAULT_FLOAT_GROUPS if not (int8_io and g in IO_GROUPS))
    keep_float, float_layers = tuple(keep_float), tuple(float_layers)
    clash = sorted(set(keep_float) & set(IO_GROUPS)) if int8_io else []
    if clash:
        raise UsageError(f"--int8-io needs the {' and '.join(clash)} group(s) in int8",
                         f"drop {', '.join(clash)} from keep_float, or drop --int8-io")
    content = convert(model, precision, calibration, layout, keep_float, float_layers, per_channel, calib_method)
    extra: dict[str, Any] = {"layout": layout}
    if precision == "int8":
        if int8_io and None in io_quantization(content).values():
            raise UsageError("--int8-io needs the input and output quantized, but float_layers keeps one float",
                             "drop the stem/head layers from float_layers, or drop --int8-io")
        if not int8_io:
            content = float_io(content)
        extra.update(int8_io=int8_io, io_quantization=io_quantization(content), float_groups=list(keep_float),
                     calibration=calibration.describe(), calib_method=calib_method,
                     calib_observer=CALIBRATION_OBSERVERS[calib_method],
                     per_channel=per_channel, **({"float_layers": list(float_layers)} if float_layers else {}))
    manifest = artifact_manifest(model, "tflite", precision, **extra).replace(layout=layout)
    output.write_bytes(embed_metadata(content, MANIFEST_NAME, manifest.to_json().encode()))
    summary = graph_summary(output)
    top = ", ".join(f"{op} {n}" for op, n in list(summary["ops"].items())[:5])
    entry = summary["inputs"][0]
    console.print(f"tflite {precision}: {summary['operators']} operators ({top}, ...), input {entry['shape']} "
                  f"{entry['dtype'].lower()} {layout.upper()}, {summary['bytes'] / 1e6:.2f} MB")
    return output
