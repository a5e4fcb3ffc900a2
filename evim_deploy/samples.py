"""Sample photos shipped with the package (from scikit-image's public-domain/CC0 data set)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_images() -> list[Path]:
    """Paths of the bundled sample photos: astronaut, chelsea (a cat), coffee, rocket."""
    folder = resources.files("evim_deploy").joinpath("data/samples")
    return sorted(Path(str(folder)).glob("*.jpg"))


def sample_calibration(manifest, count: int = 64, seed: int = 0):
    """A small real-image calibration set for demos: random crops and flips of the bundled photos.

    Good enough to show the INT8 pipeline end to end; a real deployment calibrates on its own images.
    """
    import numpy as np
    from PIL import Image, ImageOps

    from .calibration import CalibrationSet
    from .preprocess import load_image, preprocess
    rng = np.random.default_rng(seed)
    photos = [load_image(p) for p in sample_images()]
    images = []
    for i in range(count):
        photo = photos[i % len(photos)]
        scale = rng.uniform(0.5, 1.0)
        cw, ch = int(photo.width * scale), int(photo.height * scale)
        left, top = int(rng.integers(0, photo.width - cw + 1)), int(rng.integers(0, photo.height - ch + 1))
        crop: Image.Image = photo.crop((left, top, left + cw, top + ch))
        images.append(preprocess(ImageOps.mirror(crop) if rng.random() < 0.5 else crop, manifest))
    return CalibrationSet(np.stack(images), f"{count} random crops of the {len(photos)} bundled sample photos")
