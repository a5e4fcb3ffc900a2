"""``export --target all`` (the mobile bundle) and ``demo`` (the README's first command)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import build_model, calibration_options, command, target_options
from .console import console
from .errors import UsageError


def run_bundle_export(args: argparse.Namespace) -> int:
    """``export --target all --output DIR``: every mobile target x precision, verified and documented."""
    from .bundle import MOBILE_TARGETS, build_bundle, plan
    from .model import reparameterize
    if args.output is None:
        raise UsageError("--target all writes a folder", "pass --output DIR")
    precisions = [p for p in (args.precision or "").split(",") if p] or None
    model, size = build_model(args)
    deploy = reparameterize(model, size)
    needs_calibration = any(p in ("int8", "w8a8") and not (t == "coreml" and p == "int8")
                            for t, p in plan(list(MOBILE_TARGETS), precisions))
    calibration = None
    if needs_calibration:
        from .calibration import resolve_calibration
        if args.calib is None and not args.calib_synthetic:
            raise UsageError("the bundle includes INT8 files, which need calibration images",
                             "pass --calib DIR, or --precision fp32,fp16 for float files only")
        calibration = resolve_calibration(args.calib, args.calib_synthetic, deploy.manifest, args.calib_samples,
                                          args.seed)
    options = {t: {**target_options(args, t), **calibration_options(args)}
               for t in MOBILE_TARGETS}
    bundle = build_bundle(model, deploy, args.output, precisions=precisions, calibration=calibration,
                          force=args.force, trained=args.checkpoint is not None, options=options, images=args.images)
    print_summary(bundle)
    return 0 if bundle.passed else 1


def print_summary(bundle, timings: dict[str, float] | None = None) -> None:
    from rich.table import Table
    from rich.text import Text
    table = Table(title=f"{bundle.path}  ({bundle.manifest['variant']}, "
                        f"{bundle.manifest['input_size'][0]}x{bundle.manifest['input_size'][1]})")
    for name in ("file", "target", "precision", "size MB", "verify", "cosine", "max|Δ|", "top-1", "median ms"):
        table.add_column(name, justify="right" if name not in ("file", "target", "precision", "verify") else "left")
    for f in bundle.files:
        metrics = (f.verify or {}).get("metrics", {})
        worst = min(metrics.values(), key=lambda m: m["cosine"]) if metrics else None
        ms = (timings or {}).get(f.file)
        table.add_row(f.file, f.target, f.precision, f"{f.bytes / 1e6:.2f}",
                      Text(f.status, style=None if f.status == "PASS" else "red"),
                      f"{worst['cosine']:.6f}" if worst else "", f"{worst['max_abs']:.1e}" if worst else "",
                      f"{min(m['top1'] for m in metrics.values()):.0%}" if worst else "", ms if isinstance(ms, str) else f"{ms:.2f}" if ms else "")
    console.print(table)
    for f in bundle.files:
        for hint in (f.verify or {}).get("hints", []):
            console.print(f"  {f.file}: {hint}", style="yellow")


def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", type=Path, default=Path("out/demo"), help="where the bundle and reports go")
    p.add_argument("--iterations", type=int, default=30, help="benchmark iterations per file")


@command("demo", "the main job on defaults: export M1 to every target and precision, verify, benchmark", _configure_demo)
def run_demo(args: argparse.Namespace) -> int:
    from .benchmark import report, runner
    from .benchmark.machine import machine_info
    from .bundle import build_bundle
    from .model import create_model, reparameterize
    from .samples import sample_calibration
    console.print("demo: EfficientViM-M1 with random weights (seed 0, no checkpoint); the numbers show "
                  "the pipeline, not ImageNet accuracy", style="yellow")
    model = create_model("m1", seed=0)
    deploy = reparameterize(model, model.manifest.input_size)
    calibration = sample_calibration(deploy.manifest)
    bundle = build_bundle(model, deploy, args.output / "m1", calibration=calibration, force=True)
    files = [str(bundle.path / f.file) for f in bundle.files if not f.error]
    config = runner.BenchConfig(files=files, threads=[2], iterations=args.iterations, workdir=str(args.output))
    rows = runner.run(config)
    timings = {Path(r.file).name: (r.timing.median_ms if r.ok else r.status) for r in rows}
    print_summary(bundle, timings)
    plot = args.output / "bench.png"
    report.plot(plot, rows)
    report.write_json(args.output / "bench.json", rows, machine_info(), {"files": files, "threads": 2})
    console.print(f"bundle: {bundle.path}/ (README.md, manifest.json, labels.txt); benchmark plot: {plot}; "
                  f"JSON: {args.output / 'bench.json'}")
    failed = [f.file for f in bundle.files if f.status != "PASS"]
    if failed:  # the demo's job is to show the whole pipeline; its verdicts are the table above
        console.print(f"{len(failed)} file(s) did not pass verify on these random weights: {', '.join(failed)} "
                      "(`export --target all` exits 1 for this)", style="bold red")
    return 0 if all(f.error is None for f in bundle.files) else 1

