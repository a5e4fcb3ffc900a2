"""What stays float in an INT8 file, in one vocabulary that every INT8 target translates into its own
tool's syntax (ONNX Runtime's ``nodes_to_exclude``, litert's module scopes, Core ML's module configs).

A group is either

* a **named group**, one kind of layer across the whole network (:data:`NAMED_GROUPS`); ``depthwise`` is
  shorthand for both depthwise kinds and ``token_mixer`` for the whole HSM-SSD after its input projection,
  its state path and its two state projections (:data:`ALIASES`); or
* a **layer group**, one module of the deploy form (:func:`layer_groups`): ``stem``; per block
  ``stages.<stage>.<block>.<part>`` with part ``dwconv1``, ``mixer``, ``dwconv2``, ``fc1``, ``fc2`` or
  ``residual`` (the block's own ops: its residual mixes); each ``downsamples.<i>``; the ``head``.

One knob, ``float_groups``, takes any mix of both, in the CLI (``--float-groups``), the Python API and
``--fidelity`` (which adds layer groups to the target's default policy).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from ..errors import UsageError

if TYPE_CHECKING:
    import torch

RESIDUAL = "residual"  # a block's own ops (its residual mixes), outside its sub-modules
BLOCK_PARTS = ("dwconv1", "mixer", "dwconv2", "fc1", "fc2", RESIDUAL)

NAMED_GROUPS: dict[str, str] = {
    "stem_input": "the first convolution, on the 3-channel image",
    "mixer_input": "each HSM-SSD's input projection (B, C and dt)",
    "mixer_state": "each HSM-SSD's state path: norm, B/C/dt depthwise conv, token softmax, both state products, "
                   "gates",
    "mixer_projections": "each HSM-SSD's two weight products on its hidden state (hz_proj, out_proj)",
    RESIDUAL: "each block's residual mixes (the folded LayerScale gates: per-channel scales and adds)",
    "block_depthwise": "each block's two 3x3 depthwise convolutions",
    "downsample_depthwise": "the depthwise convolutions of the patch-merging downsamples",
    "downsample": "every patch-merging downsample, whole",
    "head": "the pooled-feature norms and the folded classifier",
}
# Named groups whose weight products, when INT8, quantize their input per run (dynamic INT8: int8 weights, the
# activation's range measured on each input) instead of from calibrated ranges: ONNX DynamicQuantizeMatMul, TFLite
# hybrid FULLY_CONNECTED, XNNPACK qd8 in ExecuTorch (Core ML has no dynamic INT8: static W8A8 there). The mixer's
# hidden state, which the head pools, changes range from image to image: random-weight M1 on the sample photos
# gives ONNX images cosine 0.984 with calibrated ranges (below verify's 0.99) and 0.995 dynamic (docs/int8.md).
DYNAMIC_GROUPS = ("mixer_projections",)
ALIASES: dict[str, tuple[str, ...]] = {"depthwise": ("block_depthwise", "downsample_depthwise"),
                                       "token_mixer": ("mixer_state", "mixer_projections")}


def layer_groups(deploy: "torch.nn.Module") -> list[str]:
    """The deploy form's layer groups, input to output."""
    import torch
    groups = ["stem"]
    for i, (blocks, down) in enumerate(zip(deploy.stages, deploy.downsamples)):
        groups += [f"stages.{i}.{j}.{part}" for j in range(len(blocks)) for part in BLOCK_PARTS]
        if not isinstance(down, torch.nn.Identity):
            groups.append(f"downsamples.{i}")
    return groups + ["head"]


def in_groups(module_path: str, groups: Iterable[str]) -> bool:
    """Whether a module path lies in one of the layer ``groups`` (``stages.0.1.residual``: the block's own ops)."""
    for group in groups:
        block, _, part = group.rpartition(".")
        if part == RESIDUAL and module_path == block:
            return True
        if module_path == group or module_path.startswith(group + "."):
            return True
    return False


def split_groups(groups: Iterable[str], deploy: "torch.nn.Module") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(named groups, layer groups)`` of ``groups``, aliases expanded; an unknown name is a one-line error."""
    named: list[str] = []
    layers: list[str] = []
    known_layers = set(layer_groups(deploy))
    for group in groups:
        if group in ALIASES:
            named += [g for g in ALIASES[group] if g not in named]
        elif group in NAMED_GROUPS:
            named += [group] if group not in named else []
        elif group in known_layers:
            layers += [group] if group not in layers else []
        else:
            raise UsageError(f"unknown float group {group!r}",
                             f"choose named groups ({', '.join([*NAMED_GROUPS, *ALIASES])}) or layer groups of "
                             f"this model (stem, stages.<i>.<j>.<{'|'.join(BLOCK_PARTS)}>, downsamples.<i>, head)")
    return tuple(named), tuple(layers)
