"""GPU throughput of EfficientViM on one CUDA GPU, every row measured side by side in one run:

    python bench/gpu_throughput.py --sweep 30 --sweep-shapes 8 --compile [--model m1] [--out DIR]

- the fused runtime (Triton kernels + CUDA graph, fp16 and bf16) at batch 1024, 256, 64, 1; its
  warm-up (plan + kernel compiles from an empty Triton cache + graph capture) is the first build;
- the deploy form: eager, CUDA graph (NCHW and channels-last), and with --compile torch.compile + graph;
- the same NHWC plan in plain torch ops under a CUDA graph;
- peers from the machine's own timm (bench-only, never a package dependency) under CUDA graphs, fp16;
- numerics: logits of every GPU path vs the deploy form in fp32 (TF32 off), cosine per image;
- the per-op profile of the fused runtime and, with --sweep, a block-size sweep and the tuned figure.

Writes gpu_throughput.json and gpu_throughput.txt to --out (default $OUT, else ./out), after each section.
Weights are random (evim_deploy.testing.randomized_model: realistic BN statistics); throughput does not
depend on their values.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="evim-triton-cache-"))  # cold compile: honest warm-up

import torch  # noqa: E402

from evim_deploy.gpu import optimize_for_cuda, throughput  # noqa: E402
from evim_deploy.gpu.plan import build_plan  # noqa: E402
from evim_deploy.gpu.configs import load_overrides, save_overrides  # noqa: E402
from evim_deploy.model import reparameterize  # noqa: E402
from evim_deploy.testing import randomized_model  # noqa: E402

OURS = "ours triton + graph"


class Report:
    def __init__(self, out: Path) -> None:
        self.out, self.data, self.lines = out, {}, []
        out.mkdir(parents=True, exist_ok=True)

    def log(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)
        self.save()

    def save(self) -> None:
        (self.out / "gpu_throughput.json").write_text(json.dumps(self.data, indent=1, default=str))
        (self.out / "gpu_throughput.txt").write_text("\n".join(self.lines) + "\n")


def machine() -> dict:
    import triton
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
            "gpu": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(),
            "sms": torch.cuda.get_device_properties(0).multi_processor_count}
    try:
        import timm
        info["timm"] = timm.__version__
    except ImportError:
        info["timm"] = None
    return info


def table(rows: list[throughput.GpuRow], model: str) -> list[str]:
    lines = [f"{'model':22} {'path':30} {'prec':5} {'batch':>5} {'img/s':>10} {'ms/batch':>9} {'warm-up s':>9} "
             f"{'vs ours':>7}"]
    for row in rows:
        ours = throughput.best([r for r in rows if r.path == OURS], model, row.batch, "fp16")
        ratio = f"{ours.images_per_s / row.images_per_s:6.2f}x" if ours and row.timing else ""
        ips = f"{row.images_per_s:10.0f}" if row.timing else f"{'-':>10}"
        ms = f"{row.timing.median_ms:9.3f}" if row.timing else f"{'-':>9}"
        warm = f"{row.warmup_s:9.1f}" if row.warmup_s is not None else f"{'-':>9}"
        lines.append(f"{row.model:22} {row.path:30} {row.precision:5} {row.batch:5d} {ips} {ms} {warm} {ratio:>7}"
                     + ("" if row.status == "ok" else f"  {row.status}"))
    return lines


def cosine_rows(deploy, images: torch.Tensor) -> dict:
    """Per-image cosine of each GPU path's logits vs the deploy form in fp32 (TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        ref = throughput._deploy_on_gpu(deploy, torch.float32)(images).float()
        result = {}
        for precision in ("fp16", "bf16"):
            dtype = throughput.DTYPES[precision]
            paths = {"ours triton": lambda: optimize_for_cuda(deploy, dtype)(images.to(dtype)),
                     "ours triton, fp32 input": lambda: optimize_for_cuda(deploy, dtype)(images),
                     "ours torch-ops": lambda: optimize_for_cuda(deploy, dtype, kernels="torch")(images.to(dtype)),
                     "deploy form": lambda: throughput._deploy_on_gpu(deploy, dtype)(images.to(dtype))}
            for name, fn in paths.items():
                out = fn().float()
                cos = torch.nn.functional.cosine_similarity(out, ref, dim=1)
                result[f"{name} {precision}"] = {
                    "min_cosine": cos.min().item(), "mean_cosine": cos.mean().item(),
                    "max_abs_diff": (out - ref).abs().max().item(), "ref_max_abs": ref.abs().max().item(),
                    "top1_agreement": (out.argmax(1) == ref.argmax(1)).float().mean().item()}
    return result


def sample_batch(deploy, count: int) -> torch.Tensor:
    """The bundled photos, preprocessed, then random-normal images up to ``count``."""
    import numpy as np
    from evim_deploy.preprocess import preprocess
    from evim_deploy.samples import sample_images
    photos = [preprocess(p, deploy.manifest) for p in sample_images()]
    noise = np.random.default_rng(0).standard_normal((count - len(photos), 3, *deploy.input_size)).astype("float32")
    photos = np.stack(photos).reshape(len(photos), 3, *deploy.input_size)
    return torch.from_numpy(np.concatenate([photos, noise])).cuda()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="m1")
    parser.add_argument("--out", default=os.environ.get("OUT") or "out")
    parser.add_argument("--batches", default="1024,256,64,1")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sweep", type=float, default=0.0, help="seconds for the block-size sweep (0: none)")
    parser.add_argument("--sweep-shapes", type=int, default=64, help="sweep only this many of the slowest op shapes")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the deploy form (batch 1024)")
    parser.add_argument("--overrides", help="JSON of tuned block sizes from an earlier --sweep")
    parser.add_argument("--budget", type=float, default=560.0, help="seconds: optional sections that would not fit "
                        "are skipped (the device machine stops a command at 600 s)")
    args = parser.parse_args()
    start = time.perf_counter()
    report = Report(Path(args.out))
    report.data["machine"] = machine()
    report.data["command"] = " ".join(sys.argv)
    report.log(f"machine: {report.data['machine']}")
    reference = randomized_model(args.model)
    deploy = reparameterize(reference, reference.manifest.input_size)
    model = f"EfficientViM-{args.model.upper()}"
    overrides = load_overrides(args.overrides) if args.overrides else None
    batches = tuple(int(b) for b in args.batches.split(","))

    paths = tuple(p for p in throughput.PATHS if p != "deploy compile")
    rows = throughput.run(deploy, batches=batches, paths=paths, rounds=args.rounds, overrides=overrides, model_name=model,
                     log=report.log)
    report.data["rows"] = [r.to_dict() for r in rows]
    report.log("\n".join(table(rows, model)))
    report.log(summary(rows, model))

    def left() -> float:
        return args.budget - (time.perf_counter() - start)
    guarded(report, "numerics", lambda: section_numerics(report, deploy))
    guarded(report, "profile", lambda: section_profile(report, deploy, overrides))
    if args.sweep and left() > args.sweep + 60:
        tuned = guarded(report, "sweep", lambda: section_sweep(report, deploy, model, args.sweep, args.sweep_shapes,
                                                               overrides))
        if tuned:
            guarded(report, "headline", lambda: section_headline(report, deploy, model, overrides, tuned))
    if args.compile and left() > 60:
        guarded(report, "compile", lambda: section_compile(report, deploy, model, args.rounds, overrides))
    elif args.compile:
        report.log(f"torch.compile section skipped: {left():.0f} s of the budget left (needs 60)")
    report.log(f"total {time.perf_counter() - start:.0f} s")


def guarded(report: Report, name: str, section):
    """Run one section; a failure is logged with its traceback and the next section still runs."""
    import traceback
    try:
        return section()
    except Exception:
        report.log(f"section {name} FAILED:\n{traceback.format_exc()}")
        return None


def section_numerics(report: Report, deploy) -> None:
    report.data["numerics"] = cosine_rows(deploy, sample_batch(deploy, 64))
    report.log("numerics vs deploy fp32 (64 images: 4 photos + 60 random):")
    for name, m in report.data["numerics"].items():
        report.log(f"  {name:34} min cos {m['min_cosine']:.6f}  mean {m['mean_cosine']:.6f}  "
                   f"max|diff| {m['max_abs_diff']:.4f} (ref max {m['ref_max_abs']:.2f})  "
                   f"top-1 {m['top1_agreement']:.3f}")


def section_compile(report: Report, deploy, model: str, rounds: int, overrides) -> None:
    rows = throughput.run(deploy, batches=(1024,), precisions=("fp16",), paths=("deploy compile", "ours triton"),
                     peers={}, rounds=rounds, overrides=overrides, model_name=model, log=report.log)
    report.data["compile_rows"] = [r.to_dict() for r in rows]
    report.log("\n".join(table(rows, model)))


def summary(rows: list[throughput.GpuRow], model: str) -> str:
    ours = throughput.best([r for r in rows if r.path == OURS], model, 1024)
    if ours is None:
        return "no measurement of ours at batch 1024 fp16"
    compile_note = f" (of which parallel kernel compile {ours.compile_s:.1f} s)" if ours.compile_s is not None else ""
    lines = [f"ACCEPTANCE {model} fp16 batch 1024 ({OURS}): {ours.images_per_s:,.0f} img/s, "
             f"{ours.timing.median_ms:.3f} ms/batch, warm-up {ours.warmup_s:.1f} s{compile_note}"]
    for peer in throughput.PEERS:
        best = throughput.best(rows, peer, 1024)
        if best:
            lines.append(f"  {peer}: {best.images_per_s:,.0f} img/s ({best.path}); ours / peer = "
                         f"{ours.images_per_s / best.images_per_s:.2f}x")
    for path in ("deploy graph", "deploy graph channels-last", "deploy eager", "ours torch-ops + graph"):
        other = throughput.best([r for r in rows if r.path == path], model, 1024)
        if other:
            lines.append(f"  {model} {path}: {other.images_per_s:,.0f} img/s; ours / it = "
                         f"{ours.images_per_s / other.images_per_s:.2f}x")
    return "\n".join(lines)


def section_profile(report: Report, deploy, overrides) -> None:
    from evim_deploy.gpu.triton_ops import TritonOps
    from evim_deploy.gpu.tune import compare_ops, profile_ops
    plan = build_plan(deploy, torch.float16).to("cuda")
    x = torch.randn(1024, 3, *deploy.input_size, device="cuda", dtype=torch.float16)
    ops = TritonOps(overrides)
    errors = compare_ops(plan, ops, x[:64])
    report.data["op_errors"] = errors
    report.log("worst per-op relative errors vs torch twin (fp16): " +
               ", ".join(f"{label} {err:.2e}" for label, err in sorted(errors, key=lambda e: -e[1])[:5]))
    table = profile_ops(plan, ops, x)
    report.data["profile_ops"] = table
    total = sum(ms for _, ms in table)
    report.log(f"per-op profile, fp16 batch 1024, eager (sum {total:.3f} ms):")
    for label, ms in table[:25]:
        report.log(f"  {ms:8.4f} ms {100 * ms / total:5.1f}%  {label}")
    report.data["profile_kernels"] = kernel_profile(optimize_for_cuda(deploy, torch.float16, overrides=overrides), x)
    report.log("top kernels (torch.profiler, graph replays): "
               + json.dumps(report.data["profile_kernels"][:12], indent=1))


def kernel_profile(model, x: torch.Tensor) -> list[dict]:
    """CUDA time per kernel name over 5 graph replays (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    graph = model.graph_for(x)
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                graph.replay()
            torch.cuda.synchronize()
        events = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
        return [{"kernel": e.key[:90], "calls": e.count, "ms_per_replay": e.device_time_total / 1e3 / 5}
                for e in events[:20]]
    except Exception as err:  # the profiler is a diagnostic: never let it sink the run
        return [{"error": f"{type(err).__name__}: {err}"}]


def section_sweep(report: Report, deploy, model: str, budget: float, shapes: int, overrides) -> dict:
    from evim_deploy.gpu.tune import sweep
    plan = build_plan(deploy, torch.float16).to("cuda")
    x = torch.randn(1024, 3, *deploy.input_size, device="cuda", dtype=torch.float16)
    results = sweep(plan, x, budget, max_shapes=shapes, log=report.log)
    tuned = {**(overrides or {}), **{k: v["best"] for k, v in results.items()}}
    report.data["sweep"] = [{"key": list(k), **v} for k, v in results.items()]
    save_overrides(report.out / "overrides.json", tuned)
    return tuned


def section_headline(report: Report, deploy, model: str, overrides, tuned) -> None:
    """Batch 1024 fp16 again, interleaved: ours (as run above, and with the swept block sizes) and every peer."""
    x = torch.randn(1024, 3, *deploy.input_size, device="cuda", dtype=torch.float16)
    cand = throughput.Candidates(1024, report.log)
    for name, cfg in ((model, overrides), (model + " tuned", tuned)):
        cand.add(name, OURS, "fp16", lambda: throughput.captured(
            lambda: optimize_for_cuda(deploy, torch.float16, cuda_graphs=False, overrides=cfg), x))
    for peer, timm_name in throughput.PEERS.items():
        for channels_last in (False, True):
            cand.add(peer, "peer graph" + (" channels-last" if channels_last else ""), "fp16", lambda: throughput.captured(
                lambda: throughput._timm_peer(timm_name, torch.float16, channels_last),
                x.contiguous(memory_format=torch.channels_last) if channels_last else x))
    rows = cand.measure(8)
    report.data["headline_rows"] = [r.to_dict() for r in rows]
    report.log("HEADLINE SET (batch 1024 fp16, one interleaved measurement):")
    report.log("\n".join(table(rows, model)))
    report.log(summary(rows, model + " tuned"))


if __name__ == "__main__":
    main()
