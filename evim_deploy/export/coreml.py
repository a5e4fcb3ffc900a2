"""Core ML export: deploy form -> mlprogram ``.mlpackage`` ready for an iOS app.

- ``input_kind="image"`` (default): a ``ct.ImageType`` RGB input, so an app passes a CVPixelBuffer
  straight from the camera. ImageType applies one scale and a per-channel bias, so the input becomes
  ``pixel / 255 - mean`` and ImageNet's per-channel ``1 / std`` is folded into the first conv's
  input channels: exact, zero padding included (a zero of ``(p/255 - mean)`` is a zero of the
  normalized image). ``input_kind="tensor"``: a float32 NCHW tensor, normalized as the manifest says.
- A ``ct.ClassifierConfig`` with the labels (outputs ``classLabel`` and ``classLabel_probs``) plus the
  raw ``logits`` output [1, num_classes] in float32.
- Static shapes (flexible shapes keep a model off the Neural Engine, coremltools #1764).
- Precisions: ``fp16`` (default) and ``fp32`` compute; ``int8`` = int8 weights
  (``linear_quantize_weights``, per-channel symmetric) with fp16 compute; ``w8a8`` = int8 weights and
  activations, calibrated on the user's images through ``coremltools.optimize.torch``'s
  ``LinearQuantizer`` on the deploy form (needs iOS 17); the layers it keeps fp16 get int8 weights as in
  ``int8`` (their activations stay fp16), so both files are about 0.3x fp32 (M1: 0.295x and 0.298x, the
  fp16 classifier 0.07x of it).
- The manifest is embedded in ``user_defined_metadata["evim_deploy.manifest"]``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..calibration import CalibrationSet
from ..console import quiet, warn
from ..errors import UsageError
from ..formats import coreml as coreml_format
from ..formats.coreml import IMAGE_INPUT, LABEL, LOGITS, TENSOR_INPUT, import_coremltools
from . import artifact_manifest, require_calibration

if TYPE_CHECKING:
    import torch.nn as nn

SOFTMAX = "probabilities"  # the softmax var the classify op reads (replaced by classLabel / classLabel_probs)
MIN_TARGETS = ("iOS16", "iOS17", "iOS18")
W8A8_MIN_TARGET = "iOS17"  # activation quantize/dequantize ops exist from iOS 17
INPUT_KINDS = ("image", "tensor")
# W8A8 keeps these fp16 (why, group by group: .coreml_int8): the groups the ONNX INT8 export keeps float.
DEFAULT_FLOAT_GROUPS = ("stem_input", "token_mixer", "depthwise", "residual", "head")


# ------------------------------------------------------------------------------------------ torch side
def fold_input_std(model: "nn.Module", std: tuple[float, float, float]) -> "nn.Module":
    """A copy of ``model`` that takes ``pixel / 255 - mean`` instead of the normalized image:
    the first conv's input channel ``c`` is divided by ``std[c]``."""
    import torch
    model = copy.deepcopy(model)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    if first.in_channels != len(std) or first.groups != 1:
        raise UsageError("the first conv does not take the 3 image channels", "export the EfficientViM deploy form")
    with torch.no_grad():
        first.weight.div_(torch.tensor(std, dtype=first.weight.dtype).reshape(1, -1, 1, 1))
    return model


def with_probabilities(net: "nn.Module") -> "nn.Module":
    """A module returning (logits, softmax(logits)): the classifier reads the second, apps may read the first."""
    import torch

    class LogitsAndProbabilities(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.net(x)
            return logits, logits.softmax(-1)

    return LogitsAndProbabilities().eval()


# ------------------------------------------------------------------------------------------- Core ML side
def convert(net: "nn.Module", manifest: Any, precision: str, min_target: str, input_kind: str):
    """Trace and convert to an ``MLModel`` (not saved) with the classifier and the raw logits output."""
    import torch
    ct = import_coremltools()
    height, width = manifest.input_size
    shape = (1, 3, height, width)
    if input_kind == "image":
        bias = [-m for m in manifest.mean]
        inputs = [ct.ImageType(name=IMAGE_INPUT, shape=shape, scale=1 / 255.0, bias=bias,
                               color_layout=ct.colorlayout.RGB)]
    else:
        inputs = [ct.TensorType(name=TENSOR_INPUT, shape=shape, dtype=np.float32)]
    with quiet():
        traced = torch.jit.trace(with_probabilities(net), torch.zeros(shape), check_trace=False)
    target = getattr(ct.target, min_target)
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    with quiet():
        # Two steps: ct.convert with both a ClassifierConfig and fp16 output types fails in coremltools 9
        # (IndexError in get_func_output: the classify op adds an output the recorded types do not have).
        # So convert to MIL with fp32 output types first, drop the recorded types, then add the classifier.
        pipeline = ct.PassPipeline.DEFAULT
        # This pass rescales add(dequantize(x, s_x), dequantize(y, s_y)) to units of s_y for kernel fusion;
        # with W8A8 ranges the rescaled fp16 tensors overflow (a dequantize scale of 1464 measured on M1).
        pipeline.remove_passes(["common::distributive_quantized_binary_op_scale_normalization"])
        program = ct.convert(traced, inputs=inputs, convert_to="milinternal", compute_precision=compute,
                             minimum_deployment_target=target, pass_pipeline=pipeline,
                             outputs=[ct.TensorType(name=LOGITS, dtype=np.float32),
                                      ct.TensorType(name=SOFTMAX, dtype=np.float32)])
        if precision in ("int8", "w8a8"):  # w8a8: the weights of the layers kept fp16 too (their activations stay fp16)
            quantize_weights_int8(program)
        program.functions["main"].set_output_types(None)
        classifier = ct.ClassifierConfig(list(manifest.labels), predicted_feature_name=LABEL,
                                         predicted_probabilities_output=SOFTMAX)  # else it takes the last op
        return ct.convert(program, convert_to="mlprogram", classifier_config=classifier,
                          compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY,
                          minimum_deployment_target=target, skip_model_load=True)


def quantize_weights_int8(program) -> None:
    """In place: per-channel symmetric int8 weights (``constexpr`` dequantize ops).

    Two kinds of weight stay fp16: tensors under 2048 elements (biases, norms, small depthwise kernels;
    coremltools' default) and the classifier head. The head is the folded fusion of four heads and
    their norms, so its columns carry very different scales and one step per row loses them: it alone
    cost half the cosine of int8 weights on M1 (1 - cos 4.6e-4 of 8.7e-4).

    This is the graph pass behind ``coremltools.optimize.coreml.linear_quantize_weights``, applied to
    the MIL program before the classifier is added: on a finished classifier ``MLModel`` coremltools 9
    fails to re-serialize the class-label list (``Unknown map from SSA type list``).
    """
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig
    head = [op for op in program.functions["main"].operations if op.op_type == "linear"][-1]
    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                                      granularity="per_channel"),
                                op_name_configs={head.weight.op.name: None})
    quantizer = PASS_REGISTRY["compression::linear_quantize_weights"]
    quantizer.set_options([PassOption("config", config), PassOption("joint_compression", False)])
    quantizer(program)  # __call__ records the pass in the new ops' scope info


def export_coreml(model: "nn.Module", output: Path, precision: str = "fp16", calibration: CalibrationSet | None = None,
                  min_target: str = "iOS16", input_kind: str = "image", float_groups: Iterable[str] | None = None,
                  **_: Any) -> Path:
    """Write ``model`` (deploy form) to ``output`` as a Core ML ``.mlpackage``.

    ``float_groups`` (W8A8): groups of :mod:`evim_deploy.quantize.groups` kept fp16 (default
    :data:`DEFAULT_FLOAT_GROUPS`).
    """
    if min_target not in MIN_TARGETS:
        raise UsageError(f"unknown --min-target {min_target!r}", f"choose one of {', '.join(MIN_TARGETS)}")
    if input_kind not in INPUT_KINDS:
        raise UsageError(f"unknown --input {input_kind!r}", "choose image or tensor")
    if precision == "w8a8":
        calibration = require_calibration(calibration, precision)
        if MIN_TARGETS.index(min_target) < MIN_TARGETS.index(W8A8_MIN_TARGET):
            warn(f"w8a8 needs activation quantize ops from {W8A8_MIN_TARGET}: raising --min-target {min_target} "
                 f"to {W8A8_MIN_TARGET}")
            min_target = W8A8_MIN_TARGET
    base = artifact_manifest(model, "coreml", precision)
    net = model.eval()
    input_scale = None
    if input_kind == "image":
        net = fold_input_std(net, base.std)
        input_scale = np.asarray(base.std, np.float32).reshape(1, 3, 1, 1)
    extra: dict[str, Any] = {"min_target": min_target, "input": input_kind,
                             "compute_precision": "fp32" if precision == "fp32" else "fp16",
                             "weights": {"int8": "int8", "w8a8": "int8"}.get(precision, "float"),
                             "activations": "int8" if precision == "w8a8" else "float"}
    if input_kind == "image":
        extra["image_input"] = {"name": IMAGE_INPUT, "color": "RGB", "scale": 1 / 255.0,
                                "bias": [-m for m in base.mean], "std_folded_into_first_conv": list(base.std)}
    if precision == "w8a8":
        from .coreml_int8 import quantize_w8a8
        float_groups = DEFAULT_FLOAT_GROUPS if float_groups is None else tuple(float_groups)
        net = quantize_w8a8(net, calibration, input_scale, float_groups)
        extra.update(calibration=calibration.describe(), calib_method="histogram", per_channel=True,
                     scheme="affine", float_groups=list(float_groups))
    manifest = artifact_manifest(model, "coreml", precision, **extra)
    if input_kind == "image":
        manifest = manifest.replace(layout="nhwc")  # native array form: uint8 pixels (B, H, W, 3)
    mlmodel = convert(net, manifest, precision, min_target, input_kind)
    coreml_format.embed_manifest(mlmodel, manifest, input_kind)
    with quiet():
        mlmodel.save(str(output))
    return output
