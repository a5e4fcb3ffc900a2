"""The numpy MIL interpreter's kernels against torch, on small programs built with coremltools' MIL builder."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evim_deploy.testing.extras import require

ct = require("coremltools", "coreml")

from coremltools.converters.mil import Builder as mb  # noqa: E402

from evim_deploy.runtime.mil_interpreter import KERNELS, MILInterpreter, UnsupportedOpError  # noqa: E402

RNG = np.random.default_rng(0)


def run(program, **feeds) -> np.ndarray:
    out = MILInterpreter(program).run(feeds)
    return next(iter(out.values()))


@pytest.mark.parametrize("pad_type,pad,stride,dilation,groups", [
    ("custom", [1, 1, 1, 1], 2, 1, 1),     # the stem's stride-2 convs
    ("valid", [0, 0, 0, 0], 1, 2, 2),      # grouped, dilated
    ("same", [0, 0, 0, 0], 1, 1, 8),       # depthwise
    ("custom", [0, 2, 1, 0], 3, 1, 4),     # asymmetric padding, stride 3
])
def test_conv_matches_torch(pad_type, pad, stride, dilation, groups):
    x = RNG.standard_normal((1, 8, 11, 10)).astype(np.float32)
    w = RNG.standard_normal((8, 8 // groups, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(8).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def program(x):
        return mb.conv(x=x, weight=w, bias=b, strides=[stride] * 2, pad_type=pad_type, pad=pad,
                       dilations=[dilation] * 2, groups=groups)

    if pad_type == "same":
        pad = [1, 1, 1, 1]
    padded = F.pad(torch.from_numpy(x), (pad[2], pad[3], pad[0], pad[1]))
    expected = F.conv2d(padded, torch.from_numpy(w), torch.from_numpy(b), stride, 0, dilation, groups).numpy()
    assert np.abs(run(program, x=x) - expected).max() < 1e-5


def test_layer_norm_softmax_linear_matmul_match_torch():
    x = RNG.standard_normal((2, 5, 6)).astype(np.float32)
    gamma, beta = RNG.standard_normal(6).astype(np.float32), RNG.standard_normal(6).astype(np.float32)
    w, b = RNG.standard_normal((4, 6)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def program(x):
        y = mb.layer_norm(x=x, axes=[-1], gamma=gamma, beta=beta, epsilon=1e-5)
        z = mb.softmax(x=mb.linear(x=y, weight=w, bias=b), axis=1)
        return mb.matmul(x=z, y=y, transpose_x=True)

    t = torch.from_numpy(x)
    y = F.layer_norm(t, (6,), torch.from_numpy(gamma), torch.from_numpy(beta), 1e-5)
    z = F.linear(y, torch.from_numpy(w), torch.from_numpy(b)).softmax(1)
    assert np.abs(run(program, x=x) - (z.transpose(1, 2) @ y).numpy()).max() < 1e-5


def test_fp16_program_rounds_every_op_to_fp16():
    x = np.array([[1.0, 2050.0, 1e-4, 70000.0]], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def program(x):
        return mb.cast(x=mb.add(x=mb.cast(x=x, dtype="fp16"), y=np.float16(1.0)), dtype="fp32")

    out = run(program, x=x)
    assert out.dtype == np.float32
    assert out[0, 1] == 2052.0 and out[0, 0] == 2.0 and np.isinf(out[0, 3])  # 2051 is not an fp16; 70000 overflows


def test_quantize_dequantize_match_torch():
    x = (RNG.standard_normal((1, 3, 4, 4)) * 4).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def program(x):
        q = mb.quantize(input=x, scale=np.float32(0.05), zero_point=np.uint8(120), output_dtype="uint8")
        return mb.dequantize(input=q, scale=np.float32(0.05), zero_point=np.uint8(120))

    expected = torch.quantize_per_tensor(torch.from_numpy(x), 0.05, 120, torch.quint8).dequantize().numpy()
    assert np.array_equal(run(program, x=x), expected)  # same rounding (half to even) and saturation


def test_constexpr_weight_forms_decompress_like_coremltools():
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_affine_dequantize
    data = RNG.integers(-128, 128, (4, 6), dtype=np.int8)
    scale = RNG.uniform(0.01, 0.1, 4).astype(np.float32)
    zero = RNG.integers(-3, 3, 4, dtype=np.int8)
    x = RNG.standard_normal((2, 6)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def program(x):
        w = mb.constexpr_affine_dequantize(quantized_data=data, zero_point=zero, scale=scale, axis=0)
        return mb.linear(x=x, weight=w)

    weight = constexpr_affine_dequantize.decompress(data, zero, scale, 0)
    assert np.abs(run(program, x=x) - x @ weight.T).max() < 1e-5

    block_scale = RNG.uniform(0.01, 0.1, (4, 2)).astype(np.float32)  # iOS 18: blocks of 3 along axis 1

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS18)
    def blockwise(x):
        return mb.linear(x=x, weight=mb.constexpr_blockwise_shift_scale(data=data, scale=block_scale))

    weight = data.astype(np.float32) * np.repeat(block_scale, 3, axis=1)
    assert np.abs(run(blockwise, x=x) - x @ weight.T).max() < 1e-5


def test_unknown_op_is_an_error_naming_it():
    assert "tanh" not in KERNELS

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS16)
    def program(x):
        return mb.tanh(x=x)

    with pytest.raises(UnsupportedOpError, match="'tanh'"):
        MILInterpreter(program)
