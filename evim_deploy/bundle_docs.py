"""The bundle's README for app developers, generated from the manifest and each file's real I/O."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bundle import Bundle, BundleFile


def _shape(shape: list) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _layout(shape: list) -> str:
    return "NHWC" if len(shape) == 4 and shape[-1] == 3 else "NCHW" if len(shape) == 4 else "-"


def _input_text(entry: "BundleFile", m: dict[str, Any]) -> str:
    io = entry.io or {}
    lines = []
    for node in io.get("inputs", []):
        kind = node.get("kind", "tensor")
        if kind == "image":
            what = "RGB image (CVPixelBuffer / CGImage), 0-255 pixels; normalization is inside the model"
        elif node["dtype"] in ("int8", "uint8"):
            q = node.get("quantization") or {}
            what = (f"{node['dtype']} quantized normalized pixels: q = round(x / {q.get('scale', '?')}) + "
                    f"{q.get('zero_point', '?')}, x = (pixel/255 - mean) / std")
        else:
            what = f"{node['dtype']}, x = (pixel/255 - mean) / std"
        lines.append(f"- input `{node['name']}` {_shape(node['shape'])} {_layout(node['shape'])}: {what}")
    for node in io.get("outputs", []):
        meaning = ("top class label and per-class probabilities" if node.get("kind") == "classifier"
                   else f"logits over the {m['num_classes']} classes in labels.txt order (apply softmax)")
        lines.append(f"- output `{node['name']}` {_shape(node.get('shape', []))} {node.get('dtype', '')}: {meaning}")
    return "\n".join(lines)


def swift_snippet(entry: "BundleFile", m: dict[str, Any]) -> str:
    name = entry.file.removesuffix(".mlpackage")
    h, w = m["input_size"]
    return f"""```swift
import CoreML
import Vision

// Add {entry.file} to the Xcode project; Xcode compiles it to {name}.mlmodelc.
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


def kotlin_snippet(entry: "BundleFile", m: dict[str, Any]) -> str:
    node = (entry.io or {}).get("inputs", [{}])[0]
    shape = node.get("shape", [1, 3, *m["input_size"]])
    nhwc = _layout(shape) == "NHWC"
    h, w = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
    int8 = node.get("dtype") == "int8"
    q = node.get("quantization") or {}
    out = ((entry.io or {}).get("outputs") or [{}])[0]
    mean = ", ".join(f"{v}f" for v in m["mean"])
    std = ", ".join(f"{v}f" for v in m["std"])
    put = (f"input.put(((x / {q.get('scale')}f).roundToInt() + {q.get('zero_point')}).coerceIn(-128, 127).toByte())"
           if int8 else "input.putFloat(x)")
    order = ("for (p in pixels) for (c in 0 until 3) {{ val x = (((p shr (16 - 8 * c)) and 0xFF) / 255f - mean[c]) "
             "/ std[c]; PUT }}") if nhwc else ("for (c in 0 until 3) for (p in pixels) {{ val x = (((p shr (16 - 8 * c))"
                                               " and 0xFF) / 255f - mean[c]) / std[c]; PUT }}")
    loop = order.replace("{{", "{").replace("}}", "}").replace("PUT", put)
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

// {entry.file}: input {_shape(shape)} {_layout(shape)} {node.get('dtype')}; bitmap is {h}x{w} after
// resizing the short side to {m['resize_size'][0]} ({m['interpolation']}) and centre-cropping.
val interpreter = Interpreter(FileUtil.loadMappedFile(context, "{entry.file}"), Interpreter.Options().setNumThreads(4))
val mean = floatArrayOf({mean}); val std = floatArrayOf({std})
val pixels = IntArray({h} * {w}).also {{ bitmap.getPixels(it, 0, {w}, 0, 0, {w}, {h}) }}
val input = ByteBuffer.allocateDirect({h} * {w} * 3 * {1 if int8 else 4}).order(ByteOrder.nativeOrder())
{loop}
input.rewind()
{read_out}
val labels = context.assets.open("labels.txt").bufferedReader().readLines()
val top = logits.withIndex().sortedByDescending {{ it.value }}.take(5).map {{ labels[it.index] }}
```"""


def _python_snippet(entry: "BundleFile") -> str:
    return f"""```python
from evim_deploy.runtime import load, top_k
with load("{entry.file}", threads=2) as model:
    print(top_k(model.predict(["photo.jpg"]), model.manifest.labels))
```"""


def render_readme(bundle: "Bundle") -> str:
    m = bundle.manifest
    h, w = m["input_size"]
    source = m["source"] or f"random weights (seed {m['seed']})"
    rows = [f"| `{f.file}` | {f.target} | {f.precision} | {f.bytes / 1e6:.2f} MB | {f.status} |" for f in bundle.files]
    parts = [
        f"# EfficientViM-{m['variant'].upper()} for mobile apps", "",
        f"Generated by evim-deploy {m['evim_deploy_version']} from {source}"
        + (f" (sha256 {m['source_sha256'][:16]}…)" if m.get("source_sha256") else "") + ".", "",
        "## Preprocessing (every file)",
        f"RGB, resize the short side to {m['resize_size'][0]} with {m['interpolation']} interpolation, centre-crop "
        f"{h}x{w}, scale to [0, 1], then normalize with mean {list(m['mean'])} and std {list(m['std'])}. "
        f"Class names are in `labels.txt` (one per line, index order, {m['num_classes']} classes).", "",
        "## Files", "", "| file | target | precision | size | verify vs PyTorch |", "|---|---|---|---|---|", *rows, ""]
    for entry in bundle.files:
        if entry.error:
            continue
        parts += [f"### `{entry.file}`", _input_text(entry, m), ""]
        if entry.target == "coreml" and any(n.get("kind") == "image" for n in entry.io["inputs"]):
            parts += [swift_snippet(entry, m), ""]
        elif entry.target == "tflite":
            parts += [kotlin_snippet(entry, m), ""]
        else:
            parts += [_python_snippet(entry), ""]
    return "\n".join(parts)
