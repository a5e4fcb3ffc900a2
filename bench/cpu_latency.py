"""CPU latency side by side: batch 1, M1 at 224x224, 2 threads by default. One command:

    .venv/bin/python bench/cpu_latency.py [--model m1] [--resolution 224] [--threads 2] [--targets onnx,tflite]
                                          [--rounds 7] [--iterations 30] [--profile]

Rows: eager PyTorch (reference and deploy form), the plain ONNX export of the reference (no
reparameterization: what a user gets today, run in the same ONNX Runtime session settings), then every
installed target of ``evim_deploy.targets.TARGETS`` in each precision it exports. INT8 files are
calibrated on the bundled sample photos plus a small synthetic set (latency does not depend on the
calibration); each row shows its ``verify`` result. Rows are measured in interleaved rounds in one
process, so the ratios compare like with like. ``--profile`` adds ONNX Runtime's per-op profile of the
ONNX rows.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evim_deploy.benchmark import interleaved
from evim_deploy.calibration import CalibrationSet, synthetic_calibration
from evim_deploy.export.onnx import trace_to_onnx
from evim_deploy.formats.onnx import embed_manifest
from evim_deploy.model import get_variant, parse_resolution, reparameterize
from evim_deploy.preprocess import preprocess
from evim_deploy.runtime.onnx import OnnxRuntime, profile_by_op
from evim_deploy.samples import sample_images
from evim_deploy.targets import TARGETS, export, load
from evim_deploy.testing import randomized_model
from evim_deploy.verify import verify

PLAIN = "plain ONNX export of reference"


@dataclass
class Row:
    """One line of the table: a callable to time, or the reason it is not timed."""

    name: str
    run: Callable[[], object] | None = None
    note: str = ""
    runtime: object | None = None


def plain_onnx_export(reference: torch.nn.Module, size: tuple[int, int], path: Path) -> Path:
    """What a user gets today: torch.onnx.export of the reference, no reparameterization, no simplification."""
    import onnx

    class Sized(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.input_size = reference, size

        def forward(self, x):
            return self.net(x)

    graph = trace_to_onnx(Sized().eval())
    reference.eval()  # the exporter restores the wrapper's mode on every child: keep the reference in eval
    manifest = reference.manifest.with_input_size(size).replace(target="onnx", extra={"plain": True})
    embed_manifest(graph, manifest)
    onnx.save(graph, path)
    return path


def bench_calibration(manifest, synthetic: int = 16) -> CalibrationSet:
    """The bundled sample photos plus a few synthetic images: enough for ranges, latency does not care."""
    photos = np.stack([preprocess(path, manifest) for path in sample_images()])
    noise = synthetic_calibration(manifest, synthetic).images
    return CalibrationSet(np.concatenate([photos, noise]), "bundled sample photos + synthetic")


def verify_note(runtime, reference) -> str:
    report = verify(runtime, reference)
    parts = [f"{name} cos {m.cosine:.4f} top1 {m.top1:.0%}" for name, m in report.metrics.items()]
    verdict = "PASS" if report.passed else "FAIL (" + "; ".join(report.failures) + ")"
    return f"verify {verdict}: {', '.join(parts)}"


def timed(name: str, runtime, x: np.ndarray, reference) -> Row:
    native = runtime.from_nchw(x)
    return Row(name, lambda: runtime.predict(native), verify_note(runtime, reference), runtime)


def target_rows(deploy, reference, x: np.ndarray, threads: int, workdir: Path, only: set[str] | None) -> list[Row]:
    """Every target of the table, in each precision it exports; those that cannot be timed here say why."""
    rows: list[Row] = []
    calibration = None
    for spec in TARGETS.values():
        if only and spec.name not in only:
            continue
        unavailable = spec.unavailable_reason()  # not installed, or e.g. Core ML off macOS
        for precision in spec.precisions:
            name = f"{spec.name} {precision} ({spec.suffix})"
            if unavailable:  # say so for every precision, time nothing
                rows.append(Row(name, note=unavailable))
                continue
            if spec.needs_calibration(precision) and calibration is None:
                calibration = bench_calibration(deploy.manifest)
            try:
                path = export(deploy, spec.name, workdir / f"{spec.name}_{precision}{spec.suffix}", precision,
                              calibration if spec.needs_calibration(precision) else None, force=True)
                runtime = load(path, threads=threads)
            except Exception as err:  # another team's exporter may fail: report it on its row, keep going
                rows.append(Row(name, note=f"export/load failed: {type(err).__name__}: {str(err)[:120]}"))
                continue
            rows.append(timed(name, runtime, x, reference))
    return rows


def build_rows(variant: str, size: tuple[int, int], threads: int, workdir: Path, only: set[str] | None) -> list[Row]:
    torch.set_num_threads(threads)
    reference = randomized_model(variant)
    deploy = reparameterize(reference, size)
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    xt = torch.from_numpy(x)

    def eager(module: torch.nn.Module) -> Callable[[], object]:
        def run():
            with torch.inference_mode():
                module(xt)
        return run

    rows = [Row("reference eager (torch)", eager(reference)), Row("deploy form eager (torch)", eager(deploy))]
    if not only or "onnx" in only:
        plain = load(plain_onnx_export(reference, size, workdir / "plain.onnx"), threads=threads)
        rows.append(timed(PLAIN, plain, x, reference))
    return rows + target_rows(deploy, reference, x, threads, workdir, only)


def print_table(rows: list[Row], timings: dict, args, size) -> None:
    best = min(t.median_ms for t in timings.values())
    plain = timings.get(PLAIN)
    print(f"\n{args.model} {size[0]}x{size[1]}, batch 1, {args.threads} threads, {os.cpu_count()} cores; "
          f"{args.rounds}x{args.iterations} interleaved samples per row; random weights (randomize_)")
    print(f"{'row':<36} {'median ms':>9} {'p90 ms':>7} {'x best':>7} {'vs plain':>9}  notes")
    for row in rows:
        t = timings.get(row.name)
        if t is None:
            print(f"{row.name:<36} {'-':>9} {'-':>7} {'-':>7} {'-':>9}  {row.note}")
            continue
        speedup = f"{plain.median_ms / t.median_ms:>8.2f}x" if plain else f"{'-':>9}"
        print(f"{row.name:<36} {t.median_ms:>9.2f} {t.p90_ms:>7.2f} {t.median_ms / best:>7.2f} {speedup}  {row.note}")
    ours, int8 = timings.get("onnx fp32 (.onnx)"), timings.get("onnx int8 (.onnx)")
    if plain and ours:
        print(f"\nour fp32 ONNX is {plain.median_ms / ours.median_ms:.2f}x faster than the plain export (target >= 1.35x)")
    if ours and int8:
        print(f"our int8 ONNX takes {int8.median_ms / ours.median_ms:.2f}x our fp32 latency (target <= 0.60x)")


def print_profiles(rows: list[Row], runs: int = 200) -> None:
    """ONNX Runtime's profiler on every ONNX row: the ops that take the time."""
    for row in rows:
        if not isinstance(row.runtime, OnnxRuntime):
            continue
        with OnnxRuntime(row.runtime.path, threads=row.runtime.threads, profile=True) as session:
            native = session.from_nchw(np.random.default_rng(0).standard_normal((1, 3, *session.manifest.input_size))
                                       .astype(np.float32))
            for _ in range(runs):
                session.predict(native)
            ops = profile_by_op(session.end_profiling(), runs)
        total = sum(ms for _, ms, _ in ops)
        print(f"\nprofile {row.name}: {total:.2f} ms in {sum(n for *_, n in ops)} kernels per run (profiler on)")
        for op, ms, count in ops[:10]:
            print(f"  {op:<24} {ms:6.3f} ms {100 * ms / total:5.1f}%  x{count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="m1")
    parser.add_argument("--resolution", help="224 or HxW (default: the variant's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--targets", help="comma-separated targets of the table to include (default: all)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--profile", action="store_true", help="print ONNX Runtime's top ops of every ONNX row")
    args = parser.parse_args()
    size = parse_resolution(args.resolution or get_variant(args.model).input_size)
    only = set(args.targets.split(",")) if args.targets else None
    with tempfile.TemporaryDirectory() as tmp:
        rows = build_rows(args.model, size, args.threads, Path(tmp), only)
        timings = interleaved({row.name: row.run for row in rows if row.run}, rounds=args.rounds,
                              iterations=args.iterations)
        print_table(rows, timings, args, size)
        if args.profile:
            print_profiles(rows)


if __name__ == "__main__":
    main()
