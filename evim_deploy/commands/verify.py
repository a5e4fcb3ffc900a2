"""``evim-deploy verify``: an exported file against the PyTorch reference it was exported from."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_runtime_options, report_verify, runtime_options

NAME = "verify"
HELP = "compare an exported file with the PyTorch reference (exit 0 pass, 1 fail, 2 bad input)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path)
    p.add_argument("--checkpoint", type=Path, help="the checkpoint the file was exported from")
    p.add_argument("--images", type=Path, help="folder of real images (default: bundled sample photos)")
    p.add_argument("--trained", action="store_true", help="apply the tighter INT8 bounds for trained weights")
    p.add_argument("--json", type=Path, help="write the report as JSON")
    add_runtime_options(p)


def run(args: argparse.Namespace) -> int:
    from ..model import model_from_manifest
    from ..targets import load
    options = runtime_options(args, args.file)
    with load(args.file, **options) as runtime:
        manifest = runtime.manifest
    reference = model_from_manifest(manifest, args.checkpoint)
    return report_verify(args.file, reference, args.images, args.trained or args.checkpoint is not None,
                         args.json, **options)
