"""TFLite acceptance: M1-M4 (random weights, ``randomize_``) exported in fp32, fp16 and INT8, each verified.

    .venv/bin/python bench/tflite_acceptance.py [--variants m1 m2 m3 m4] [--precisions fp32 fp16 int8]
                                                [--calib DIR] [--reference-kernels] [--json out.json]

Each file goes through the public API (``export`` then ``load`` + ``verify``, as ``evim-deploy export
--target tflite`` does) at the variant's own resolution, NHWC. INT8 is calibrated on ``--calib`` (default:
scikit-image's photos other than the four verify judges on, see ``evim_deploy.testing.photos``). ``--reference-kernels``
adds, for INT8, the cosine between XNNPACK and TFLite's reference kernels. Prints one row per file; exit status 1 if any file misses
``verify``'s cosine / max|Δ| bound (top-1 agreement of INT8 on random weights is printed, see
docs/tflite.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from evim_deploy.calibration import load_calibration
from evim_deploy.model import get_variant, reparameterize
from evim_deploy.targets import export, load
from evim_deploy.testing import disjoint_calibration_photos, randomized_model
from evim_deploy.verify import Metrics, verification_inputs, verify


def run_one(variant: str, precision: str, calib_dir: Path, workdir: Path, reference_kernels: bool) -> dict:
    reference = randomized_model(variant)
    deploy = reparameterize(reference, get_variant(variant).input_size)
    calibration = load_calibration(calib_dir, deploy.manifest) if precision == "int8" else None
    start = time.perf_counter()
    path = export(deploy, "tflite", workdir / f"{variant}_{precision}.tflite", precision, calibration, force=True)
    row = {"variant": variant, "precision": precision, "size": list(deploy.input_size),
           "export_s": round(time.perf_counter() - start, 1), "mb": round(path.stat().st_size / 1e6, 2)}
    with load(path, threads=2) as runtime:
        report = verify(runtime, reference)
        row["metrics"] = {name: {"max_abs": m.max_abs, "cosine": m.cosine, "top1": m.top1, "margin": m.margin,
                                 "noise": m.noise}
                          for name, m in report.metrics.items()}
        row["failures"] = report.failures
        if precision == "int8" and reference_kernels:
            x = np.concatenate(list(verification_inputs(runtime.manifest).values()))
            with load(path, reference_kernels=True) as slow:
                row["xnnpack_vs_reference_cosine"] = Metrics.compare(slow.run_nchw(x), runtime.run_nchw(x)).cosine
    row["bound_failures"] = [f for f in report.failures if "top-1" not in f or precision != "int8"]
    return row


def line(row: dict) -> str:
    parts = [f"{name} max|Δ| {m['max_abs']:.2e} cos {m['cosine']:.6f} top1 {m['top1']:.0%} "
             f"(margin {m['margin']:.2f} / noise {m['noise']:.2f} std)"
             for name, m in row["metrics"].items()]
    extra = (f" | xnnpack vs ref cos {row['xnnpack_vs_reference_cosine']:.6f}"
             if "xnnpack_vs_reference_cosine" in row else "")
    verdict = "PASS" if not row["failures"] else ("PASS (bounds; top-1 noise)" if not row["bound_failures"]
                                                  else "FAIL " + "; ".join(row["bound_failures"]))
    return (f"{row['variant']} {row['precision']:<5} {row['size'][0]}x{row['size'][1]} {row['mb']:6.2f} MB "
            f"{row['export_s']:6.1f}s | {' | '.join(parts)}{extra} | {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["m1", "m2", "m3", "m4"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"])
    parser.add_argument("--calib", type=Path, help="calibration images (default: scikit-image photos other than the ones verify judges on)")
    parser.add_argument("--reference-kernels", action="store_true", help="INT8: XNNPACK vs reference-kernel cosine")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="evim-tflite-") as tmp:
        calib = args.calib
        if calib is None:
            calib = disjoint_calibration_photos(Path(tmp) / "photos")
        for variant in args.variants:
            for precision in args.precisions:
                rows.append(run_one(variant, precision, calib, Path(tmp), args.reference_kernels))
                print(line(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if any(row["bound_failures"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
