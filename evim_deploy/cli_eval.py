"""``evim-deploy eval``: top-1/top-5 of an exported file or of the reference on a labelled folder."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import add_model_args, build_model, calibration_options, command
from .console import console
from .errors import UsageError


def _configure_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, nargs="?", help="exported file; omit it to evaluate the reference "
                   "(--model/--checkpoint)")
    p.add_argument("--data", type=Path, required=True, help="labelled folder, one sub-folder of images per class")
    p.add_argument("--label-map", type=Path, help="JSON {folder: index|label}, or text: line i = folder of class i")
    p.add_argument("--json", type=Path, help="write the summary as JSON")
    p.add_argument("--agreement", action="store_true", help="also run the reference the file was exported from "
                   "(--checkpoint if it had one): top-1 agreement and logits cosine on the same images")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--threads", type=int)
    add_model_args(p)


@command("eval", "top-1/top-5 accuracy of an exported file (or the reference) on a labelled image folder",
         _configure_eval)
def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import agreement, evaluate_file, evaluate_reference
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}", "pass a positive number")
    if args.file is None:
        if args.agreement:
            raise UsageError("--agreement compares a file with its reference", "pass the exported FILE")
        model, size = build_model(args)
        result = evaluate_reference(model, args.data, args.label_map, size, args.limit)
    else:
        result = evaluate_file(args.file, args.data, args.label_map, args.threads, args.limit)
        if args.agreement:
            result.agreement = agreement(_reference_logits(args), result.logits)
    console.print(f"{result.model} ({result.target} {result.precision}) on {args.data}: classes by {result.mapping}",
                  style="dim")
    print(f"{result.model}: {result.summary()}")
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0


def _reference_logits(args: argparse.Namespace):
    """The reference's logits on the same images, rebuilt from the file's manifest."""
    from .evaluate import evaluate_reference
    from .model import model_from_manifest
    from .runtime import load
    with load(args.file, threads=args.threads) as backend:
        manifest = backend.manifest
    reference = model_from_manifest(manifest, args.checkpoint)
    return evaluate_reference(reference, args.data, args.label_map, manifest.input_size, args.limit).logits


# ------------------------------------------------------------------------------------------ quantize-report
def _configure_report(p: argparse.ArgumentParser) -> None:
    from .backends import EXPORT_TARGETS
    from .cli import add_calibration_args
    from .quantize_report import MODES
    p.add_argument("file", type=Path, nargs="?", help="an exported file: its target, model and input size are "
                   "used (--checkpoint if it came from one); omit it to use --model/--checkpoint")
    p.add_argument("--target", choices=EXPORT_TARGETS, help="backend to quantize for (default: the file's, or onnx)")
    p.add_argument("--precision", help="int8 (default; w8a8 for coreml)")
    p.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES),
                   help="alone: only this group int8; keep: all but this group int8 (default both)")
    p.add_argument("--fidelity", type=float, help="also find the fewest float groups that reach this cosine")
    p.add_argument("--plot", type=Path, default=Path("quantize_report.png"), help="ranking plot (PNG)")
    p.add_argument("--json", type=Path, help="write the ranking as JSON")
    add_model_args(p)
    add_calibration_args(p)


@command("quantize-report", "per-layer-group INT8 sensitivity: rank groups by logits cosine and top-1 agreement",
         _configure_report)
def run_quantize_report(args: argparse.Namespace) -> int:
    from .calibration import resolve_calibration
    from .model import reparameterize
    from .quantize_report import Scorer, choose_float_groups, plot_ranking, print_report, sensitivity, write_json
    model, size, target = _report_model(args)
    deploy = reparameterize(model, size)
    precision = args.precision or ("w8a8" if target == "coreml" else "int8")
    calibration = resolve_calibration(args.calib, args.calib_synthetic, deploy.manifest, args.calib_samples, args.seed)
    scorer = Scorer(deploy, target, precision, calibration, **calibration_options(args))
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


def _report_model(args: argparse.Namespace):
    """(reference, input size, target) from FILE or from the model arguments."""
    from .backends import backend_for_path
    from .model import model_from_manifest
    from .runtime import load
    if args.file is None:
        model, size = build_model(args)
        return model, size, args.target or "onnx"
    with load(args.file) as backend:
        manifest = backend.manifest
    return (model_from_manifest(manifest, args.checkpoint), tuple(manifest.input_size),
            args.target or backend_for_path(args.file).name)
