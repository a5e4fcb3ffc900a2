"""``evim-deploy eval``: top-1/top-5 of an exported file or of the reference on a labelled folder."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..console import console
from ..errors import UsageError
from .common import add_model_args, build_model

NAME = "eval"
HELP = "top-1/top-5 accuracy of an exported file (or the reference) on a labelled image folder"


def configure(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    from ..evaluate import agreement, evaluate_file, evaluate_reference
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
            result.agreement = agreement(reference_logits(args), result.logits)
    console.print(f"{result.model} ({result.target} {result.precision}) on {args.data}: classes by {result.mapping}",
                  style="dim")
    print(f"{result.model}: {result.summary()}")
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0


def reference_logits(args: argparse.Namespace) -> np.ndarray:
    """The reference's logits on the same images, rebuilt from the file's manifest."""
    from ..evaluate import evaluate_reference
    from ..model import model_from_manifest
    from ..targets import load
    with load(args.file, threads=args.threads) as runtime:
        manifest = runtime.manifest
    reference = model_from_manifest(manifest, args.checkpoint)
    return evaluate_reference(reference, args.data, args.label_map, manifest.input_size, args.limit).logits
