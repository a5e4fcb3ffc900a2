"""The TFLite flatbuffer: the manifest in a named metadata buffer, the operator summary, the tensors' I/O with
their quantization, what XNNPACK takes of it, and the Kotlin (LiteRT ``Interpreter``) snippet an Android app
starts from.

Everything is read with ``ai_edge_litert`` (its flatbuffer schema and interpreter): no TensorFlow, no PyTorch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..console import quiet
from ..manifest import Manifest
from . import MANIFEST_KEY, Coverage, FileSummary, io_entry, layout_of, op_histogram, shape_text

# Ops that move or (de)quantize data rather than compute: left out of the float-ops count of an int8 file.
BOOKKEEPING_OPS = ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "SLICE", "PAD", "CONCATENATION")


def _schema():
    from ai_edge_litert import schema_py_generated as schema
    return schema


def read_manifest(content: bytes) -> Manifest | None:
    """The manifest in a ``.tflite`` flatbuffer's metadata, or None."""
    data = read_metadata(content, MANIFEST_KEY)
    return None if data is None else Manifest.from_json(data.decode())


def read_metadata(content: bytes, name: str) -> bytes | None:
    """The bytes of the metadata buffer called ``name``, or None."""
    root = _schema().Model.GetRootAs(content, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if entry.Name() is not None and entry.Name().decode() == name:
            buffer = root.Buffers(entry.Buffer())
            if buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
                return bytes(content[buffer.Offset():buffer.Offset() + buffer.Size()])
            return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    return None


def embed_manifest(content: bytes, manifest: Manifest) -> bytes:
    """``content`` with the manifest in a metadata buffer (replacing an earlier one)."""
    schema = _schema()
    from ai_edge_litert.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    model.buffers.append(schema.BufferT())
    model.buffers[-1].data = np.frombuffer(manifest.to_json().encode(), dtype=np.uint8)
    entry = schema.MetadataT()
    entry.name, entry.buffer = MANIFEST_KEY, len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if m.name not in (MANIFEST_KEY, MANIFEST_KEY.encode())] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _enum_names(enum: type) -> dict[int, str]:
    return {value: key for key, value in vars(enum).items() if not key.startswith("_")}


def summary(path: str | Path) -> FileSummary:
    """Operator histogram ``"OP dtype"`` (dtype of each operator's first output), the I/O tensors and size."""
    schema = _schema()
    data = Path(path).read_bytes()
    root = schema.Model.GetRootAs(data, 0)
    graph = root.Subgraphs(0)
    op_names, type_names = _enum_names(schema.BuiltinOperator), _enum_names(schema.TensorType)
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = root.OperatorCodes(op.OpcodeIndex())
        name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        ops.append(f"{name} {type_names[graph.Tensors(op.Outputs(0)).Type()]}")

    def tensors(indices: np.ndarray) -> list[dict[str, Any]]:
        return [{"name": graph.Tensors(t).Name().decode(), "shape": graph.Tensors(t).ShapeAsNumpy().tolist(),
                 "dtype": type_names[graph.Tensors(t).Type()]} for t in indices]

    inputs = tensors(graph.InputsAsNumpy())
    first = inputs[0]
    return FileSummary(op_histogram(ops), graph.OperatorsLength(), len(data), "operators",
                       {"inputs": inputs, "outputs": tensors(graph.OutputsAsNumpy()),
                        "line": (f"input {first['shape']} {first['dtype'].lower()}",)}, coverage(path))


def coverage(path: str | Path) -> list[Coverage]:
    """The operators the XNNPACK delegate takes in LiteRT's interpreter (as an app's default ``Interpreter``
    builds it), in how many partitions, and those left to TFLite's own kernels, as ``"OP dtype"``."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    with quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2
        interpreter = Interpreter(model_path=str(path), num_threads=1,
                                  experimental_op_resolver_type=OpResolverType.AUTO)
        interpreter.allocate_tensors()
    found = delegation(interpreter)
    total = sum(1 for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE")
    left = found["undelegated"]
    causes = [f"{op}: no XNNPACK kernel for this op and type, runs on TFLite's builtin kernels" for op in left]
    return [Coverage("XNNPACK", total - sum(left.values()), total, found["partitions"], left, causes,
                     "ai_edge_litert Interpreter with XNNPACK: its DELEGATE nodes vs the ops outside them")]


def delegation(interpreter) -> dict:
    """How XNNPACK took the graph of an allocated ``ai_edge_litert`` interpreter: ``partitions`` (delegate
    kernels) and ``undelegated``, a count of the file's ops left to TFLite's own kernels as ``"OP dtype"``.

    The interpreter lists the file's ops, then one ``DELEGATE`` node per partition with its input and
    output tensors. An op runs inside a partition when it writes a partition's output, or writes a tensor
    that only ops inside partitions read (and that no partition takes as input); every other op is left out.
    """
    ops = interpreter._get_ops_details()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    own = [op for op in ops if op["op_name"] != "DELEGATE"]
    delegate_in = {t for op in partitions for t in op["inputs"]}
    delegate_out = {t for op in partitions for t in op["outputs"]}
    readers: dict[int, list[int]] = {}
    for op in own:
        for t in op["inputs"]:
            readers.setdefault(int(t), []).append(op["index"])
    inside: set[int] = set()
    changed = True
    while changed:
        changed = False
        for op in reversed(own):
            if op["index"] in inside:
                continue
            outputs = {int(t) for t in op["outputs"]}
            if outputs & delegate_out or any(t not in delegate_in and readers.get(t) and
                                             all(r in inside for r in readers[t]) for t in outputs):
                inside.add(op["index"])
                changed = True
    left = op_histogram(f"{op['op_name']} {dtypes.get(int(op['outputs'][0]), '?')}"
                        for op in own if op["index"] not in inside)
    return {"partitions": len(partitions), "undelegated": left}


def float_compute_ops(path: str | Path) -> dict[str, int]:
    """Compute ops of an int8 file that still run in float32 (layout and (de)quantize ops left out)."""
    return {op: n for op, n in summary(path).ops.items()
            if op.endswith(" FLOAT32") and op.split()[0] not in BOOKKEEPING_OPS}


def constants(content: bytes) -> list[dict[str, Any]]:
    """Every constant tensor (weights, biases, scales, shapes) as ``name``, ``shape``, ``dtype``, ``bytes``,
    ``readers`` (the ops that read it), largest first: what an INT8 file's size is made of."""
    schema = _schema()
    root = schema.Model.GetRootAs(content, 0)
    graph = root.Subgraphs(0)
    op_names, type_names = _enum_names(schema.BuiltinOperator), _enum_names(schema.TensorType)
    readers: dict[int, set[str]] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = root.OperatorCodes(op.OpcodeIndex())
        for t in op.InputsAsNumpy():
            readers.setdefault(int(t), set()).add(op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())))
    found = []
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        buffer = root.Buffers(tensor.Buffer())
        size = buffer.Size() if buffer.Offset() > 1 else buffer.DataLength()
        if size:
            found.append({"name": tensor.Name().decode(), "shape": tensor.ShapeAsNumpy().tolist(),
                          "dtype": type_names[tensor.Type()], "bytes": int(size), "readers": sorted(readers.get(t, ()))})
    return sorted(found, key=lambda c: -c["bytes"])


def float_weights(content: bytes) -> list[dict[str, Any]]:
    """The float32 constants that some op of an INT8 file reads (:func:`constants`): in evim-deploy's files the
    biases of float layers, LayerNorm scales and shifts, ``D`` and the gates' constants, never a layer's weights."""
    return [c for c in constants(content) if c["dtype"] == "FLOAT32" and c["readers"]]


def io_quantization(content: bytes) -> dict[str, dict[str, Any] | None]:
    """Scale and zero point of the graph's input and output tensors (None where float)."""
    schema = _schema()
    graph = schema.Model.GetRootAs(content, 0).Subgraphs(0)

    def params(index: int) -> dict[str, Any] | None:
        tensor = graph.Tensors(index)
        quant = tensor.Quantization()
        if tensor.Type() == schema.TensorType.FLOAT32 or quant is None or not quant.ScaleLength():
            return None
        return {"scale": float(quant.Scale(0)), "zero_point": int(quant.ZeroPoint(0)),
                "dtype": "int8" if tensor.Type() == schema.TensorType.INT8 else "uint8"}

    return {"input": params(graph.Inputs(0)), "output": params(graph.Outputs(0))}


def describe_io(detail: dict[str, Any]) -> dict[str, Any]:
    """One interpreter tensor detail as an I/O entry, with scale / zero point if integer."""
    dtype = np.dtype(detail["dtype"])
    more = {}
    if dtype.kind in "iu":
        scale, zero_point = detail["quantization"]
        more["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return io_entry(detail["name"], [int(d) for d in detail["shape"]], str(dtype), **more)


def kotlin_snippet(file: str, io: dict[str, Any], m: dict[str, Any]) -> str:
    """LiteRT ``Interpreter`` code for this file's real input (NHWC or NCHW, float or int8) and output."""
    node = (io.get("inputs") or [{}])[0]
    shape = node.get("shape", [1, 3, *m["input_size"]])
    nhwc = layout_of(shape) == "NHWC"
    h, w = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
    int8 = node.get("dtype") == "int8"
    q = node.get("quantization") or {}
    out = (io.get("outputs") or [{}])[0]
    mean = ", ".join(f"{v}f" for v in m["mean"])
    std = ", ".join(f"{v}f" for v in m["std"])
    put = (f"input.put(((x / {q.get('scale')}f).roundToInt() + {q.get('zero_point')}).coerceIn(-128, 127).toByte())"
           if int8 else "input.putFloat(x)")
    value = "val x = (((p shr (16 - 8 * c)) and 0xFF) / 255f - mean[c]) / std[c]"
    loop = (f"for (p in pixels) for (c in 0 until 3) {{ {value}; {put} }}" if nhwc else
            f"for (c in 0 until 3) for (p in pixels) {{ {value}; {put} }}")
    read_out = (f"val raw = Array(1) {{ ByteArray({m['num_classes']}) }}\ninterpreter.run(input, raw)\n"
                f"val o = interpreter.getOutputTensor(0).quantizationParams()\n"
                f"val logits = raw[0].map {{ (it - o.zeroPoint) * o.scale }}"
                if out.get("dtype") == "int8" else
                f"val out = Array(1) {{ FloatArray({m['num_classes']}) }}\ninterpreter.run(input, out)\nval logits = out[0]")
    return f"""```kotlin
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.support.common.FileUtil
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.roundToInt

// {file}: input {shape_text(shape)} {layout_of(shape)} {node.get('dtype')}; bitmap is {h}x{w} after
// resizing the short side to {m['resize_size'][0]} ({m['interpolation']}) and centre-cropping.
val interpreter = Interpreter(FileUtil.loadMappedFile(context, "{file}"), Interpreter.Options().setNumThreads(4))
val mean = floatArrayOf({mean}); val std = floatArrayOf({std})
val pixels = IntArray({h} * {w}).also {{ bitmap.getPixels(it, 0, {w}, 0, 0, {w}, {h}) }}
val input = ByteBuffer.allocateDirect({h} * {w} * 3 * {1 if int8 else 4}).order(ByteOrder.nativeOrder())
{loop}
input.rewind()
{read_out}
val labels = context.assets.open("labels.txt").bufferedReader().readLines()
val top = logits.withIndex().sortedByDescending {{ it.value }}.take(5).map {{ labels[it.index] }}
```"""
