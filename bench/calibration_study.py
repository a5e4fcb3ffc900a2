"""Calibration study on the trained fixture: method x samples x weight granularity -> fidelity and accuracy.

    .venv/bin/python bench/calibration_study.py [--target onnx] [--out out/calibration_study]

Each cell exports ``tiny`` (trained on digits) to INT8 with the exporter's default float policy and no
``--fidelity`` search, calibrated on the first N images of a seeded shuffle of the fixture's
calibration folder (training split), then runs the 360 held-out images: top-1, its drop from fp32,
top-1 agreement and logits cosine with the fp32 reference. Writes ``study.md`` and ``study.json``
(``--all-int8``: the same with the exporter's float policy off, ``study_all_int8.*``).

A second table feeds deliberately wrong calibrations (all-zero tensors, constant black / white /
mid-gray pictures, uniform noise) through the ``make fidelity`` flow (``--fidelity``) next to the real
one, and says whether ``verify``'s bounds for trained INT8 catch them.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from evim_deploy.calibration import CalibrationSet, load_calibration, synthetic_calibration
from evim_deploy.model import reparameterize
from evim_deploy.preprocess import normalize
from fidelity import METRIC_COLUMNS, export_and_judge, fixture, metric_cells, verdict  # bench/fidelity.py

METHODS = ("minmax", "entropy", "percentile")
SAMPLES = (32, 128, 512)
GRANULARITY = {"per-channel": True, "per-tensor": False}
FIDELITY = 0.997  # what make fidelity asks for


def calibrations(manifest, folder: Path, count: int = 64) -> dict[str, CalibrationSet]:
    """The real calibration and deliberately wrong ones, ``count`` images each."""
    def constant(level: int) -> np.ndarray:
        return normalize(np.full((count, *manifest.input_size, 3), level, np.uint8), manifest)
    return {"real (training images)": load_calibration(folder, manifest, count),
            "all-zero tensors": CalibrationSet(np.zeros((count, 3, *manifest.input_size), np.float32), "zeros"),
            "black pictures": CalibrationSet(constant(0), "black"),
            "white pictures": CalibrationSet(constant(255), "white"),
            "mid-gray pictures": CalibrationSet(constant(128), "gray"),
            "uniform noise pictures": synthetic_calibration(manifest, count)}


def broken_calibration_table(deploy, folders, reference, target: str, workdir: Path) -> list[str]:
    lines = ["", f"Deliberately wrong calibrations, {target} int8 with --fidelity {FIDELITY} (scored on the "
             "calibration images themselves), judged on held-out digits:", "",
             f"| calibration | layers kept float | {METRIC_COLUMNS} | verify |", "|---|---|---|---|---|---|---|"]
    for name, calibration in calibrations(deploy.manifest, folders["calib"]).items():
        row = export_and_judge(deploy, folders, reference, target, "int8", workdir, FIDELITY, calibration=calibration)
        lines.append(f"| {name} | {', '.join(row.fidelity_groups) or '-'} | {metric_cells(row)} | {verdict(row)} |")
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="onnx", help="an INT8 target whose exporter takes calib_method")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--samples", nargs="+", type=int, default=list(SAMPLES))
    parser.add_argument("--out", type=Path, default=Path("out/calibration_study"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--all-int8", action="store_true",
                        help="turn the exporter's float policy off (float_groups=()): every op INT8")
    args = parser.parse_args(argv)
    policy = {"float_groups": ()} if args.all_int8 else {}
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    reference_model, folders, reference = fixture(args.out)
    deploy = reparameterize(reference_model, reference_model.manifest.input_size)
    cells = []
    lines = [f"fixture fp32 reference: top-1 {reference.top1:.2%} on {reference.samples} held-out images; "
             f"target {args.target} int8, {'every op INT8' if args.all_int8 else 'default float policy'}", "",
             f"| method | samples | weights | {METRIC_COLUMNS} | verdict |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for method, samples, (granularity, per_channel) in itertools.product(args.methods, args.samples,
                                                                             GRANULARITY.items()):
            row = export_and_judge(deploy, folders, reference, args.target, "int8", Path(tmp), None, samples,
                                   calib_method=method, per_channel=per_channel, **policy)
            cells.append({"method": method, "samples": samples, "weights": granularity, **asdict(row)})
            lines.append(f"| {method} | {samples} | {granularity} | {metric_cells(row)} | {verdict(row)} |")
            print(lines[-1], flush=True)
        if not args.all_int8:
            lines += broken_calibration_table(deploy, folders, reference, args.target, Path(tmp))
    name = "study_all_int8" if args.all_int8 else "study"
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{name}.json").write_text(json.dumps({"reference_top1": reference.top1, "cells": cells}, indent=2))
    print("\n".join(lines[:2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
