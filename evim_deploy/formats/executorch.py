"""The ExecuTorch program (``.pte``): the manifest as a method of the program, the instruction summary with the
XNNPACK delegation recorded at export, the tensors' I/O and the Kotlin (ExecuTorch Android ``Module``) snippet.

A ``.pte`` has no metadata table, but a program may hold several methods, and a method without inputs can
return a constant string. The manifest rides as such a method, :data:`MANIFEST_METHOD`, beside ``forward``:
one file, no sidecar to lose or to mismatch, readable on the phone with ``module.execute(...)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..console import quiet
from ..errors import UsageError
from ..manifest import Manifest
from . import MANIFEST_KEY, Coverage, FileSummary, io_entry, op_histogram, shape_text

MANIFEST_METHOD = MANIFEST_KEY  # no inputs; returns the manifest JSON
FORWARD = "forward"
# ExecuTorch's ScalarType codes (runtime/core/portable_type/scalar_type.h) as numpy dtype names
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64",
                11: "bool", 15: "bfloat16"}


def manifest_methods(manifest: Manifest) -> dict[str, str]:
    """The ``constant_methods`` that embed ``manifest`` in a program (``to_edge_transform_and_lower``)."""
    return {MANIFEST_METHOD: manifest.to_json()}


def read_manifest(program: Any) -> Manifest | None:
    """The manifest of a program loaded by ``executorch.runtime``, or None."""
    if MANIFEST_METHOD not in program.method_names:
        return None
    return Manifest.from_json(program.load_method(MANIFEST_METHOD).execute([])[0])


def dtype_name(code: int) -> str:
    return SCALAR_TYPES.get(int(code), f"scalar type {code}")


def method_io(meta: Any) -> dict[str, list[dict[str, Any]]]:
    """``forward``'s inputs and outputs from its ``MethodMeta`` (ExecuTorch tensors carry no names)."""
    def entries(count: int, tensor: Any, name: str) -> list[dict[str, Any]]:
        return [io_entry(name if count == 1 else f"{name}_{i}", tensor(i).sizes(), dtype_name(tensor(i).dtype()))
                for i in range(count)]
    return {"inputs": entries(meta.num_inputs(), meta.input_tensor_meta, "input"),
            "outputs": entries(meta.num_outputs(), meta.output_tensor_meta, "logits")}


def _program(path: str | Path) -> Any:
    """The program's flatbuffer as ExecuTorch's schema objects (``executorch.exir``, no runtime)."""
    with quiet():  # torchao's and torch's import-time warnings
        from executorch.exir._serialize._program import deserialize_pte_binary
    try:
        return deserialize_pte_binary(Path(path).read_bytes()).program
    except Exception:  # the flatbuffer reader fails in many ways on a file that is no program
        raise UsageError(f"{path} is not an ExecuTorch program",
                         "export it with evim-deploy export --target executorch") from None


def delegation_line(delegation: dict[str, Any]) -> str:
    """``XnnpackBackend runs 214 of 240 ops (89%) in 20 subgraphs; not delegated: native_layer_norm 10, ...``."""
    total = delegation["delegated"] + sum(delegation["not_delegated"].values())
    rest = ", ".join(f"{op} {n}" for op, n in delegation["not_delegated"].items()) or "none"
    return (f"{delegation['backend']} runs {delegation['delegated']} of {total} ops "
            f"({delegation['delegated'] / max(total, 1):.0%}) in {delegation['subgraphs']} subgraphs; "
            f"not delegated: {rest}")


def coverage(delegation: dict[str, Any]) -> Coverage:
    """The delegation recorded at export (``XnnpackBackend``'s ops and subgraphs) as a :class:`Coverage`:
    ``XNNPACK 214/240 (89%), 20 partitions; left split_with_sizes_copy 12, native_layer_norm 10, mean 4``."""
    left = delegation["not_delegated"]
    return Coverage(delegation["backend"].removesuffix("Backend").upper(), delegation["delegated"],
                    delegation["delegated"] + sum(left.values()), delegation["subgraphs"], dict(left),
                    [f"{op}: not lowered to {delegation['backend']}, runs on ExecuTorch's portable kernels"
                     for op in left], "executorch.devtools.backend_debug.get_delegation_info at export")


def summary(path: str | Path) -> FileSummary:
    """``forward``'s calls (one per delegate call, one per portable kernel), its I/O, size and the delegation."""
    program = _program(path)
    from executorch.exir.schema import DelegateCall, KernelCall  # imported (quietly) by _program
    plans = {plan.name: plan for plan in program.execution_plan}
    if FORWARD not in plans:
        raise UsageError(f"{path} has no forward method", "export it with evim-deploy export --target executorch")
    plan = plans[FORWARD]
    calls = []
    for instruction in plan.chains[0].instructions if plan.chains else ():
        args = instruction.instr_args
        if isinstance(args, KernelCall):
            calls.append(plan.operators[args.op_index].name.removeprefix("aten::"))
        elif isinstance(args, DelegateCall):
            calls.append(plan.delegates[args.delegate_index].id)

    def tensors(indices: list[int], name: str) -> list[dict[str, Any]]:
        values = [plan.values[i].val for i in indices]
        return [io_entry(name, v.sizes, dtype_name(v.scalar_type)) for v in values if hasattr(v, "sizes")]

    inputs = tensors(plan.inputs, "input")
    line = [f"input {shape_text(inputs[0]['shape'])} {inputs[0]['dtype']}"] if inputs else []
    details: dict[str, Any] = {"inputs": inputs, "outputs": tensors(plan.outputs, "logits")}
    manifest = plans.get(MANIFEST_METHOD)
    delegation = manifest and Manifest.from_json(manifest.values[0].val.string_val).extra.get("delegation")
    if delegation:
        details["delegation"] = delegation
        line.append(delegation_line(delegation))
    details["line"] = tuple(line)
    return FileSummary(op_histogram(calls), len(calls), Path(path).stat().st_size, "calls", details,
                       [coverage(delegation)] if delegation else [])


def kotlin_snippet(file: str, io: dict[str, Any], m: dict[str, Any]) -> str:
    """ExecuTorch Android ``Module`` code for this file's real input (NCHW float32) and output."""
    node = (io.get("inputs") or [{}])[0]
    shape = node.get("shape") or [1, 3, *m["input_size"]]
    h, w = shape[2], shape[3]
    mean = ", ".join(f"{v}f" for v in m["mean"])
    std = ", ".join(f"{v}f" for v in m["std"])
    return f"""```kotlin
import java.io.File
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

// {file}: input {shape_text(shape)} NCHW {node.get('dtype', 'float32')}; bitmap is {h}x{w} after resizing the
// short side to {m['resize_size'][0]} ({m['interpolation']}) and centre-cropping. Module.load takes a file path:
// copy the asset to filesDir first. module.execute("{MANIFEST_METHOD}")[0].toStr() is the manifest JSON.
val module = Module.load(File(context.filesDir, "{file}").path)
val mean = floatArrayOf({mean}); val std = floatArrayOf({std})
val pixels = IntArray({h} * {w}).also {{ bitmap.getPixels(it, 0, {w}, 0, 0, {w}, {h}) }}
val data = FloatArray(3 * {h} * {w})
for (c in 0 until 3) for ((i, p) in pixels.withIndex()) {{
    data[c * {h} * {w} + i] = (((p shr (16 - 8 * c)) and 0xFF) / 255f - mean[c]) / std[c]
}}
val input = Tensor.fromBlob(data, longArrayOf({', '.join(str(d) for d in shape)}))
val logits = module.forward(EValue.from(input))[0].toTensor().dataAsFloatArray
val labels = context.assets.open("labels.txt").bufferedReader().readLines()
val top = logits.withIndex().sortedByDescending {{ it.value }}.take(5).map {{ labels[it.index] }}
```"""
