"""Image reading and preprocessing exactly as the manifest says (resize, centre crop, normalize)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UsageError
from .manifest import Manifest

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MAX_PIXELS = 100_000_000  # refuse decompression bombs above this, instead of PIL's warning
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def load_image(path: str | Path) -> Image.Image:
    """Open any still image as 8-bit RGB: EXIF rotation applied; gray, CMYK, 16-bit and alpha converted."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise UsageError(f"{path} is {img.width}x{img.height}, larger than {MAX_PIXELS:,} pixels",
                                     "downscale it first")
                img = ImageOps.exif_transpose(img)
                return _to_rgb8(img)
    except UsageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as err:
        raise UsageError(f"{path} is not a readable image ({type(err).__name__})",
                         f"pass a {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} file") from None


def _to_rgb8(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit gray: scale to 8 bits, not clip
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        background = Image.new("RGB", img.size, (255, 255, 255))
        rgba = img.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, manifest: Manifest) -> Image.Image:
    """Resize the short side to ``input / crop_pct`` (aspect kept), then centre-crop to the input size."""
    out_h, out_w = manifest.input_size
    resize_h, resize_w = manifest.resize_size
    scale = max(resize_h / img.height, resize_w / img.width)
    size = (max(out_w, round(img.width * scale)), max(out_h, round(img.height * scale)))
    img = img.resize(size, _RESAMPLE[manifest.interpolation])
    left, top = (size[0] - out_w) // 2, (size[1] - out_h) // 2
    return img.crop((left, top, left + out_w, top + out_h))


def normalize(rgb: np.ndarray, manifest: Manifest) -> np.ndarray:
    """uint8/float ``(..., H, W, 3)`` pixels in 0..255 -> normalized float32 ``(..., 3, H, W)``."""
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.asarray(manifest.mean, np.float32)) / np.asarray(manifest.std, np.float32)
    return np.moveaxis(x, -1, -3).copy()


def preprocess(image: str | Path | Image.Image, manifest: Manifest) -> np.ndarray:
    """One image (path or PIL) -> normalized float32 ``(3, H, W)``."""
    img = image if isinstance(image, Image.Image) else load_image(image)
    return normalize(np.asarray(resize_and_crop(_to_rgb8(img), manifest)), manifest)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted for determinism."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"image folder not found: {folder}", "pass a directory of jpg/png/webp/bmp files")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
