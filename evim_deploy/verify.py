"""Numerical verification of an exported file against the PyTorch reference."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import host
from .manifest import Manifest
from .preprocess import list_images, preprocess
from .runtime import Runtime

# Per precision: the bounds a file must meet. cosine is the mean per-image cosine. An fp32 file is judged against
# the reference run in float64, because a fixed bound sits at the noise floor of a model with large logits: its
# max|Δ| may be at most own_ratio x PyTorch fp32's own (the worst of OWN_DRAWS runs, see own_draws), or at most
# relative x max|logit|. That floor is ~8 fp32 ulps of the largest logit, below the rounding that any real network
# accumulates: it only matters where PyTorch's own error is near zero (a trivial model). A fixed max_abs bound can
# still be passed in.
THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"own_ratio": 4.0, "relative": 1e-6},
    "fp16": {"cosine": 0.9999, "norm": 0.01},
    "int8-weights": {"cosine": 0.999, "norm": 0.02},
    "int8": {"cosine": 0.99, "top1": 0.97, "norm": 0.05},
    "w8a8": {"cosine": 0.99, "top1": 0.97, "norm": 0.05},
}
# Cosine ignores scale: a file whose logits are all multiplied by a constant has cosine 1. "norm" bounds the
# median |‖file‖ / ‖reference‖ - 1| over the inputs (a zero-mean rounding error moves it by about noise² / 2).
# Trained models separate classes, so INT8 must keep the decisions: tighter bounds on real images
# (evidence in docs/int8.md). Gaussian noise lies outside any calibration range by construction, so for a
# trained INT8 file the random inputs are measured and reported, not judged.
TRAINED_INT8 = {"cosine": 0.995, "top1": 0.99}
QUANTIZED = ("int8", "w8a8")
# PyTorch fp32's own error is measured on the inputs and on OWN_DRAWS - 1 copies moved by one ulp each way at random
# (the input rounded the other way), which redraws every rounding error downstream. Where a layer amplifies rounding
# (a squeeze-excite gate near a cancellation), one draw can be lucky: on harsh M1 photos PyTorch's own max|Δ| was
# 1.6e-4 on the inputs and 3e-4 to 8e-4 on five redraws, so a file judged against the single draw failed by chance.
OWN_DRAWS = 4
UNMEASURED_MAX_ABS = 1e-4  # the former fixed fp32 bound, for metrics compared without a float64 reference
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Metrics:
    """How far a file's logits are from the reference's."""

    samples: int
    max_abs: float
    cosine: float
    min_cosine: float
    top1: float
    top5: float
    # Near-tie diagnostics, in units of the reference logits' per-input standard deviation (medians):
    # the reference's top-1 minus top-2 margin, and the file's RMS logit error. Any file flips a decision
    # whose margin is within its noise; random weights leave many such near-ties, trained models few.
    margin: float = float("nan")
    noise: float = float("nan")
    clear_flips: int = 0  # top-1 changes where the margin exceeded 3x that input's RMS error: real errors
    # Non-finite values in the file's logits, each one a failure. fp32's largest value counts as inf: XNNPACK
    # clamps an infinite logit to it.
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    # Against the reference run in float64 (None unless measured): the file's max|Δ|, PyTorch fp32's own, and
    # the largest |logit|.
    float64_max_abs: float | None = None
    own_max_abs: float | None = None
    scale: float | None = None
    norm_ratio: float = float("nan")  # median over inputs of ‖file logits‖ / ‖reference logits‖

    @classmethod
    @np.errstate(invalid="ignore", over="ignore")  # non-finite logits are counted below, not warned about
    def compare(cls, reference: np.ndarray, test: np.ndarray, reference64: np.ndarray | None = None,
                redraws: Sequence[np.ndarray] = ()) -> "Metrics":
        """``reference64``: the reference's logits in float64, for the fp32 bound; ``redraws``: more fp32 reference
        logits (:func:`own_draws`) for PyTorch fp32's own error, the worst draw of all."""
        reference, test = np.asarray(reference, np.float64), np.asarray(test, np.float64)
        num = (reference * test).sum(-1)
        den = np.linalg.norm(reference, axis=-1) * np.linalg.norm(test, axis=-1)
        cos = num / np.maximum(den, 1e-30)
        k = min(5, reference.shape[-1])
        ref5, test5 = np.argsort(-reference, -1)[:, :k], np.argsort(-test, -1)[:, :k]
        overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ref5, test5)])
        spread = np.maximum(reference.std(-1), 1e-30)
        top2 = np.sort(reference, -1)[:, -2:] if reference.shape[-1] > 1 else np.zeros((len(reference), 2))
        margin = (top2[:, 1] - top2[:, 0]) / spread
        noise = np.sqrt(((test - reference) ** 2).mean(-1)) / spread
        clear_flips = int(((ref5[:, 0] != test5[:, 0]) & (margin > 3 * noise)).sum())
        exact = (None,) * 3 if reference64 is None else (
            float(np.abs(test - reference64).max()),
            float(np.max([np.abs(np.asarray(draw, np.float64) - reference64).max() for draw in (reference, *redraws)])),
            float(np.abs(reference64).max()))
        return cls(len(reference), float(np.abs(reference - test).max()), float(cos.mean()), float(cos.min()),
                   float((ref5[:, 0] == test5[:, 0]).mean()), float(overlap), float(np.median(margin)),
                   float(np.median(noise)), clear_flips, int(np.isnan(test).sum()), int((test >= FLOAT32_MAX).sum()),
                   int((test <= -FLOAT32_MAX).sum()), *exact,
                   float(np.median(np.linalg.norm(test, axis=-1) / np.maximum(np.linalg.norm(reference, axis=-1),
                                                                              1e-30))))

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def near_ties(self) -> bool:
        """True when every top-1 change happened where the reference's margin was within 3x the file's error."""
        return self.clear_flips == 0

    @property
    def own_ratio(self) -> float:
        """The file's max|Δ| against float64 over PyTorch fp32's own (NaN when not measured)."""
        if self.float64_max_abs is None or self.own_max_abs is None:
            return float("nan")
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.float64(self.float64_max_abs) / self.own_max_abs)


@dataclass
class VerifyReport:
    """The outcome of one ``verify``: metrics on real images and random inputs, and the verdict."""

    file: str
    precision: str
    thresholds: dict[str, float]
    metrics: dict[str, Metrics] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the figures cannot show, e.g. another CPU's kernels
    host: dict = field(default_factory=dict)  # where it was verified: CPU, ISA, runtime versions

    @property
    def passed(self) -> bool:
        return not self.failures

    def hints(self) -> list[str]:
        """Why a top-1 failure next to a passing cosine says little (random weights have near-tied logits)."""
        return [f"{name}: every top-1 change is a near-tie (reference top-2 margin within 3x the file's error; "
                f"medians {m.margin:.2f} and {m.noise:.2f} logit std): random weights leave such ties, so judge "
                f"INT8 top-1 on a trained checkpoint (--checkpoint, or the tiny fixture: docs/int8.md)"
                for name, m in self.metrics.items()
                if m.near_ties and not m.nonfinite and any(f.startswith(f"{name} top-1") for f in self.failures)
                and not any(f.startswith(f"{name} cosine") for f in self.failures)]

    def to_dict(self) -> dict:
        return {"file": self.file, "precision": self.precision, "passed": self.passed, "thresholds": self.thresholds,
                "metrics": {k: asdict(v) for k, v in self.metrics.items()}, "failures": self.failures,
                "hints": self.hints(), "warnings": self.warnings, "host": self.host}

    def summary(self) -> str:
        parts = [f"{name}: {_error_text(m, self.thresholds)} cos {m.cosine:.6f} top1 {m.top1:.1%} top5 {m.top5:.1%}"
                 for name, m in self.metrics.items()]
        return ("PASS" if self.passed else "FAIL " + "; ".join(self.failures)) + " | " + " | ".join(parts)


def _error_text(m: Metrics, bounds: dict[str, float]) -> str:
    """max|Δ|, against float64 next to PyTorch fp32's own where the bounds judge it so."""
    if "own_ratio" not in bounds or m.float64_max_abs is None:
        return f"max|Δ| {m.max_abs:.2e}"
    return (f"max|Δ| vs float64 {m.float64_max_abs:.1e}, PyTorch fp32's own {m.own_max_abs:.1e} "
            f"(ratio {m.own_ratio:.2g}x, bound {bounds['own_ratio']:g}x)")


def thresholds_for(manifest: Manifest, trained: bool = False) -> dict[str, float]:
    precision = manifest.precision
    if precision == "int8" and manifest.extra.get("activations") == "float":
        precision = "int8-weights"  # weight-only INT8 (Core ML --precision int8) keeps float activations
    bounds = dict(THRESHOLDS.get(precision, THRESHOLDS["int8"]))
    if trained and precision in ("int8", "w8a8"):
        bounds.update(TRAINED_INT8)
    return bounds


def needs_float64(bounds: dict[str, float]) -> bool:
    return "own_ratio" in bounds or "relative" in bounds


def _near_float64(m: Metrics, bounds: dict[str, float]) -> bool:
    """The fp32 rule: max|Δ| vs float64 within own_ratio x PyTorch fp32's own, or within relative x max|logit|.
    Metrics compared without a float64 reference (bench/fidelity.py) fall back to the former fixed bound."""
    if m.float64_max_abs is None or m.own_max_abs is None or m.scale is None:
        return m.max_abs <= UNMEASURED_MAX_ABS
    return bool(m.float64_max_abs <= bounds.get("own_ratio", 0.0) * m.own_max_abs
                or m.float64_max_abs <= bounds.get("relative", 0.0) * m.scale)  # NaN makes both False


def check(metrics: Metrics, bounds: dict[str, float], label: str) -> list[str]:
    """The bounds ``metrics`` misses. Every test is written so that a NaN figure fails it."""
    m, failures = metrics, []
    if m.nonfinite:
        failures.append(f"{label}: {m.nonfinite} non-finite logits (NaN {m.nan}, +inf {m.posinf}, -inf {m.neginf})")
    if "max_abs" in bounds and not m.max_abs <= bounds["max_abs"]:
        failures.append(f"{label} max|Δ| {m.max_abs:.2e} > {bounds['max_abs']:.0e}")
    if needs_float64(bounds) and not _near_float64(m, bounds):
        failures.append(f"{label} max|Δ| {m.max_abs:.2e} > {UNMEASURED_MAX_ABS:.0e} (no float64 reference)"
                        if m.float64_max_abs is None else
                        f"{label} max|Δ| vs float64 {m.float64_max_abs:.1e} > {bounds.get('own_ratio', 0):g}x "
                        f"PyTorch fp32's own {m.own_max_abs:.1e} (ratio {m.own_ratio:.2g}x) and > "
                        f"{bounds.get('relative', 0):g}x max|logit| {m.scale:.1e}")
    if "cosine" in bounds and not m.cosine >= bounds["cosine"]:
        failures.append(f"{label} cosine {m.cosine:.6f} < {bounds['cosine']}")
    if "norm" in bounds and not abs(m.norm_ratio - 1) <= bounds["norm"]:
        failures.append(f"{label} logit scale {m.norm_ratio:.4f}x the reference's, beyond 1 ± {bounds['norm']:g}")
    if "top1" in bounds and not m.top1 >= bounds["top1"]:
        failures.append(f"{label} top-1 agreement {m.top1:.1%} < {bounds['top1']:.0%}")
    return failures


def verification_inputs(manifest: Manifest, images: str | Path | None = None, random_inputs: int = 8,
                        seed: int = 0, max_images: int = 64) -> dict[str, np.ndarray]:
    """Normalized NCHW inputs: the user's images (or the bundled sample photos) and seeded Gaussian noise."""
    from .samples import sample_images
    files = list_images(images)[:max_images] if images is not None else sample_images()
    sets = {}
    if files:
        sets["images"] = np.stack([preprocess(f, manifest) for f in files])
    if random_inputs > 0:
        rng = np.random.default_rng(seed)
        sets["random"] = rng.standard_normal((random_inputs, 3, *manifest.input_size)).astype(np.float32)
    return sets


@torch.no_grad()
def reference_logits(reference: torch.nn.Module, x: np.ndarray, batch: int = 16) -> np.ndarray:
    """Logits of ``x`` in float32, or in float64 for a float64 module (:func:`float64_reference`)."""
    reference = reference.eval()
    dtype = next(reference.parameters(), torch.empty(0)).dtype
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return np.concatenate([reference(torch.from_numpy(x[i:i + batch]).to(dtype)).to(dtype).numpy()
                           for i in range(0, len(x), batch)])


def float64_reference(reference: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``reference``: the exact answer that fp32 files and PyTorch fp32 both round."""
    return copy.deepcopy(reference).double().eval()


def own_draws(reference: torch.nn.Module, x: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """The fp32 reference's logits on OWN_DRAWS - 1 copies of ``x``, each value moved one ulp up or down at random."""
    rng, x = np.random.default_rng(seed), np.asarray(x, np.float32)
    away = [np.where(rng.random(x.shape) < 0.5, -np.inf, np.inf).astype(np.float32) for _ in range(OWN_DRAWS - 1)]
    return [reference_logits(reference, np.nextafter(x, direction)) for direction in away]


def verify(runtime: Runtime, reference: torch.nn.Module, images: str | Path | None = None, random_inputs: int = 8,
           seed: int = 0, trained: bool = False, bounds: dict[str, float] | None = None) -> VerifyReport:
    """Run ``runtime`` (an opened file) and ``reference`` on the same inputs and judge the file by its
    precision's bounds."""
    manifest = runtime.manifest
    bounds = bounds or thresholds_for(manifest, trained)
    report = VerifyReport(str(runtime.path), manifest.precision, bounds, host=host.describe())
    report.warnings += [hazard] if (hazard := runtime.kernel_hazard()) else []
    reference64 = float64_reference(reference) if needs_float64(bounds) else None  # once per call
    for name, x in verification_inputs(manifest, images, random_inputs, seed).items():
        exact, draws = (None, []) if reference64 is None else (reference_logits(reference64, x),
                                                               own_draws(reference, x, seed))
        metrics = Metrics.compare(reference_logits(reference, x), runtime.run_nchw(x), exact, draws)
        report.metrics[name] = metrics
        if not (trained and name == "random" and manifest.precision in QUANTIZED):
            report.failures += check(metrics, bounds, name)
    return report
