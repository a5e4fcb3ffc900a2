"""``--fidelity``: the fewest layer groups kept float (on top of the target's policy) that reach a logits
cosine on the calibration images. The search calls ``export()``; ``export()`` never calls the search.

:func:`choose_float_groups` is greedy in order of recovery, then pruned, until the cosine on the
calibration images reaches the target; :func:`export_with_fidelity` composes it with ``export()`` and records
the choice in the manifest.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..calibration import CalibrationSet
from ..console import console, track
from ..errors import UsageError
from ..targets import export, get_target, ranking_target
from .sensitivity import Score, Scorer


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
        return {"target_cosine": self.target_cosine, "float_groups": list(self.float_groups),
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


def export_with_fidelity(model: torch.nn.Module, target: str, output: str | Path | None, precision: str | None,
                         calibration: CalibrationSet | None, target_cosine: float, force: bool = False,
                         **options: Any) -> Path:
    """``export()`` with the fewest layer groups in float (on top of the target's policy) that reach
    ``target_cosine`` on the calibration images; the choice is recorded in the manifest's ``fidelity``."""
    spec = get_target(target)
    precision = precision or spec.default_precision
    if not spec.needs_calibration(precision):
        raise UsageError(f"--fidelity applies to INT8 files, not {precision}",
                         f"add --precision {spec.int8_precision or 'int8'}")
    if calibration is None:
        raise UsageError("--fidelity needs calibration images", "pass --calib DIR")
    if options.get("float_groups") is not None:
        raise UsageError("--fidelity chooses the float groups itself", "drop --float-groups, or drop --fidelity")
    options.pop("float_groups", None)
    output = spec.output_path(model, precision, output, force)  # refused before minutes of search, not after
    # Ranking needs one file per group: for targets slower to export, a fast one ranks and the target decides.
    # The stand-in quantizes every op (no float policy of its own), so each group's own sensitivity shows.
    fast = ranking_target()
    ranker = None if fast.name == target else Scorer(model, fast.name, fast.int8_precision, calibration,
                                                     base_float_groups=(),
                                                     per_channel=options.get("per_channel", True))
    scorer = Scorer(model, target, precision, calibration, **options)
    choice = choose_float_groups(scorer, target_cosine, ranker)
    console.print(f"fidelity {target_cosine}: float groups {', '.join(choice.float_groups) or '(none)'}; cosine "
                  f"{choice.score.cosine:.5f} on {len(calibration)} calibration images "
                  f"(every group int8: {choice.all_int8.cosine:.5f}; {choice.candidates_tried} {target} files tried, "
                  f"groups ranked by {choice.ranked_by})")
    view = copy.copy(model)  # shares the weights; only the manifest differs
    view.manifest = model.manifest.replace(extra={**model.manifest.extra, "fidelity": choice.record()})
    return export(view, target, output, precision, calibration, force=force,
                  float_groups=(*scorer.base, *choice.float_groups), **options)
