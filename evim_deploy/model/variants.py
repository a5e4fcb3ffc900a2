"""The EfficientViM variants: one row each, with the figures the paper reports."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """Architecture of one variant plus its published reference figures."""

    name: str
    embed_dim: tuple[int, int, int]
    depths: tuple[int, int, int]
    state_dim: tuple[int, int, int]
    input_size: int = 224
    params: int | None = None        # exact parameter count of the official model (non-distilled)
    paper_macs: float | None = None  # millions, at input_size
    distillation: bool = False

    @property
    def base(self) -> str:
        return self.name.removesuffix("_dist")

    def arch(self) -> tuple:
        """What a checkpoint's tensor shapes can tell apart."""
        return self.embed_dim, self.depths, self.state_dim


_BASE = [
    Variant("m1", (128, 192, 320), (2, 2, 2), (49, 25, 9), 224, 6_679_458, 239),
    Variant("m2", (128, 256, 512), (2, 2, 2), (49, 25, 9), 224, 13_903_842, 355),
    Variant("m3", (224, 320, 512), (2, 2, 2), (49, 25, 9), 224, 16_604_174, 656),
    Variant("m4", (224, 320, 512), (3, 4, 2), (64, 32, 16), 256, 19_606_505, 1111),
    # Not in the paper: a small configuration that trains on a CPU in minutes (the digits fixture, tests).
    Variant("tiny", (32, 48, 64), (1, 1, 1), (16, 9, 4), 64),
]

VARIANTS: dict[str, Variant] = {}
for _v in _BASE:
    VARIANTS[_v.name] = _v
    VARIANTS[_v.name + "_dist"] = Variant(_v.name + "_dist", _v.embed_dim, _v.depths, _v.state_dim, _v.input_size,
                                          None, _v.paper_macs, distillation=True)


def get_variant(name: str) -> Variant:
    """Look a variant up by name (``m1``, ``EfficientViM_M1``, ``efficientvim_m1_dist`` ...)."""
    from ..errors import UsageError
    key = name.lower().removeprefix("efficientvim_").replace("-", "_")
    if key not in VARIANTS:
        raise UsageError(f"unknown model variant {name!r}", f"choose one of {', '.join(VARIANTS)}")
    return VARIANTS[key]


def match_variant(embed_dim: tuple, depths: tuple, state_dim: tuple, distillation: bool) -> Variant | None:
    """The variant whose architecture matches these shapes, if any."""
    for variant in VARIANTS.values():
        if variant.arch() == (embed_dim, depths, state_dim) and variant.distillation == distillation:
            return variant
    return None
