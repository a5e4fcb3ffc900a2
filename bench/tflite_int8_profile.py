"""TFLite INT8 policies side by side: size, what stays float, XNNPACK coverage, accuracy and latency. One command:

    .venv/bin/python bench/tflite_int8_profile.py [--policies default full residual ...] [--calib 256]
                                                  [--threads 2] [--rounds 7] [--iterations 30]
                                                  [--json PATH] [--workdir DIR]

Model: the trained full-size M1 fixture (:mod:`evim_deploy.testing.scenes`, 224x224, 10 classes), INT8
calibrated on its calibration scenes and judged on its held-out scenes (other pictures); without its
checkpoint, random-weight M1 calibrated on scikit-image photos (accuracy columns are then left out).
A policy is ``default`` (the target's own), ``full`` (``--float-groups`` alone) or groups of
:mod:`evim_deploy.quantize.groups` joined by ``+`` (``stem_input+head``). Each row:

* file size and its ratio to the fp32 file, bytes of float weights left, XNNPACK partitions and the ops
  XNNPACK leaves to TFLite's own kernels (:meth:`TFLiteRuntime.delegation`);
* top-1, its drop, top-1 agreement and logits cosine (mean / min) against the fp32 reference, and the
  trained bounds (cosine >= 0.995, agreement >= 99 %, drop <= 0.5 pt);
* latency: interleaved medians at ``--threads`` (wall clock), and the CPU time of one thread, which
  other processes on the machine disturb less. Ratios are against the fp32 file of the same run.

LiteRT's Python wheel has no op profiler (``benchmark_model --enable_op_profiling`` is not shipped), and timing
prefixes of the graph does not add up (XNNPACK fuses across the cut): the coverage columns say where the time
goes wrong, and ``evim-deploy bench --device adb:SERIAL`` runs ``benchmark_model`` on a phone.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from evim_deploy.benchmark import interleaved
from evim_deploy.benchmark.machine import machine_info
from evim_deploy.calibration import load_calibration
from evim_deploy.formats.tflite import float_weights
from evim_deploy.model import reparameterize
from evim_deploy.preprocess import list_images, preprocess
from evim_deploy.targets import export, load

BOUNDS = {"cosine": 0.995, "agreement": 0.99, "drop": 0.005}


def fixture(workdir: Path):
    """(reference, deploy form, calibration folder, held-out images and labels or None, description)."""
    import torch
    from evim_deploy.testing import scenes
    if scenes.CHECKPOINT.exists():
        folders = scenes.write_image_folders(workdir / "scenes")
        reference = scenes.trained_model()
        deploy = reparameterize(reference, (scenes.INPUT_SIDE,) * 2)
        files = list_images(folders["heldout"])
        x = np.stack([preprocess(p, deploy.manifest) for p in files]).astype(np.float32)
        labels = np.array([int(Path(p).parent.name) for p in files])
        with torch.no_grad():
            logits = np.concatenate([deploy(torch.from_numpy(x[i:i + 50])).numpy() for i in range(0, len(x), 50)])
        return deploy, folders["calib"], (x, labels, logits), "trained M1 digit scenes (evim_deploy.testing.scenes)"
    from evim_deploy.testing import deploy_model, disjoint_calibration_photos
    return (deploy_model("m1", (224, 224)), disjoint_calibration_photos(workdir / "calib"), None,
            "random-weight M1 (no trained checkpoint): accuracy not judged")


def policy_groups(policy: str) -> list[str] | None:
    return None if policy == "default" else [] if policy == "full" else policy.split("+")


def judge(runtime, heldout) -> dict:
    x, labels, reference = heldout
    logits = runtime.run_nchw(x)
    cosine = np.sum(logits * reference, 1) / np.linalg.norm(logits, axis=1) / np.linalg.norm(reference, axis=1)
    top1, ref_top1 = float((logits.argmax(1) == labels).mean()), float((reference.argmax(1) == labels).mean())
    row = {"top1": top1, "drop": ref_top1 - top1, "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
           "cosine": float(cosine.mean()), "cosine_min": float(cosine.min())}
    row["passed"] = (row["cosine"] >= BOUNDS["cosine"] and row["agreement"] >= BOUNDS["agreement"]
                     and row["drop"] <= BOUNDS["drop"])
    return row


def cpu_time_ms(runtime, native: np.ndarray, rounds: int, iterations: int) -> float:
    """Median CPU time of one call, on a one-thread copy of ``runtime``'s file."""
    with load(runtime.path, threads=1) as single:
        times = []
        for _ in range(rounds * iterations):
            start = time.thread_time()
            single.predict(native)
            times.append(time.thread_time() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+", default=["default", "full"])
    parser.add_argument("--calib", type=int, default=256, help="calibration images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        deploy, calib_dir, heldout, described = fixture(workdir)
        calibration = load_calibration(calib_dir, deploy.manifest, samples=args.calib)
        files = {"fp32": export(deploy, "tflite", workdir / "fp32.tflite", "fp32", force=True)}
        for policy in args.policies:
            files[policy] = export(deploy, "tflite", workdir / f"int8_{policy}.tflite", "int8", calibration,
                                   float_groups=policy_groups(policy), force=True)
        runtimes = {name: load(path, threads=args.threads) for name, path in files.items()}
        native = runtimes["fp32"].from_nchw(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
        timings = interleaved({name: (lambda r=r: r.predict(native)) for name, r in runtimes.items()},
                              rounds=args.rounds, iterations=args.iterations)
        fp32_bytes = files["fp32"].stat().st_size
        rows = []
        for name, runtime in runtimes.items():
            content = files[name].read_bytes()
            row = {"file": name, "float_groups": runtime.manifest.extra.get("float_groups"), "MB": len(content) / 1e6,
                   "size_ratio": len(content) / fp32_bytes,
                   "float_weight_bytes": sum(c["bytes"] for c in float_weights(content)) if name != "fp32" else None,
                   **runtime.delegation(), "median_ms": timings[name].median_ms,
                   "cpu_ms_1thread": cpu_time_ms(runtime, native, args.rounds, args.iterations)}
            if heldout is not None:
                row.update(judge(runtime, heldout))
            rows.append(row)
        for runtime in runtimes.values():
            runtime.close()
    base = rows[0]
    print(f"\n{described}; {args.threads} threads, {args.rounds}x{args.iterations} interleaved samples per row")
    print("| file | MB | x fp32 size | float weights kB | partitions | left to TFLite | top-1 | agreement | "
          "cosine mean / min | ms | x fp32 speed | CPU ms (1 thread) | x fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        accuracy = (f"{row['top1']:.2%} | {row['agreement']:.2%} | {row['cosine']:.5f} / {row['cosine_min']:.5f}"
                    if "top1" in row else "- | - | -")
        weights = "-" if row["float_weight_bytes"] is None else f"{row['float_weight_bytes'] / 1e3:.1f}"
        left = ", ".join(f"{op} {n}" for op, n in row["undelegated"].items()) or "-"
        print(f"| {row['file']} | {row['MB']:.2f} | {row['size_ratio']:.3f} | {weights} | {row['partitions']} | {left} | "
              f"{accuracy} | {row['median_ms']:.2f} | {base['median_ms'] / row['median_ms']:.2f} | "
              f"{row['cpu_ms_1thread']:.2f} | {base['cpu_ms_1thread'] / row['cpu_ms_1thread']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"model": described, "machine": machine_info(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
