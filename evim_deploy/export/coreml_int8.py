"""Core ML W8A8: int8 weights and int8 activations through ``coremltools.optimize.torch``'s ``LinearQuantizer``
on the deploy form, with the float policy of :mod:`evim_deploy.quantize.groups` translated into its per-module
configs (``None`` keeps a module fp16).

The default policy keeps fp16 (:data:`.coreml.DEFAULT_FLOAT_GROUPS`), the groups the ONNX INT8 export keeps float
(and TFLite's kept before issue 15):

- the first conv: it sees the 3-channel image, where int8 saves nothing and costs accuracy;
- HSM-SSD's token mixer except its input projection (``token_mixer``: ``mixer_state`` and
  ``mixer_projections``): the softmax over tokens would be quantized in fixed 1/256 steps (its values are
  about 1/196 at 224x224), and the state products and gates work on tiny (N x C) tensors;
- every depthwise conv (blocks and downsamples) and every block's residual mixes: the residual stream
  passes through them, so their quantize points add up over the network (memory-bound ops, where int8
  gains little);
- the head: the pooled features go straight into the logits.

"fp16" is the activations: the conversion then gives the weights of these layers int8 too
(:func:`.coreml.quantize_weights_int8`, the classifier excepted), so the file stays about 0.3x fp32.
"""
from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn

from ..calibration import CalibrationSet
from ..console import quiet
from ..quantize.groups import split_groups

# Named group -> the part of each block it keeps fp16 (the others are not per block). A mixer's own group keeps
# its state path fp16; its projections, plain GEMMs, follow their own groups (MIXER_PROJECTIONS).
BLOCK_PARTS = (("mixer", "mixer_state"), ("dwconv1", "block_depthwise"), ("dwconv2", "block_depthwise"),
               ("residual", "residual"), ("mixer.bcdt_proj", "mixer_input"), ("mixer.hz_proj", "mixer_projections"),
               ("mixer.out_proj", "mixer_projections"))
MIXER_PROJECTIONS = ("bcdt_proj", "hz_proj", "out_proj")


def named_group_modules(model: nn.Module, named: Iterable[str]) -> list[str]:
    """The deploy-form modules (``<block>.residual``: the block's own ops) that the named groups keep fp16."""
    from ..model.deploy import DeployBlock
    named = set(named)
    modules = []
    if "stem_input" in named:
        modules.append(next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)))
    for block in (name for name, m in model.named_modules() if isinstance(m, DeployBlock)):
        modules += [f"{block}.{part}" for part, group in BLOCK_PARTS if group in named]
    if "downsample_depthwise" in named:
        modules += [name for name, m in model.named_modules()
                    if name.startswith("downsamples") and isinstance(m, nn.Conv2d) and m.groups > 1]
    if "downsample" in named:
        modules += [f"downsamples.{i}" for i, m in enumerate(model.downsamples) if not isinstance(m, nn.Identity)]
    return modules + (["head"] if "head" in named else [])


def quantize_w8a8(model: nn.Module, calibration: CalibrationSet, input_scale: np.ndarray | None,
                  float_groups: Iterable[str], batch_size: int = 16) -> nn.Module:
    """INT8 weights (per-channel) and INT8 activations (per-tensor), calibrated on ``calibration``.

    ``coremltools.optimize.torch``'s ``LinearQuantizer`` inserts fake-quantize nodes into the deploy form
    (FX), the calibration images run through it, and ``finalize`` gives a model whose quantize/dequantize
    pairs convert to MIL ``quantize``/``dequantize`` ops. Choices, each measured on a random-weight M1 at
    224x224 (cosine of the logits against fp32 on the sample photos):

    - affine (asymmetric) scheme: 0.982 -> 0.989 against symmetric;
    - activation ranges from torch's ``HistogramObserver`` (the range with the least L2 quantization
      error) instead of min/max, so a few outliers do not set the step of a whole tensor;
    - ``float_groups`` stay fp16 (default :data:`.coreml.DEFAULT_FLOAT_GROUPS`): 0.971 -> 0.982 with the first conv,
      mixers and head; 0.993 with the block depthwise convs and residual mixes too (calibrated on other photos
      than the ones judged); the downsamples' depthwise convs lift the cosine on Gaussian inputs from 0.9896
      to 0.9909.

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

    def keep_float(layer: str, whole: bool) -> None:
        block, _, part = layer.rpartition(".")
        if part == "residual":  # the block's own ops only: its sub-modules keep their configs
            names.update({f"{block}.{child}": int8() for child, _ in model.get_submodule(block).named_children()
                          if f"{block}.{child}" not in names})
            names[block] = None
            return
        names[layer] = None
        if hasattr(model.get_submodule(layer), "bcdt_proj"):  # a mixer: its projections follow their own groups
            for child in (f"{layer}.{c}" for c in MIXER_PROJECTIONS):
                if whole:
                    names[child] = None
                else:
                    names.setdefault(child, int8())
    named, layers = split_groups(float_groups, model)
    for layer in named_group_modules(model, named):
        keep_float(layer, whole=False)
    for layer in layers:  # a layer group is the whole module, a mixer's projections included
        keep_float(layer, whole=True)
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
