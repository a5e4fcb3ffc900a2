"""``make fidelity``: the trained fixtures through every target x precision; accuracy and agreement with fp32.

    .venv/bin/python bench/fidelity.py [--fixtures tiny m1_scenes] [--targets onnx tflite] [--out out/fidelity]

Two fixtures (``evim_deploy.testing``): ``tiny`` trained on scikit-learn's digits (64x64, 360 held-out images),
and ``m1_scenes``, the full-size M1 at 224x224 trained on digit scenes (500 held-out scenes). Every file
is exported through the public API (INT8 calibrated on 256 images of the fixture's calibration folder; for
``tiny`` with ``--fidelity 0.997`` where the target supports mixed precision, for ``m1_scenes`` with the
target's default float policy unless ``--scenes-fidelity`` is given), then run on the held-out images.
A file misses its target when its top-1 drops more than 0.5 point below the fp32 reference, or when
its logits fail ``verify``'s bounds for trained weights (INT8: cosine >= 0.995, top-1 agreement >= 99%).
Exit status 1 on any miss or failed export; rows whose runtime cannot run here are listed with the reason.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evim_deploy.calibration import load_calibration
from evim_deploy.errors import EvimError, TargetUnavailableError
from evim_deploy.evaluate import EvalResult, evaluate_file, evaluate_reference
from evim_deploy.files import artifact_megabytes
from evim_deploy.model import reparameterize
from evim_deploy.preprocess import list_images, preprocess
from evim_deploy.quantize.fidelity import export_with_fidelity
from evim_deploy.targets import TARGETS, export, get_target, load
from evim_deploy.testing import scenes_trained_model, write_scene_folders
from evim_deploy.testing.train_fixture import trained_model, write_image_folders
from evim_deploy.verify import (Metrics, check, float64_reference, needs_float64, own_draws, reference_logits,
                                thresholds_for)

MAX_ACCURACY_DROP = 0.005  # the floor: at most 0.5 point of top-1 below fp32
EXACT_IMAGES = 64  # fp32 files are judged against float64 on the first 64 held-out images, as verify does
FIXTURES = {"tiny": (trained_model, write_image_folders, "digits"),               # reference, folders, sub-folder
            "m1_scenes": (scenes_trained_model, write_scene_folders, "scenes")}


@dataclass
class Row:
    """One exported file of the fixture and how it did on the held-out split."""

    target: str
    precision: str
    status: str                       # pass | MISS | FAILED | not run
    top1: float | None = None
    top5: float | None = None
    drop: float | None = None
    agreement: float | None = None
    cosine: float | None = None
    min_cosine: float | None = None
    megabytes: float | None = None
    seconds: float | None = None
    float_groups: list[str] = field(default_factory=list)     # every group the file keeps float (its manifest)
    fidelity_groups: list[str] = field(default_factory=list)  # those of them --fidelity added to the policy
    notes: list[str] = field(default_factory=list)


def fixture(out: Path, name: str = "tiny"):
    """The trained reference of fixture ``name``, its image folders and its fp32 held-out result."""
    make_model, write_folders, folder = FIXTURES[name]
    folders = write_folders(out / folder)
    reference = make_model()
    return reference, folders, evaluate_reference(reference, folders["heldout"])


def judge(path: Path, folders: dict[str, Path], reference: EvalResult, target: str, precision: str,
          seconds: float, exact: Callable[[], tuple[np.ndarray, list[np.ndarray]]] | None = None) -> Row:
    """Evaluate ``path`` on the held-out split and hold it to the fidelity bounds (``exact``: see
    :func:`exact_logits`, for the bounds judged against float64)."""
    result = evaluate_file(path, folders["heldout"])
    metrics = Metrics.compare(reference.logits, result.logits)
    manifest = _manifest(path)
    if exact is not None and needs_float64(thresholds_for(manifest, trained=True)):
        first = Metrics.compare(reference.logits[:EXACT_IMAGES], result.logits[:EXACT_IMAGES], *exact())
        metrics = dataclasses.replace(metrics, float64_max_abs=first.float64_max_abs, own_max_abs=first.own_max_abs,
                                      scale=first.scale)
    row = Row(target, precision, "pass", result.top1, result.top5, reference.top1 - result.top1, metrics.top1,
              metrics.cosine, metrics.min_cosine, artifact_megabytes(path), seconds,
              list(manifest.extra.get("float_groups", [])),
              list(manifest.extra.get("fidelity", {}).get("float_groups", [])))
    row.notes = check(metrics, thresholds_for(manifest, trained=True), "held-out")
    if row.drop > MAX_ACCURACY_DROP:
        row.notes.append(f"top-1 drop {row.drop:.2%} > {MAX_ACCURACY_DROP:.1%}")
    row.status = "MISS" if row.notes else "pass"
    return row


def _manifest(path: Path):
    with load(path) as runtime:
        return runtime.manifest


_EXACT: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}


def exact_logits(deploy, heldout: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """``deploy``'s float64 logits and PyTorch fp32's own re-draws on the first :data:`EXACT_IMAGES` held-out
    images (the order ``evaluate`` reads them in); computed once per model."""
    if id(deploy) not in _EXACT:
        x = np.stack([preprocess(f, deploy.manifest) for f in list_images(heldout)[:EXACT_IMAGES]])
        _EXACT[id(deploy)] = reference_logits(float64_reference(deploy), x), own_draws(deploy, x)
    return _EXACT[id(deploy)]


def export_and_judge(deploy, folders, reference: EvalResult, target: str, precision: str, workdir: Path,
                     fidelity: float | None, calib_samples: int = 256, calibration=None, **options) -> Row:
    """Export one target x precision of the fixture and judge it; failures become rows, not exceptions.

    INT8 calibrates on ``calib_samples`` images of the fixture's calibration folder unless ``calibration``
    (a ``CalibrationSet``) is given.
    """
    spec = get_target(target)
    calibrated = spec.needs_calibration(precision)
    if calibrated and calibration is None:
        calibration = load_calibration(folders["calib"], deploy.manifest, calib_samples)
    path = workdir / f"{deploy.manifest.variant}_{precision}{spec.suffix}"
    start = time.perf_counter()
    try:
        if calibrated and fidelity is not None and spec.mixed_precision:
            export_with_fidelity(deploy, target, path, precision, calibration, fidelity, force=True, **options)
        else:
            export(deploy, target, path, precision, calibration, force=True, **options)
        return judge(path, folders, reference, target, precision, time.perf_counter() - start,
                     lambda: exact_logits(deploy, folders["heldout"]))
    except TargetUnavailableError as err:
        return Row(target, precision, "not run", notes=[str(err)])
    except (EvimError, RuntimeError, ValueError, TypeError) as err:  # a broken exporter is a miss, reported
        return Row(target, precision, "FAILED", notes=[f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"])


METRIC_COLUMNS = "top-1 | Δ top-1 (pt) | top-1 agreement | cosine (mean / min)"


def metric_cells(row: Row) -> str:
    """The four accuracy/fidelity cells of a judged row (blank for a row that did not run)."""
    if row.top1 is None:
        return " | | | "
    return (f"{row.top1:.2%} | {0.0 - row.drop * 100:+.2f} | {row.agreement:.2%} | "
            f"{row.cosine:.5f} / {row.min_cosine:.5f}")


def verdict(row: Row) -> str:
    return row.status + (f": {'; '.join(row.notes)}" if row.notes else "")


def table(rows: list[Row], reference: EvalResult, name: str = "tiny") -> str:
    lines = [f"`{name}`: fp32 reference (PyTorch): top-1 {reference.top1:.2%}, top-5 {reference.top5:.2%} on "
             f"{reference.samples} held-out images", "",
             f"| target | precision | {METRIC_COLUMNS} | top-5 | MB | kept float | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        extra = f"{r.top5:.2%} | {r.megabytes:.2f} | {_float_cell(r)}" if r.top1 is not None else " | | "
        lines.append(f"| {r.target} | {r.precision} | {metric_cells(r)} | {extra} | {verdict(r)} |")
    return "\n".join(lines)


def _float_cell(row: Row) -> str:
    cell = ", ".join(g for g in row.float_groups if g not in row.fidelity_groups) or "-"
    return cell + (f" + layers {', '.join(row.fidelity_groups)}" if row.fidelity_groups else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", nargs="+", choices=list(FIXTURES), default=list(FIXTURES))
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--precisions", nargs="+", help="only these precisions (default: every one a target has)")
    parser.add_argument("--fidelity", type=float, default=0.997,
                        help="INT8 mixed-precision target cosine on the calibration images (default 0.997: they "
                             "are training images, where the cosine runs above the held-out one; docs/int8.md)")
    parser.add_argument("--scenes-fidelity", type=float, help="the same for m1_scenes (default: the target's policy)")
    parser.add_argument("--out", type=Path, default=Path("out/fidelity"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    texts, results = [], {}
    for name in args.fixtures:
        reference, rows = run_fixture(name, args, args.scenes_fidelity if name == "m1_scenes" else args.fidelity)
        texts.append(table(rows, reference, name))
        results[name] = {"reference": {"top1": reference.top1, "top5": reference.top5},
                         "rows": [asdict(r) for r in rows]}
    text = "\n\n".join(texts)
    print(text)
    (args.out / "fidelity.md").write_text(text + "\n")
    (args.out / "fidelity.json").write_text(json.dumps(results, indent=2))
    return 1 if any(r["status"] in ("MISS", "FAILED") for f in results.values() for r in f["rows"]) else 0


def run_fixture(name: str, args: argparse.Namespace, fidelity: float | None) -> tuple[EvalResult, list[Row]]:
    """Every target x precision of fixture ``name``, judged on its held-out folder."""
    reference_model, folders, reference = fixture(args.out, name)
    deploy = reparameterize(reference_model, reference_model.manifest.input_size)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for target in args.targets:
            spec = TARGETS[target]
            missing = spec.missing_modules()
            for precision in spec.precisions:
                if args.precisions and precision not in args.precisions:
                    continue
                if missing:
                    rows.append(Row(target, precision, "not run", notes=[f"{missing[0]} not installed "
                                                                         f"(pip install 'evim-deploy[{spec.extra}]')"]))
                    continue
                rows.append(export_and_judge(deploy, folders, reference, target, precision, Path(tmp), fidelity))
                print(f"{name} {target:>10} {precision:<5} {rows[-1].status}", file=sys.stderr, flush=True)
    return reference, rows


if __name__ == "__main__":
    sys.exit(main())
