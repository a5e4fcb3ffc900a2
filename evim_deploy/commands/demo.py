"""``evim-deploy demo``: the README's first command, the whole pipeline on defaults."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..console import console
from .common import print_bundle

NAME = "demo"
HELP = "the main job on defaults: export M1 to every target and precision, verify, benchmark"
QUIET = True  # converters' log noise stays off the terminal (--debug shows it)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", type=Path, default=Path("out/demo"), help="where the bundle and reports go")
    p.add_argument("--iterations", type=int, default=30, help="benchmark iterations per file")


def run(args: argparse.Namespace) -> int:
    from ..benchmark import report, runner
    from ..benchmark.machine import machine_info
    from ..bundle import build_bundle
    from ..model import create_model, reparameterize
    from ..samples import sample_calibration
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
    print_bundle(bundle, timings)
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
