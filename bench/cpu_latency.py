"""CPU latency side by side: batch 1, M1 at 224x224, 2 threads by default. One command:

    .venv/bin/python bench/cpu_latency.py [--model m1] [--threads 2] [--rounds 5]

Rows are measured in interleaved rounds in one process, so the ratios compare like with like.
Prints median ms and the ratio of every row to the fastest.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evim_deploy.benchmark import interleaved  # noqa: E402
from evim_deploy.export import export  # noqa: E402
from evim_deploy.export.onnx import embed_manifest, trace_to_onnx  # noqa: E402
from evim_deploy.model import create_model, reparameterize  # noqa: E402
from evim_deploy.model.randomize import randomize_  # noqa: E402
from evim_deploy.runtime import load  # noqa: E402


def plain_onnx_export(reference: torch.nn.Module, size: tuple[int, int], path: Path) -> Path:
    """What a user gets today: torch.onnx.export of the reference, no reparameterization, no simplification."""
    class Sized(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.input_size = reference, size

        def forward(self, x):
            return self.net(x)

    import onnx
    graph = trace_to_onnx(Sized())
    embed_manifest(graph, reference.manifest.replace(target="onnx", extra={"plain": True}).to_json(), "plain")
    onnx.save(graph, path)
    return path


def build_rows(variant: str, threads: int, workdir: Path) -> dict:
    torch.set_num_threads(threads)
    reference = randomize_(create_model(variant))
    size = reference.manifest.input_size
    deploy = reparameterize(reference, size)
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    xt = torch.from_numpy(x)
    rows = {}

    def torch_row(module):
        def run():
            with torch.inference_mode():
                module(xt)
        return run

    rows["reference eager (torch)"] = torch_row(reference)
    rows["deploy form eager (torch)"] = torch_row(deploy)
    plain = load(plain_onnx_export(reference, size, workdir / "plain.onnx"), threads=threads)
    rows["plain ONNX export of reference (ORT)"] = lambda: plain.predict(x)
    for precision in ("fp32", "fp16"):
        backend = load(export(deploy, "onnx", workdir / f"ours_{precision}.onnx", precision), threads=threads)
        rows[f"evim-deploy ONNX {precision} (ORT)"] = (lambda b: lambda: b.predict(x.astype(b.input_dtype)))(backend)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="m1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = build_rows(args.model, args.threads, Path(tmp))
        timings = interleaved(rows, rounds=args.rounds, iterations=args.iterations)
    best = min(t.median_ms for t in timings.values())
    plain = timings.get("plain ONNX export of reference (ORT)")
    print(f"\n{args.model} batch 1, {args.threads} threads, {os.cpu_count()} cores; "
          f"{args.rounds}x{args.iterations} interleaved samples per row")
    print(f"{'row':<42} {'median ms':>10} {'p90 ms':>8} {'x best':>7} {'plain/row':>10}")
    for name, t in timings.items():
        speedup = f"{plain.median_ms / t.median_ms:>10.2f}" if plain else ""
        print(f"{name:<42} {t.median_ms:>10.2f} {t.p90_ms:>8.2f} {t.median_ms / best:>7.2f} {speedup}")


if __name__ == "__main__":
    main()
