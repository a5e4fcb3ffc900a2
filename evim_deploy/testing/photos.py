"""Real photos from scikit-image's bundled data (no download), written as image folders."""
from __future__ import annotations

from pathlib import Path

from ..samples import sample_images

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "immunohistochemistry", "logo")


def write_photos(root: Path) -> Path:
    """:data:`PHOTOS` under ``root``, in nested folders and mixed formats (jpg, png, webp, bmp)."""
    import skimage.data
    from PIL import Image
    for i, name in enumerate(PHOTOS):
        folder = root / ("a" if i % 2 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(getattr(skimage.data, name)())
        suffix = "png" if image.mode == "RGBA" else ("jpg", "png", "webp", "bmp")[i % 4]
        image.save(folder / f"{name}.{suffix}")
    return root


def disjoint_calibration_photos(folder: Path) -> Path:
    """Calibration photos disjoint from the ones ``verify`` judges on; write them into ``folder`` and return it.

    scikit-image's bundled photos other than the package's sample photos (:func:`evim_deploy.samples.sample_images`),
    each as original, mirrored and two centre crops: a fair INT8 protocol, calibrated on other pictures than the
    ones the figures come from.
    """
    import skimage.data
    from PIL import Image, ImageOps
    judged = {path.stem for path in sample_images()}
    source = Path(skimage.data.__file__).parent
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*")):
        if path.suffix.lower() not in (".png", ".jpg") or path.stem in judged:
            continue
        img = Image.open(path).convert("RGB")
        w, h = img.size
        crop = img.crop((w // 6, h // 6, w - w // 6, h - h // 6))
        for name, view in (("a", img), ("b", ImageOps.mirror(img)), ("c", crop), ("d", ImageOps.mirror(crop))):
            view.save(folder / f"{path.stem}_{name}.png")
    return folder
