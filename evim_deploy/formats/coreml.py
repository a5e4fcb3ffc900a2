"""The Core ML ``.mlpackage`` (ML program): manifest and descriptions in the model's metadata (what Xcode
shows), the op summary read from the spec, the I/O as an app sees it, and the Swift (Vision + Core ML)
snippet an iOS app starts from. Works on Linux: nothing here predicts."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..console import quiet
from ..errors import UsageError
from ..manifest import Manifest
from ..files import artifact_bytes
from . import MANIFEST_KEY, FileSummary, op_histogram

IMAGE_INPUT, TENSOR_INPUT = "image", "input"
LOGITS, PROBABILITIES, LABEL = "logits", "classLabel_probs", "classLabel"


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


def summary(path: str | Path) -> FileSummary:
    """Op histogram of the package's ``main`` function, its I/O names and its size."""
    spec = load_spec(path)
    ops: list[str] = []
    for block in spec.mlProgram.functions["main"].block_specializations.values():
        ops += [op.type for op in block.operations]
    return FileSummary(op_histogram(ops), len(ops), artifact_bytes(path), "ops",
                       {"specification_version": spec.specificationVersion,
                        "inputs": [i.name for i in spec.description.input],
                        "outputs": [o.name for o in spec.description.output],
                        "line": (f"spec v{spec.specificationVersion}",)})


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
