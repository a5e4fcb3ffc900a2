"""The deploy form as ExecuTorch's XNNPACK delegate takes it whole: one partition, no portable kernels.

XNNPACK has no LayerNorm, no ``split_with_sizes`` and averages only 4-D maps over their two inner axes; each
left an op on the portable kernels and cut the graph (random-weight M1 fp32: 214 of 240 ops in 20 partitions).
Here, for ExecuTorch only (other targets keep the shared model):

* every ``nn.LayerNorm`` becomes :class:`PrimitiveLayerNorm` (means as ``linear`` by ``1/C``, ``rsqrt``), a
  module swap at export time;
* ``split`` becomes slices and a 3-D ``mean`` over tokens a 4-D one, decompositions of the exported program
  (:func:`for_xnnpack`).

M1 then lowers as one partition (342 of 342 ops) with logits within 1e-6 of the deploy form.
"""
from __future__ import annotations

import copy
import itertools
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

aten = torch.ops.aten


class PrimitiveLayerNorm(nn.Module):
    """LayerNorm over the last axis from ops XNNPACK runs: each mean a ``linear`` by a ``1/C`` row."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        (channels,) = norm.normalized_shape
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        dtype = norm.weight.dtype if norm.weight is not None else torch.float32
        self.register_buffer("average", torch.full((1, channels), 1.0 / channels, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - F.linear(x, self.average)
        y = centred * torch.rsqrt(F.linear(centred * centred, self.average) + self.eps)
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


def primitive_layer_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each last-axis ``nn.LayerNorm`` (wrapped or not) a :class:`PrimitiveLayerNorm`."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.LayerNorm) and len(child.normalized_shape) == 1:
                setattr(parent, name, PrimitiveLayerNorm(child))
    return model


def in_primitive_norm(node: Node) -> bool:
    """Whether an exported node computes a :class:`PrimitiveLayerNorm` (INT8 keeps those float)."""
    stack = node.meta.get("nn_module_stack") or {}
    return any(str(kind).rstrip("'>").rpartition(".")[2] == PrimitiveLayerNorm.__name__ for _, kind in stack.values())


def _slices(x: torch.Tensor, sizes: Sequence[int], dim: int = 0) -> list[torch.Tensor]:
    starts = itertools.accumulate(sizes, initial=0)
    return [aten.slice.Tensor(x, dim, start, start + size) for start, size in zip(starts, sizes)]


def _split(x: torch.Tensor, size: int, dim: int = 0) -> list[torch.Tensor]:
    whole, rest = divmod(x.shape[dim], size)
    return _slices(x, [size] * whole + ([rest] if rest else []), dim)


def _mean(x: torch.Tensor, dims: Sequence[int] | None, keepdim: bool = False, dtype: Any = None) -> Any:
    """A mean over the tokens of ``(B, L, C)`` as XNNPACK's global average pool: ``(B, C, L, 1)`` over (2, 3)."""
    if x.dim() != 3 or dtype is not None or dims is None or [d % 3 for d in dims] != [1]:
        return NotImplemented
    pooled = x.transpose(1, 2).unsqueeze(-1).mean([2, 3], keepdim=True)  # (B, C, 1, 1)
    return pooled.squeeze(-1).transpose(1, 2) if keepdim else pooled.flatten(1)


DECOMPOSITIONS = {aten.split_with_sizes.default: _slices, aten.split.Tensor: _split, aten.mean.dim: _mean}


def for_xnnpack(program: "torch.export.ExportedProgram") -> "torch.export.ExportedProgram":
    """``program`` with its splits as slices and its token means as 4-D means (:data:`DECOMPOSITIONS`)."""
    return program.run_decompositions(DECOMPOSITIONS)
