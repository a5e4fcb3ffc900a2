"""``evim-deploy predict``: top-k labels with probabilities for images."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_runtime_options, runtime_options

NAME = "predict"
HELP = "top-k labels with probabilities for images"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--top", type=int, default=5)
    add_runtime_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from ..runtime import top_k
    from ..targets import load
    with load(args.file, **runtime_options(args, args.file)) as runtime:
        logits = runtime.predict([str(p) for p in args.images])
        results = top_k(logits, runtime.manifest.labels, args.top)
    if args.json:
        print(json.dumps({str(img): [{"label": lab, "probability": p} for lab, p in res]
                          for img, res in zip(args.images, results)}, indent=2))
        return 0
    for img, res in zip(args.images, results):
        print(f"{img}:")
        for label, prob in res:
            print(f"  {prob:7.2%}  {label}")
    return 0
