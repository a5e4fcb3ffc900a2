"""EfficientViM reference model (CVPR 2025), faithful to the official implementation.

State-dict keys are identical to mlvlab/EfficientViM ``classification/models/EfficientViM.py``.
Two deliberate differences, neither of which changes the numbers for square inputs:

* every block carries the map's height and width explicitly, so any H x W works (the
  official ``HSMSSD`` recovers them as ``int(math.sqrt(L))`` and breaks on non-square maps);
* ``reparameterize(hw)`` methods return each block's deploy form (see :mod:`.deploy`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .deploy import DeployBlock, DeployHead, DeployHSMSSD
from .fuse import depthwise_residual
from .layers import FFN, ConvLayer1D, ConvLayer2D, LayerNorm1D, LayerNorm2D, PatchMerging, Stem

HW = tuple[int, int]


class HSMSSD(nn.Module):
    """Hidden State Mixer based State Space Duality."""

    def __init__(self, d_model: int, ssd_expand: float = 1, A_init_range: tuple[float, float] = (1, 16),
                 state_dim: int = 64) -> None:
        super().__init__()
        self.ssd_expand = ssd_expand
        self.d_inner = int(ssd_expand * d_model)
        self.state_dim = state_dim
        self.BCdt_proj = ConvLayer1D(d_model, 3 * state_dim, 1, norm=False, act_layer=None)
        conv_dim = self.state_dim * 3
        self.dw = ConvLayer2D(conv_dim, conv_dim, 3, 1, 1, groups=conv_dim, norm=False, act_layer=None,
                              bn_weight_init=0)
        self.hz_proj = ConvLayer1D(d_model, 2 * self.d_inner, 1, norm=False, act_layer=None)
        self.out_proj = ConvLayer1D(self.d_inner, d_model, 1, norm=False, act_layer=None, bn_weight_init=0)
        self.A = nn.Parameter(torch.empty(self.state_dim, dtype=torch.float32).uniform_(*A_init_range))
        self.act = nn.SiLU()
        self.D = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor, hw: HW) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: normalized tokens ``(B, C, L)``; returns the map ``(B, C, H, W)`` and hidden state ``(B, C, N)``."""
        batch = x.shape[0]
        height, width = hw
        BCdt = self.dw(self.BCdt_proj(x).view(batch, -1, height, width)).flatten(2)
        B, C, dt = torch.split(BCdt, [self.state_dim] * 3, dim=1)
        A = (dt + self.A.view(1, -1, 1)).softmax(-1)
        h = x @ (A * B).transpose(-2, -1)
        h, z = torch.split(self.hz_proj(h), [self.d_inner, self.d_inner], dim=1)
        h = self.out_proj(h * self.act(z) + h * self.D)
        y = h @ C
        return y.view(batch, -1, height, width).contiguous(), h

    def reparameterize(self, norm: LayerNorm1D, hw: HW, out_gate: torch.Tensor, emit_hidden: bool) -> DeployHSMSSD:
        """Deploy form; ``A`` is dropped: it is constant over tokens, so the token softmax cancels it."""
        assert self.d_inner == self.hz_proj.conv.in_channels, "ssd_expand != 1 is not supported by the deploy form"
        return DeployHSMSSD(norm=norm.reparameterize(), bcdt_proj=self.BCdt_proj.reparameterize(),
                            bcdt_dw=self.dw.reparameterize(), hz_proj=self.hz_proj.reparameterize(),
                            out_proj=self.out_proj.reparameterize(), D=self.D.detach(), hw=hw,
                            out_gate=out_gate, emit_hidden=emit_hidden)


class EfficientViMBlock(nn.Module):
    """DWConv -> HSM-SSD -> DWConv -> FFN, each mixed in through a sigmoid LayerScale gate."""

    def __init__(self, dim: int, mlp_ratio: float = 4., ssd_expand: float = 1, state_dim: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.mlp_ratio = mlp_ratio
        self.mixer = HSMSSD(d_model=dim, ssd_expand=ssd_expand, state_dim=state_dim)
        self.norm = LayerNorm1D(dim)
        self.dwconv1 = ConvLayer2D(dim, dim, 3, padding=1, groups=dim, bn_weight_init=0, act_layer=None)
        self.dwconv2 = ConvLayer2D(dim, dim, 3, padding=1, groups=dim, bn_weight_init=0, act_layer=None)
        self.ffn = FFN(in_dim=dim, dim=int(dim * mlp_ratio))
        self.alpha = nn.Parameter(1e-4 * torch.ones(4, dim), requires_grad=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = torch.sigmoid(self.alpha).view(4, -1, 1, 1)
        hw = (x.shape[2], x.shape[3])
        x = (1 - alpha[0]) * x + alpha[0] * self.dwconv1(x)
        x_prev = x
        x, h = self.mixer(self.norm(x.flatten(2)), hw)
        x = (1 - alpha[1]) * x_prev + alpha[1] * x
        x = (1 - alpha[2]) * x + alpha[2] * self.dwconv2(x)
        x = (1 - alpha[3]) * x + alpha[3] * self.ffn(x)
        return x, h

    @torch.no_grad()
    def reparameterize(self, hw: HW, emit_hidden: bool = True) -> DeployBlock:
        """Fold every LayerScale gate: into dwconv1/dwconv2 (centre tap), out_proj, and fc2."""
        gate = torch.sigmoid(self.alpha.detach())
        fc2_weight, fc2_bias = self.ffn.fc2.fused_weights()
        fc2 = nn.Conv2d(fc2_weight.shape[1], fc2_weight.shape[0], 1)
        fc2.weight.data.copy_(fc2_weight * gate[3].view(-1, 1, 1, 1))
        fc2.bias.data.copy_(fc2_bias * gate[3])
        return DeployBlock(
            dwconv1=depthwise_residual(self.dwconv1, gate[0]),
            mixer=self.mixer.reparameterize(self.norm, hw, gate[1], emit_hidden),
            mixer_keep=1 - gate[1], dwconv2=depthwise_residual(self.dwconv2, gate[2]),
            fc1=self.ffn.fc1.reparameterize(), fc2=fc2, ffn_keep=1 - gate[3])


class EfficientViMStage(nn.Module):
    def __init__(self, in_dim: int, out_dim: int | None, depth: int, mlp_ratio: float = 4.,
                 downsample: type[nn.Module] | None = None, ssd_expand: float = 1, state_dim: int = 64) -> None:
        super().__init__()
        self.depth = depth
        self.blocks = nn.ModuleList([
            EfficientViMBlock(dim=in_dim, mlp_ratio=mlp_ratio, ssd_expand=ssd_expand, state_dim=state_dim)
            for _ in range(depth)])
        self.downsample = downsample(in_dim=in_dim, out_dim=out_dim) if downsample is not None else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for blk in self.blocks:
            x, h = blk(x)
        x_out = x
        if self.downsample is not None:
            x = self.downsample(x)
        return x, x_out, h

    def reparameterize(self, hw: HW) -> tuple[list[nn.Module], nn.Module | None]:
        """Deploy blocks (only the last one emits its hidden state) and the deploy downsample."""
        blocks = [blk.reparameterize(hw, emit_hidden=i == self.depth - 1) for i, blk in enumerate(self.blocks)]
        return blocks, self.downsample.reparameterize() if self.downsample is not None else None


class EfficientViM(nn.Module):
    """The classification network with multi-stage hidden-state fusion heads."""

    def __init__(self, in_dim: int = 3, num_classes: int = 1000, embed_dim: tuple[int, ...] = (128, 256, 512),
                 depths: tuple[int, ...] = (2, 2, 2), mlp_ratio: float = 4., ssd_expand: float = 1,
                 state_dim: tuple[int, ...] = (49, 25, 9), distillation: bool = False) -> None:
        super().__init__()
        self.num_layers = len(depths)
        self.num_classes = num_classes
        self.distillation = distillation
        self.embed_dim = tuple(embed_dim)
        self.patch_embed = Stem(in_dim=in_dim, dim=embed_dim[0])
        self.stages = nn.ModuleList()
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            self.stages.append(EfficientViMStage(
                in_dim=embed_dim[i], out_dim=None if last else embed_dim[i + 1], depth=depths[i],
                mlp_ratio=mlp_ratio, downsample=None if last else PatchMerging, ssd_expand=ssd_expand,
                state_dim=state_dim[i]))
        self.weights = nn.Parameter(torch.ones(4))
        self.norm = nn.ModuleList([LayerNorm1D(embed_dim[0]), LayerNorm1D(embed_dim[1]),
                                   LayerNorm1D(embed_dim[2]), LayerNorm2D(embed_dim[2])])
        head_dims = (*embed_dim, embed_dim[2])
        self.heads = self._make_heads(head_dims, num_classes)
        if distillation:
            self.weights_dist = nn.Parameter(torch.ones(4))
            self.heads_dist = self._make_heads(head_dims, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _make_heads(dims: tuple[int, ...], num_classes: int) -> nn.ModuleList:
        return nn.ModuleList([nn.Linear(d, num_classes) if num_classes > 0 else nn.Identity() for d in dims])

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, (LayerNorm1D, LayerNorm2D, nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        weights = self.weights.softmax(-1)
        z = torch.zeros((x.shape[0], self.num_classes), device=x.device)
        if self.distillation:
            weights_dist = self.weights_dist.softmax(-1)
            z_dist = torch.zeros((x.shape[0], self.num_classes), device=x.device)
        for i, stage in enumerate(self.stages):
            x, x_out, h = stage(x)
            h = self.norm[i](h)
            h = torch.nn.functional.adaptive_avg_pool1d(h, 1).flatten(1)
            z = z + weights[i] * self.heads[i](h)
            if self.distillation:
                z_dist = z_dist + weights_dist[i] * self.heads_dist[i](h)
        x = self.norm[3](x)
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        z = z + weights[3] * self.heads[3](x)
        if self.distillation:
            z_dist = z_dist + weights_dist[3] * self.heads_dist[3](x)
            if self.training:
                return z, z_dist
            z = (z + z_dist) / 2
        return z

    @torch.no_grad()
    def reparameterize_head(self) -> DeployHead:
        """Fold fusion softmax, norm affines, distillation average and the four heads into one Linear."""
        if self.num_classes <= 0:
            raise ValueError("the deploy form needs a classifier (num_classes > 0)")
        head_sets = [(self.weights.softmax(-1), self.heads)]
        if self.distillation:
            head_sets.append((self.weights_dist.softmax(-1), self.heads_dist))
        share = 1.0 / len(head_sets)
        weight_blocks, bias = [], torch.zeros(self.num_classes)
        for i, norm in enumerate(self.norm):
            gamma, beta = norm.affine()
            block = torch.zeros(self.num_classes, gamma.numel())
            for fusion, heads in head_sets:
                w = heads[i].weight.detach() * fusion[i] * share
                block += w * gamma
                bias += w @ beta + heads[i].bias.detach() * fusion[i] * share
            weight_blocks.append(block)
        return DeployHead([norm.num_channels for norm in self.norm], torch.cat(weight_blocks, 1), bias,
                          eps=self.norm[0].eps)
