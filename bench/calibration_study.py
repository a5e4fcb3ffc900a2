"""Calibration study on the trained fixture: method x samples x weight granularity -> fidelity and accuracy.

    .venv/bin/python bench/calibration_study.py [--target onnx] [--out out/calibration_study]

Each cell exports ``tiny`` (trained on digits) to INT8 with the exporter's default float policy and no
``--fidelity`` search, calibrated on the first N images of a seeded shuffle of the fixture's
calibration folder (training split), then runs the 360 held-out images: top-1, its drop from fp32,
top-1 agreement and logits cosine with the fp32 reference. Writes ``study.md`` and ``study.json``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fidelity import export_and_judge, fixture  # noqa: E402

METHODS = ("minmax", "entropy", "percentile")
SAMPLES = (32, 128, 512)
GRANULARITY = {"per-channel": True, "per-tensor": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="onnx", help="an INT8 target whose exporter takes calib_method")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--samples", nargs="+", type=int, default=list(SAMPLES))
    parser.add_argument("--out", type=Path, default=Path("out/calibration_study"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from evim_deploy.model import reparameterize
    args.out.mkdir(parents=True, exist_ok=True)
    reference_model, folders, reference = fixture(args.out)
    deploy = reparameterize(reference_model, reference_model.manifest.input_size)
    cells = []
    lines = [f"fixture fp32 reference: top-1 {reference.top1:.2%} on {reference.samples} held-out images; "
             f"target {args.target} int8", "",
             "| method | samples | weights | top-1 | Δ top-1 (pt) | top-1 agreement | cosine (mean / min) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for method, samples, (granularity, per_channel) in itertools.product(args.methods, args.samples,
                                                                             GRANULARITY.items()):
            row = export_and_judge(deploy, folders, reference, args.target, "int8", Path(tmp), None, samples,
                                   calib_method=method, per_channel=per_channel)
            cells.append({"method": method, "samples": samples, "weights": granularity, **asdict(row)})
            if row.top1 is None:
                line = f"| {method} | {samples} | {granularity} | | | | | {row.status}: {'; '.join(row.notes)} |"
            else:
                line = (f"| {method} | {samples} | {granularity} | {row.top1:.2%} | {0.0 - row.drop * 100:+.2f} | "
                        f"{row.agreement:.2%} | {row.cosine:.5f} / {row.min_cosine:.5f} | {row.status} |")
            lines.append(line)
            print(line, flush=True)
    (args.out / "study.md").write_text("\n".join(lines) + "\n")
    (args.out / "study.json").write_text(json.dumps({"reference_top1": reference.top1, "cells": cells}, indent=2))
    print("\n".join(lines[:2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
