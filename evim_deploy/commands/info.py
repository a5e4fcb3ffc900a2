"""``evim-deploy info``: a variant's parameters, MACs, input, preprocessing and deploy-form parity; or, given
exported files (or a bundle folder), what each holds and what each accelerator would take of it."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..console import console
from ..errors import UsageError
from .common import add_model_args, build_model

if TYPE_CHECKING:
    from rich.table import Table

NAME = "info"
HELP = "show a variant (params, MACs, input, preprocessing, parity), or exported files' ops and accelerator coverage"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, help="exported files or a bundle folder: their ops and the share "
                   "each accelerator (NNAPI/CoreML EP, XNNPACK, Neural Engine) would take")
    add_model_args(p)


def run(args: argparse.Namespace) -> int:
    if args.files:
        console.print(coverage_table({path.name: path for path in exported_files(args.files)}))
        return 0
    return run_variant(args)


def exported_files(paths: list[Path]) -> list[Path]:
    """``paths`` with each folder that is no model (a bundle) replaced by the model files in it."""
    from ..targets import TARGETS
    suffixes = {spec.suffix for spec in TARGETS.values()}
    found = []
    for path in paths:
        if not path.exists():
            raise UsageError(f"model file not found: {path}", "check the path")
        bundle = path.is_dir() and path.suffix not in suffixes
        found += sorted(p for p in path.iterdir() if p.suffix in suffixes) if bundle else [path]
    return found


def coverage_table(files: dict[str, Path], title: str = "accelerator coverage") -> "Table":
    """One row per file: its op count, size, and per accelerator ``taken/total (share), partitions; left ops``."""
    from rich.table import Table

    from ..targets import target_for_path
    table = Table(title=title)
    for name in ("file", "ops", "MB", "accelerators: taken/total, partitions; ops left outside"):
        table.add_column(name, justify="right" if name in ("ops", "MB") else "left")
    for label, path in files.items():
        summary = target_for_path(path).summary(path)
        table.add_row(label, f"{summary.count} {summary.unit}", f"{summary.bytes / 1e6:.2f}",
                      "\n".join(c.line(top=3) for c in summary.coverage) or "-")
    return table


def run_variant(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..model import count_macs, count_params, reparameterize
    from ..verify import Metrics
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
