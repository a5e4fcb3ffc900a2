"""Per-layer-group INT8 sensitivity: which groups of :mod:`.groups` cost the most cosine when quantized.

Every figure comes from the real exporter and the real runtime: they are the figures of the file a user
would ship.

* :class:`Scorer`: exports ``deploy`` with some groups in float and compares its logits with fp32;
* :func:`sensitivity`: per group, the logits cosine and top-1 agreement with fp32 when only that group
  is quantized (``alone``) and when every group but it is quantized (``keep``: the recovery from
  keeping it in float).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..calibration import CalibrationSet
from ..console import console, track
from ..errors import UsageError
from ..targets import TARGETS, export, get_target, load
from ..verify import Metrics
from .groups import layer_groups

MODES = ("alone", "keep")


@dataclass(frozen=True)
class Score:
    """How close one mixed-precision file is to fp32 on the scoring images."""

    float_groups: tuple[str, ...]
    cosine: float
    min_cosine: float
    top1: float


class Scorer:
    """Exports ``deploy`` to ``target`` with some groups in float and compares its logits with fp32.

    Every candidate keeps ``base_float_groups`` (default: the target's policy) float plus the groups tried.
    Scores are cached per set of float groups; files are written to a temporary folder and deleted.
    """

    def __init__(self, deploy: torch.nn.Module, target: str, precision: str, calibration: CalibrationSet,
                 images: np.ndarray | None = None, base_float_groups: Iterable[str] | None = None,
                 **options: Any) -> None:
        spec = get_target(target)
        if not spec.mixed_precision:
            mixed = ", ".join(name for name, s in TARGETS.items() if s.mixed_precision)
            raise UsageError(f"the {target} exporter cannot keep layer groups in float",
                             f"use --target {mixed.replace(', ', ' or ')}, or drop --fidelity / quantize-report")
        self.deploy, self.target, self.precision, self.calibration = deploy, target, precision, calibration
        self.suffix = spec.suffix
        # what every candidate keeps float besides the groups tried: the target's default policy unless told
        self.base = tuple(spec.default_float_groups if base_float_groups is None else base_float_groups)
        self.images = calibration.images if images is None else images
        self.options = options
        with torch.no_grad():
            self.reference = np.concatenate([deploy(torch.from_numpy(self.images[i:i + 32])).numpy()
                                             for i in range(0, len(self.images), 32)])
        self.groups = layer_groups(deploy)
        self._cache: dict[frozenset[str], Score] = {}

    @property
    def evaluations(self) -> int:
        """Files exported and scored so far."""
        return len(self._cache)

    def __call__(self, float_groups: Iterable[str] = ()) -> Score:
        key = frozenset(float_groups)
        if key not in self._cache:
            self._cache[key] = self._score(tuple(g for g in self.groups if g in key))
        return self._cache[key]

    def _score(self, float_groups: tuple[str, ...]) -> Score:
        with tempfile.TemporaryDirectory(prefix="evim-mixed-") as tmp:
            path = Path(tmp) / f"candidate{self.suffix}"
            export(self.deploy, self.target, path, self.precision, self.calibration,
                   float_groups=(*self.base, *float_groups), **self.options)
            with load(path) as runtime:
                metrics = Metrics.compare(self.reference, runtime.run_nchw(self.images))
        return Score(float_groups, metrics.cosine, metrics.min_cosine, metrics.top1)


@dataclass
class GroupSensitivity:
    """One layer group's effect: ``alone`` = only it quantized; ``keep`` = all but it quantized."""

    group: str
    alone: Score | None = None
    keep: Score | None = None

    @property
    def damage(self) -> float:
        """1 - cosine when it alone is quantized (or the recovery when kept float): the ranking key."""
        if self.alone is not None:
            return 1 - self.alone.cosine
        return self.keep.cosine if self.keep is not None else 0.0


@dataclass
class SensitivityReport:
    target: str
    precision: str
    samples: int
    all_int8: Score
    all_float: Score  # every layer group float: what the exporter quantizes outside them (the "alone" floor)
    groups: list[GroupSensitivity] = field(default_factory=list)

    def ranked(self) -> list[GroupSensitivity]:
        return sorted(self.groups, key=lambda g: -g.damage)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "precision": self.precision, "samples": self.samples,
                "all_int8": asdict(self.all_int8), "all_float": asdict(self.all_float),
                "ranking": [{"group": g.group, "alone": asdict(g.alone) if g.alone else None,
                             "keep": asdict(g.keep) if g.keep else None} for g in self.ranked()]}

    def table(self) -> str:
        columns = "".join(f"{c:>11}" for c in ("cos alone", "top1 alone", "cos keep", "top1 keep"))
        head = f"{'rank':>4}  {'layer group':<22}{columns}"
        lines = [head, f"{'':>4}  {'(every group int8)':<22} {'':>10} {'':>10} "
                       f"{self.all_int8.cosine:>10.5f} {self.all_int8.top1:>10.2%}",
                 f"{'':>4}  {'(every group float)':<22} {self.all_float.cosine:>10.5f} {self.all_float.top1:>10.2%}"]
        for rank, g in enumerate(self.ranked(), 1):
            cells = [f"{s.cosine:>10.5f} {s.top1:>10.2%}" if s else f"{'-':>10} {'-':>10}" for s in (g.alone, g.keep)]
            lines.append(f"{rank:>4}  {g.group:<22} {cells[0]} {cells[1]}")
        return "\n".join(lines)


def sensitivity(scorer: Scorer, modes: Sequence[str] = MODES) -> SensitivityReport:
    """Score every layer group in each mode (one export and one run per group and mode)."""
    unknown = set(modes) - set(MODES)
    if unknown:
        raise UsageError(f"unknown sensitivity mode {sorted(unknown)[0]!r}", f"choose from {', '.join(MODES)}")
    report = SensitivityReport(scorer.target, scorer.precision, len(scorer.images), scorer(()), scorer(scorer.groups))
    for group in track(scorer.groups, "layer groups", total=len(scorer.groups)):
        row = GroupSensitivity(group)
        if "alone" in modes:
            row.alone = scorer([g for g in scorer.groups if g != group])
        if "keep" in modes:
            row.keep = scorer([group])
        report.groups.append(row)
    return report


def plot_ranking(report: SensitivityReport, path: str | Path, top: int = 20) -> Path:
    """Horizontal bars: 1 - cosine per group (alone) and the cosine recovered by keeping it float."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = report.ranked()[:top][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.5))
    y = np.arange(len(rows))
    if any(r.alone for r in rows):
        ax.barh(y + 0.2, [1 - r.alone.cosine if r.alone else 0 for r in rows], 0.4,
                label="1 - cos, only this group int8")
    if any(r.keep for r in rows):
        gain = [r.keep.cosine - report.all_int8.cosine if r.keep else 0 for r in rows]
        ax.barh(y - 0.2, gain, 0.4, label="cos gained by keeping it float")
    ax.set_yticks(y, [r.group for r in rows], fontsize=8)
    ax.set_xlabel("logits cosine vs fp32")
    ax.set_title(f"INT8 sensitivity, {report.target} {report.precision}, {report.samples} calibration images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_json(report: SensitivityReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_dict(), indent=2))


def print_report(report: SensitivityReport) -> None:
    console.print(f"every group int8: cosine {report.all_int8.cosine:.5f}, top-1 agreement {report.all_int8.top1:.2%}")
    print(report.table())
