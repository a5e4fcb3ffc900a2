"""The model card that travels with every model and inside every exported file."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in class-index order (shipped as package data)."""
    text = resources.files("evim_deploy").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def default_labels(num_classes: int) -> list[str]:
    return list(imagenet_labels()) if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]


def read_labels(path: str | Path) -> list[str]:
    """Class names from a text file, one per line in class-index order (blank lines ignored)."""
    from .errors import UsageError
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read labels file {path} ({type(err).__name__})",
                         "pass a UTF-8 text file with one class name per line") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _version() -> str:
    from . import __version__
    return __version__


@dataclass
class Manifest:
    """Everything an app needs to feed a model and read its output, plus provenance.

    Preprocessing follows the official evaluation: bicubic resize of the short side to
    ``input / crop_pct``, centre crop, scale to [0, 1], normalize with ``mean``/``std``.
    """

    variant: str
    num_classes: int
    input_size: tuple[int, int]
    labels: list[str]
    layout: str = "nchw"
    color: str = "RGB"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    source: str | None = None
    source_sha256: str | None = None
    seed: int | None = None  # random-init seed when there was no checkpoint (lets verify rebuild the weights)
    precision: str = "fp32"
    target: str = "reference"  # the exporter sets its target; "reference" is the in-memory PyTorch model
    evim_deploy_version: str = field(default_factory=_version)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def resize_size(self) -> tuple[int, int]:
        """Size of the resize before the centre crop (timm's ``scale_size``)."""
        return tuple(int(s / self.crop_pct) for s in self.input_size)

    def with_input_size(self, input_size: tuple[int, int]) -> "Manifest":
        return self.replace(input_size=tuple(input_size))

    def replace(self, **changes: Any) -> "Manifest":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["resize_size"] = list(self.resize_size)
        return data

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("input_size", "mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        return cls.from_dict(json.loads(text))
