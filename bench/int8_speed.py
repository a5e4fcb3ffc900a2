"""INT8 against fp32, side by side in one run: M1 at 224x224, batch 1, 2 threads by default. One command:

    .venv/bin/python bench/int8_speed.py [--fixture scenes|random] [--checkpoint FILE --labels FILE]
                                         [--threads 2] [--rounds 9] [--iterations 30] [--heldout 500]
                                         [--targets tflite,executorch] [--profile] [--keep DIR] [--prebuilt DIR]
                                         [--isa avx2]

Rows: ``torch.onnx.export`` of the eager reference model (what a timm user gets, run in the same ONNX Runtime
settings), our ONNX fp32, our ONNX INT8 in the format of before (``vnni-only``: 8-bit weights, exact only on
VNNI x86 and ARM) and in the portable one (7-bit matrix weights: the same integers on every CPU), each with the
default float policy (the mixer's two state projections INT8, its state path float), the portable one also with
the whole mixer float (the policy before) and full integer; then every other installed target of
``evim_deploy.targets.TARGETS`` in each precision it exports (TFLite fp32/int8, ...), through
``evim_deploy.targets.export``/``load``. Rows are timed in interleaved rounds in one process, so machine
noise hits them alike; the table gives medians, p90, file MB and each row's speed-up over the best fp32 row.

``--fixture scenes`` (the default) is the trained full-size fixture (``evim_deploy.testing.scenes``): INT8
calibrates on its calibration scenes and every row is judged on ``--heldout`` held-out scenes against the
fp32 reference (cosine, top-1 agreement, top-1) with the trained bounds (cosine >= 0.995, agreement >= 99%,
top-1 drop <= 0.5 pt). ``--checkpoint``/``--labels`` swap in your own M1 weights on the same scenes;
``--fixture random`` times random weights (no verdict). The host (CPU, ISA flags, whether its INT8 kernels
saturate int16 pairs, ONNX Runtime and LiteRT versions) heads the output; ``--profile`` adds ONNX Runtime's
top ops of every ONNX row. ``--keep DIR`` copies every file it exports into DIR (``<target>_<precision><suffix>``);
``--prebuilt DIR`` takes the other targets' files from such a folder instead of exporting them, for a host that
has their runtimes but not their converters (the device host: LiteRT and ExecuTorch runtimes carried as wheels).
``--isa avx2`` re-runs the script with CPUID masked to AVX2 (``bench/cpuid.py``): the runtimes take their AVX2
kernels on this CPU, and the host line says so; it needs a CPU or hypervisor with CPUID faulting.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cpu_latency import plain_onnx_export, print_profiles  # bench/ is the script's folder
from cpuid import LIBRARIES, rerun_masked
from evim_deploy import host
from evim_deploy.benchmark import interleaved
from evim_deploy.calibration import load_calibration
from evim_deploy.files import artifact_megabytes
from evim_deploy.model import create_model, reparameterize
from evim_deploy.preprocess import list_images, preprocess
from evim_deploy.samples import sample_calibration
from evim_deploy.targets import TARGETS, export, load
from evim_deploy.testing import randomized_model, scenes_trained_model, write_scene_folders
from evim_deploy.verify import Metrics, reference_logits

SIZE = (224, 224)
BOUNDS = {"cosine": 0.995, "top1": 0.99, "drop": 0.005}
WHOLE_MIXER_FLOAT = ("stem_input", "mixer_input", "token_mixer", "residual", "depthwise", "head")  # the policy before
VARIANTS = {name: ("depthwise-only (before)", {"float_groups": ["depthwise"]}) for name in ("tflite", "executorch")}
ONNX_INT8 = {"onnx int8 vnni-only (before)": {"int8_format": "vnni-only"},
             "onnx int8 portable (default)": {"int8_format": "portable"},
             "onnx int8 portable, whole mixer float": {"int8_format": "portable", "float_groups": WHOLE_MIXER_FLOAT},
             "onnx int8 portable, full integer": {"int8_format": "portable", "float_groups": []}}


@dataclass
class Row:
    name: str
    precision: str
    path: Path | None = None
    runtime: object | None = None
    note: str = ""
    judged: dict = field(default_factory=dict)


def fixture(args, workdir: Path):
    """``(reference, calibration, held-out inputs, held-out labels)``; labels are None for random weights."""
    if args.fixture == "random":
        reference = randomized_model("m1")
        calibration = sample_calibration(reparameterize(reference, SIZE).manifest)
        return reference, calibration, calibration.images[:8], None
    reference = (create_model("m1", args.checkpoint, labels=args.labels) if args.checkpoint
                 else scenes_trained_model())
    folders = write_scene_folders(workdir / "scenes")
    manifest = reparameterize(reference, SIZE).manifest
    calibration = load_calibration(folders["calib"], manifest, samples=args.calib)
    files = list_images(folders["heldout"])
    files = files[::max(1, len(files) // args.heldout)][:args.heldout]  # every class, not the first folders
    labels = np.array([int(p.parent.name) for p in files])
    return reference, calibration, np.stack([preprocess(p, manifest) for p in files]), labels


def judge(row: Row, x: np.ndarray, expected: np.ndarray, labels: np.ndarray | None, reference_top1: float) -> None:
    logits = np.concatenate([row.runtime.predict(row.runtime.from_nchw(x[i:i + 1])) for i in range(len(x))])
    m = Metrics.compare(expected, logits)
    row.judged = {"cosine": m.cosine, "agreement": m.top1}
    if labels is None:
        return
    top1 = float((logits.argmax(-1) == labels).mean())
    misses = [what for what, bad in (("cosine", m.cosine < BOUNDS["cosine"]), ("agreement", m.top1 < BOUNDS["top1"]),
                                     ("drop", reference_top1 - top1 > BOUNDS["drop"] + 1e-9)) if bad]
    row.judged.update(top1=top1, verdict="MISS " + ",".join(misses) if misses else "pass")


def other_rows(args):
    """``(spec, precision, variant, export options)`` of every other target's rows: each precision it exports
    (those of ``--precisions``), and its INT8 also under the policy before issue 15 (:data:`VARIANTS`)."""
    for spec in TARGETS.values():
        if spec.name == "onnx" or (args.targets and spec.name not in args.targets.split(",")):
            continue
        for precision in spec.precisions:
            if args.precisions and precision not in args.precisions.split(","):
                continue
            yield spec, precision, "", {}
            if precision == spec.int8_precision and spec.name in VARIANTS:
                yield spec, precision, *VARIANTS[spec.name]


def build_rows(args, workdir: Path) -> tuple[list[Row], dict]:
    torch.set_num_threads(args.threads)
    reference, calibration, x, labels = fixture(args, workdir)
    deploy = reparameterize(reference, SIZE)
    expected = reference_logits(reference, x)
    facts = {"reference top-1": None if labels is None else float((expected.argmax(-1) == labels).mean()),
             "images judged": len(x), "calibration": calibration.describe()}
    plain = plain_onnx_export(reference, SIZE, workdir / "plain.onnx")
    rows = [Row("plain torch.onnx.export (timm user)", "fp32", plain)]
    rows.append(Row("onnx fp32", "fp32", export(deploy, "onnx", workdir / "fp32.onnx")))
    for name, options in ONNX_INT8.items():
        rows.append(Row(name, "int8", export(deploy, "onnx", workdir / f"{len(rows)}.onnx", "int8", calibration,
                                             **options)))
    for spec, precision, variant, options in other_rows(args):
        row = Row(f"{spec.name} {precision}{variant and ', ' + variant}", precision)
        rows.append(row)
        name = f"{spec.name}_{precision}{variant and '_' + variant.split()[0]}{spec.suffix}"
        if args.prebuilt and (Path(args.prebuilt) / name).exists():
            row.path, row.note = Path(args.prebuilt) / name, "prebuilt"
            continue
        row.note = spec.unavailable_reason() or ""
        if row.note:
            continue
        try:
            row.path = export(deploy, spec.name, workdir / name, precision,
                              calibration if spec.needs_calibration(precision) else None, force=True, **options)
        except Exception as err:  # another target's exporter may fail: say so on its row, keep going
            row.note = f"export failed: {type(err).__name__}: {str(err)[:100]}"
    for row in rows:
        if row.path is None:
            continue
        if args.keep and row.note != "prebuilt":
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if row.path.is_dir() else shutil.copy2
            copy(row.path, Path(args.keep) / row.path.name)
        try:
            row.runtime = load(row.path, threads=args.threads)
            judge(row, x, expected, labels, facts["reference top-1"] or 0.0)
        except Exception as err:  # a runtime that cannot run its own file: say so on its row, keep going
            row.runtime, row.note = None, f"load/run failed: {type(err).__name__}: {str(err)[:100]}"
    return rows, facts


def timers(rows: list[Row], x: np.ndarray) -> dict[str, Callable[[], object]]:
    def timer(runtime) -> Callable[[], object]:
        native = runtime.from_nchw(x)
        return lambda: runtime.predict(native)
    return {row.name: timer(row.runtime) for row in rows if row.runtime is not None}


def print_host() -> None:
    record = host.describe()
    mask = record.get("cpuid_mask")
    masked = f"; CPUID MASKED TO {mask.upper()}: the runtimes run their {mask} kernels on this CPU" if mask else ""
    print(f"host: {record['cpu']} ({record['machine']}){masked}, ISA {' '.join(record['isa'])}; "
          "INT8 int16 pair saturation: "
          f"{'YES (x86 without VNNI)' if record['int16_pair_saturation'] else 'no'}; onnxruntime "
          f"{record['onnxruntime']}, ai-edge-litert {record['ai-edge-litert']}")


def print_table(rows: list[Row], timings: dict, facts: dict, args) -> None:
    fp32 = [timings[r.name].median_ms for r in rows if r.name in timings and r.precision == "fp32"]
    best = min(fp32) if fp32 else float("nan")
    print(f"\nM1 {SIZE[0]}x{SIZE[1]}, batch 1, {args.threads} threads, {args.rounds}x{args.iterations} interleaved "
          f"samples per row; fixture {args.fixture}: {facts}")
    print(f"{'row':<42} {'median ms':>9} {'p90 ms':>7} {'vs best fp32':>12} {'MB':>6} {'cosine':>8} {'agree':>6} "
          f"{'top-1':>6}  verdict / note")
    for row in rows:
        t, j = timings.get(row.name), row.judged
        cells = (f"{t.median_ms:>9.2f} {t.p90_ms:>7.2f} {best / t.median_ms:>11.2f}x" if t else f"{'-':>9} {'-':>7} "
                 f"{'-':>12}")
        size = f"{artifact_megabytes(row.path):>6.1f}" if row.path else f"{'-':>6}"
        top1 = f"{j['top1']:>6.1%}" if "top1" in j else f"{'-':>6}"
        judged = f"{j['cosine']:>8.5f} {j['agreement']:>6.1%} {top1}" if j else f"{'-':>8} {'-':>6} {'-':>6}"
        print(f"{row.name:<42} {cells} {size} {judged}  {j.get('verdict', '')} {row.note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixture", choices=["scenes", "random"], default="scenes")
    parser.add_argument("--checkpoint", help="your own M1 weights, judged on the digit scenes (10 classes)")
    parser.add_argument("--labels", help="class names of --checkpoint, one per line")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--heldout", type=int, default=500, help="held-out scenes judged per row (at most 500)")
    parser.add_argument("--calib", type=int, default=256, help="calibration scenes")
    parser.add_argument("--targets", help="other targets of the table to include, comma-separated (default: all)")
    parser.add_argument("--profile", action="store_true", help="ONNX Runtime's top ops of every ONNX row")
    parser.add_argument("--precisions", help="the other targets' precisions to include, comma-separated (default: all)")
    parser.add_argument("--keep", help="copy every exported file into this folder")
    parser.add_argument("--prebuilt", help="take the other targets' files from this folder (as --keep writes them)")
    parser.add_argument("--isa", choices=sorted(LIBRARIES),
                        help="mask CPUID so the runtimes take this ISA's kernels (needs CPUID faulting)")
    args = parser.parse_args()
    if args.isa:
        rerun_masked(args.isa)
    print_host()
    with tempfile.TemporaryDirectory() as tmp:
        rows, facts = build_rows(args, Path(tmp))
        x = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
        timings = interleaved(timers(rows, x), rounds=args.rounds, iterations=args.iterations)
        print_table(rows, timings, facts, args)
        if args.profile:
            print_profiles(rows)


if __name__ == "__main__":
    main()
