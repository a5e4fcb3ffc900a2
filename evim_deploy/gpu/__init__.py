"""GPU runtime of the deploy form: NHWC plan, fused Triton kernels, CUDA graphs (CUDA only).

The CPU/export path is untouched: :func:`optimize_for_cuda` repacks a
:class:`~evim_deploy.model.deploy.DeployEfficientViM`'s weights into a token-major plan
(:mod:`.plan`) and runs it with Triton kernels (:mod:`.kernels`) or their torch twins
(:mod:`.ops_torch`, the numerical reference), optionally captured as CUDA graphs per input shape.
:func:`for_device` is what a caller uses: the GPU runtime on CUDA, the plain deploy form elsewhere.
Triton is imported only when the Triton kernels are asked for.
"""
from __future__ import annotations

import importlib.util
import os
import time

import torch
import torch.nn as nn

from ..errors import TargetUnavailableError, UsageError
from .plan import Plan, build_plan

__all__ = ["optimize_for_cuda", "for_device", "cuda_kernels_unavailable", "build_plan", "Plan", "DTYPES"]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
KERNELS = ("triton", "torch")


def cuda_kernels_unavailable() -> str | None:
    """Why the Triton GPU path cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return "CUDA is not available (no NVIDIA GPU or a CPU-only torch build)"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (it ships with CUDA builds of torch)"
    if torch.cuda.get_device_capability() < (8, 0):
        return f"the GPU is compute capability {torch.cuda.get_device_capability()}; the kernels need 8.0 or newer"
    return None


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UsageError(f"unknown GPU precision {dtype!r}", f"choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def optimize_for_cuda(deploy: nn.Module, dtype: torch.dtype | str = torch.float16, kernels: str = "triton",
                      cuda_graphs: bool = True, compile: bool = False, device: str | torch.device = "cuda",
                      overrides: dict | None = None, compile_workers: int | None = None) -> nn.Module:
    """The GPU runtime of ``deploy`` (left untouched): ``images (B, 3, H, W) -> float32 logits``.

    ``kernels``: ``"triton"`` (fused kernels) or ``"torch"`` (the same NHWC plan in plain torch ops).
    ``cuda_graphs``: capture one graph per input shape on first use (then replay; the input is copied
    into the graph's static buffer). ``compile``: wrap the plan in ``torch.compile`` first.
    ``overrides``: per-op block sizes for the Triton kernels (see :mod:`.triton_ops`).
    ``compile_workers``: threads that compile every Triton kernel up front (default: the CPU count,
    at most 16; 0 compiles lazily, one kernel at a time, on the first call).
    """
    from .graphs import GraphCache
    from .model import PlanModel
    from . import ops_torch
    if kernels not in KERNELS:
        raise UsageError(f"unknown GPU kernels {kernels!r}", f"choose one of {', '.join(KERNELS)}")
    dtype = _dtype(dtype)
    if kernels == "triton" and dtype == torch.float32:
        raise UsageError("the Triton kernels run in fp16 or bf16 (their block sizes are chosen for 2-byte operands)",
                         "use dtype='fp16' or 'bf16', or kernels='torch' for an fp32 GPU run")
    reason = cuda_kernels_unavailable() if kernels == "triton" else (
        None if torch.cuda.is_available() else "CUDA is not available")
    if reason:
        raise TargetUnavailableError(reason, "use the plain deploy form (evim_deploy.gpu.for_device falls back to it)")
    plan = build_plan(deploy, dtype).to(device)
    compile_seconds = None
    if kernels == "triton":
        from .triton_ops import TritonOps, precompile
        ops = TritonOps(overrides)
        workers = min(16, os.cpu_count() or 1) if compile_workers is None else compile_workers
        if workers:   # no kernel argument depends on the batch: a batch of one compiles them all
            start = time.perf_counter()
            precompile(plan, torch.zeros(1, 3, *plan.input_size, device=device, dtype=dtype), overrides, workers)
            compile_seconds = time.perf_counter() - start
    else:
        ops = ops_torch
    model: nn.Module = PlanModel(plan, ops).eval()
    if compile:
        model = torch.compile(model, dynamic=False)
    if cuda_graphs:
        model = GraphCache(model)
    if getattr(deploy, "manifest", None) is not None:
        model.manifest = deploy.manifest
    model.compile_seconds = compile_seconds      # parallel Triton compile time, None when lazy or torch kernels
    return model


def for_device(deploy: nn.Module, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float16,
               **options) -> nn.Module:
    """The runtime for ``device``: the fused GPU path on CUDA, the plain deploy form everywhere else.

    On a CUDA device where the Triton kernels cannot run (old GPU, no triton) the plain deploy form is
    moved to the device instead, with a warning naming the reason.
    """
    if torch.device(device).type != "cuda":
        return deploy
    if not torch.cuda.is_available():
        raise TargetUnavailableError(f"device {device} was asked for but CUDA is not available",
                                      "use --device cpu, or run on a machine with an NVIDIA GPU")
    reason = cuda_kernels_unavailable()
    if reason is None:
        return optimize_for_cuda(deploy, dtype=dtype, device=device, **options)
    from ..console import warn
    warn(f"GPU kernels unavailable ({reason}): running the plain deploy form on {device}")
    return deploy.to(device)
