"""Core ML acceptance run: M1-M4 at their native resolution x fp16/fp32/int8/w8a8, verified on Linux
through the numpy MIL interpreter against the fp32 PyTorch reference. One command:

    .venv/bin/python bench/coreml_acceptance.py [--models m1 m2 m3 m4] [--calib DIR] [--json out.json]

Weights are random with randomized statistics (no pretrained weights can be downloaded here), seed 0.
W8A8 is calibrated on ``--calib`` (default: scikit-image's bundled photos other than the four sample
photos verify uses, each also flipped and centre-cropped). Prints one row per file: size, the interpreter's
ops, and max|d|, cosine and top-1 agreement on the sample photos and on 8 Gaussian inputs.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from evim_deploy.calibration import load_calibration
from evim_deploy.files import artifact_bytes
from evim_deploy.model import get_variant, reparameterize
from evim_deploy.targets import export, load
from evim_deploy.testing import disjoint_calibration_photos, randomized_model
from evim_deploy.verify import verify

PRECISIONS = ("fp16", "fp32", "int8", "w8a8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["m1", "m2", "m3", "m4"])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS))
    parser.add_argument("--calib", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the .mlpackage files here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        calib_dir = args.calib or disjoint_calibration_photos(Path(tmp) / "calib")
        for variant in args.models:
            reference = randomized_model(variant)
            size = (get_variant(variant).input_size,) * 2
            deploy = reparameterize(reference, size)
            calibration = load_calibration(calib_dir, deploy.manifest)
            for precision in args.precisions:
                start = time.perf_counter()
                path = export(deploy, "coreml", workdir / f"{variant}_{precision}.mlpackage", precision,
                              calibration if precision == "w8a8" else None, force=True)
                seconds = time.perf_counter() - start
                with load(path) as runtime:
                    report = verify(runtime, reference)
                    ops = runtime.interpreter.ops
                size_bytes = artifact_bytes(path)
                row = {"model": variant, "resolution": size[0], "precision": precision, "bytes": size_bytes,
                       "export_s": round(seconds, 1), "passed": report.passed, "failures": report.failures,
                       "thresholds": report.thresholds, "ops": ops,
                       "metrics": {k: {"max_abs": m.max_abs, "cosine": m.cosine, "top1": m.top1,
                                       "margin": m.margin, "noise": m.noise}
                                   for k, m in report.metrics.items()}}
                rows.append(row)
                m = row["metrics"]
                print(f"{variant} {size[0]} {precision:5s} {size_bytes / 1e6:6.2f} MB  images max|d| "
                      f"{m['images']['max_abs']:.2e} cos {m['images']['cosine']:.6f} top1 {m['images']['top1']:.0%} "
                      f"(margin {m['images']['margin']:.2f} / noise {m['images']['noise']:.2f} std)  "
                      f"random max|d| {m['random']['max_abs']:.2e} cos {m['random']['cosine']:.6f} "
                      f"top1 {m['random']['top1']:.0%}  {'PASS' if report.passed else 'FAIL'}  ({seconds:.0f}s)",
                      flush=True)
    ops = sorted({op for row in rows for op in row["ops"]})
    print("ops the interpreter evaluated:", ", ".join(ops))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ops": ops}, indent=2))


if __name__ == "__main__":
    main()
