"""The GPU plan's operations in plain torch: the numerical reference of every fused kernel.

Each function has the signature of its Triton twin in :mod:`.kernels` and the same layout contract:
activations ``(B, H, W, C)`` / ``(B, L, C)`` contiguous in, contiguous out. Runs on any device and
dtype (tests use float32 on the CPU); this is also the ``kernels="torch"`` runtime.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .plan import Conv3x3, Depthwise, Linear, MLP, Mixer


def _nhwc(y: torch.Tensor) -> torch.Tensor:
    return y.permute(0, 2, 3, 1).contiguous()


def conv3x3(x: torch.Tensor, op: Conv3x3, dtype: torch.dtype) -> torch.Tensor:
    """``x`` is an NHWC view (any strides, any float dtype) -> NHWC ``dtype``."""
    taps, cin, cout = op.weight.shape
    weight = op.weight.reshape(3, 3, cin, cout).permute(3, 2, 0, 1).to(dtype)
    y = F.conv2d(x.permute(0, 3, 1, 2).to(dtype), weight, op.bias.to(dtype), stride=op.stride, padding=1)
    return _nhwc(F.relu(y) if op.relu else y)


def depthwise(x: torch.Tensor, op: Depthwise) -> torch.Tensor:
    channels = x.shape[-1]
    weight = op.weight.t().reshape(channels, 1, 3, 3).to(x.dtype)
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, op.bias.to(x.dtype), stride=op.stride, padding=1, groups=channels)
    return _nhwc(F.relu(y) if op.relu else y)


def linear(x: torch.Tensor, op: Linear, scale: torch.Tensor | None = None, residual: torch.Tensor | None = None,
           keep: torch.Tensor | None = None) -> torch.Tensor:
    """``x (B, L, K)``; ``scale (B, K)`` multiplies ``x`` per image and channel first (squeeze-excite);
    ``residual * keep`` (per channel) is added last."""
    if scale is not None:
        x = (x.float() * scale[:, None, :]).to(x.dtype)
    y = torch.matmul(x, op.weight.to(x.dtype)) + op.bias.to(x.dtype)
    y = F.relu(y) if op.relu else y
    return y if residual is None else (residual.float() * keep + y.float()).to(x.dtype)


def ln_linear(x: torch.Tensor, mixer: Mixer) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm over channels, then the BCdt projection: ``(tokens, bcdt)``, both ``(B, L, ·)``."""
    t = F.layer_norm(x.float(), x.shape[-1:], mixer.norm_weight, mixer.norm_bias, mixer.eps).to(x.dtype)
    return t, torch.matmul(t, mixer.bcdt.to(x.dtype))


def segments(bcdt: torch.Tensor, state_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B, C, dt ``(B, L, N)`` views of ``bcdt (B, L, 3S)`` (three zero-padded segments of S columns)."""
    seg = bcdt.shape[-1] // 3
    return tuple(bcdt[..., i * seg:i * seg + state_dim] for i in range(3))


def state(bcdt: torch.Tensor, tokens: torch.Tensor, state_dim: int) -> torch.Tensor:
    """``h = (softmax_L(dt) * B)^T @ tokens``: ``(B, N, C)`` from the depthwise-convolved ``bcdt``."""
    b, _, dt = (part.float() for part in segments(bcdt, state_dim))
    weights = dt.softmax(dim=1) * b                                   # (B, L, N)
    return torch.matmul(weights.transpose(1, 2).to(tokens.dtype), tokens)


def mix(h: torch.Tensor, mixer: Mixer) -> torch.Tensor:
    """The hidden-state mix: ``out_proj((h Wh + bh) * (silu(h Wz + bz) + D))``, ``(B, N, C)``."""
    dtype = h.dtype
    hh = torch.matmul(h, mixer.wh.to(dtype)).float() + mixer.bh
    z = torch.matmul(h, mixer.wz.to(dtype)).float() + mixer.bz
    gated = (hh * (F.silu(z) + mixer.d)).to(dtype)
    return linear(gated, mixer.out)


def scan_out(bcdt: torch.Tensor, hidden: torch.Tensor, x: torch.Tensor, keep: torch.Tensor,
             y_scale: torch.Tensor, state_dim: int) -> torch.Tensor:
    """``x * keep + (C @ hidden) * y_scale``: the state read back to every token plus the mixer's residual."""
    c = segments(bcdt, state_dim)[1]
    y = torch.matmul(c, hidden).float()
    return (x.float() * keep + y * y_scale).to(x.dtype)


def mlp(x: torch.Tensor, op: MLP) -> torch.Tensor:
    return linear(linear(x, op.fc1), op.fc2, residual=x, keep=op.keep)


def ln_mean(features: list[torch.Tensor], eps: float) -> torch.Tensor:
    """Each ``(B, N_i, C_i)`` feature normalized over channels (no affine) and averaged over its N_i rows,
    concatenated: ``(B, sum C_i)`` float32 (the head's input)."""
    return torch.cat([F.layer_norm(f.float(), f.shape[-1:], eps=eps).mean(1) for f in features], dim=1)
