"""The full-size trained fixture: M1 at 224x224 on digit scenes, scikit-learn's 8x8 digits composited onto photos.

A scene is a random square crop of one of :data:`BACKGROUNDS` (photos bundled inside scikit-image and
scikit-learn: no download), resized to :data:`SCENE_SIDE`, with one digit upscaled (bicubic) to 35-75% of
the model's input side, jittered in aspect and rotation, placed at a random position inside the centre
crop, in a random colour far from the background under it, and alpha-composited (ink = alpha).
Every scene is a pure function of ``(split, index, seed)``: numpy and PIL only.

* ``train``: scene *i* shows training digit ``i % 1437`` (the 80% split, as the ``tiny`` fixture's);
* ``heldout``: :data:`HELDOUT_SCENES` scenes of the 360 held-out digits (every one at least once);
* ``calib``: :data:`CALIBRATION_SCENES` scenes of distinct training digits, drawn from other seeds than
  any training scene: INT8 calibrates on other pictures than the held-out ones judged.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURE_DIR = Path(__file__).resolve().parent
NAME, VARIANT = "m1_scenes", "m1"
CHECKPOINT = FIXTURE_DIR / f"{NAME}.safetensors"   # fp16; trained by ``python -m evim_deploy.testing.train_scenes``
LABELS_FILE = FIXTURE_DIR / f"{NAME}.labels.txt"
PROVENANCE = FIXTURE_DIR / f"{NAME}.json"         # how it was trained, and its held-out top-1
STATED_ACCURACY = 0.95  # held-out top-1 the fixture must reach (the floor)
LABELS = [str(d) for d in range(10)]
INPUT_SIDE = 224   # M1's input
SCENE_SIDE = 256   # M1's manifest resize (224 / crop_pct 0.875): preprocess() only centre-crops a scene
HELDOUT_SCENES, CALIBRATION_SCENES, SEED = 500, 256, 0
DIGIT_SCALE = (0.35, 0.75)    # digit side / INPUT_SIDE
MIN_CONTRAST = 160.0          # RGB distance of the ink from the mean background under it
SPLITS = {"train": 0, "heldout": 1, "calib": 2}
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
                  "motorcycle_left.png", "motorcycle_right.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
BACKGROUNDS = SKIMAGE_PHOTOS + SKLEARN_PHOTOS


@functools.lru_cache(maxsize=1)
def backgrounds() -> tuple[np.ndarray, ...]:
    """The photos of :data:`BACKGROUNDS` as uint8 RGB arrays, read from the installed packages' own files."""
    import skimage.data
    import sklearn.datasets
    folders = {**dict.fromkeys(SKIMAGE_PHOTOS, Path(skimage.data.__file__).parent),
               **dict.fromkeys(SKLEARN_PHOTOS, Path(sklearn.datasets.__file__).parent / "images")}
    return tuple(np.asarray(Image.open(folders[name] / name).convert("RGB")) for name in BACKGROUNDS)


@functools.lru_cache(maxsize=None)
def digits(split: str, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits (values 0..16) and labels of ``train`` or ``heldout``: 80/20, stratified, ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    data = load_digits()
    train, heldout = train_test_split(np.arange(len(data.target)), test_size=0.2, stratify=data.target,
                                      random_state=seed)
    pick = heldout if split == "heldout" else train
    return data.images[pick], data.target[pick]


def digit_index(split: str, index: int, seed: int = SEED) -> int:
    """Which digit of :func:`digits` scene ``index`` of ``split`` shows."""
    count = len(digits("heldout" if split == "heldout" else "train", seed)[1])
    if split == "calib":
        return int(np.random.default_rng((seed, SPLITS[split])).permutation(count)[index % count])
    return index % count


def _background(rng: np.random.Generator) -> np.ndarray:
    photo = backgrounds()[rng.integers(len(BACKGROUNDS))]
    height, width = photo.shape[:2]
    side = int(rng.uniform(0.35, 1.0) * min(height, width))
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    crop = Image.fromarray(photo[top:top + side, left:left + side])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop.resize((SCENE_SIDE, SCENE_SIDE), Image.Resampling.BICUBIC), np.float32)


def _ink(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Alpha in 0..1: the digit padded by one pixel, bicubic-upscaled, aspect-jittered and rotated."""
    side = rng.uniform(*DIGIT_SCALE) * INPUT_SIDE
    aspect = rng.uniform(0.85, 1.15)
    size = (round(side * aspect ** 0.5), round(side / aspect ** 0.5))
    padded = Image.fromarray(np.pad(digit.astype(np.float32) / 16.0, 1))
    ink = padded.resize(size, Image.Resampling.BICUBIC).rotate(rng.uniform(-10, 10), Image.Resampling.BICUBIC,
                                                                 expand=True)
    return np.clip(np.asarray(ink), 0.0, 1.0)[:INPUT_SIDE, :INPUT_SIDE]


def _colour(under: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour at least :data:`MIN_CONTRAST` from ``under`` (else the farthest corner of the RGB cube)."""
    for _ in range(64):
        colour = rng.integers(0, 256, 3).astype(np.float32)
        if np.linalg.norm(colour - under) >= MIN_CONTRAST:
            return colour
    return np.where(under < 128, 255.0, 0.0).astype(np.float32)


def scene(split: str, index: int, seed: int = SEED) -> tuple[np.ndarray, int]:
    """Scene ``index`` of ``split`` as uint8 ``(SCENE_SIDE, SCENE_SIDE, 3)`` and its digit."""
    images, labels = digits("heldout" if split == "heldout" else "train", seed)
    which = digit_index(split, index, seed)
    rng = np.random.default_rng((seed, SPLITS[split], index))
    image, alpha = _background(rng), _ink(images[which], rng)
    margin = (SCENE_SIDE - INPUT_SIDE) // 2  # the digit lies wholly inside the centre crop
    height, width = alpha.shape
    top = margin + rng.integers(0, INPUT_SIDE - height + 1)
    left = margin + rng.integers(0, INPUT_SIDE - width + 1)
    box = image[top:top + height, left:left + width]
    weight = alpha[..., None]
    under = (box * weight).sum((0, 1)) / max(float(weight.sum()), 1e-6)
    box[:] = box * (1 - weight) + _colour(under, rng) * weight
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), int(labels[which])


def _write_folder(root: Path, split: str, count: int, seed: int) -> None:
    for label in LABELS:
        (root / label).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, label = scene(split, index, seed)
        Image.fromarray(image).save(root / LABELS[label] / f"{index:04d}.png", compress_level=1)


def write_image_folders(root: str | Path, seed: int = SEED) -> dict[str, Path]:
    """Write (once) ``root/heldout/<digit>/NNNN.png`` and ``root/calib/<digit>/NNNN.png``; return both paths."""
    root = Path(root)
    paths = {"heldout": root / "heldout", "calib": root / "calib"}
    done = root / ".complete"
    if not done.exists():
        _write_folder(paths["heldout"], "heldout", HELDOUT_SCENES, seed)
        _write_folder(paths["calib"], "calib", CALIBRATION_SCENES, seed)
        done.touch()
    return paths


def trained_model():
    """M1 with the committed fp16 checkpoint (cast to fp32) and labels: the fp32 reference of the fixture."""
    from ..model import create_model
    return create_model(VARIANT, CHECKPOINT, labels=LABELS_FILE)
