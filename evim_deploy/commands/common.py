"""Argument builders and helpers the sub-commands share. Every per-target flag comes from the target table."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..console import console
from ..errors import UsageError
from ..targets import CALIB_METHODS, TARGETS, Option, TargetSpec, get_target, target_for_path

if TYPE_CHECKING:
    import torch

    from ..bundle import Bundle
    from ..calibration import CalibrationSet
    from ..manifest import Manifest


# ------------------------------------------------------------------------------------------------ model
def add_model_args(p: argparse.ArgumentParser, resolution: bool = True) -> None:
    p.add_argument("--model", default="m1", help="variant: m1..m4, m1_dist..m4_dist or tiny (default m1)")
    p.add_argument("--checkpoint", type=Path, help="official .pth (model/model_ema), timm or plain state dict")
    p.add_argument("--num-classes", type=int, help="classes of the head (inferred from a checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="random-init seed when there is no checkpoint")
    p.add_argument("--labels", type=Path, help="class names, one per line in class-index order (default: "
                   "ImageNet's for 1000 classes, else class_i)")
    if resolution:
        p.add_argument("--resolution", help="224 or HxW, e.g. 192x320 (default: the variant's)")


def build_model(args: argparse.Namespace) -> "tuple[torch.nn.Module, tuple[int, int]]":
    """Reference model and deploy input size from the common model arguments."""
    from ..model import create_model, get_variant, parse_resolution
    model = create_model(args.model, args.checkpoint, args.num_classes, seed=args.seed,
                         labels=getattr(args, "labels", None))
    if args.checkpoint is None:
        console.print(f"no --checkpoint: random weights (seed {args.seed}); predictions are meaningless",
                      style="yellow")
    size = getattr(args, "resolution", None) or get_variant(args.model).input_size
    return model, parse_resolution(size)


# ------------------------------------------------------------------------------------------ calibration
def _calib_method_help() -> str:
    """Each INT8 target's default calibration method, from the table."""
    calibrated = [spec for spec in TARGETS.values() if spec.calibrated]
    methods = ", ".join(f"{s.name} {s.default_calib_method}" for s in calibrated if s.default_calib_method)
    own = [s.name for s in calibrated if s.default_calib_method is None]
    rest = f"; {', '.join(own)} {'uses its' if len(own) == 1 else 'use their'} own method" if own else ""
    return f"activation ranges (default per target, each the best measured there: {methods}{rest})"


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """``--calib*``, ``--per-tensor`` and ``--float-groups``: what every INT8 export takes."""
    from ..quantize.groups import ALIASES, NAMED_GROUPS
    p.add_argument("--calib", type=Path, help="folder of calibration images (recursive) for INT8")
    p.add_argument("--calib-samples", type=int, default=256, help="images to sample (default 256)")
    p.add_argument("--calib-synthetic", action="store_true", help="calibrate on random data (smoke tests only)")
    p.add_argument("--calib-method", choices=CALIB_METHODS, help=_calib_method_help())
    p.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weight scales")
    p.add_argument("--float-groups", dest="float_groups", nargs="*", metavar="GROUP",
                   help=f"INT8: layer groups kept in float, named ({', '.join([*NAMED_GROUPS, *ALIASES])}) or "
                        "of the model (e.g. stages.0.1.mixer); default: the target's policy; the flag alone gives "
                        "full integer")


def calibration_options(args: argparse.Namespace) -> dict[str, Any]:
    """INT8 exporter options from the calibration flags; an unset method or float-group list leaves the
    target's own default."""
    options: dict[str, Any] = {"per_channel": not args.per_tensor, "float_groups": args.float_groups}
    if args.calib_method:
        options["calib_method"] = args.calib_method
    return options


def calibration_for(args: argparse.Namespace, spec: TargetSpec, precision: str,
                    manifest: "Manifest") -> "CalibrationSet | None":
    """The calibration set of ``--calib``/``--calib-synthetic`` when ``precision`` quantizes activations."""
    if not spec.needs_calibration(precision):
        return None
    from ..calibration import resolve_calibration
    return resolve_calibration(args.calib, args.calib_synthetic, manifest, args.calib_samples, args.seed)


# ----------------------------------------------------------------------------------------- target flags
def _add_options(p: argparse.ArgumentParser, options: Iterable[Option], **override: Any) -> None:
    """Add each flag once (targets may share one)."""
    seen: set[str] = set()
    for option in options:
        if option.flag not in seen:
            seen.add(option.flag)
            p.add_argument(option.flag, **{**option.kwargs, **override})


def add_target_options(p: argparse.ArgumentParser) -> None:
    """Every target's export flags (:attr:`TargetSpec.options`)."""
    _add_options(p, (o for spec in TARGETS.values() for o in spec.options))


def target_options(args: argparse.Namespace, target: str) -> dict[str, Any]:
    """The values of ``target``'s export flags from parsed arguments."""
    return {option.dest: getattr(args, option.dest) for option in get_target(target).options}


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """``--threads`` and every target's runtime flags (:attr:`TargetSpec.runtime_options`); unset flags are None."""
    p.add_argument("--threads", type=int)
    _add_options(p, (o for spec in TARGETS.values() for o in spec.runtime_options), default=None)


def runtime_options(args: argparse.Namespace, path: str | Path) -> dict[str, Any]:
    """``load()`` options for ``path``; a runtime flag its target does not declare is a one-line error."""
    options: dict[str, Any] = {"threads": args.threads}
    declared = {o.dest: o for spec in TARGETS.values() for o in spec.runtime_options}
    for dest, option in declared.items():
        if getattr(args, dest, None) is None:
            continue
        if dest not in {o.dest for o in target_for_path(path).runtime_options}:
            suffixes = "/".join(s.suffix for s in TARGETS.values() if dest in {o.dest for o in s.runtime_options})
            raise UsageError(f"{option.flag} applies to {suffixes} files", "drop it for this file")
        options[dest] = getattr(args, dest)
    return options


# --------------------------------------------------------------------------------------------- reports
def report_verify(path: Path, reference: "torch.nn.Module", images: Path | None = None, trained: bool = False,
                  json_path: Path | None = None, **load_options: Any) -> int:
    """Verify ``path`` against ``reference``, print the verdict and hints; exit code 0 pass, 1 fail."""
    from ..targets import load
    from ..verify import verify
    with load(path, **load_options) as runtime:
        report = verify(runtime, reference, images, trained=trained)
    console.print(f"verify {path.name}: {report.summary()}", style="green" if report.passed else "bold red")
    for hint in report.hints():
        console.print(f"  hint: {hint}", style="yellow")
    for warning in report.warnings:
        console.print(f"  warning: {warning}", style="bold yellow")
    if json_path:
        json_path.write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.passed else 1


def print_bundle(bundle: "Bundle", timings: dict[str, float | str] | None = None) -> None:
    """The bundle's table: per file its size, verdict, worst cosine and max|Δ|, top-1 and latency."""
    from rich.table import Table
    from rich.text import Text
    table = Table(title=f"{bundle.path}  ({bundle.manifest['variant']}, "
                        f"{bundle.manifest['input_size'][0]}x{bundle.manifest['input_size'][1]})",
                  caption=None if bundle.top1_judged else "top-1: reported, not judged (random weights)")
    for name in ("file", "target", "precision", "size MB", "verify", "cosine", "max|Δ|", "top-1", "median ms"):
        table.add_column(name, justify="right" if name not in ("file", "target", "precision", "verify") else "left")
    for f in bundle.files:
        metrics = (f.verify or {}).get("metrics", {})
        worst = min(metrics.values(), key=lambda m: m["cosine"]) if metrics else None
        ms = (timings or {}).get(f.file)
        table.add_row(f.file, f.target, f.precision, f"{f.bytes / 1e6:.2f}",
                      Text(f.status, style=None if f.status == "PASS" else "red"),
                      f"{worst['cosine']:.6f}" if worst else "", f"{worst['max_abs']:.1e}" if worst else "",
                      f"{min(m['top1'] for m in metrics.values()):.0%}" if worst else "",
                      ms if isinstance(ms, str) else f"{ms:.2f}" if ms else "")
    console.print(table)
    for f in bundle.files:
        for hint in (f.verify or {}).get("hints", []):
            console.print(f"  {f.file}: {hint}", style="yellow")
