"""The GPU plan: the deploy form's weights repacked for a token-major (NHWC) runtime.

Every activation is ``(B, H, W, C)`` contiguous, which is also token-major ``(B, L, C)``: the
LayerNorm, every projection and both state products read it without a transpose. Matrices are
stored ``[in, out]`` in the compute dtype (what ``tl.dot`` wants as its right operand), 3x3 kernels
tap-major ``[9, ...]`` so that one tap's weights are contiguous over channels; biases, depthwise
weights, norms and per-channel scales stay float32. Pure torch: packing runs (and is tested) on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from ..model.deploy import DeployBlock, DeployEfficientViM, DeployHSMSSD
from ..model.layers import SqueezeExcite


@dataclass
class Conv3x3:
    """Dense 3x3 conv, padding 1: ``weight [9, cin, cout]`` (tap = 3 * ky + kx)."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    relu: bool


@dataclass
class Depthwise:
    """Depthwise 3x3 conv, padding 1 (residuals already folded into the centre tap): ``weight [9, C]``."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    relu: bool


@dataclass
class Linear:
    """``x @ weight + bias``, ``weight [in, out]``; optional ReLU."""

    weight: torch.Tensor
    bias: torch.Tensor
    relu: bool = False


@dataclass
class MLP:
    """``keep * x + fc2(relu(fc1(x)))``: the FFN with its LayerScale gate folded."""

    fc1: Linear
    fc2: Linear
    keep: torch.Tensor


@dataclass
class Mixer:
    """HSM-SSD: LayerNorm + BCdt projection, depthwise conv on BCdt, token softmax, the hidden-state mix."""

    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    eps: float
    bcdt: torch.Tensor          # [C, 3S], no bias: B, C, dt each in a segment of S >= N columns (zero padded)
    bcdt_dw: Depthwise          # over the 3S channels
    wh: torch.Tensor            # [C, C]  h half of hz_proj
    wz: torch.Tensor            # [C, C]  z half of hz_proj
    bh: torch.Tensor
    bz: torch.Tensor
    d: float                    # HSM-SSD's D: g = h * (silu(z) + D)
    out: Linear                 # out_proj (gate folded in unless the block emits its hidden state)
    y_scale: torch.Tensor       # out_gate when the hidden state is emitted, else ones
    state_dim: int


@dataclass
class Block:
    dw1: Depthwise
    mixer: Mixer
    mixer_keep: torch.Tensor
    dw2: Depthwise
    mlp: MLP


@dataclass
class Merge:
    """PatchMerging: dw residual, 1x1 expand + ReLU, stride-2 dw + ReLU, squeeze-excite, 1x1 project, dw residual."""

    dw_in: Depthwise
    expand: Linear
    down: Depthwise
    se_fc1: torch.Tensor        # float32 [hidden, rd], bias below
    se_b1: torch.Tensor
    se_fc2: torch.Tensor        # float32 [rd, hidden]
    se_b2: torch.Tensor
    project: Linear
    dw_out: Depthwise


@dataclass
class Head:
    eps: float
    weight: torch.Tensor        # [features, classes]
    bias: torch.Tensor


@dataclass
class Plan:
    """Everything the GPU runtime needs, for one input size and one compute dtype."""

    input_size: tuple[int, int]
    dtype: torch.dtype
    stem: list[Conv3x3]
    stages: list[list[Block]]
    merges: list[Merge]
    head: Head

    def to(self, device: torch.device | str) -> "Plan":
        """A copy with every tensor moved to ``device``."""
        return _move(self, device)


def _move(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, list):
        return [_move(o, device) for o in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return type(obj)(**{f.name: _move(getattr(obj, f.name), device) for f in fields(obj)})
    return obj


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().reshape(-1).contiguous()


def _conv_parts(module: nn.Module) -> tuple[nn.Conv2d, bool]:
    """``Conv2d`` or ``Sequential(Conv2d, ReLU)`` -> (conv, relu)."""
    if isinstance(module, nn.Conv2d):
        return module, False
    conv, act = module
    assert isinstance(conv, nn.Conv2d) and isinstance(act, nn.ReLU), module
    return conv, True


def _bias(conv: nn.Module, out: int) -> torch.Tensor:
    return _f32(conv.bias) if conv.bias is not None else torch.zeros(out)


def pack_conv3x3(module: nn.Module, dtype: torch.dtype) -> Conv3x3:
    conv, relu = _conv_parts(module)
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.groups == 1, conv
    cout, cin = conv.weight.shape[:2]
    weight = conv.weight.detach().permute(2, 3, 1, 0).reshape(9, cin, cout)
    return Conv3x3(weight.to(dtype).contiguous(), _bias(conv, cout), conv.stride[0], relu)


def pack_depthwise(module: nn.Module) -> Depthwise:
    conv, relu = _conv_parts(module)
    channels = conv.weight.shape[0]
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.groups == channels == conv.in_channels
    weight = conv.weight.detach().float().reshape(channels, 9).t().contiguous()
    return Depthwise(weight, _bias(conv, channels), conv.stride[0], relu)


def pack_linear(module: nn.Module, dtype: torch.dtype) -> Linear:
    """``nn.Linear``, a 1x1 ``Conv2d``, or either followed by ReLU."""
    relu = False
    if isinstance(module, nn.Sequential):
        module, act = module
        assert isinstance(act, nn.ReLU)
        relu = True
    weight = module.weight.detach()
    weight = weight.reshape(weight.shape[0], weight.shape[1])  # 1x1 conv -> matrix
    return Linear(weight.t().to(dtype).contiguous(), _bias(module, weight.shape[0]), relu)


def segment_width(state_dim: int) -> int:
    """Columns per B / C / dt segment, rounded up to 16: every row and segment then starts 32-byte
    aligned in fp16, and Triton, seeing sizes divisible by 16, vectorizes the loads."""
    return -(-state_dim // 16) * 16


def _pad_segments(t: torch.Tensor, n: int) -> torch.Tensor:
    """``[..., 3n] -> [..., 3S]``: each of the three segments zero-padded to ``segment_width(n)`` columns."""
    pad = segment_width(n) - n
    return torch.cat([torch.nn.functional.pad(part, (0, pad)) for part in t.split(n, dim=-1)], dim=-1).contiguous()


def pack_mixer(mixer: DeployHSMSSD, dtype: torch.dtype) -> Mixer:
    dim, n = mixer.dim, mixer.state_dim
    hz = mixer.hz_proj.weight.detach()
    dw = pack_depthwise(mixer.bcdt_dw)          # [:3n]: the deploy form may carry zero-padded channels
    dw = Depthwise(_pad_segments(dw.weight[:, :3 * n], n), _pad_segments(dw.bias[:3 * n], n), dw.stride, dw.relu)
    hz_bias = _bias(mixer.hz_proj, 2 * dim)
    y_scale = _f32(mixer.out_gate) if mixer.emit_hidden else torch.ones(dim)
    return Mixer(norm_weight=_f32(mixer.norm.weight), norm_bias=_f32(mixer.norm.bias), eps=mixer.norm.eps,
                 bcdt=_pad_segments(mixer.bcdt_proj.weight.detach()[:3 * n].t(), n).to(dtype), bcdt_dw=dw,
                 wh=hz[:dim].t().to(dtype).contiguous(), wz=hz[dim:].t().to(dtype).contiguous(),
                 bh=hz_bias[:dim].contiguous(), bz=hz_bias[dim:].contiguous(), d=float(mixer.D.item()),
                 out=pack_linear(mixer.out_proj, dtype), y_scale=y_scale, state_dim=n)


def pack_block(block: DeployBlock, dtype: torch.dtype) -> Block:
    return Block(dw1=pack_depthwise(block.dwconv1), mixer=pack_mixer(block.mixer, dtype),
                 mixer_keep=_f32(block.mixer_keep), dw2=pack_depthwise(block.dwconv2),
                 mlp=MLP(pack_linear(block.fc1, dtype), pack_linear(block.fc2, dtype), _f32(block.ffn_keep)))


def pack_merge(merge: nn.Sequential, dtype: torch.dtype) -> Merge:
    dw_in, expand, down, se, project, dw_out = merge
    assert isinstance(se, SqueezeExcite)
    fc1, fc2 = se.fc1.weight.detach(), se.fc2.weight.detach()
    return Merge(dw_in=pack_depthwise(dw_in), expand=pack_linear(expand, dtype), down=pack_depthwise(down),
                 se_fc1=fc1.reshape(fc1.shape[:2]).t().float().contiguous(), se_b1=_f32(se.fc1.bias),
                 se_fc2=fc2.reshape(fc2.shape[:2]).t().float().contiguous(), se_b2=_f32(se.fc2.bias),
                 project=pack_linear(project, dtype), dw_out=pack_depthwise(dw_out))


@torch.no_grad()
def build_plan(deploy: DeployEfficientViM, dtype: torch.dtype = torch.float16) -> Plan:
    """Repack ``deploy`` (left untouched) for the NHWC runtime, matrices in ``dtype``."""
    stem = [pack_conv3x3(layer, dtype) for layer in deploy.stem]
    stages = [[pack_block(block, dtype) for block in blocks] for blocks in deploy.stages]
    merges = [pack_merge(down, dtype) for down in deploy.downsamples if not isinstance(down, nn.Identity)]
    fc = deploy.head.fc
    head = Head(eps=deploy.head.norms[0].eps, weight=fc.weight.detach().t().to(dtype).contiguous(),
                bias=_f32(fc.bias))
    return Plan(tuple(deploy.input_size), dtype, stem, stages, merges, head)
