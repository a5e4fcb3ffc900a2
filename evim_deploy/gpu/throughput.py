"""GPU throughput rows, measured side by side: the deploy form (eager, CUDA graph, torch.compile),
the fused runtime (Triton kernels + CUDA graph), and timm peers under CUDA graphs when timm is there.

``run(...)`` is what ``evim-deploy bench --device cuda`` calls; ``bench/gpu_throughput.py`` adds the
numerics check, the profile and the block-size sweep around it. Every row of one batch size is timed
in interleaved rounds (CUDA events around chunks of calls), so ratios compare like with like.
"""
from __future__ import annotations

import gc
import importlib.util
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..benchmark.stats import Timing
from . import DTYPES, optimize_for_cuda
from .graphs import CapturedGraph

PEERS = {"MobileNetV3-L": "mobilenetv3_large_100", "SHViT-S1": "shvit_s1", "EfficientViT-M4": "efficientvit_m4"}
PATHS = ("deploy eager", "deploy graph", "deploy compile", "ours triton", "ours torch-ops")


@dataclass
class GpuRow:
    """One measured configuration; ``status`` says why there is no timing when there is none."""

    model: str
    path: str
    precision: str
    batch: int
    timing: Timing | None = None
    warmup_s: float | None = None
    compile_s: float | None = None       # of warmup_s, the parallel Triton compile (ours, first build)
    status: str = "ok"

    @property
    def images_per_s(self) -> float | None:
        return self.timing.throughput(self.batch) if self.timing else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["images_per_s"] = self.images_per_s
        data["latency_ms"] = self.timing.median_ms if self.timing else None
        return data


def synchronized(fn: Callable[[], object]) -> float:
    """Wall seconds of ``fn`` including its GPU work."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 6,
                     chunk_ms: float = 100.0) -> dict[str, list[float]]:
    """Per-call seconds: in each round every candidate runs one chunk (~``chunk_ms``) timed by CUDA events."""
    calls = {}
    for name, fn in fns.items():
        fn()
        per_call = synchronized(lambda: [fn() for _ in range(3)]) / 3
        calls[name] = max(1, min(2000, int(chunk_ms / 1e3 / max(per_call, 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls[name]):
                fn()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / 1e3 / calls[name])
    return samples


def captured(build: Callable[[], Callable[[torch.Tensor], torch.Tensor]], example: torch.Tensor
             ) -> tuple[Callable[[], torch.Tensor], float, float | None]:
    """Build a model, capture it as a CUDA graph on ``example``: (replay, warm-up s, of which compile s)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    model = build()
    graph = CapturedGraph(model, example)
    torch.cuda.synchronize()
    return graph.replay, time.perf_counter() - start, getattr(model, "compile_seconds", None)


def _timm_peer(name: str, dtype: torch.dtype, channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    import timm
    model = timm.create_model(name, pretrained=False).eval().cuda().to(dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


class Candidates:
    """Builds rows for one batch size; failures become rows with a status instead of aborting the run."""

    def __init__(self, batch: int, log: Callable[[str], None]) -> None:
        self.batch, self.log = batch, log
        self.rows: list[GpuRow] = []
        self.fns: dict[int, Callable[[], object]] = {}

    def add(self, model: str, path: str, precision: str,
            make: Callable[[], tuple[Callable[[], object], float, float | None]]) -> None:
        row = GpuRow(model, path, precision, self.batch)
        try:
            fn, row.warmup_s, row.compile_s = make()
            self.fns[len(self.rows)] = fn
            self.log(f"  built {model} / {path} / {precision} / batch {self.batch} in {row.warmup_s:.1f} s"
                     + (f" (compile {row.compile_s:.1f} s)" if row.compile_s is not None else ""))
        except Exception as err:  # a failing candidate is reported, the others still run
            row.status = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            self.log(f"  {model} / {path} / {precision}: {row.status}")
        self.rows.append(row)

    def measure(self, rounds: int) -> list[GpuRow]:
        samples = time_interleaved({str(i): fn for i, fn in self.fns.items()}, rounds=rounds)
        for i, times in samples.items():
            self.rows[int(i)].timing = Timing.from_seconds(times)
        return self.rows


def _inputs(batch: int, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(batch, 3, *size, device="cuda", generator=torch.Generator("cuda").manual_seed(batch)).to(dtype)


def run(deploy: torch.nn.Module, batches: tuple[int, ...] = (1024, 256, 64, 1),
        precisions: tuple[str, ...] = ("fp16", "bf16"), paths: tuple[str, ...] = PATHS,
        peers: dict[str, str] | None = None, compile_batches: tuple[int, ...] = (1024,), rounds: int = 6,
        overrides: dict | None = None, model_name: str = "EfficientViM-M1",
        log: Callable[[str], None] = print) -> list[GpuRow]:
    """Measure every (path, precision, batch) of ``deploy`` and every peer (fp16 CUDA graph, NCHW and
    channels-last); returns rows of all batches, each batch timed in its own interleaved rounds.

    The first ``ours triton`` build compiles the kernels: with an empty Triton cache its ``warmup_s``
    is the cold warm-up (compile + capture). ``peers=None`` uses :data:`PEERS` when timm imports.
    """
    if peers is None:    # timm is a bench-only comparison, never a package dependency
        peers = PEERS if importlib.util.find_spec("timm") is not None else {}
        if not peers:
            log("timm is not installed: peers are skipped")
    torch.backends.cudnn.benchmark = True
    size = tuple(deploy.input_size)
    rows: list[GpuRow] = []
    for batch in batches:
        log(f"batch {batch}")
        cand = Candidates(batch, log)
        for precision in precisions:
            dtype = DTYPES[precision]
            x = _inputs(batch, size, dtype)
            if "ours triton" in paths:
                cand.add(model_name, "ours triton + graph", precision, lambda: captured(
                    lambda: optimize_for_cuda(deploy, dtype, cuda_graphs=False, overrides=overrides), x))
            if "ours torch-ops" in paths:
                cand.add(model_name, "ours torch-ops + graph", precision, lambda: captured(
                    lambda: optimize_for_cuda(deploy, dtype, kernels="torch", cuda_graphs=False), x))
            ref = _deploy_on_gpu(deploy, dtype)
            if "deploy eager" in paths:
                cand.add(model_name, "deploy eager", precision, lambda: _eager(ref, x))
            if "deploy graph" in paths:
                cand.add(model_name, "deploy graph", precision, lambda: captured(lambda: ref, x))
                x_cl = x.contiguous(memory_format=torch.channels_last)
                cand.add(model_name, "deploy graph channels-last", precision, lambda: captured(
                    lambda: _deploy_on_gpu(deploy, dtype, channels_last=True), x_cl))
            if "deploy compile" in paths and batch in compile_batches and precision == "fp16":
                cand.add(model_name, "deploy torch.compile + graph", precision, lambda: captured(
                    lambda: torch.compile(ref, dynamic=False), x))
        for peer, timm_name in peers.items():
            x16 = _inputs(batch, size, torch.float16)
            for channels_last in (False, True):
                label = "peer graph" + (" channels-last" if channels_last else "")
                example = x16.contiguous(memory_format=torch.channels_last) if channels_last else x16
                cand.add(peer, label, "fp16", lambda: captured(
                    lambda: _timm_peer(timm_name, torch.float16, channels_last), example))
        rows += cand.measure(rounds)
        del cand
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def _deploy_on_gpu(deploy: torch.nn.Module, dtype: torch.dtype, channels_last: bool = False) -> torch.nn.Module:
    import copy
    model = copy.deepcopy(deploy).cuda().to(dtype).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _eager(model: torch.nn.Module, x: torch.Tensor) -> tuple[Callable[[], object], float, None]:
    def call() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return call, synchronized(call), None


def best(rows: list[GpuRow], model: str, batch: int, precision: str = "fp16") -> GpuRow | None:
    """The fastest measured row of ``model`` at ``batch`` and ``precision``."""
    measured = [r for r in rows if r.model == model and r.batch == batch and r.precision == precision and r.timing]
    return max(measured, key=lambda r: r.images_per_s) if measured else None
