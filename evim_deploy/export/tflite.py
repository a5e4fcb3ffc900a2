"""TFLite export: deploy form -> LiteRT flatbuffer through litert-torch, manifest in a metadata buffer.

* ``fp32``: as converted (the converter turns the NCHW convolutions into TFLite's NHWC ones and
  cancels the transposes it can).
* ``fp16``: float16 weights (litert-torch's fp16 recipe through ai-edge-quantizer); the interpreter
  dequantizes them once at load and computes in float32.
* ``int8``: litert-torch's PT2E path, int8 weights and activations wherever XNNPACK has int8 kernels, float
  groups on request (see :mod:`.tflite_int8`). :func:`finish_int8` then readies the flatbuffer: litert's
  static conversion gives int8 input and output tensors, and unless ``int8_io`` is set a QUANTIZE and a
  DEQUANTIZE are put back at the boundaries so apps feed and read float32 as in every other file; the
  weights of float ops become int8 (:func:`int8_weights`), and the few ops XNNPACK would refuse are
  rewritten into ones it runs, so the whole graph is one XNNPACK partition.

``layout="nhwc"`` (default) takes ``[1, H, W, 3]``, as Android camera pipelines deliver; the deploy
model is wrapped with litert-torch's ``to_channel_last_io`` and the converter folds the permute into
the first convolution. ``layout="nchw"`` keeps ``[1, 3, H, W]``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..calibration import CalibrationSet
from ..console import console, quiet
from ..errors import UsageError
from ..formats import tflite as tflite_format
from . import artifact_manifest, require_calibration

if TYPE_CHECKING:
    import torch

LAYOUTS = ("nhwc", "nchw")
# Kept float unless the caller says otherwise (their activations; weights stay int8, float FCs run as XNNPACK's
# dynamic INT8), as ONNX keeps them: the first conv, the mixers' state path, the residual mixes, the depthwise convs
# and the head; the mixers' projections run dynamic INT8. Random-weight verify passes (images cosine 0.9897 -> 0.9997
# on the demo's M1), the trained M1 keeps cosine 0.99997, and it is faster than `depthwise` alone on the VNNI host
# (2.10 against 2.53 ms): docs/int8.md.
DEFAULT_FLOAT_GROUPS = ("stem_input", "mixer_state", "residual", "depthwise", "head")
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
            calib_method: str | None = None, xnnpack: bool = True) -> bytes:
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
                                        calib_method or DEFAULT_CALIB_METHOD, xnnpack)
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


def _builtin(model, op) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _tensor(graph, like, dtype: int, quantization=None, buffer: int = 0, suffix: bytes = b"") -> int:
    """Append a copy of tensor ``like`` with another type, quantization and buffer; return its index."""
    tensor = copy.copy(like)
    name = like.name if isinstance(like.name, bytes) else like.name.encode()
    tensor.name, tensor.type, tensor.quantization, tensor.buffer = name + suffix, dtype, quantization, buffer
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _op(model, builtin: int, inputs: list[int], outputs: list[int]):
    from ai_edge_litert import schema_py_generated as schema
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = _opcode(model, builtin), inputs, outputs
    return op


def float_io(model) -> None:
    """In place: integer graph inputs get a QUANTIZE from float32, integer outputs a DEQUANTIZE to float32.

    The inverse of TensorFlow's ``modify_model_interface``: the file then takes and returns float32,
    and its first and last ops do the (de)quantization with the calibrated scale and zero point.
    """
    from ai_edge_litert import schema_py_generated as schema
    graph = model.subgraphs[0]
    signature_maps = [m for sig in model.signatureDefs or [] for m in (sig.inputs or []) + (sig.outputs or [])]
    for tensors, builtin in ((graph.inputs, schema.BuiltinOperator.QUANTIZE),
                             (graph.outputs, schema.BuiltinOperator.DEQUANTIZE)):
        for position, index in enumerate(tensors):
            quantized = graph.tensors[index]
            if quantized.type == schema.TensorType.FLOAT32:
                continue
            new = _tensor(graph, quantized, schema.TensorType.FLOAT32)
            graph.tensors[new].name, quantized.name = quantized.name, graph.tensors[new].name + b"_int8"
            if builtin == schema.BuiltinOperator.QUANTIZE:
                graph.operators.insert(0, _op(model, builtin, [new], [index]))
            else:
                graph.operators.append(_op(model, builtin, [index], [new]))
            tensors[position] = new
            for entry in signature_maps:
                if entry.tensorIndex == index:
                    entry.tensorIndex = new


def int8_weights(model) -> int:
    """In place: the constant float weights of float ops become per-channel symmetric int8; return how many.

    A float ``FULLY_CONNECTED`` becomes a hybrid one (int8 weights, float input and output): XNNPACK
    quantizes its input per row at run time and runs an int8 GEMM. A float convolution reads its weights
    through a ``DEQUANTIZE``, which XNNPACK folds at load time: float compute, a quarter of the bytes in
    the file. Biases and the other float constants (LayerNorm, gates) stay float
    (:func:`evim_deploy.formats.tflite.float_weights` lists them).
    """
    from ai_edge_litert import schema_py_generated as schema
    ops = schema.BuiltinOperator
    axes = {ops.FULLY_CONNECTED: 0, ops.CONV_2D: 0, ops.DEPTHWISE_CONV_2D: 3}  # output-channel axis of the weights
    graph = model.subgraphs[0]
    readers = [i for op in graph.operators for i in op.inputs]
    dequantize, done = [], 0
    for op in graph.operators:
        builtin = _builtin(model, op)
        if builtin not in axes or len(op.inputs) < 2 or readers.count(op.inputs[1]) != 1:
            continue
        weight = graph.tensors[op.inputs[1]]
        data = model.buffers[weight.buffer].data
        if weight.type != schema.TensorType.FLOAT32 or data is None or not len(data):
            continue
        values = np.frombuffer(bytes(data), np.float32).reshape(weight.shape)
        axis = axes[builtin]
        scale = np.abs(np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)).max(1) / 127
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [-1 if i == axis else 1 for i in range(values.ndim)]
        quantized = np.clip(np.round(values / scale.reshape(shape)), -127, 127).astype(np.int8)
        params = schema.QuantizationParametersT()
        params.scale, params.zeroPoint, params.quantizedDimension = scale.tolist(), [0] * len(scale), axis
        model.buffers[weight.buffer].data = quantized.reshape(-1).view(np.uint8)
        if builtin == ops.FULLY_CONNECTED:
            weight.type, weight.quantization = schema.TensorType.INT8, params
            if op.builtinOptions is not None:
                op.builtinOptions.asymmetricQuantizeInputs = True  # as XNNPACK does
        else:
            source = _tensor(graph, weight, schema.TensorType.INT8, params, weight.buffer, b"_int8")
            weight.buffer = 0
            dequantize.append(_op(model, ops.DEQUANTIZE, [source], [op.inputs[1]]))
        done += 1
    graph.operators[:0] = dequantize
    return done


# XNNPACK runs an int8 ADD / SUB only for input-to-output scale ratios in [1/1024, 256), and an int8 MUL
# for (input scale product)-to-output ratios in [1/65536, 256); other ones would leave the delegate. It has no
# int8 MAXIMUM / MINIMUM at all (the converter's softmax over a single token, in a 1x1 stage, makes one).
XNNPACK_RATIOS = {"ADD": (2.0 ** -10, 2.0 ** 8), "SUB": (2.0 ** -10, 2.0 ** 8), "MUL": (2.0 ** -16, 2.0 ** 8),
                  "MAXIMUM": None, "MINIMUM": None}


def _scale(tensor) -> float | None:
    quantization = tensor.quantization
    found = None if quantization is None else quantization.scale
    return None if found is None or len(found) == 0 else float(found[0])


def _xnnpack_takes(name: str, scales: list[float]) -> bool:
    if XNNPACK_RATIOS[name] is None:
        return False
    low, high = XNNPACK_RATIOS[name]
    *inputs, output = scales
    ratios = [inputs[0] * inputs[1] / output] if name == "MUL" else [s / output for s in inputs]
    return all(low <= r < high for r in ratios)


def xnnpack_float_fallback(model) -> int:
    """In place: int8 ADD / SUB / MUL ops whose scales XNNPACK refuses, and int8 MAXIMUM / MINIMUM, run in float,
    between a DEQUANTIZE of each input and a QUANTIZE of the output (ops XNNPACK takes); return how many.
    Without this they would leave the delegate and run on TFLite's own kernels, with a second thread pool."""
    from ai_edge_litert import schema_py_generated as schema
    graph = model.subgraphs[0]
    names = {getattr(schema.BuiltinOperator, name): name for name in XNNPACK_RATIOS}
    operators, done = [], 0
    for op in graph.operators:
        name = names.get(_builtin(model, op))
        tensors = [graph.tensors[i] for i in (*op.inputs, *op.outputs)]
        scales = [_scale(t) if t.type == schema.TensorType.INT8 else None for t in tensors]
        if name is None or None in scales or _xnnpack_takes(name, scales):
            operators.append(op)
            continue
        floats = [_tensor(graph, t, schema.TensorType.FLOAT32, suffix=b"_float") for t in tensors]
        for quantized, floating in zip(op.inputs, floats):
            operators.append(_op(model, schema.BuiltinOperator.DEQUANTIZE, [quantized], [floating]))
        output = op.outputs[0]
        op.inputs, op.outputs = floats[:-1], [floats[-1]]
        operators += [op, _op(model, schema.BuiltinOperator.QUANTIZE, [floats[-1]], [output])]
        done += 1
    graph.operators = operators
    return done


def dynamic_fully_connected_as_batch_matmul(model) -> int:
    """In place: a float ``FULLY_CONNECTED`` whose weights are computed (``x @ y.T``: the converter's form of a
    state product whose operands were int8) becomes the ``BATCH_MATMUL`` it stands for (``adj_y``), which
    XNNPACK runs: its fully-connected kernels take constant weights only. Return how many."""
    from ai_edge_litert import schema_py_generated as schema
    graph = model.subgraphs[0]
    done = 0
    for op in graph.operators:
        if _builtin(model, op) != schema.BuiltinOperator.FULLY_CONNECTED or len(op.inputs) < 2:
            continue
        x, weight, output = (graph.tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
        activation = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        if weight.type != schema.TensorType.FLOAT32 or model.buffers[weight.buffer].data is not None \
                or (len(op.inputs) > 2 and op.inputs[2] >= 0) or activation \
                or len(output.shape) != len(x.shape):
            continue
        batch = schema.BatchMatMulOptionsT()
        batch.adjY = True
        op.opcodeIndex, op.inputs = _opcode(model, schema.BuiltinOperator.BATCH_MATMUL), op.inputs[:2]
        op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.BatchMatMulOptions, batch
        done += 1
    return done


def finish_int8(content: bytes, int8_io: bool) -> bytes:
    """litert's int8 flatbuffer made ready for XNNPACK: float I/O unless ``int8_io``, int8 weights for the float
    ops, float fallbacks for the int8 ops XNNPACK refuses, and computed-weight fully-connected ops as batch
    matmuls. Every INT8 file then runs as one XNNPACK partition (``TFLiteRuntime.delegation``), but with
    ``xnnpack=False``."""
    from ai_edge_litert.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    if not int8_io:
        float_io(model)
    int8_weights(model)
    xnnpack_float_fallback(model)
    dynamic_fully_connected_as_batch_matmul(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_tflite(model: "torch.nn.Module", output: Path, precision: str = "fp32",
                  calibration: CalibrationSet | None = None, layout: str = "nhwc", int8_io: bool = False,
                  calib_method: str | None = None, per_channel: bool = True, float_groups: Iterable[str] | None = None,
                  xnnpack: bool = True, **_: Any) -> Path:
    """Write ``model`` (deploy form) to ``output`` as a ``.tflite`` flatbuffer in ``precision``.

    INT8 options: ``calib_method`` (:data:`.tflite_int8.CALIBRATION_OBSERVERS`, default
    :data:`DEFAULT_CALIB_METHOD`), ``per_channel`` weight scales, ``float_groups`` kept float
    (:mod:`evim_deploy.quantize.groups`; default :data:`DEFAULT_FLOAT_GROUPS`) and ``int8_io``.
    ``xnnpack=False`` (Python only) also quantizes the token softmax and the state products, which XNNPACK
    has no int8 kernels for: a file for accelerator delegates that have them; on a CPU those ops leave XNNPACK.
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
    content = convert(model, precision, calibration, layout, float_groups, per_channel, calib_method, xnnpack)
    extra: dict[str, Any] = {"layout": layout}
    if precision == "int8":
        if int8_io and None in tflite_format.io_quantization(content).values():
            raise UsageError("--int8-io needs the input and output quantized, but --float-groups keeps one float",
                             "drop the stem/head groups from --float-groups, or drop --int8-io")
        content = finish_int8(content, int8_io)
        extra.update(int8_io=int8_io, io_quantization=tflite_format.io_quantization(content),
                     float_groups=list(float_groups), calibration=calibration.describe(), calib_method=calib_method,
                     calib_observer=CALIBRATION_OBSERVERS[calib_method], per_channel=per_channel, xnnpack=xnnpack)
    manifest = artifact_manifest(model, "tflite", precision, **extra).replace(layout=layout)
    output.write_bytes(tflite_format.embed_manifest(content, manifest))
    summary = tflite_format.summary(output)
    summary.details["line"] = (f"{summary.details['line'][0]} {layout.upper()}",)
    console.print(summary.line(f"tflite {precision}", top=5))
    return output
