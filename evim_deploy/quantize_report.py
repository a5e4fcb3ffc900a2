"""Per-layer-group INT8 sensitivity, and the fewest float groups that reach a fidelity target.

A *layer group* is a module of the deploy form: ``stem``; per block ``stages.<stage>.<block>.<part>``
with part ``dwconv1``, ``mixer``, ``dwconv2``, ``fc1``, ``fc2`` or ``residual`` (the block's own
residual mixes); each ``downsamples.<i>``; the ``head``. An INT8 exporter that takes ``float_layers``
keeps those groups in float on top of its own default policy. Every figure here comes from the real
exporter and the real runtime: they are the figures of the file a user would ship.

* :func:`sensitivity`: per group, the logits cosine and top-1 agreement with fp32 when only that group
  is quantized (``alone``) and when every group but it is quantized (``keep``: the recovery from
  keeping it in float).
* :func:`choose_float_groups`: greedy in order of recovery, then pruned, until the cosine on the
  calibration images reaches the target (what ``export --fidelity`` records in the manifest).
"""
from __future__ import annotations

import copy
import inspect
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .calibration import CalibrationSet
from .console import console, track
from .errors import UsageError

RESIDUAL = "residual"  # a block's own ops (its residual mixes), outside its sub-modules
BLOCK_PARTS = ("dwconv1", "mixer", "dwconv2", "fc1", "fc2", RESIDUAL)
MODES = ("alone", "keep")


def layer_groups(deploy: torch.nn.Module) -> list[str]:
    """The deploy form's layer groups, input to output."""
    groups = ["stem"]
    for i, (blocks, down) in enumerate(zip(deploy.stages, deploy.downsamples)):
        groups += [f"stages.{i}.{j}.{part}" for j in range(len(blocks)) for part in BLOCK_PARTS]
        if not isinstance(down, torch.nn.Identity):
            groups.append(f"downsamples.{i}")
    return groups + ["head"]


def in_groups(module_path: str, groups: Iterable[str]) -> bool:
    """Whether a module path lies in one of ``groups`` (``stages.0.1.residual``: the block's own ops only)."""
    for group in groups:
        block, _, part = group.rpartition(".")
        if part == RESIDUAL and module_path == block:
            return True
        if module_path == group or module_path.startswith(group + "."):
            return True
    return False


def onnx_module_path(node_name: str) -> str:
    """``/stages.0.0/mixer/norm/LayerNormalization`` -> ``stages.0.0.mixer.norm`` (TorchScript exporter scopes)."""
    path = ""
    for scope in node_name.strip("/").split("/")[:-1]:
        path = scope if (not path or scope.startswith(path + ".")) else f"{path}.{scope}"
    return path


def onnx_nodes_in_groups(graph, groups: Iterable[str]) -> list[str]:
    """Names of the ONNX nodes that belong to ``groups`` (for ORT's ``nodes_to_exclude``)."""
    groups = list(groups)
    return [node.name for node in graph.graph.node if groups and in_groups(onnx_module_path(node.name), groups)]


def supports_float_layers(target: str) -> bool:
    """Whether ``target``'s exporter honours ``float_layers`` (it must, or the option would be ignored)."""
    from .backends import get_backend
    return "float_layers" in inspect.signature(get_backend(target).load_exporter()).parameters


@dataclass(frozen=True)
class Score:
    """How close one mixed-precision file is to fp32 on the scoring images."""

    float_groups: tuple[str, ...]
    cosine: float
    min_cosine: float
    top1: float


class Scorer:
    """Exports ``deploy`` to ``target`` with some groups in float and compares its logits with fp32.

    Scores are cached per set of float groups; files are written to a temporary folder and deleted.
    """

    def __init__(self, deploy: torch.nn.Module, target: str, precision: str, calibration: CalibrationSet,
                 images: np.ndarray | None = None, **options: Any) -> None:
        if not supports_float_layers(target):
            raise UsageError(f"the {target} exporter cannot keep layer groups in float yet",
                             "use --target onnx, or drop --fidelity / quantize-report for this target")
        self.deploy, self.target, self.precision, self.calibration = deploy, target, precision, calibration
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
        from .backends import get_backend
        from .export import export
        from .runtime import load
        from .verify import Metrics
        with tempfile.TemporaryDirectory(prefix="evim-mixed-") as tmp:
            path = Path(tmp) / f"candidate{get_backend(self.target).suffix}"
            export(self.deploy, self.target, path, self.precision, self.calibration, float_layers=float_groups,
                   **self.options)
            with load(path) as backend:
                metrics = Metrics.compare(self.reference, backend.run_nchw(self.images))
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


@dataclass
class FidelityChoice:
    """The float groups ``export --fidelity`` settled on and what they reach."""

    target_cosine: float
    float_groups: tuple[str, ...]
    score: Score
    all_int8: Score
    candidates_tried: int
    ranked_by: str

    def record(self) -> dict[str, Any]:
        """What goes into the manifest's ``extra["fidelity"]``."""
        return {"target_cosine": self.target_cosine, "float_layers": list(self.float_groups),
                "cosine": round(self.score.cosine, 6), "top1_agreement": round(self.score.top1, 6),
                "all_int8_cosine": round(self.all_int8.cosine, 6), "candidates_tried": self.candidates_tried,
                "ranked_by": self.ranked_by}


def choose_float_groups(scorer: Scorer, target_cosine: float, ranker: Scorer | None = None) -> FidelityChoice:
    """Fewest float groups (greedy by recovery, then pruned) whose file reaches ``target_cosine``.

    Groups are tried in order of the cosine each recovers alone, measured by ``ranker`` (default: the
    target itself; a fast ONNX stand-in for slow targets). Every decision is scored on the target.
    """
    if not 0 < target_cosine <= 1:
        raise UsageError(f"--fidelity {target_cosine} is not a cosine in (0, 1]", "pass e.g. --fidelity 0.995")
    ranker = ranker or scorer
    base = scorer(())
    chosen: list[str] = []
    if base.cosine < target_cosine:
        recovery = {g: ranker([g]).cosine for g in track(scorer.groups, "fidelity: groups", total=len(scorer.groups))}
        for group in sorted(scorer.groups, key=lambda g: -recovery[g]):
            chosen.append(group)
            if scorer(chosen).cosine >= target_cosine:
                break
        else:
            raise UsageError(f"even with every layer group in float the {scorer.target} file reaches cosine "
                             f"{scorer(chosen).cosine:.5f} < {target_cosine}",
                             "lower --fidelity, or export fp16/fp32")
        for group in reversed(chosen[:-1]):  # drop any group the others made unnecessary
            trial = [g for g in chosen if g != group]
            if scorer(trial).cosine >= target_cosine:
                chosen = trial
    final = scorer(chosen)
    return FidelityChoice(target_cosine, final.float_groups, final, base, scorer.evaluations, ranker.target)


def with_fidelity(model: torch.nn.Module, target: str, precision: str, calibration: CalibrationSet | None,
                  target_cosine: float, options: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """For ``export(..., fidelity=...)``: the model (its manifest carrying the choice) and ``float_layers``."""
    if precision not in ("int8", "w8a8"):
        raise UsageError(f"--fidelity applies to INT8 files, not {precision}", "add --precision int8 (or w8a8)")
    if calibration is None:
        raise UsageError("--fidelity needs calibration images", "pass --calib DIR")
    # Ranking needs one file per group: for targets slower to export than ONNX, ONNX ranks and the target decides.
    # The stand-in quantizes every op (no float policy of its own), so each group's own sensitivity shows.
    ranker = None if target == "onnx" else Scorer(model, "onnx", "int8", calibration, keep_float=(),
                                                  per_channel=options.get("per_channel", True))
    choice = choose_float_groups(Scorer(model, target, precision, calibration, **options), target_cosine, ranker)
    console.print(f"fidelity {target_cosine}: float groups {', '.join(choice.float_groups) or '(none)'}; cosine "
                  f"{choice.score.cosine:.5f} on {len(calibration)} calibration images "
                  f"(every group int8: {choice.all_int8.cosine:.5f}; {choice.candidates_tried} {target} files tried, "
                  f"groups ranked by {choice.ranked_by})")
    view = copy.copy(model)  # shares the weights; only the manifest differs
    view.manifest = model.manifest.replace(extra={**model.manifest.extra, "fidelity": choice.record()})
    return view, {**options, "float_layers": choice.float_groups}


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
