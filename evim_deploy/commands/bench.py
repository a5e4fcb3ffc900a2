"""``evim-deploy bench``: every target measured under identical conditions, reported and plotted."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ..benchmark.runner import BenchConfig
from ..console import console, progress_bar
from ..errors import UsageError
from .info import coverage_table

NAME = "bench"
HELP = "measure latency of every target side by side; table, JSON, CSV, Markdown, plot"
QUIET = True  # converters' log noise stays off the terminal (--debug shows it)


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def configure(p: argparse.ArgumentParser) -> None:
    defaults = BenchConfig()
    p.add_argument("files", nargs="*", type=Path, help="model files to measure (default: export --model)")
    p.add_argument("--model", default="m1")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--targets", type=name_list, default=defaults.targets, help="comma list (default: all)")
    p.add_argument("--precisions", type=name_list, default=defaults.precisions)
    p.add_argument("--threads", type=int_list, default=defaults.threads, help="sweep, e.g. 1,2,4 (default 2)")
    p.add_argument("--batch", type=int_list, default=defaults.batches, help="sweep, e.g. 1,8,32")
    p.add_argument("--resolutions", type=int_list, default=[224, 384, 512, 768, 1024],
                   help="first = main size; the rest sweep --sweep-targets (default 224,384,512,768,1024)")
    p.add_argument("--sweep-targets", type=name_list, default=defaults.sweep_targets,
                   help="targets measured at every resolution, first precision only "
                        f"(default {','.join(defaults.sweep_targets) or 'none'})")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--iterations", type=int, default=defaults.iterations)
    group.add_argument("--seconds", type=float, help="measure for S seconds per row instead")
    p.add_argument("--warmup", type=int, default=defaults.warmup)
    p.add_argument("--workdir", type=Path, default=Path(defaults.workdir), help="exported files are cached here")
    p.add_argument("--calib", type=Path, help="INT8 calibration images (default: bundled samples)")
    p.add_argument("--json", type=Path, help="default <workdir>/bench.json")
    p.add_argument("--csv", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--plot", type=Path, help="PNG, default <workdir>/bench.png")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, or adb:SERIAL for an Android phone")


def run(args: argparse.Namespace) -> int:
    from ..benchmark import report, runner
    from ..benchmark.machine import machine_info
    if args.device == "cuda":
        return run_cuda(args)
    for path in args.files:
        if not path.exists():
            raise UsageError(f"model file not found: {path}", "check the path")
    config = BenchConfig(
        model=args.model, checkpoint=str(args.checkpoint) if args.checkpoint else None,
        files=[str(f) for f in args.files], targets=args.targets, precisions=args.precisions,
        threads=args.threads, batches=args.batch, resolutions=args.resolutions, sweep_targets=args.sweep_targets,
        iterations=args.iterations, seconds=args.seconds, warmup=args.warmup, workdir=str(args.workdir),
        calib=str(args.calib) if args.calib else None)
    if args.device.startswith("adb:"):
        return run_adb(args, config)
    if args.device != "cpu":
        raise UsageError(f"unknown device {args.device!r}", "use cpu, cuda or adb:SERIAL")
    args.workdir.mkdir(parents=True, exist_ok=True)
    planned = runner.plan(config)
    with progress_bar() as progress:
        task = progress.add_task("benchmark", total=len(planned))
        rows = runner.run(config, on_row=lambda row: progress.update(
            task, advance=1, description=f"{row.label} {row.resolution[0]}px {row.threads}t"))
    machine = machine_info()
    console.print(report.table(rows, f"evim-deploy bench — {machine['cpu']}, {machine['usable_cores']} cores"))
    for label, slope in report.scaling_slopes(rows).items():
        console.print(f"log-latency vs log-pixels slope, {label}: {slope:.3f} (1.0 = linear in pixels)", style="bold")
    # what each file runs: its ops, and what each accelerator of its target would take of it
    console.print(coverage_table({f"{r.label} {Path(r.file).name}": Path(r.file) for r in rows if r.ok}))
    write_outputs(args, rows, machine, asdict(config))
    return 0 if any(r.ok for r in rows) else 1


def write_outputs(args: argparse.Namespace, rows: list, machine: dict, config: dict) -> None:
    from ..benchmark import report
    json_path = args.json or args.workdir / "bench.json"
    plot_path = args.plot or args.workdir / "bench.png"
    for path in filter(None, (json_path, plot_path, args.csv, args.markdown)):
        path.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(json_path, rows, machine, config)
    report.plot(plot_path, rows)
    if args.csv:
        report.write_csv(args.csv, rows)
    if args.markdown:
        args.markdown.write_text(report.markdown(rows, machine))
    console.print(f"wrote {json_path} and {plot_path}" + "".join(f", {p}" for p in (args.csv, args.markdown) if p))


def run_adb(args: argparse.Namespace, config: BenchConfig) -> int:
    """Export the rows of the target the phone's benchmark tool runs here; run them on the phone."""
    from ..benchmark import adb, runner
    config.targets, config.sweep_targets = [adb.device_target().name], []
    cache = runner.ArtifactCache(config)
    results = []
    for spec in runner.plan(config):
        path = Path(spec.file) if spec.file else cache.get(spec)
        timing = adb.run_on_device(path, args.device, threads=spec.threads)
        results.append({"file": str(path), "threads": spec.threads, **asdict(timing)})
        console.print(f"{path.name} on {args.device}, {spec.threads} threads: avg {timing.avg_ms:.2f} ms "
                      f"± {timing.std_ms:.2f} (init {timing.init_ms:.0f} ms, first {timing.first_ms:.1f} ms)")
    write_json(args.json or args.workdir / "bench_device.json", {"device": args.device, "rows": results})
    return 0


def run_cuda(args: argparse.Namespace) -> int:
    """GPU throughput of the deploy form (eager, graph, compile, fused kernels) and timm peers if present."""
    import torch
    if not torch.cuda.is_available():
        raise UsageError("--device cuda needs a CUDA GPU and a CUDA build of torch", "run it on a GPU machine")
    from ..gpu import throughput
    from ..model import create_model, reparameterize
    model = create_model(args.model, args.checkpoint)
    size = args.resolutions[0] if args.resolutions else model.manifest.input_size[0]
    batches = tuple(b for b in args.batch if b > 1) or (1024, 256, 64, 1)
    rows = throughput.run(reparameterize(model, (size, size)), batches=batches,
                          log=lambda line: console.print(line, style="dim"))
    for row in rows:
        rate = f"{row.images_per_s:,.0f} img/s" if row.images_per_s else row.status
        console.print(f"{row.model:<18} {row.path:<32} {row.precision:<5} batch {row.batch:<5} {rate}")
    out = args.json or args.workdir / "bench_cuda.json"
    write_json(out, {"device": torch.cuda.get_device_name(), "rows": [r.to_dict() for r in rows]})
    console.print(f"wrote {out}")
    return 0


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
