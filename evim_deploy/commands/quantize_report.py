"""``evim-deploy quantize-report``: per-layer-group INT8 sensitivity, ranked by logits cosine."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..console import console
from ..targets import TARGETS, TargetSpec, get_target, ranking_target, target_for_path
from .common import add_calibration_args, add_model_args, build_model, calibration_options

NAME = "quantize-report"
HELP = "per-layer-group INT8 sensitivity: rank groups by logits cosine and top-1 agreement"


def configure(p: argparse.ArgumentParser) -> None:
    from ..quantize.sensitivity import MODES
    int8 = ", ".join(f"{name} {spec.int8_precision}" for name, spec in TARGETS.items() if spec.mixed_precision)
    p.add_argument("file", type=Path, nargs="?", help="an exported file: its target, model and input size are "
                   "used (--checkpoint if it came from one); omit it to use --model/--checkpoint")
    p.add_argument("--target", choices=list(TARGETS),
                   help=f"target to quantize for (default: the file's, or {ranking_target().name})")
    p.add_argument("--precision", help=f"default: the target's fully quantized precision ({int8})")
    p.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES),
                   help="alone: only this group int8; keep: all but this group int8 (default both)")
    p.add_argument("--fidelity", type=float, help="also find the fewest float groups that reach this cosine")
    p.add_argument("--plot", type=Path, default=Path("quantize_report.png"), help="ranking plot (PNG)")
    p.add_argument("--json", type=Path, help="write the ranking as JSON")
    add_model_args(p)
    add_calibration_args(p)


def run(args: argparse.Namespace) -> int:
    from ..calibration import resolve_calibration
    from ..model import reparameterize
    from ..quantize.fidelity import choose_float_groups
    from ..quantize.sensitivity import Scorer, plot_ranking, print_report, sensitivity, write_json
    model, size, spec = report_model(args)
    deploy = reparameterize(model, size)
    precision = args.precision or spec.int8_precision
    calibration = resolve_calibration(args.calib, args.calib_synthetic, deploy.manifest, args.calib_samples, args.seed)
    options = calibration_options(args)
    base = options.pop("float_groups")  # what every candidate keeps float (default: the target's policy)
    scorer = Scorer(deploy, spec.name, precision, calibration, base_float_groups=base, **options)
    report = sensitivity(scorer, args.mode)
    print_report(report)
    console.print(f"plot: {plot_ranking(report, args.plot)}")
    if args.json:
        write_json(report, args.json)
    if args.fidelity is not None:
        choice = choose_float_groups(scorer, args.fidelity)
        print(f"fidelity {args.fidelity}: float groups {', '.join(choice.float_groups) or '(none)'} -> cosine "
              f"{choice.score.cosine:.5f}, top-1 agreement {choice.score.top1:.2%}")
    return 0


def report_model(args: argparse.Namespace):
    """(reference, input size, target spec) from FILE or from the model arguments."""
    from ..model import model_from_manifest
    from ..targets import load
    if args.file is None:
        model, size = build_model(args)
        return model, size, get_target(args.target) if args.target else ranking_target()
    with load(args.file) as runtime:
        manifest = runtime.manifest
    spec: TargetSpec = get_target(args.target) if args.target else target_for_path(args.file)
    return model_from_manifest(manifest, args.checkpoint), tuple(manifest.input_size), spec
