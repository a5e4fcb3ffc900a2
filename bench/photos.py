"""Calibration photos for the acceptance scripts, disjoint from the ones ``verify`` judges on.

scikit-image's bundled photos (no download) other than the four sample photos ``verify`` uses by
default, each as original, mirrored and two centre crops: a fair INT8 protocol, calibrated on other
pictures than the ones the figures come from.
"""
from __future__ import annotations

from pathlib import Path

SAMPLE_STEMS = {"astronaut", "chelsea", "coffee", "rocket"}  # the bundled photos verify runs on


def disjoint_calibration_photos(folder: Path) -> Path:
    """Write the photos into ``folder`` and return it."""
    from PIL import Image, ImageOps
    import skimage.data
    source = Path(skimage.data.__file__).parent
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*")):
        if path.suffix.lower() not in (".png", ".jpg") or path.stem in SAMPLE_STEMS:
            continue
        img = Image.open(path).convert("RGB")
        w, h = img.size
        crop = img.crop((w // 6, h // 6, w - w // 6, h - h // 6))
        for name, view in (("a", img), ("b", ImageOps.mirror(img)), ("c", crop), ("d", ImageOps.mirror(crop))):
            view.save(folder / f"{path.stem}_{name}.png")
    return folder
