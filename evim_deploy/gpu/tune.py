"""Where the time goes, and which block sizes are fastest: per-op CUDA-event profile and a config sweep.

Both run the model eagerly (no graph), so each op can be timed or re-launched on its own inputs.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any, Callable

import torch

from .model import PlanModel
from .configs import Config, pow2
from .triton_ops import TritonOps


class TimedOps:
    """Wraps an ops object; records CUDA events around every op call, labelled by op name and call index."""

    def __init__(self, ops: Any) -> None:
        self.ops = ops
        self.events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def __getattr__(self, name: str) -> Callable:
        fn = getattr(self.ops, name)

        def timed(*args, **kwargs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args, **kwargs)
            end.record()
            self.events.append((f"{len(self.events):02d} {name} {_shape(args[0])}", start, end))
            return out
        return timed


def _shape(x: Any) -> str:
    return "x".join(str(s) for s in x.shape[1:]) if isinstance(x, torch.Tensor) else ""


@torch.inference_mode()
def profile_ops(plan, ops: Any, x: torch.Tensor, repeats: int = 5) -> list[tuple[str, float]]:
    """Median milliseconds of every op call of one forward pass, slowest first (head/SE torch ops excluded)."""
    per_label: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats + 1):
        timed = TimedOps(ops)
        PlanModel(plan, timed)(x)
        torch.cuda.synchronize()
        for label, start, end in timed.events:
            per_label[label].append(start.elapsed_time(end))
    table = [(label, statistics.median(times[1:])) for label, times in per_label.items()]
    return sorted(table, key=lambda item: -item[1])


def candidates(key: tuple) -> list[Config | str]:
    """What to try for one op shape (see ``triton_ops.default_config`` for the keys): Triton block
    sizes, ``"torch"`` (its torch twin: cuDNN / cuBLAS) and, for the FFN, ``"split"`` (two linears)."""
    name = key[0]
    if name == "conv3x3":
        sizes = (64, 128, 256, 512) if key[1] <= 4 else (32, 64, 128, 256)
        configs = [{"BP": bp, "num_warps": w} for bp in sizes for w in (4, 8)]
    elif name == "depthwise":
        configs = [{"BP": bp, "BC": bc, "num_warps": w} for bp, bc, w in (
            (32, 64, 4), (64, 64, 4), (128, 64, 4), (128, 64, 8), (32, 128, 4), (64, 128, 4), (64, 128, 8),
            (16, 256, 4), (128, 32, 4))]
    elif name == "linear":
        configs = [{"BM": bm, "BN": bn, "BK": bk, "num_warps": w, "num_stages": s} for bm, bn, bk, w, s in (
            (128, 128, 64, 8, 3), (128, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 256, 64, 8, 3),
            (64, 64, 64, 4, 4), (128, 128, 32, 4, 4), (256, 128, 64, 8, 3), (64, 256, 64, 8, 3))]
    elif name == "mlp":
        cp, gate = pow2(key[1]), key[3]
        rows = (16, 32, 64) if cp >= 512 or gate else (64, 128)
        configs = [{"BM": bm, "BH": bh, "num_warps": w, "num_stages": 2} for bm in rows for bh in (16, 32, 64, 128)
                   for w in (4, 8) if bh * cp <= 128 * 256 and (bh >= 32 or gate)]
        configs += [] if gate else ["split"]
    elif name == "ln_linear":
        cp, bn_max = pow2(key[1]), pow2(key[2])
        configs = [{"BM": bm, "BN": bn, "num_warps": w} for bm in (32, 64, 128) if bm * cp <= 128 * 256
                   for bn in sorted({min(bn_max, 64), min(bn_max, 128), bn_max}) for w in (4, 8)]
    elif name == "state":
        configs = [{"BC": bc, "num_warps": w} for bc in (32, 64, 128) for w in (4, 8)]
    elif name == "scan_out":
        lp = pow2(key[1])
        configs = [{"BL": bl, "BC": bc, "num_warps": w} for bl in sorted({min(32, lp), min(64, lp), min(128, lp)})
                   for bc in (64, 128) for w in (4, 8)]
    elif name == "ln_mean":
        configs = [{"num_warps": w} for w in (1, 2, 4, 8)]
    else:
        configs = []
    return configs + ["torch"]


@torch.inference_mode()
def sweep(plan, x: torch.Tensor, budget_s: float = 120.0, max_shapes: int = 64,
          log: Callable[[str], None] = print) -> dict[tuple, dict]:
    """Time candidate configs of the slowest op shapes of one forward pass, on their real inputs.

    Candidates come from :func:`candidates`. The ``max_shapes`` slowest op shapes (under their default
    configs) are swept, slowest first; their candidates compile in parallel up front; no new shape
    starts after ``budget_s``.
    Returns ``{key: {"best": config, "best_ms": ..., "default_ms": ..., "tried": n, "failed": n}}``.
    """
    from concurrent.futures import ThreadPoolExecutor

    import triton
    import triton.testing
    launches: dict[tuple, Callable[[Config | str], Any]] = {}
    recorder = TritonOps(record=lambda key, run: launches.setdefault(key, run))
    PlanModel(plan, recorder)(x)
    torch.cuda.synchronize()
    default_ms = {key: triton.testing.do_bench(lambda: launch(recorder.config(key)), warmup=5, rep=20,
                                               return_mode="median") for key, launch in launches.items()}
    keys = sorted(launches, key=lambda k: -default_ms[k])[:max_shapes]          # slowest op shapes first
    start = time.perf_counter()
    recorder.compile_only = True
    with ThreadPoolExecutor(16) as pool, triton.AsyncCompileMode(pool, ignore_errors=True):
        for key in keys:
            for cfg in candidates(key):
                if cfg == "torch":
                    continue
                try:
                    launches[key](cfg)
                except Exception:  # noqa: BLE001  reported when timed below
                    pass
    recorder.compile_only = False
    log(f"  compiled the candidates of {len(keys)} op shapes in {time.perf_counter() - start:.1f} s")
    results: dict[tuple, dict] = {}
    for key in keys:
        if time.perf_counter() - start > budget_s:
            log(f"  sweep budget spent; {len(keys) - len(results)} op shapes keep their defaults")
            break
        launch, default = launches[key], recorder.config(key)
        timings, failed = [], 0
        for cfg in [default] + [c for c in candidates(key) if c != default]:
            try:
                ms = triton.testing.do_bench(lambda: launch(cfg), warmup=5, rep=20, return_mode="median")
                timings.append((ms, cfg))
            except Exception:  # e.g. out of shared memory for this block shape
                failed += 1
        best_ms, best_cfg = min(timings, key=lambda item: item[0])
        results[key] = {"best": best_cfg, "best_ms": best_ms, "default_ms": default_ms[key], "tried": len(timings),
                        "failed": failed}
        log(f"  {key}: default {default_ms[key]:.4f} ms, best {best_ms:.4f} ms {best_cfg}")
    return results


class CheckedOps:
    """Runs every op with both ``ops`` and its torch twin on the same inputs; records relative errors."""

    def __init__(self, ops: Any) -> None:
        from . import ops_torch
        self.ops, self.reference = ops, ops_torch
        self.errors: list[tuple[str, float]] = []

    def __getattr__(self, name: str) -> Callable:
        fast, slow = getattr(self.ops, name), getattr(self.reference, name)

        def checked(*args, **kwargs):
            out, ref = fast(*args, **kwargs), slow(*args, **kwargs)
            for o, r in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
                err = ((o.float() - r.float()).norm() / r.float().norm().clamp_min(1e-12)).item()
                self.errors.append((f"{len(self.errors):02d} {name} {_shape(args[0])}", err))
            return out
        return checked


@torch.inference_mode()
def compare_ops(plan, ops: Any, x: torch.Tensor) -> list[tuple[str, float]]:
    """Relative L2 error of each op of one forward pass against its torch twin (same inputs)."""
    checked = CheckedOps(ops)
    PlanModel(plan, checked)(x)
    return checked.errors
