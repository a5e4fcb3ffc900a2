"""Calibration data for every INT8 target: a seeded sample of the user's images, preprocessed per the manifest."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..console import track, warn
from ..errors import UsageError
from ..manifest import Manifest
from ..preprocess import IMAGE_SUFFIXES, list_images, normalize, preprocess

__all__ = ["CalibrationSet", "load_calibration", "synthetic_calibration", "resolve_calibration"]


@dataclass
class CalibrationSet:
    """Preprocessed calibration images, NCHW float32, normalized as the manifest says."""

    images: np.ndarray
    source: str
    synthetic: bool = False
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        for start in range(0, len(self.images), batch_size):
            yield self.images[start:start + batch_size]

    def describe(self) -> str:
        kind = "SYNTHETIC random" if self.synthetic else "images"
        skipped = f", {len(self.skipped)} unreadable skipped" if self.skipped else ""
        return f"{len(self)} {kind} from {self.source}{skipped}"


def load_calibration(folder: str | Path, manifest: Manifest, samples: int = 256, seed: int = 0) -> CalibrationSet:
    """Sample up to ``samples`` images (seeded) from ``folder``, recursively; skip unreadable files with a count."""
    if samples < 1:
        raise UsageError(f"--calib-samples must be at least 1, got {samples}", "pass a positive number")
    files = list_images(folder)
    if not files:
        others = sum(1 for p in Path(folder).rglob("*") if p.is_file())
        what = f"{others} files but no images" if others else "no files"
        raise UsageError(f"calibration folder {folder} has {what}",
                         f"point --calib at a folder of {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images")
    random.Random(seed).shuffle(files)
    images, skipped = [], []
    for path in track(files, "calibration images", total=len(files)):
        if len(images) >= samples:
            break
        try:
            images.append(preprocess(path, manifest))
        except UsageError:
            skipped.append(str(path))
    if not images:
        raise UsageError(f"none of the {len(files)} images in {folder} could be read",
                         "check the files are valid images")
    if skipped:
        warn(f"skipped {len(skipped)} unreadable calibration file(s), e.g. {skipped[0]}")
    return CalibrationSet(np.stack(images).astype(np.float32), str(folder), skipped=skipped)


def synthetic_calibration(manifest: Manifest, samples: int = 32, seed: int = 0) -> CalibrationSet:
    """Random images: only for smoke tests. INT8 ranges from noise do not match real photos."""
    warn("calibrating INT8 on SYNTHETIC random images (--calib-synthetic): accuracy on real images is NOT "
         "representative; pass --calib DIR with a few hundred of your own images for a real model")
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(samples, *manifest.input_size, 3), dtype=np.uint8)
    return CalibrationSet(normalize(pixels, manifest), "synthetic", synthetic=True)


def resolve_calibration(calib: str | Path | None, synthetic: bool, manifest: Manifest, samples: int = 256,
                        seed: int = 0) -> CalibrationSet:
    """What the CLI's ``--calib``/``--calib-synthetic`` ask for; refuses INT8 with neither."""
    if calib is not None:
        return load_calibration(calib, manifest, samples, seed)
    if synthetic:
        return synthetic_calibration(manifest, min(samples, 64), seed)
    raise UsageError("INT8 needs calibration images",
                     "pass --calib DIR (a few hundred of your images), or --calib-synthetic for a smoke test")
