"""Full-integer INT8 for LiteRT through litert-torch's PT2E path: static ranges calibrated on the
user's images, per-channel int8 weights, int8 activations.

litert-torch's ``PT2EQuantizer`` annotates convolutions, linears, add, mul, cat and pooling. Four
additions make EfficientViM's HSM-SSD integer as well:

* **token softmax**: ``torch.export`` writes ``aten.softmax.int``, which the stock fixed-qparams
  annotator (``aten._softmax``) does not match. Its int8 output must have scale 1/256 and zero point
  -128, or the TFLite kernel refuses the file at load time (``SOFTMAX ... output->params.scale not
  near 1.f / 256``). It gets the quantizer's fixed qparams, and its consumers read that same spec,
  so no requantize follows it.
* **state products** (``bmm``): int8 inputs and output (the converter emits int8 FULLY_CONNECTED).
* **SiLU** is rewritten as ``x * sigmoid(x)``: the converter keeps ``aten.silu`` in float even between
  Q/DQ pairs, while LOGISTIC (fixed qparams) and MUL have int8 kernels.
* **views**: a reshape, transpose or split between two quantized ops must keep one scale (TFLite's
  same-scale constraint), so an input reached through views shares its producer's observer.

LayerNorm stays float: the converter lowers it to MEAN / SQUARED_DIFFERENCE / RSQRT / SUB / MUL / ADD
in float between a DEQUANTIZE and a QUANTIZE. With ``xnnpack=True`` (the default) so do the token softmax,
its product with B and both state products: XNNPACK has no int8 SOFTMAX and no int8 matrix product of two
activations, so in int8 those ops would leave the delegate for TFLite's own kernels (20 of M1's ops, 19
partitions, slower than fp32 at 2 threads); in float they stay inside it, and the softmax keeps its
resolution (1/256 steps cannot carry weights averaging 1/196). ``float_groups`` (:mod:`evim_deploy.quantize.groups`) keep more in
float: named groups translate to module-path regexes (:data:`MODULE_PATTERNS`), layer groups to module paths.
With ``xnnpack=True`` the mixer's two state projections (``mixer_projections``, a dynamic group) are left float
here too: the flatbuffer's float ``FULLY_CONNECTED`` ops get int8 weights afterwards and XNNPACK runs them as
dynamic INT8 (the input quantized per row at run time), as it runs every float group's projections.
"""
from __future__ import annotations

import operator
import re
from typing import Any, Callable, Iterable

import torch
from torch.fx import GraphModule, Node

from ..calibration import CalibrationSet
from ..console import track
from ..errors import UsageError
from ..quantize.groups import DYNAMIC_GROUPS, in_groups, split_groups

aten = torch.ops.aten

# Each named group of evim_deploy.quantize.groups in litert's terms: a regex on the module path of each node,
# or None for "residual", which is a predicate on the node (x * a per-channel constant: the folded gates).
MODULE_PATTERNS: dict[str, str | None] = {
    "stem_input": r"(^|\.)stem\.0\.",                  # the first convolution, on the 3-channel image
    "mixer_input": r"\.mixer\.bcdt_proj(\.|$)",        # HSM-SSD's input projection
    "mixer_state": r"\.mixer(\.(norm|bcdt_dw)(\.|$)|$)",  # HSM-SSD's norm, B/C/dt conv and its own ops
    "mixer_projections": r"\.mixer\.(hz_proj|out_proj)(\.|$)",  # its two weight products on the hidden state
    "residual": None,                                 # x * per-channel constant (the folded residual gates)
    "block_depthwise": r"\.dwconv\d(\.|$)",            # each block's two 3x3 depthwise convolutions
    "downsample_depthwise": r"(^|\.)downsamples\.\d+\.[025](\.|$)",
    "downsample": r"(^|\.)downsamples\.",
    "head": r"(^|\.)head(\.|$)",                      # pooled-feature norms, concat and classifier
}
# --calib-method -> torchao observer of the activations (HistogramObserver: an L2-optimal clipping search)
CALIBRATION_OBSERVERS = {"minmax": "MinMaxObserver", "entropy": "HistogramObserver", "percentile": "HistogramObserver"}

_FIXED_QPARAMS = {aten.softmax.int, aten._softmax.default, aten.sigmoid.default}
_EXTRA_OPS = {aten.softmax.int: 1, aten._softmax.default: 1, aten.sigmoid.default: 1, aten.bmm.default: 2,
              aten.mul.Tensor: 2}  # op -> number of activation inputs
_SOFTMAX = {aten.softmax.int, aten._softmax.default}
_VIEWS = {aten.reshape.default, aten.view.default, aten.transpose.int, aten.permute.default, aten.split.Tensor,
          aten.split_with_sizes.default, operator.getitem, aten.squeeze.dim, aten.unsqueeze.default,
          aten.flatten.using_ints, aten.slice.Tensor, aten.contiguous.default}


def _annotation(node: Node):
    found = node.meta.get("quantization_annotation")
    return found if found is not None and found._annotated else None


def _module_path(node: Node) -> str:
    """The deploy-form module a node comes from (``stages.0.1.mixer.norm``), without the layout wrapper."""
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0].removeprefix("wrapped.") if stack else ""


def _observed_source(node: Node) -> Node | None:
    """The quantized node whose values ``node`` carries unchanged through views, if any."""
    while node.op == "call_function" and node.target in _VIEWS and _annotation(node) is None:
        node = node.args[0]
    found = _annotation(node)
    return node if found is not None and found.output_qspec is not None else None


def _is_channel_scale(node: Node) -> bool:
    return node.target == aten.mul.Tensor and any(isinstance(a, Node) and a.op == "get_attr" for a in node.args)


def float_policy(deploy: torch.nn.Module, float_groups: Iterable[str]) -> Callable[[Node], bool]:
    """Whether a node of the exported deploy form stays float under ``float_groups`` (of ``deploy``): named groups
    through :data:`MODULE_PATTERNS`, layer groups by module path. Shared by every PT2E exporter."""
    named, float_layers = split_groups(float_groups, deploy)
    float_patterns = [re.compile(MODULE_PATTERNS[group]) for group in named if MODULE_PATTERNS[group]]
    float_scales = "residual" in named

    def keeps_float(node: Node) -> bool:
        if float_scales and _is_channel_scale(node):
            return True
        path = _module_path(node)
        return in_groups(path, float_layers) or any(p.search(path) for p in float_patterns)
    return keeps_float


def dynamic_modules(deploy: torch.nn.Module, float_groups: Iterable[str]) -> list[str]:
    """The linears of :data:`~evim_deploy.quantize.groups.DYNAMIC_GROUPS` that ``float_groups`` leave INT8: they run
    dynamic INT8 (int8 weights, the input's range taken per run). Shared by every PT2E exporter."""
    named, float_layers = split_groups(float_groups, deploy)
    patterns = [re.compile(MODULE_PATTERNS[group]) for group in DYNAMIC_GROUPS if group not in named]
    return [name for name, module in deploy.named_modules() if isinstance(module, torch.nn.Linear)
            and any(p.search(name) for p in patterns) and not in_groups(name, float_layers)]


def calibrated_config(config: Any, calib_method: str) -> Any:
    """A PT2E quantization config with ``calib_method``'s activation observer (:data:`CALIBRATION_OBSERVERS`)."""
    import dataclasses

    from torchao.quantization.pt2e import observer as observers
    if calib_method not in CALIBRATION_OBSERVERS:
        raise UsageError(f"unknown calibration method {calib_method!r}", f"choose one of {', '.join(CALIBRATION_OBSERVERS)}")
    activation = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=getattr(
        observers, CALIBRATION_OBSERVERS[calib_method]).with_args(eps=2 ** -12))
    return dataclasses.replace(config, input_activation=activation, output_activation=activation)


def decompose_silu(graph: GraphModule) -> GraphModule:
    """Rewrite every ``silu(x)`` as ``x * sigmoid(x)`` (same values; int8 kernels exist for both)."""
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target == aten.silu.default:
            with graph.graph.inserting_before(node):
                gate = graph.graph.call_function(aten.sigmoid.default, (node.args[0],))
                product = graph.graph.call_function(aten.mul.Tensor, (node.args[0], gate))
            gate.meta, product.meta = dict(node.meta), dict(node.meta)
            node.replace_all_uses_with(product)
            graph.graph.erase_node(node)
    graph.graph.lint()
    graph.recompile()
    return graph


def without_xnnpack_int8(node: Node) -> bool:
    """The token softmax, its product with B and both state products: ops XNNPACK has no int8 kernel for."""
    if node.target in _SOFTMAX or node.target == aten.bmm.default:
        return True
    return node.target == aten.mul.Tensor and any(isinstance(a, Node) and a.target in _SOFTMAX for a in node.args)


def make_quantizer(deploy: torch.nn.Module, float_groups: Iterable[str], per_channel: bool, calib_method: str,
                   xnnpack: bool = True):
    """litert-torch's PT2E quantizer, extended to the whole EfficientViM graph (see the module docstring).

    ``float_groups`` names groups of :mod:`evim_deploy.quantize.groups` (of ``deploy``) kept float; ``xnnpack``
    keeps the ops XNNPACK has no int8 kernel for float too (:func:`without_xnnpack_int8`).
    """
    from litert_torch.quantize import pt2e_quantizer as pt2e
    from litert_torch.quantize import pt2e_quantizer_utils as utils
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    config = calibrated_config(pt2e.get_symmetric_quantization_config(is_per_channel=per_channel), calib_method)
    keeps_float = float_policy(deploy, float_groups)
    # left float for finish_int8 to make hybrid FULLY_CONNECTED (XNNPACK's dynamic INT8); static for accelerators
    dynamic = set(dynamic_modules(deploy, float_groups)) if xnnpack else set()

    class EfficientViMQuantizer(pt2e.PT2EQuantizer):
        def quantizable(self, node: Node) -> bool:
            return not (keeps_float(node) or _module_path(node) in dynamic or xnnpack and without_xnnpack_int8(node))

        def annotate(self, model: GraphModule) -> GraphModule:
            config = self.global_config
            self._annotate_all_static_patterns(model, config, self.quantizable)
            activation, fixed = utils.get_input_act_qspec(config), utils.get_fixed_qparams_qspec(config)
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in _EXTRA_OPS or not self.quantizable(node):
                    continue
                if _annotation(node) is not None and node.target not in _FIXED_QPARAMS:
                    continue
                inputs = [a for a in node.args[:_EXTRA_OPS[node.target]] if isinstance(a, Node)]
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={a: activation for a in inputs},
                    output_qspec=fixed if node.target in _FIXED_QPARAMS else activation, _annotated=True)
            utils.propagate_annotation(model)
            for node in model.graph.nodes:
                annotation = _annotation(node)
                for arg, spec in list(annotation.input_qspec_map.items()) if annotation else ():
                    if isinstance(spec, SharedQuantizationSpec) or arg.op != "call_function":
                        continue
                    if arg.target in _FIXED_QPARAMS and _annotation(arg) is not None:
                        annotation.input_qspec_map[arg] = _annotation(arg).output_qspec
                    elif arg.target in _VIEWS and (source := _observed_source(arg)) is not None:
                        annotation.input_qspec_map[arg] = SharedQuantizationSpec(source)
            return model

    return EfficientViMQuantizer().set_global(config)


def quantize(module: torch.nn.Module, deploy: torch.nn.Module, sample: torch.Tensor, calibration: CalibrationSet,
             layout: str, float_groups: Iterable[str], per_channel: bool, calib_method: str, xnnpack: bool = True):
    """Export, annotate, calibrate and convert ``module``; return the Q/DQ graph and litert's QuantConfig."""
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = make_quantizer(deploy, float_groups, per_channel, calib_method, xnnpack)
    prepared = prepare_pt2e(decompose_silu(torch.export.export(module, (sample,)).module()), quantizer)
    with torch.no_grad():
        for batch in track(calibration.batches(1), "calibrating", total=len(calibration)):
            prepared(torch.from_numpy(batch.transpose(0, 2, 3, 1) if layout == "nhwc" else batch).contiguous())
    converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    # move_exported_model_to_eval rewrites the graph but leaves the flag, and pt2e forbids .eval()
    converted.training = False  # (litert-torch would warn "converted in training mode")
    return converted, QuantConfig(pt2e_quantizer=quantizer)
