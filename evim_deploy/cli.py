"""``evim-deploy``: info, export, verify, predict (and the commands later modules register)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .backends import BACKENDS, EXPORT_TARGETS, get_backend
from .console import console
from .errors import EvimError, UsageError

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register a sub-command: ``configure`` adds its arguments, the decorated ``run`` returns the exit code."""
    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (configure, run, help)
        return run
    return wrap


def add_model_args(p: argparse.ArgumentParser, resolution: bool = True) -> None:
    p.add_argument("--model", default="m1", help="variant: m1..m4, m1_dist..m4_dist or tiny (default m1)")
    p.add_argument("--checkpoint", type=Path, help="official .pth (model/model_ema), timm or plain state dict")
    p.add_argument("--num-classes", type=int, help="classes of the head (inferred from a checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="random-init seed when there is no checkpoint")
    p.add_argument("--labels", type=Path, help="class names, one per line in class-index order (default: "
                   "ImageNet's for 1000 classes, else class_i)")
    if resolution:
        p.add_argument("--resolution", help="224 or HxW, e.g. 192x320 (default: the variant's)")


def build_model(args: argparse.Namespace):
    """Reference model and deploy input size from the common model arguments."""
    from .model import create_model, get_variant, parse_resolution
    model = create_model(args.model, args.checkpoint, args.num_classes, seed=args.seed,
                         labels=getattr(args, "labels", None))
    if args.checkpoint is None:
        console.print(f"no --checkpoint: random weights (seed {args.seed}); predictions are meaningless", style="yellow")
    size = getattr(args, "resolution", None) or get_variant(args.model).input_size
    return model, parse_resolution(size)


# ----------------------------------------------------------------------------------------------- info
def _configure_info(p: argparse.ArgumentParser) -> None:
    add_model_args(p)


@command("info", "show a variant: params, MACs, input, preprocessing, deploy-form parity", _configure_info)
def run_info(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .model import count_macs, count_params, reparameterize
    from .verify import Metrics
    model, size = build_model(args)
    deploy = reparameterize(model, size)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        parity = Metrics.compare(model(x).numpy(), deploy(x).numpy())
    m = model.manifest.with_input_size(size)
    rows = [("variant", m.variant), ("params", f"{count_params(model):,}"),
            ("MACs", f"{count_macs(model, size) / 1e6:.1f}M at {size[0]}x{size[1]}"),
            ("input", f"1x3x{size[0]}x{size[1]} RGB, NCHW float32"),
            ("preprocess", f"{m.interpolation} resize to {m.resize_size[0]}x{m.resize_size[1]}, centre crop "
                           f"(crop_pct {m.crop_pct}), /255, mean {m.mean}, std {m.std}"),
            ("classes", f"{m.num_classes} ({m.labels[0]}, {m.labels[1]}, ...)"),
            ("source", m.source or f"random init (seed {m.seed})"),
            ("deploy parity", f"max|Δlogit| {parity.max_abs:.2e}, cosine {parity.cosine:.8f}"),
            ("deploy modules", ", ".join(sorted({type(mod).__name__ for mod in deploy.modules()
                                                 if not list(mod.children())})))]
    for key, value in rows:
        print(f"{key:>15}: {value}")
    return 0 if np.isfinite(parity.max_abs) else 1


# --------------------------------------------------------------------------------------------- export
def add_calibration_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", type=Path, help="folder of calibration images (recursive) for INT8")
    p.add_argument("--calib-samples", type=int, default=256, help="images to sample (default 256)")
    p.add_argument("--calib-synthetic", action="store_true", help="calibrate on random data (smoke tests only)")
    p.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"],
                   help="activation ranges (default per target, each the best measured there: onnx minmax, "
                        "tflite percentile; coreml always searches a histogram)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weight scales")


def calibration_options(args: argparse.Namespace) -> dict:
    """INT8 exporter options from the calibration flags; an unset method leaves the target's own default."""
    return {"per_channel": not args.per_tensor, **({"calib_method": args.calib_method} if args.calib_method else {})}


def _configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, choices=[*EXPORT_TARGETS, "all"],
                   help="one target, or all: a folder with every mobile target and precision (--output DIR)")
    add_model_args(p)
    p.add_argument("--precision", help="fp32 | fp16 | int8 (| w8a8 for coreml); default per target")
    p.add_argument("--output", type=Path, help="output file (default <variant>_<precision><suffix>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--no-verify", action="store_true", help="skip the check against the reference")
    p.add_argument("--images", type=Path, help="real images verify judges the file(s) on (default: the bundled "
                   "sample photos; pass held-out images of your own classes)")
    p.add_argument("--fidelity", type=float, help="INT8: keep the fewest layer groups in float that reach this "
                   "logits cosine on the calibration images, e.g. 0.995 (recorded in the manifest)")
    add_calibration_args(p)
    seen = set()
    for spec in BACKENDS.values():
        for flag, kwargs in spec.options:
            if flag not in seen:
                seen.add(flag)
                p.add_argument(flag, **kwargs)


def target_options(args: argparse.Namespace, target: str) -> dict:
    """The target-specific option values (declared in its backend row) from parsed arguments."""
    options = {}
    for flag, kwargs in get_backend(target).options:
        dest = kwargs.get("dest", flag.lstrip("-").replace("-", "_"))
        options[dest] = getattr(args, dest)
    return options


def calibration_for(args: argparse.Namespace, precision: str, manifest):
    if precision not in ("int8", "w8a8") or (args.target == "coreml" and precision == "int8"):
        return None
    from .calibration import resolve_calibration
    return resolve_calibration(args.calib, args.calib_synthetic, manifest, args.calib_samples, args.seed)


@command("export", "export to onnx, coreml, tflite or torch, then verify against the reference", _configure_export)
def run_export(args: argparse.Namespace) -> int:
    if args.target == "all":
        from .cli_bundle import run_bundle_export
        return run_bundle_export(args)
    from .export import export
    from .model import reparameterize
    spec = get_backend(args.target)
    spec.check_installed()
    precision = args.precision or spec.default_precision
    model, size = build_model(args)
    deploy = reparameterize(model, size)
    calibration = calibration_for(args, precision, deploy.manifest)
    start = time.perf_counter()
    path = export(deploy, args.target, args.output, precision, calibration, force=args.force,
                  fidelity=args.fidelity, **calibration_options(args),
                  **target_options(args, args.target))
    console.print(f"wrote {path} ({_size(path)}, {precision}) in {time.perf_counter() - start:.1f}s", style="green")
    if args.no_verify:
        return 0
    return report_verify(path, model, args.images, trained=args.checkpoint is not None)


def _size(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return f"{total / 1e6:.2f} MB"


def report_verify(path: Path, reference, images: Path | None = None, trained: bool = False,
                  json_path: Path | None = None, **runtime_options) -> int:
    from .runtime import load
    from .verify import verify
    with load(path, **runtime_options) as backend:
        report = verify(backend, reference, images, trained=trained)
    console.print(f"verify {path.name}: {report.summary()}", style="green" if report.passed else "bold red")
    for hint in report.hints():
        console.print(f"  hint: {hint}", style="yellow")
    if json_path:
        json_path.write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.passed else 1


# --------------------------------------------------------------------------------------------- verify
def _configure_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path)
    p.add_argument("--checkpoint", type=Path, help="the checkpoint the file was exported from")
    p.add_argument("--images", type=Path, help="folder of real images (default: bundled sample photos)")
    p.add_argument("--trained", action="store_true", help="apply the tighter INT8 bounds for trained weights")
    p.add_argument("--json", type=Path, help="write the report as JSON")
    p.add_argument("--threads", type=int)
    add_kernel_args(p)


def add_kernel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference-kernels", action="store_true",
                   help="tflite: TFLite's reference kernels instead of XNNPACK (slow; a numerics check)")


def runtime_options(args: argparse.Namespace) -> dict:
    """``load()`` options from the runtime arguments of verify and predict."""
    options = {"threads": args.threads}
    if args.reference_kernels:
        from .backends import backend_for_path
        if backend_for_path(args.file).name != "tflite":
            raise UsageError("--reference-kernels applies to .tflite files", "drop it for this file")
        options["reference_kernels"] = True
    return options


@command("verify", "compare an exported file with the PyTorch reference (exit 0 pass, 1 fail, 2 bad input)",
         _configure_verify)
def run_verify(args: argparse.Namespace) -> int:
    from .model import model_from_manifest
    from .runtime import load
    with load(args.file, **runtime_options(args)) as backend:
        manifest = backend.manifest
    reference = model_from_manifest(manifest, args.checkpoint)
    return report_verify(args.file, reference, args.images, args.trained or args.checkpoint is not None,
                         args.json, **runtime_options(args))


# -------------------------------------------------------------------------------------------- predict
def _configure_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--threads", type=int)
    add_kernel_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


@command("predict", "top-k labels with probabilities for images", _configure_predict)
def run_predict(args: argparse.Namespace) -> int:
    from .runtime import load, top_k
    with load(args.file, **runtime_options(args)) as backend:
        logits = backend.predict([str(p) for p in args.images])
        results = top_k(logits, backend.manifest.labels, args.top)
    if args.json:
        print(json.dumps({str(img): [{"label": lab, "probability": p} for lab, p in res]
                          for img, res in zip(args.images, results)}, indent=2))
        return 0
    for img, res in zip(args.images, results):
        print(f"{img}:")
        for label, prob in res:
            print(f"  {prob:7.2%}  {label}")
    return 0


# ----------------------------------------------------------------------------------------------- main
# Modules that register more sub-commands with @command (imported lazily, before parsing).
COMMAND_MODULES: tuple[str, ...] = ("evim_deploy.cli_bench", "evim_deploy.cli_bundle", "evim_deploy.cli_eval")


def build_parser() -> argparse.ArgumentParser:
    import importlib
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="evim-deploy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"evim-deploy {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (configure, _, help_text) in COMMANDS.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except EvimError as err:
        if args.debug:
            raise
        console.print(f"error: {err}", style="bold red", soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        console.print("interrupted: nothing was written", style="bold red")
        return 130
    except Exception as err:  # last resort: one line, the traceback behind --debug
        if args.debug:
            raise
        console.print(f"internal error: {type(err).__name__}: {err} (rerun with --debug for the "
                      "traceback and please report it)", style="bold red", soft_wrap=True)
        return 3


if __name__ == "__main__":  # run through the package module so sub-command modules register with it
    from evim_deploy.cli import main as package_main
    sys.exit(package_main())
