"""Building blocks of the EfficientViM reference model.

Module and parameter names follow the official implementation
(mlvlab/EfficientViM, ``classification/models/utils.py``) so official state dicts
load unchanged. Every block that has a deploy form owns a ``reparameterize()``
method; :mod:`evim_deploy.model.deploy` composes them.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .fuse import conv_bn_weights, depthwise_residual, make_conv2d


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over dim 1 (channels) with broadcast-shaped affine parameters."""

    affine_shape: tuple[int, ...] = ()

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, num_channels, *self.affine_shape))
        self.bias = nn.Parameter(torch.zeros(1, num_channels, *self.affine_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, beta) as flat ``[C]`` vectors."""
        return self.weight.detach().reshape(-1), self.bias.detach().reshape(-1)

    def reparameterize(self) -> nn.LayerNorm:
        """The same normalization as a token-major ``nn.LayerNorm`` over the last dim."""
        ln = nn.LayerNorm(self.num_channels, eps=self.eps)
        gamma, beta = self.affine()
        ln.weight.data.copy_(gamma)
        ln.bias.data.copy_(beta)
        return ln


class LayerNorm1D(_ChannelLayerNorm):
    """LayerNorm over the channels of a ``(B, C, L)`` tensor; weight ``[1, C, 1]``."""

    affine_shape = (1,)


class LayerNorm2D(_ChannelLayerNorm):
    """LayerNorm over the channels of a ``(B, C, H, W)`` tensor; weight ``[1, C, 1, 1]``."""

    affine_shape = (1, 1)


class _ConvLayer(nn.Module):
    """Conv (no bias) + optional BatchNorm + optional activation."""

    conv_cls: type[nn.Module] = nn.Conv2d
    norm_cls: type[nn.Module] = nn.BatchNorm2d

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, norm: bool = True, act_layer: type[nn.Module] | None = nn.ReLU,
                 bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.conv = self.conv_cls(in_dim, out_dim, kernel_size, stride=stride, padding=padding,
                                  dilation=dilation, groups=groups, bias=False)
        self.norm = self.norm_cls(out_dim) if norm else None
        self.act = act_layer() if act_layer else None
        if self.norm is not None:
            nn.init.constant_(self.norm.weight, bn_weight_init)
            nn.init.constant_(self.norm.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x

    def fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv weight and bias with the BatchNorm folded in."""
        return conv_bn_weights(self.conv, self.norm)


class ConvLayer2D(_ConvLayer):
    """Conv2d + BatchNorm2d + activation, as ``ConvLayer2D`` in the official code."""

    def reparameterize(self) -> nn.Module:
        """Conv2d with BN folded, followed by the activation if there is one."""
        conv = make_conv2d(self.conv, *self.fused_weights())
        return nn.Sequential(conv, self.act) if self.act is not None else conv


class ConvLayer1D(_ConvLayer):
    """Conv1d (+ BatchNorm1d) used as a per-token linear projection."""

    conv_cls = nn.Conv1d
    norm_cls = nn.BatchNorm1d

    def reparameterize(self) -> nn.Linear:
        """The pointwise Conv1d as a token-major ``nn.Linear`` (no Conv1d in the deploy form)."""
        assert self.conv.kernel_size == (1,) and self.act is None
        weight, bias = self.fused_weights()
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=self.norm is not None)
        linear.weight.data.copy_(weight[:, :, 0])
        if linear.bias is not None:
            linear.bias.data.copy_(bias)
        return linear


class FFN(nn.Module):
    """Pointwise expansion MLP: 1x1 conv + BN + ReLU, 1x1 conv + BN."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1 = ConvLayer2D(in_dim, dim, 1)
        self.fc2 = ConvLayer2D(dim, in_dim, 1, act_layer=None, bn_weight_init=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class Stem(nn.Module):
    """Four stride-2 3x3 convs: total stride 16."""

    def __init__(self, in_dim: int = 3, dim: int = 96) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            ConvLayer2D(in_dim, dim // 8, kernel_size=3, stride=2, padding=1),
            ConvLayer2D(dim // 8, dim // 4, kernel_size=3, stride=2, padding=1),
            ConvLayer2D(dim // 4, dim // 2, kernel_size=3, stride=2, padding=1),
            ConvLayer2D(dim // 2, dim, kernel_size=3, stride=2, padding=1, act_layer=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def reparameterize(self) -> nn.Sequential:
        return nn.Sequential(*[layer.reparameterize() for layer in self.conv])


def make_divisible(value: float, divisor: int = 8) -> int:
    """timm's ``make_divisible`` with ``round_limit=0`` (as its SqueezeExcite uses)."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """timm's ``SEModule``: mean-pool, 1x1 conv, ReLU, 1x1 conv, sigmoid gate."""

    def __init__(self, channels: int, rd_ratio: float = 0.25) -> None:
        super().__init__()
        rd_channels = make_divisible(channels * rd_ratio)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.bn = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.fc2(self.act(self.bn(self.fc1(x_se))))
        return x * x_se.sigmoid()


class PatchMerging(nn.Module):
    """Stride-2 MBConv downsample with SE and two depthwise residual bypasses."""

    def __init__(self, in_dim: int, out_dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden_dim = int(out_dim * ratio)
        self.conv = nn.Sequential(
            ConvLayer2D(in_dim, hidden_dim, kernel_size=1),
            ConvLayer2D(hidden_dim, hidden_dim, kernel_size=3, stride=2, padding=1, groups=hidden_dim),
            SqueezeExcite(hidden_dim, .25),
            ConvLayer2D(hidden_dim, out_dim, kernel_size=1, act_layer=None))
        self.dwconv1 = ConvLayer2D(in_dim, in_dim, 3, padding=1, groups=in_dim, act_layer=None)
        self.dwconv2 = ConvLayer2D(out_dim, out_dim, 3, padding=1, groups=out_dim, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dwconv1(x)
        x = self.conv(x)
        return x + self.dwconv2(x)

    def reparameterize(self) -> nn.Sequential:
        """``x + dw(x)`` becomes one depthwise conv with the identity in its centre tap."""
        expand, down, se, project = self.conv
        return nn.Sequential(
            depthwise_residual(self.dwconv1),
            expand.reparameterize(), down.reparameterize(), se, project.reparameterize(),
            depthwise_residual(self.dwconv2))
