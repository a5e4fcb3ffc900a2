"""``evim-deploy export``: one target (then verify), or ``--target all``: the verified mobile bundle."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..console import console
from ..errors import UsageError
from ..targets import TARGETS, get_target, mobile_targets
from .common import (add_calibration_args, add_model_args, add_target_options, build_model, calibration_for,
                     calibration_options, print_bundle, report_verify, target_options)

NAME = "export"
HELP = f"export to {', '.join(list(TARGETS)[:-1])} or {list(TARGETS)[-1]}, then verify against the reference"
QUIET = True  # converters' log noise stays off the terminal (--debug shows it)
ALL = "all"


def configure(p: argparse.ArgumentParser) -> None:
    precisions = dict.fromkeys(p for spec in TARGETS.values() for p in spec.precisions)
    p.add_argument("--target", required=True, choices=[*TARGETS, ALL],
                   help="one target, or all: a folder with every mobile target and precision (--output DIR)")
    add_model_args(p)
    p.add_argument("--precision", help=f"{' | '.join(precisions)} (what the target writes); default per target; "
                   "with --target all, a comma list (default: every one)")
    p.add_argument("--output", type=Path, help="output file (default <variant>_<precision><suffix>)")
    p.add_argument("--force", action="store_true", help="replace an earlier output of evim-deploy (a file, package "
                   "or bundle folder); anything else in the way is never deleted")
    p.add_argument("--no-verify", action="store_true", help="skip the check against the reference")
    p.add_argument("--images", type=Path, help="real images verify judges the file(s) on (default: the bundled "
                   "sample photos; pass held-out images of your own classes)")
    p.add_argument("--fidelity", type=float, help="INT8: keep the fewest layer groups in float that reach this "
                   "logits cosine on the calibration images, e.g. 0.995 (recorded in the manifest)")
    add_calibration_args(p)
    add_target_options(p)


def run(args: argparse.Namespace) -> int:
    if args.target == ALL:
        return run_bundle(args)
    from ..model import reparameterize
    from ..targets import export
    spec = get_target(args.target)
    spec.check_installed()
    precision = args.precision or spec.default_precision
    model, size = build_model(args)
    deploy = reparameterize(model, size)
    calibration = calibration_for(args, spec, precision, deploy.manifest)
    options = {**calibration_options(args), **target_options(args, spec.name)}
    start = time.perf_counter()
    if args.fidelity is None:
        path = export(deploy, spec.name, args.output, precision, calibration, force=args.force, **options)
    else:
        from ..quantize.fidelity import export_with_fidelity
        path = export_with_fidelity(deploy, spec.name, args.output, precision, calibration, args.fidelity,
                                    force=args.force, **options)
    console.print(f"wrote {path} ({_megabytes(path)}, {precision}) in {time.perf_counter() - start:.1f}s",
                  style="green")
    if args.no_verify:
        return 0
    return report_verify(path, model, args.images, trained=args.checkpoint is not None)


def _megabytes(path: Path) -> str:
    from ..files import artifact_megabytes
    return f"{artifact_megabytes(path):.2f} MB"


def run_bundle(args: argparse.Namespace) -> int:
    """``export --target all --output DIR``: every mobile target x precision, verified and documented."""
    from ..bundle import build_bundle, plan
    from ..files import refuse_existing
    from ..model import reparameterize
    if args.output is None:
        raise UsageError("--target all writes a folder", "pass --output DIR")
    refuse_existing(args.output, args.force, bundle=True)  # before any work; checked again at the rename
    targets = mobile_targets()
    precisions = [p for p in (args.precision or "").split(",") if p] or None
    model, size = build_model(args)
    deploy = reparameterize(model, size)
    calibration = None
    if any(get_target(t).needs_calibration(p) for t, p in plan(targets, precisions)):
        from ..calibration import resolve_calibration
        if args.calib is None and not args.calib_synthetic:
            raise UsageError("the bundle includes INT8 files, which need calibration images",
                             "pass --calib DIR, or --precision fp32,fp16 for float files only")
        calibration = resolve_calibration(args.calib, args.calib_synthetic, deploy.manifest, args.calib_samples,
                                          args.seed)
    options = {t: {**target_options(args, t), **calibration_options(args)} for t in targets}
    bundle = build_bundle(model, deploy, args.output, targets, precisions, calibration, force=args.force,
                          trained=args.checkpoint is not None, options=options, images=args.images)
    print_bundle(bundle)
    return 0 if bundle.passed else 1
