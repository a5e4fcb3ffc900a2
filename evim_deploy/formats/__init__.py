"""File formats: one module per format (``formats/<target>.py``), the only place that knows how a file
carries the manifest, what its ops are and what its inputs and outputs look like to an app.

``export/`` writes through these modules and ``runtime/`` reads through them; neither imports the other.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

MANIFEST_KEY = "evim_deploy.manifest"  # the one name of the embedded manifest, in every format


@dataclass
class Coverage:
    """What one accelerator (execution provider, delegate, compute unit) would run of a file, and why not the rest.

    ``taken`` of ``total`` ops in ``partitions`` pieces (1: the whole graph in one go; ``None``: not known);
    ``left`` the ops it leaves to other kernels (op -> count); ``causes`` why, in words; ``method`` how it
    was found (the tool, or the sources of the rules)."""

    accelerator: str
    taken: int
    total: int
    partitions: int | None
    left: dict[str, int]
    causes: list[str]
    method: str

    @property
    def share(self) -> float:
        return self.taken / self.total if self.total else 0.0

    def line(self, top: int | None = None) -> str:
        """``NNAPI 230/240 (96%), 8 partitions; left LayerNormalization 10``: the ``top`` most frequent left ops."""
        parts = "" if self.partitions is None else f", {self.partitions} partition{'s' * (self.partitions != 1)}"
        shown = list(self.left.items())[:top]
        left = ", ".join(f"{op} {n}" for op, n in shown) + (", ..." if len(shown) < len(self.left) else "")
        head = f"{self.accelerator} {self.taken}/{self.total} ({self.share:.0%}){parts}"
        return f"{head}; left {left}" if left else head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FileSummary:
    """What one exported file holds: its ops (histogram, most frequent first), their count, its size and what
    each accelerator of its target would take of it (:class:`Coverage`)."""

    ops: dict[str, int]
    count: int
    bytes: int
    unit: str = "ops"
    details: dict[str, Any] = field(default_factory=dict)
    coverage: list[Coverage] = field(default_factory=list)

    def line(self, label: str, top: int = 6) -> str:
        """``label: 219 nodes (Conv 40, ...), <details>, 26.80 MB``: what an export prints."""
        shown = ", ".join(f"{op} {n}" for op, n in list(self.ops.items())[:top])
        extra = "".join(f", {value}" for value in self.details.get("line", ()))
        return f"{label}: {self.count} {self.unit} ({shown}, ...){extra}, {self.bytes / 1e6:.2f} MB"


def op_histogram(ops: Iterable[str]) -> dict[str, int]:
    """Op name -> count, most frequent first (ties by name)."""
    return dict(sorted(Counter(ops).items(), key=lambda kv: (-kv[1], kv[0])))


def io_entry(name: str, shape: Iterable[int | None], dtype: str, **more: Any) -> dict[str, Any]:
    """One input or output as an app sees it; ``None`` marks a free dimension."""
    return {"name": name, "shape": [d if isinstance(d, int) and d >= 0 else None for d in shape], "dtype": dtype,
            **more}


def shape_text(shape: Iterable[int | None]) -> str:
    """``[N, 224, 224, 3]``: a free dimension shows as N."""
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def layout_of(shape: list[int | None]) -> str:
    """NHWC, NCHW, or - for a tensor that is no image."""
    return "NHWC" if len(shape) == 4 and shape[-1] == 3 else "NCHW" if len(shape) == 4 else "-"
