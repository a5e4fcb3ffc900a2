"""Per-layer-group INT8 sensitivity of the trained fixture and of M1 with random weights.

    .venv/bin/python bench/sensitivity.py [--models fixture m1] [--target onnx] [--samples 64]

* ``fixture``: ``tiny`` trained on digits (``evim_deploy.testing.train_fixture``), calibrated on its
  calibration folder (training images); the same ranking as ``evim-deploy quantize-report --model tiny
  --checkpoint evim_deploy/testing/tiny_digits.pth --calib DIR``.
* ``m1``: M1 at 224x224 with random weights and randomized BatchNorm statistics, gates, ``A``, ``D``
  (``evim_deploy.testing.randomized_model``, as the tests use), calibrated on the photos bundled with
  scikit-image (real images, offline).

Every score is a real exported file run in its runtime: per group, the logits cosine and top-1
agreement with fp32 when only that group is INT8 (``alone``) and when all but it are (``keep``).
Writes ``<model>.json``, ``<model>.png`` and ``<model>.txt`` under ``--out`` (``<model>_all_int8.*`` with
``--all-int8``: the exporter's own float policy off, so every group shows its own damage).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from evim_deploy.calibration import load_calibration
from evim_deploy.model import reparameterize
from evim_deploy.quantize.sensitivity import Scorer, plot_ranking, sensitivity, write_json
from evim_deploy.testing import randomized_model
from evim_deploy.testing.train_fixture import trained_model, write_image_folders


def scikit_image_photos() -> Path:
    import skimage
    return Path(skimage.__file__).parent / "data"


def subject(name: str, out: Path):
    """(deploy model, calibration folder) for ``fixture`` or ``m1``."""
    if name == "fixture":
        return reparameterize(trained_model(), (64, 64)), write_image_folders(out / "digits")["calib"]
    model = randomized_model(name)
    return reparameterize(model, model.manifest.input_size), scikit_image_photos()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fixture", "m1"], choices=["fixture", "m1"])
    parser.add_argument("--target", default="onnx")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--samples", type=int, default=64, help="calibration (and scoring) images")
    parser.add_argument("--modes", nargs="+", default=["alone", "keep"])
    parser.add_argument("--out", type=Path, default=Path("out/sensitivity"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--all-int8", action="store_true", help="exporter float policy off (float_groups=()): "
                        "every group's own sensitivity, not only what the default export still quantizes")
    args = parser.parse_args(argv)
    policy = {"base_float_groups": ()} if args.all_int8 else {}
    suffix = "_all_int8" if args.all_int8 else ""
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        start = time.perf_counter()
        deploy, calib_dir = subject(name, args.out)
        calibration = load_calibration(calib_dir, deploy.manifest, args.samples)
        report = sensitivity(Scorer(deploy, args.target, args.precision, calibration, **policy), args.modes)
        text = (f"{name}: {args.target} {args.precision} ({'every op INT8' if args.all_int8 else 'default policy'}), "
                f"{len(calibration)} calibration images from {calib_dir}, {time.perf_counter() - start:.0f} s\n"
                f"{report.table()}")
        print(text, flush=True)
        (args.out / f"{name}{suffix}.txt").write_text(text + "\n")
        write_json(report, args.out / f"{name}{suffix}.json")
        plot_ranking(report, args.out / f"{name}{suffix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
