"""The Core ML ``.mlpackage`` (ML program): manifest and descriptions in the model's metadata (what Xcode
shows), the op summary read from the spec, what keeps ops off the Neural Engine, the I/O as an app sees it,
and the Swift (Vision + Core ML) snippet an iOS app starts from. Works on Linux: nothing here predicts
(``MLComputePlan`` placement is added on macOS only)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

from ..console import quiet
from ..errors import UsageError
from ..manifest import Manifest
from ..files import artifact_bytes
from . import MANIFEST_KEY, Coverage, FileSummary, op_histogram

IMAGE_INPUT, TENSOR_INPUT = "image", "input"
LOGITS, PROBABILITIES, LABEL = "logits", "classLabel_probs", "classLabel"
# Ops that compute nothing on a device: constants, weight decompression, casts, the label lookup.
BOOKKEEPING = ("const", "cast", "classify")
# What keeps an op off the Neural Engine, as documented; Core ML decides per device and OS (MLComputePlan says).
FP16_ONLY = ("the Neural Engine computes in float16 (int8 too on A17 Pro / M4), so Core ML runs the op on the CPU "
             "or GPU (coremltools guide 'Typed Execution'; github.com/hollance/neural-engine docs/16-bit.md)")
ANE_RULES = {
    "fp32 compute": FP16_ONLY,
    "int32 math": FP16_ONLY,
    "dynamic shape": "flexible shapes keep a model off the Neural Engine (coremltools issues #1764, #2370, #835)",
    "gather": "gather with computed indices does not run on the Neural Engine "
              "(github.com/hollance/neural-engine docs/unsupported-layers.md)",
    "recurrent": "RNN, LSTM and GRU are not supported on the Neural Engine (coremltools issue #1780, a maintainer)",
}
GATHERS, RECURRENT = ("gather", "gather_nd", "gather_along_axis"), ("lstm", "gru", "rnn")
STATIC_METHOD = "the package's MIL ops against documented Neural Engine limits (formats/coreml.py ANE_RULES)"


def import_coremltools():
    """coremltools without its import chatter (untested-torch warning, ``Failed to load _MLModelProxy`` on Linux)."""
    with quiet():
        import coremltools
    return coremltools


def embed_manifest(mlmodel: Any, manifest: Manifest, input_kind: str) -> None:
    """Author, license, version, descriptions and the manifest, as Xcode shows them."""
    height, width = manifest.input_size
    weights = (f"checkpoint {manifest.source} (sha256 {manifest.source_sha256[:12]})" if manifest.source_sha256
               else f"random weights (seed {manifest.seed}): predictions are meaningless")
    mlmodel.author = "evim-deploy"
    mlmodel.license = ("converter: MIT (evim-deploy); weights: the license of their source, "
                       "EfficientViM by mlvlab (github.com/mlvlab/EfficientViM)")
    mlmodel.version = manifest.evim_deploy_version
    mlmodel.short_description = (f"EfficientViM-{manifest.variant.upper()} image classifier "
                                 f"({manifest.num_classes} classes), {manifest.precision}, {height}x{width}; {weights}")
    if input_kind == "image":
        mlmodel.input_description[IMAGE_INPUT] = (
            f"RGB image {width}x{height}: resize the short side to {manifest.resize_size[0]} and centre-crop "
            f"({manifest.interpolation}); normalization is inside the model")
    else:
        mlmodel.input_description[TENSOR_INPUT] = (
            f"float32 [1,3,{height},{width}] RGB, (pixel/255 - mean {list(manifest.mean)}) / std {list(manifest.std)}")
    mlmodel.output_description[LOGITS] = f"raw class scores before softmax, float32 [1,{manifest.num_classes}]"
    mlmodel.output_description[LABEL] = "most probable class label"
    mlmodel.output_description[PROBABILITIES] = "softmax probability of every class label"
    mlmodel.user_defined_metadata[MANIFEST_KEY] = manifest.to_json()


def load_spec(path: str | Path) -> Any:
    """The protobuf spec of a saved package; anything else is a one-line error."""
    ct = import_coremltools()
    if not Path(path).is_dir():
        raise UsageError(f"{path} is not an .mlpackage directory", "pass the .mlpackage folder")
    try:
        return ct.utils.load_spec(str(path))
    except Exception as err:  # coremltools raises several types for a bad package
        raise UsageError(f"{path} is not a loadable Core ML package ({str(err).splitlines()[0][:200]})",
                         "re-export it with evim-deploy export --target coreml") from None


def read_manifest(spec: Any, path: str | Path) -> Manifest:
    text = spec.description.metadata.userDefined.get(MANIFEST_KEY)
    if text is None:
        raise UsageError(f"{path} carries no evim-deploy manifest", "export it with evim-deploy")
    return Manifest.from_json(text)


def _operations(spec: Any) -> list[Any]:
    """The operations of the program's ``main`` function."""
    return [op for block in spec.mlProgram.functions["main"].block_specializations.values() for op in block.operations]


def summary(path: str | Path) -> FileSummary:
    """Op histogram of the package's ``main`` function, its I/O names, its size and its Neural Engine coverage."""
    spec = load_spec(path)
    ops = [op.type for op in _operations(spec)]
    plan = [compute_plan(path)] if sys.platform == "darwin" else []
    return FileSummary(op_histogram(ops), len(ops), artifact_bytes(path), "ops",
                       {"specification_version": spec.specificationVersion,
                        "inputs": [i.name for i in spec.description.input],
                        "outputs": [o.name for o in spec.description.output],
                        "line": (f"spec v{spec.specificationVersion}",)}, [ane_rules(spec)] + plan)


def _is_compute(op_type: str) -> bool:
    return op_type not in BOOKKEEPING and not op_type.startswith("constexpr_")


def _dtype(value: Any) -> str:
    from coremltools.proto import MIL_pb2
    return MIL_pb2.DataType.Name(value.type.tensorType.dataType).lower()


def _flags(op: Any, constants: set[str]) -> list[str]:
    """The :data:`ANE_RULES` one MIL op breaks."""
    tensors = [o for o in op.outputs if o.type.WhichOneof("type") == "tensorType"]
    dtypes = {_dtype(o) for o in tensors}
    dims = [d.WhichOneof("dimension") for o in tensors for d in o.type.tensorType.dimensions]
    indices = [a.name for a in op.inputs["indices"].arguments] if "indices" in op.inputs else []
    return [rule for rule, broken in (
        ("fp32 compute", "float32" in dtypes),
        ("int32 math", "int32" in dtypes),
        ("dynamic shape", "unknown" in dims),
        ("gather", op.type in GATHERS and any(name not in constants for name in indices)),
        ("recurrent", op.type in RECURRENT)) if broken]


def _flexible_inputs(spec: Any) -> list[str]:
    """Inputs with enumerated or ranged shapes."""
    return [i.name for i in spec.description.input if i.type.WhichOneof("Type") in ("imageType", "multiArrayType")
            and getattr(i.type, i.type.WhichOneof("Type")).WhichOneof(
                "SizeFlexibility" if i.type.WhichOneof("Type") == "imageType" else "ShapeFlexibility")]


def _runs(taken: Iterable[bool]) -> int:
    """Runs of consecutive ``True``: the pieces a graph splits into when the ``False`` ops go elsewhere."""
    runs, previous = 0, False
    for now in taken:
        runs += now and not previous
        previous = now
    return runs


def _before_cast(spec: Any, ops: list[Any], constants: set[str]) -> set[str]:
    """Outputs of the compute ops that read only the model's inputs (and constants) before any cast: the image
    input's scale and bias, which coremltools adds in float32 ahead of an fp16 program's first cast."""
    seen, found = {i.name for i in spec.description.input}, set()
    for op in ops:
        names = {a.name for v in op.inputs.values() for a in v.arguments if a.name}
        if op.type == "cast" and names & found:
            return found
        if _is_compute(op.type) and names <= seen | constants:
            seen |= {o.name for o in op.outputs}
            found |= {o.name for o in op.outputs}
    return set()  # no cast after them: the program computes in that type throughout


def ane_rules(spec: Any) -> Coverage:
    """The compute ops of a package that no documented rule keeps off the Neural Engine (:data:`ANE_RULES`),
    in program order; those that break one, by op and dtype, with the rule and its source."""
    ops = _operations(spec)
    constants = {o.name for op in ops if op.type == "const" or op.type.startswith("constexpr_") for o in op.outputs}
    early = _before_cast(spec, ops, constants)
    compute = [(op, _flags(op, constants)) for op in ops if _is_compute(op.type)]
    broken: dict[str, list[Any]] = {}
    for op, flags in compute:
        for rule in flags:
            broken.setdefault(rule, []).append(op)
    flexible = _flexible_inputs(spec)
    if flexible:
        broken.setdefault("dynamic shape", [])
    causes = []
    for rule, where in broken.items():
        parts = [f"inputs {', '.join(flexible)}"] if rule == "dynamic shape" and flexible else []
        parts += [f"{k} {n}" for k, n in op_histogram(op.type for op in where).items()]
        on_input = sum(op.outputs[0].name in early for op in where)
        note = f" ({on_input} on the input before its cast)" if on_input else ""
        causes.append(f"{rule}: {', '.join(parts)}{note}: {ANE_RULES[rule]}")
    left = op_histogram(f"{op.type} {_dtype(op.outputs[0])}" for op, flags in compute if flags)
    taken = [not flags and not flexible for _, flags in compute]
    return Coverage("Neural Engine", sum(taken), len(compute), _runs(taken), left, causes, STATIC_METHOD)


def compute_plan(path: str | Path, units: str = "ALL") -> Coverage:
    """Where Core ML itself would run each compute op (``MLComputePlan``, macOS only): those preferring the
    Neural Engine, and the others by op and preferred device."""
    ct = import_coremltools()
    from coremltools.models.compute_plan import MLComputePlan
    compiled = ct.models.utils.compile_model(str(path))
    try:
        plan = MLComputePlan.load_from_path(compiled, getattr(ct.ComputeUnit, units))
        ops = [op for op in plan.model_structure.program.functions["main"].block.operations
               if _is_compute(op.operator_name.split(".")[-1])]
        devices = []
        for op in ops:
            usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
            device = type(usage.preferred_compute_device).__name__ if usage else "unreported"
            devices.append(device.removeprefix("ML").removesuffix("ComputeDevice"))
    finally:
        shutil.rmtree(compiled, ignore_errors=True)
    on_ane = [device == "NeuralEngine" for device in devices]
    left = op_histogram(f"{op.operator_name.split('.')[-1]} on {device}"
                        for op, device in zip(ops, devices) if device != "NeuralEngine")
    return Coverage(f"Neural Engine (MLComputePlan, {units})", sum(on_ane), len(ops), _runs(on_ane), left,
                    [f"Core ML prefers another device for {op}" for op in left],
                    "coremltools.models.compute_plan.MLComputePlan of the compiled package")


def describe_io(spec: Any) -> dict[str, Any]:
    """Inputs and outputs as an app sees them: the image (or tensor), the classifier outputs, the logits."""
    feature = spec.description.input[0]
    if feature.type.WhichOneof("Type") == "imageType":
        image = feature.type.imageType
        inputs = [{"name": feature.name, "shape": [1, image.height, image.width, 3], "dtype": "uint8", "kind": "image"}]
    else:
        inputs = [{"name": feature.name, "shape": [int(d) for d in feature.type.multiArrayType.shape],
                   "dtype": "float32", "kind": "tensor"}]
    outputs = []
    for feature in spec.description.output:
        which = feature.type.WhichOneof("Type")
        if which == "multiArrayType":
            array = feature.type.multiArrayType
            dtype = type(array).ArrayDataType.Name(array.dataType).lower()  # FLOAT32 -> float32
            outputs.append({"name": feature.name, "shape": [int(d) for d in array.shape], "dtype": dtype})
        else:
            outputs.append({"name": feature.name, "kind": "classifier",
                            "dtype": "string" if which == "stringType" else "dict(string -> double)"})
    return {"inputs": inputs, "outputs": outputs}


def swift_snippet(file: str, io: dict[str, Any], m: dict[str, Any]) -> str | None:
    """Vision + Core ML code for an image-input package (None for a tensor input: no camera path to show)."""
    if not any(n.get("kind") == "image" for n in io.get("inputs", [])):
        return None
    name = file.removesuffix(".mlpackage")
    h, w = m["input_size"]
    return f"""```swift
import CoreML
import Vision

// Add {file} to the Xcode project; Xcode compiles it to {name}.mlmodelc.
let config = MLModelConfiguration()
config.computeUnits = .all
let url = Bundle.main.url(forResource: "{name}", withExtension: "mlmodelc")!
let model = try VNCoreMLModel(for: MLModel(contentsOf: url, configuration: config))
let request = VNCoreMLRequest(model: model) {{ request, _ in
    let top = (request.results as? [VNClassificationObservation] ?? []).prefix(5)
    for r in top {{ print(r.identifier, r.confidence) }}
}}
// The model takes a {h}x{w} RGB image. For the exact training preprocessing, resize the short side to
// {m['resize_size'][0]} ({m['interpolation']}) and centre-crop {h}x{w} yourself; .centerCrop is the close, cheaper default.
request.imageCropAndScaleOption = .centerCrop
try VNImageRequestHandler(cvPixelBuffer: pixelBuffer, orientation: .up).perform([request])
```"""
