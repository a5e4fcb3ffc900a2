"""GPU runtime: the NHWC plan and its torch twins on CPU (always), the Triton kernels where they can run.

Kernel tests run on CUDA, or on the CPU through Triton's interpreter when ``TRITON_INTERPRET=1`` and
triton is installed; elsewhere they are skipped with the reason. Throughput is not tested here: it
comes from ``bench/gpu_throughput.py`` on the GPU.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from evim_deploy.errors import TargetUnavailableError, UsageError
from evim_deploy.gpu import for_device, optimize_for_cuda
from evim_deploy.gpu import ops_torch
from evim_deploy.gpu.model import PlanModel
from evim_deploy.gpu.plan import build_plan
from evim_deploy.testing import deploy_model

HAS_CUDA = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None
KERNEL_DEVICE = "cuda" if HAS_CUDA else "cpu"
needs_kernels = pytest.mark.skipif(
    not (HAS_CUDA or INTERPRETED),
    reason="CUDA not available: GPU kernels are tested on the device machine (see bench/gpu_throughput.py), "
           "or on CPU with TRITON_INTERPRET=1 and triton installed")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="CUDA not available: CUDA graphs and end-to-end GPU numerics "
                                                      "are tested on the device machine (see bench/gpu_throughput.py)")


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=1)


@pytest.mark.parametrize("size", [(224, 224), (64, 96)])
def test_plan_in_torch_ops_matches_deploy_form(size):
    """The repacked NHWC plan computes the deploy form's function (fp32, CPU), square and non-square."""
    deploy = deploy_model("m1", size)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = deploy(x)
        out = PlanModel(build_plan(deploy, torch.float32), ops_torch)(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max() < 1e-4 * ref.abs().max()
    assert (ref[0] - ref[1]).abs().max() > 0.05 * ref.abs().max(), "degenerate reference: images give one answer"


def test_plan_leaves_deploy_form_untouched():
    deploy = deploy_model("m1", (64, 64))
    before = {k: v.clone() for k, v in deploy.state_dict().items()}
    build_plan(deploy, torch.float16)
    assert all(torch.equal(before[k], v) for k, v in deploy.state_dict().items())


def test_packed_layouts_are_tap_major_and_transposed():
    deploy = deploy_model("m1", (64, 64))
    plan = build_plan(deploy, torch.float16)
    conv = deploy.stem[1][0]
    ky, kx, ci, co = 2, 0, 5, 7
    assert plan.stem[1].weight.shape == (9, conv.in_channels, conv.out_channels)
    assert plan.stem[1].weight[3 * ky + kx, ci, co] == conv.weight[co, ci, ky, kx].half()
    dw = deploy.stages[0][0].dwconv1
    assert plan.stages[0][0].dw1.weight.shape == (9, dw.out_channels)
    assert plan.stages[0][0].dw1.weight[3 * ky + kx, co] == dw.weight[co, 0, ky, kx]
    fc1 = deploy.stages[0][0].fc1[0]
    assert torch.equal(plan.stages[0][0].mlp.fc1.weight, fc1.weight[:, :, 0, 0].t().half())
    assert plan.stages[0][0].mlp.fc1.relu and not plan.stages[0][0].mlp.fc2.relu


def test_stem_reads_any_input_strides():
    """The model takes NCHW or channels-last images: the stem reads strides, no layout copy up front."""
    deploy = deploy_model("m1", (64, 64))
    model = PlanModel(build_plan(deploy, torch.float32), ops_torch)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x), model(x.contiguous(memory_format=torch.channels_last)), atol=1e-5)


def test_block_size_overrides_round_trip_and_ship_per_gpu(tmp_path, monkeypatch):
    from evim_deploy.gpu import configs
    overrides = {("ln_mean", ((49, 128), (16, 320))): {"num_warps": 2}, ("mlp", 128, 512, False): "split",
                 ("linear", 768, 192, "scale"): {"BM": 128, "BN": 256, "BK": 64, "num_warps": 8, "num_stages": 3}}
    monkeypatch.setattr(configs, "TUNED_DIR", tmp_path)
    configs.save_overrides(tmp_path / "nvidia_h200.json", overrides)
    assert configs.shipped_overrides("NVIDIA H200") == overrides
    assert configs.shipped_overrides("NVIDIA A100-SXM4-80GB") == {}
    assert [configs.pow2(n) for n in (3, 16, 17, 147, 320)] == [16, 16, 32, 256, 512]


def test_for_device_cpu_is_the_plain_deploy_form():
    deploy = deploy_model("m1", (64, 64))
    assert for_device(deploy, "cpu") is deploy


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised where CUDA is missing; this machine has CUDA")
def test_cuda_asked_without_cuda_is_one_clear_error():
    deploy = deploy_model("m1", (64, 64))
    with pytest.raises(TargetUnavailableError, match="CUDA is not available"):
        for_device(deploy, "cuda")
    with pytest.raises(TargetUnavailableError, match="CUDA is not available"):
        optimize_for_cuda(deploy)


def test_bad_options_are_usage_errors():
    deploy = deploy_model("m1", (64, 64))
    with pytest.raises(UsageError, match="unknown GPU kernels"):
        optimize_for_cuda(deploy, kernels="cutlass")
    with pytest.raises(UsageError, match="unknown GPU precision"):
        optimize_for_cuda(deploy, dtype="fp8")
    with pytest.raises(UsageError, match="fp16 or bf16"):
        optimize_for_cuda(deploy, dtype="fp32")


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16] if HAS_CUDA else [torch.float16, torch.float32])
def test_every_triton_kernel_matches_its_torch_twin(dtype):
    """Each op of a forward pass, run by its kernel and by its torch twin on the same inputs."""
    from evim_deploy.gpu.triton_ops import TritonOps
    from evim_deploy.gpu.tune import compare_ops
    size = (224, 224) if HAS_CUDA else (64, 96)   # the interpreter is slow: a small map there
    plan = build_plan(deploy_model("m1", size), dtype).to(KERNEL_DEVICE)
    x = torch.randn(3, 3, *size, device=KERNEL_DEVICE)
    errors = compare_ops(plan, TritonOps(), x)
    names = {label.split()[1] for label, _ in errors}
    assert names == {"conv3x3", "depthwise", "linear", "ln_linear", "state", "mix", "scan_out", "mlp", "ln_mean"}
    tolerance = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-4}[dtype]
    worst = max(errors, key=lambda e: e[1])
    assert worst[1] < tolerance, worst


@needs_kernels
def test_triton_plan_matches_deploy_form_fp16():
    from evim_deploy.gpu.triton_ops import TritonOps
    size = (224, 224) if HAS_CUDA else (64, 64)
    deploy = deploy_model("m1", size)
    x = torch.randn(4, 3, *size)
    with torch.inference_mode():
        ref = deploy(x)
        out = PlanModel(build_plan(deploy, torch.float16).to(KERNEL_DEVICE), TritonOps())(x.to(KERNEL_DEVICE))
    assert cosine(out.cpu(), ref).min() > 0.9999


@needs_cuda
@pytest.mark.parametrize("precision,floor", [("fp16", 0.9999), ("bf16", 0.999)])
def test_cuda_runtime_with_graphs_matches_deploy_fp32(precision, floor):
    deploy = deploy_model("m1")
    x = torch.randn(8, 3, 224, 224)
    with torch.inference_mode():
        ref = deploy(x)
    model = optimize_for_cuda(deploy, precision)
    first = model(x.cuda())
    again = model(x.cuda())                       # a replay of the captured graph
    assert len(model.graphs) == 1
    assert torch.equal(first, again)
    assert cosine(first.cpu(), ref).min() > floor
