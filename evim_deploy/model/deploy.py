"""Deploy form of EfficientViM: inference-only, static shapes, plain ops.

Every module here is built by a reference block's ``reparameterize()``; :func:`reparameterize`
is the walker that composes them. Layout: convolutions run on NCHW maps; HSM-SSD and both residual
mixes of a block run on token-major ``(B, L, C)`` tensors, reached with ``permute(0, 2, 3, 1)`` (a
layout change that ONNX Runtime folds into its blocked-conv reorders and that TFLite converters
drop), so each projection is an ``nn.Linear`` and both state products are rank-3 ``bmm``s. Every
reshape uses sizes fixed at reparameterization; only the batch stays free (``-1``).
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from .efficientvim import EfficientViM

HW = tuple[int, int]


def _channel_buffer(values: torch.Tensor) -> torch.Tensor:
    return values.detach().reshape(1, -1, 1, 1).clone()


class DeployHSMSSD(nn.Module):
    """HSM-SSD with the LayerNorm in front and the mixer's LayerScale gate on its output."""

    def __init__(self, norm: nn.LayerNorm, bcdt_proj: nn.Linear, bcdt_dw: nn.Conv2d, hz_proj: nn.Linear,
                 out_proj: nn.Linear, D: torch.Tensor, hw: HW, out_gate: torch.Tensor, emit_hidden: bool) -> None:
        super().__init__()
        self.dim = norm.normalized_shape[0]
        self.state_dim = bcdt_proj.out_features // 3
        self.hw = hw
        self.tokens = hw[0] * hw[1]
        self.emit_hidden = emit_hidden
        self.norm, self.bcdt_proj, self.bcdt_dw, self.hz_proj = norm, bcdt_proj, bcdt_dw, hz_proj
        if not emit_hidden:  # nobody reads h: fold the gate into out_proj's rows
            out_proj.weight.data.mul_(out_gate.reshape(-1, 1))
        self.out_proj = out_proj
        self.register_buffer("D", D.detach().reshape(1).clone())
        self.register_buffer("out_gate", out_gate.detach().reshape(1, 1, -1).clone())

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` ``(B, L, C)`` -> gated output ``(B, L, C)`` and hidden state ``(B, N, C)``."""
        (height, width), dim, n = self.hw, self.dim, self.state_dim
        channels = self.bcdt_dw.out_channels                                   # 3N, or more if padded
        tokens = self.norm(tokens)
        bcdt = self.bcdt_proj(tokens).reshape(-1, height, width, channels).permute(0, 3, 1, 2)
        bcdt = self.bcdt_dw(bcdt).reshape(-1, channels, self.tokens)           # (B, 3N, L)
        b, c, dt = bcdt.split([n, n, n, channels - 3 * n] if channels > 3 * n else n, dim=1)[:3]
        h = torch.bmm(dt.softmax(-1) * b, tokens)                              # (B, N, C)
        h, z = self.hz_proj(h).split(dim, dim=-1)
        h = self.out_proj(h * (F.silu(z) + self.D))
        gated = h * self.out_gate if self.emit_hidden else h
        return torch.bmm(c.transpose(1, 2), gated), h                         # (B, L, C)

    @torch.no_grad()
    def pad_state_channels(self, multiple: int) -> None:
        """Zero-pad the B/C/dt projection and its depthwise conv to a multiple of ``multiple`` channels.

        Same outputs; ONNX Runtime only runs its blocked (NCHWc) depthwise kernel on multiples of 16.
        """
        total = 3 * self.state_dim
        padded = -(-total // multiple) * multiple
        if padded == self.bcdt_dw.out_channels:
            return
        proj, dw = self.bcdt_proj, self.bcdt_dw
        self.bcdt_proj = nn.Linear(proj.in_features, padded, bias=proj.bias is not None)
        self.bcdt_dw = nn.Conv2d(padded, padded, dw.kernel_size, padding=dw.padding, groups=padded)
        for new, old in ((self.bcdt_proj, proj), (self.bcdt_dw, dw)):
            new.weight.zero_()
            new.weight[:total] = old.weight
            if new.bias is not None:
                new.bias.zero_()
                new.bias[:total] = old.bias if old.bias is not None else 0


class DeployBlock(nn.Module):
    """EfficientViM block with every gate and residual folded into convs or per-channel scales."""

    def __init__(self, dwconv1: nn.Conv2d, mixer: DeployHSMSSD, mixer_keep: torch.Tensor, dwconv2: nn.Conv2d,
                 fc1: nn.Module, fc2: nn.Conv2d, ffn_keep: torch.Tensor) -> None:
        super().__init__()
        self.dwconv1, self.mixer, self.dwconv2, self.fc1, self.fc2 = dwconv1, mixer, dwconv2, fc1, fc2
        self.register_buffer("mixer_keep", mixer_keep.detach().reshape(1, 1, -1).clone())  # token-major
        self.register_buffer("ffn_keep", _channel_buffer(ffn_keep))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.dwconv1(x)
        height, width = self.mixer.hw
        tokens = x.permute(0, 2, 3, 1).reshape(-1, self.mixer.tokens, self.mixer.dim)
        y, h = self.mixer(tokens)
        tokens = tokens * self.mixer_keep + y
        x = self.dwconv2(tokens.reshape(-1, height, width, self.mixer.dim).permute(0, 3, 1, 2))
        return x * self.ffn_keep + self.fc2(self.fc1(x)), h


class DeployHead(nn.Module):
    """Normalize and pool each stage's hidden state and the final map; one Linear over their concat."""

    def __init__(self, dims: list[int], weight: torch.Tensor, bias: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.norms = nn.ModuleList([nn.LayerNorm(d, eps=eps, elementwise_affine=False) for d in dims])
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        self.fc.weight.data.copy_(weight)
        self.fc.bias.data.copy_(bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features``: token-major ``(B, N_i, C_i)`` tensors, one per norm."""
        pooled = [norm(f).mean(1) for norm, f in zip(self.norms, features)]
        return self.fc(torch.cat(pooled, dim=1))


class DeployEfficientViM(nn.Module):
    """The whole network in deploy form, for one fixed input size."""

    def __init__(self, stem: nn.Module, stages: list[tuple[list[nn.Module], nn.Module | None]], head: DeployHead,
                 input_size: HW, final_hw: HW) -> None:
        super().__init__()
        self.input_size = input_size
        self.final_hw = final_hw
        self.stem = stem
        self.stages = nn.ModuleList([nn.ModuleList(blocks) for blocks, _ in stages])
        self.downsamples = nn.ModuleList([down if down is not None else nn.Identity() for _, down in stages])
        self.head = head
        self.final_dim = head.norms[-1].normalized_shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        hidden = []
        for blocks, downsample in zip(self.stages, self.downsamples):
            for block in blocks:
                x, h = block(x)
            hidden.append(h)
            x = downsample(x)
        final = x.permute(0, 2, 3, 1).reshape(-1, self.final_hw[0] * self.final_hw[1], self.final_dim)
        return self.head([*hidden, final])


def conv_output_size(size: int, kernel: int = 3, stride: int = 2, padding: int = 1) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def stem_output_size(hw: HW, convs: int = 4) -> HW:
    for _ in range(convs):
        hw = (conv_output_size(hw[0]), conv_output_size(hw[1]))
    return hw


@torch.no_grad()
def reparameterize(model: EfficientViM, input_size: HW | int = 224) -> DeployEfficientViM:
    """Return the deploy form of ``model`` for ``input_size``; ``model`` is left untouched."""
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    reference = copy.deepcopy(model).eval().float()
    hw = stem_output_size(tuple(input_size))
    stages = []
    for stage in reference.stages:
        blocks, down = stage.reparameterize(hw)
        stages.append((blocks, down))
        if down is not None:
            hw = conv_output_size(hw[0]), conv_output_size(hw[1])
    deploy = DeployEfficientViM(reference.patch_embed.reparameterize(), stages, reference.reparameterize_head(),
                                tuple(input_size), hw)
    manifest = getattr(model, "manifest", None)
    if manifest is not None:
        deploy.manifest = manifest.with_input_size(tuple(input_size))
    return deploy.eval().requires_grad_(False)
