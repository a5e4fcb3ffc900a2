"""Weight-folding arithmetic shared by every block's ``reparameterize()``."""
from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def conv_bn_weights(conv: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as a single convolution (bias-free conv assumed)."""
    weight = conv.weight.detach().clone()
    bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(weight.shape[0])
    if bn is None:
        return weight, bias
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    bias = (bias - bn.running_mean) * scale + bn.bias.detach()
    return weight, bias


def make_conv2d(template: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased ``nn.Conv2d`` with ``template``'s geometry and the given parameters."""
    conv = nn.Conv2d(template.in_channels, template.out_channels, template.kernel_size, stride=template.stride,
                     padding=template.padding, dilation=template.dilation, groups=template.groups, bias=True)
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    return conv


@torch.no_grad()
def depthwise_residual(layer: nn.Module, gate: torch.Tensor | None = None) -> nn.Conv2d:
    """Fold ``(1 - g) * x + g * layer(x)`` (or ``x + layer(x)`` when ``gate`` is None) into one depthwise conv.

    ``layer`` is a depthwise, stride-1, odd-kernel ``ConvLayer2D`` without activation; the identity
    goes into the centre tap of the kernel.
    """
    conv = layer.conv
    assert conv.groups == conv.in_channels == conv.out_channels and conv.stride == (1, 1)
    assert layer.act is None
    weight, bias = conv_bn_weights(conv, layer.norm)
    identity = torch.ones(weight.shape[0])
    if gate is not None:
        gate = gate.reshape(-1)
        weight = weight * gate.reshape(-1, 1, 1, 1)
        bias = bias * gate
        identity = 1 - gate
    kh, kw = conv.kernel_size
    weight[:, 0, kh // 2, kw // 2] += identity
    return make_conv2d(conv, weight, bias)
