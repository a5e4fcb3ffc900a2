"""Sample photos shipped with the package (from scikit-image's public-domain/CC0 data set)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_images() -> list[Path]:
    """Paths of the bundled sample photos: astronaut, chelsea (a cat), coffee, rocket."""
    folder = resources.files("evim_deploy").joinpath("data/samples")
    return sorted(Path(str(folder)).glob("*.jpg"))
