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
  ``LinearQuantizer`` on the deploy form (needs iOS 17).
- The manifest is embedded in ``user_defined_metadata["evim_deploy.manifest"]``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from ..calibration import CalibrationSet
from ..console import warn
from ..errors import UsageError
from . import artifact_manifest

MANIFEST_KEY = "evim_deploy.manifest"
IMAGE_INPUT, TENSOR_INPUT = "image", "input"
LOGITS, PROBABILITIES, LABEL = "logits", "classLabel_probs", "classLabel"
SOFTMAX = "probabilities"  # the softmax var the classify op reads (replaced by classLabel / classLabel_probs)
MIN_TARGETS = ("iOS16", "iOS17", "iOS18")
W8A8_MIN_TARGET = "iOS17"  # activation quantize/dequantize ops exist from iOS 17


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence coremltools' import chatter (untested-torch warning, ``Failed to load _MLModelProxy`` on
    Linux) and its progress bars; errors still raise."""
    loggers = [logging.getLogger(name) for name in ("coremltools", "torch.ao")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def import_coremltools():
    with quiet():
        import coremltools
    return coremltools


# ------------------------------------------------------------------------------------------ torch side
@torch.no_grad()
def fold_input_std(model: nn.Module, std: tuple[float, float, float]) -> nn.Module:
    """A copy of ``model`` that takes ``pixel / 255 - mean`` instead of the normalized image:
    the first conv's input channel ``c`` is divided by ``std[c]``."""
    model = copy.deepcopy(model)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if first.in_channels != len(std) or first.groups != 1:
        raise UsageError("the first conv does not take the 3 image channels", "export the EfficientViM deploy form")
    first.weight.div_(torch.tensor(std, dtype=first.weight.dtype).reshape(1, -1, 1, 1))
    return model


class LogitsAndProbabilities(nn.Module):
    """Returns (logits, softmax(logits)): the classifier reads the second, apps may read the first."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, logits.softmax(-1)


def float_modules(model: nn.Module) -> list[str]:
    """Layer groups (names as in :mod:`evim_deploy.quantize_report`) whose activations stay fp16 in W8A8,
    the groups the ONNX and TFLite INT8 exports keep float:

    - the first conv: it sees the 3-channel image, where int8 saves nothing and costs accuracy;
    - HSM-SSD's token mixer except its input projection: the softmax over tokens would be quantized in
      fixed 1/256 steps (its values are about 1/196 at 224x224), and the state products and gates work on
      tiny (N x C) tensors;
    - every depthwise conv (blocks and downsamples) and every block's residual mixes: the residual stream
      passes through them, so their quantize points add up over the network (memory-bound ops, where int8
      gains little);
    - the head: the pooled features go straight into the logits.
    """
    from ..model.deploy import DeployBlock
    first = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    blocks = [name for name, m in model.named_modules() if isinstance(m, DeployBlock)]
    parts = ("mixer", "dwconv1", "dwconv2", "residual")
    downsample_depthwise = [name for name, m in model.named_modules()
                            if name.startswith("downsamples") and isinstance(m, nn.Conv2d) and m.groups > 1]
    return [first, *(f"{block}.{part}" for block in blocks for part in parts), *downsample_depthwise, "head"]


def quantize_w8a8(model: nn.Module, calibration: CalibrationSet, input_scale: np.ndarray | None,
                  float_layers: tuple[str, ...] = (),
                  batch_size: int = 16) -> nn.Module:
    """INT8 weights (per-channel) and INT8 activations (per-tensor), calibrated on ``calibration``.

    ``coremltools.optimize.torch``'s ``LinearQuantizer`` inserts fake-quantize nodes into the deploy form
    (FX), the calibration images run through it, and ``finalize`` gives a model whose quantize/dequantize
    pairs convert to MIL ``quantize``/``dequantize`` ops. Choices, each measured on a random-weight M1 at
    224x224 (cosine of the logits against fp32 on the sample photos):

    - affine (asymmetric) scheme: 0.982 -> 0.989 against symmetric;
    - activation ranges from torch's ``HistogramObserver`` (the range with the least L2 quantization
      error) instead of min/max, so a few outliers do not set the step of a whole tensor;
    - :func:`float_modules` stay fp16: 0.971 -> 0.982 with the first conv, mixers and head; 0.993 with the
      block depthwise convs and residual mixes too (calibrated on other photos than the ones judged); the
      downsamples' depthwise convs lift the cosine on Gaussian inputs from 0.9896 to 0.9909.

    ``input_scale`` maps the normalized calibration images to the model's input (``std`` for the image
    input, whose first conv has ``1/std`` folded in).
    """
    from coremltools.optimize.torch.quantization import (LinearQuantizer, LinearQuantizerConfig,
                                                         ModuleLinearQuantizerConfig)
    from torch.ao.quantization import FakeQuantize, HistogramObserver, MinMaxObserver, disable_observer

    def int8() -> ModuleLinearQuantizerConfig:
        return ModuleLinearQuantizerConfig(quantization_scheme="affine", activation_observer="min_max",
                                           weight_observer="min_max", weight_per_channel=True)
    names: dict[str, ModuleLinearQuantizerConfig | None] = {}

    def keep_float(layer: str, input_projection: bool) -> None:
        block, _, part = layer.rpartition(".")
        if part == "residual":  # the block's own ops only: its sub-modules keep their configs
            names.update({f"{block}.{child}": int8() for child, _ in model.get_submodule(block).named_children()
                          if f"{block}.{child}" not in names})
            names[block] = None
            return
        names[layer] = None
        if hasattr(model.get_submodule(layer), "bcdt_proj"):  # a mixer: its input projection is a plain GEMM
            names[f"{layer}.bcdt_proj"] = int8() if input_projection else None
    for layer in float_modules(model):
        keep_float(layer, input_projection=True)
    for layer in float_layers:  # layer groups --fidelity keeps fp16 (evim_deploy.quantize_report)
        keep_float(layer, input_projection=False)
    config = LinearQuantizerConfig(global_config=int8(), module_name_configs=names)
    size = tuple(model.input_size)
    with quiet():
        quantizer = LinearQuantizer(copy.deepcopy(model), config)
        prepared = quantizer.prepare(example_inputs=(torch.zeros(1, 3, *size),))
        activations = [m for name, m in prepared.named_modules()
                       if isinstance(m, FakeQuantize) and not name.endswith("weight_fake_quant")
                       and type(m.activation_post_process) is MinMaxObserver]  # fixed-range ones (sigmoid) stay
        hooks = []
        for fq in activations:  # observe the float activations; no per-batch range search, no fake quant yet
            observer = fq.activation_post_process
            fq.activation_post_process = HistogramObserver(dtype=observer.dtype, qscheme=observer.qscheme,
                                                           quant_min=observer.quant_min, quant_max=observer.quant_max)
            fq.disable_observer()
            fq.disable_fake_quant()
            hooks.append(fq.register_forward_pre_hook(lambda m, args: m.activation_post_process(args[0].detach())))
        with torch.no_grad():
            for batch in calibration.batches(batch_size):
                x = batch if input_scale is None else batch * input_scale
                prepared(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        for hook in hooks:
            hook.remove()
        for fq in activations:
            scale, zero_point = fq.activation_post_process.calculate_qparams()
            fq.scale.resize_(scale.shape).copy_(scale)
            fq.zero_point.resize_(zero_point.shape).copy_(zero_point)
            fq.enable_fake_quant()
        prepared.apply(disable_observer)
        return quantizer.finalize(prepared).eval()


# ------------------------------------------------------------------------------------------- Core ML side
def convert(net: nn.Module, manifest: Any, precision: str, min_target: str, input_kind: str):
    """Trace and convert to an ``MLModel`` (not saved) with the classifier and the raw logits output."""
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
        traced = torch.jit.trace(LogitsAndProbabilities(net).eval(), torch.zeros(shape), check_trace=False)
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
        if precision == "int8":
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


def describe(mlmodel, manifest, input_kind: str) -> None:
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


def export_coreml(model: nn.Module, output: Path, precision: str = "fp16", calibration: CalibrationSet | None = None,
                  min_target: str = "iOS16", input_kind: str = "image", float_layers: tuple[str, ...] = (),
                  **_: Any) -> Path:
    """Write ``model`` (deploy form) to ``output`` as a Core ML ``.mlpackage``.

    ``float_layers`` (W8A8): layer groups of :mod:`evim_deploy.quantize_report` kept fp16 on top of
    :func:`float_modules`.
    """
    if min_target not in MIN_TARGETS:
        raise UsageError(f"unknown --min-target {min_target!r}", f"choose one of {', '.join(MIN_TARGETS)}")
    if input_kind not in ("image", "tensor"):
        raise UsageError(f"unknown --input {input_kind!r}", "choose image or tensor")
    if precision == "w8a8":
        if calibration is None:
            raise UsageError("W8A8 needs calibration images", "pass --calib DIR (or --calib-synthetic for a smoke test)")
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
        net = quantize_w8a8(net, calibration, input_scale, tuple(float_layers))
        extra.update(calibration=calibration.describe(), calib_method="histogram", per_channel=True,
                     scheme="affine", float_modules=float_modules(model),
                     **({"float_layers": list(float_layers)} if float_layers else {}))
    manifest = artifact_manifest(model, "coreml", precision, **extra)
    if input_kind == "image":
        manifest = manifest.replace(layout="nhwc")  # native array form: uint8 pixels (B, H, W, 3)
    mlmodel = convert(net, manifest, precision, min_target, input_kind)
    describe(mlmodel, manifest, input_kind)
    with quiet():
        mlmodel.save(str(output))
    return output


def read_manifest_json(spec: Any) -> str | None:
    return spec.description.metadata.userDefined.get(MANIFEST_KEY)


def package_summary(path: str | Path) -> dict[str, Any]:
    """Size, inputs, outputs and op histogram of a ``.mlpackage``."""
    from ..runtime.mil_interpreter import load_program
    path = Path(path)
    spec, program = load_program(path)
    ops: dict[str, int] = {}
    for op in program.functions["main"].operations:
        ops[op.op_type] = ops.get(op.op_type, 0) + 1
    return {"bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
            "inputs": [i.name for i in spec.description.input], "outputs": [o.name for o in spec.description.output],
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])), "specification_version": spec.specificationVersion}
