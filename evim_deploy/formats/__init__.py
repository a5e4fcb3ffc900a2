"""File formats: one module per format (``formats/<target>.py``), the only place that knows how a file
carries the manifest, what its ops are and what its inputs and outputs look like to an app.

``export/`` writes through these modules and ``runtime/`` reads through them; neither imports the other.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

MANIFEST_KEY = "evim_deploy.manifest"  # the one name of the embedded manifest, in every format


@dataclass
class FileSummary:
    """What one exported file holds: its ops (histogram, most frequent first), their count and its size."""

    ops: dict[str, int]
    count: int
    bytes: int
    unit: str = "ops"
    details: dict[str, Any] = field(default_factory=dict)

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
