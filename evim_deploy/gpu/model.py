"""The network over a :class:`~.plan.Plan`, with a pluggable set of operations (torch or Triton).

The forward pass is written once; ``ops`` is :mod:`.ops_torch` (the reference, any device) or
:class:`.kernels.TritonOps` (fused Triton kernels, CUDA only). Squeeze-excite and the head are a few
tiny torch ops in both.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops_torch
from .plan import Block, Merge, Plan


class PlanModel(nn.Module):
    """EfficientViM on the NHWC plan; ``forward`` takes NCHW images (any float dtype, any strides)."""

    def __init__(self, plan: Plan, ops: ModuleType | Any = ops_torch) -> None:
        super().__init__()
        self.plan, self.ops = plan, ops

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ops, plan = self.ops, self.plan
        x = images.permute(0, 2, 3, 1)                       # NHWC view, no copy: the stem reads strides
        for conv in plan.stem:
            x = ops.conv3x3(x, conv, plan.dtype)
        hidden = []
        for i, blocks in enumerate(plan.stages):
            for block in blocks:
                x, h = self._block(x, block)
            hidden.append(h)
            if i < len(plan.merges):
                x = self._merge(x, plan.merges[i])
        hidden.append(x.reshape(x.shape[0], -1, x.shape[-1]))
        pooled = ops.ln_mean(hidden, plan.head.eps).to(plan.head.weight.dtype)
        return torch.addmm(plan.head.bias.to(pooled.dtype), pooled, plan.head.weight).float()

    def _block(self, x: torch.Tensor, block: Block) -> tuple[torch.Tensor, torch.Tensor]:
        ops, mixer = self.ops, block.mixer
        batch, height, width, dim = x.shape
        tokens = height * width
        x1 = ops.depthwise(x, block.dw1)
        t, bcdt = ops.ln_linear(x1.view(batch, tokens, dim), mixer)
        bcdt = ops.depthwise(bcdt.view(batch, height, width, -1), mixer.bcdt_dw).view(batch, tokens, -1)
        h = ops.mix(ops.state(bcdt, t, mixer.state_dim), mixer)
        xm = ops.scan_out(bcdt, h, x1.view(batch, tokens, dim), block.mixer_keep, mixer.y_scale, mixer.state_dim)
        x2 = ops.depthwise(xm.view(batch, height, width, dim), block.dw2)
        return ops.mlp(x2.view(batch, tokens, dim), block.mlp).view(batch, height, width, dim), h

    def _merge(self, x: torch.Tensor, merge: Merge) -> torch.Tensor:
        ops = self.ops
        batch, height, width, dim = x.shape
        x = ops.depthwise(x, merge.dw_in)
        x = ops.linear(x.view(batch, height * width, dim), merge.expand)
        x = ops.depthwise(x.view(batch, height, width, -1), merge.down)
        _, h2, w2, hidden = x.shape
        tokens = x.view(batch, h2 * w2, hidden)
        y = ops.linear(tokens, merge.project, scale=squeeze_excite(tokens, merge))
        return ops.depthwise(y.view(batch, h2, w2, -1), merge.dw_out)


def squeeze_excite(tokens: torch.Tensor, merge: Merge) -> torch.Tensor:
    """Per-image channel gates ``(B, C)`` float32 (applied inside the projection, never materialized)."""
    pooled = tokens.mean(1, dtype=torch.float32)
    return torch.sigmoid(F.relu(pooled @ merge.se_fc1 + merge.se_b1) @ merge.se_fc2 + merge.se_b2)


