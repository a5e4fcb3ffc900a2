"""Plan, export (what is missing) and measure benchmark rows; each row runs in its own process."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .. import interrupts
from ..errors import EvimError
from ..files import artifact_megabytes
from ..targets import TARGETS, TargetSpec, export, get_target, target_for_path
from .stats import Timing

HW = tuple[int, int]


@dataclass
class RowSpec:
    """One configuration to measure."""

    target: str
    precision: str
    resolution: HW
    threads: int
    batch: int
    file: str | None = None


@dataclass
class BenchRow(RowSpec):
    """A measured configuration (``status`` says why there is no timing when there is none)."""

    status: str = "ok"
    timing: Timing | None = None
    load_ms: float | None = None
    first_ms: float | None = None
    peak_rss_mb: float | None = None
    file_mb: float | None = None

    @property
    def ok(self) -> bool:
        return self.timing is not None

    @property
    def label(self) -> str:
        return f"{self.target} {self.precision}"

    def throughput(self) -> float | None:
        return self.timing.throughput(self.batch) if self.timing else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["resolution"] = list(self.resolution)
        data["throughput_ips"] = self.throughput()
        return data


@dataclass
class BenchConfig:
    """What ``evim-deploy bench`` was asked to do."""

    model: str = "m1"
    checkpoint: str | None = None
    files: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"])
    threads: list[int] = field(default_factory=lambda: [2])
    batches: list[int] = field(default_factory=lambda: [1])
    resolutions: list[int] = field(default_factory=lambda: [224])
    sweep_targets: list[str] = field(default_factory=lambda: [n for n, s in TARGETS.items() if s.sweep])
    iterations: int = 50
    seconds: float | None = None
    warmup: int = 10
    workdir: str = "out/bench"
    calib: str | None = None
    options: dict = field(default_factory=dict)


def plan(config: BenchConfig) -> list[RowSpec]:
    """Rows to measure: given files, or targets x precisions at the first resolution plus the resolution sweep."""
    if config.files:
        return [RowSpec(target_for_path(f).name, "file", (0, 0), t, b, f)
                for f in config.files for t in config.threads for b in config.batches]
    first, *rest = config.resolutions
    rows = []
    for target in config.targets:
        spec = get_target(target)
        for precision in config.precisions:
            if precision not in spec.precisions:
                continue
            sizes = [first] + (rest if target in config.sweep_targets and precision == config.precisions[0] else [])
            rows += [RowSpec(target, precision, (size, size), t, b)
                     for size in sizes for t in config.threads for b in config.batches]
    return rows


class ArtifactCache:
    """Exports files into ``workdir`` on demand and reuses them across rows and runs."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.workdir = Path(config.workdir)
        self._reference = None
        self._deploy: dict[HW, object] = {}

    def reference(self):
        if self._reference is None:
            from ..model import create_model
            self._reference = create_model(self.config.model, self.config.checkpoint)
        return self._reference

    def path(self, row: RowSpec) -> Path:
        spec = get_target(row.target)
        dynamic = "_dyn" if self._batch_option(spec) else ""
        source = Path(self.config.checkpoint).stem if self.config.checkpoint else "random"
        name = f"{self.config.model}_{source}_{row.resolution[0]}x{row.resolution[1]}_{row.precision}{dynamic}"
        return self.workdir / f"{name}{spec.suffix}"

    def get(self, row: RowSpec) -> Path:
        path = self.path(row)
        if path.exists():
            return path
        from ..model import reparameterize
        if row.resolution not in self._deploy:
            self._deploy[row.resolution] = reparameterize(self.reference(), row.resolution)
        deploy = self._deploy[row.resolution]
        spec = get_target(row.target)
        calibration = self._calibration(deploy.manifest) if spec.needs_calibration(row.precision) else None
        options = dict(self.config.options.get(row.target, {}))
        if self._batch_option(spec):
            options[spec.batch_option] = True
        return export(deploy, row.target, path, row.precision, calibration, **options)

    def _batch_option(self, spec: TargetSpec) -> str | None:
        """The target's export option that frees the batch dimension, when batches above 1 are measured."""
        return spec.batch_option if max(self.config.batches) > 1 else None

    def _calibration(self, manifest):
        from ..calibration import load_calibration
        from ..samples import sample_images
        folder = self.config.calib or str(sample_images()[0].parent)
        return load_calibration(folder, manifest, samples=64)


def measure_file(path: str | Path, row: RowSpec, config: BenchConfig) -> dict:
    """Run the worker on one file in a fresh Python process; return its JSON result."""
    spec = {"file": str(path), "threads": row.threads, "batch": row.batch, "iterations": config.iterations,
            "seconds": config.seconds, "warmup": config.warmup}
    with subprocess.Popen([sys.executable, "-m", "evim_deploy.benchmark.worker", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc, \
            interrupts.cleanup(proc.kill):  # Ctrl-C ends the CLI at once: the worker goes with it
        stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"worker exited {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def run_row(row: RowSpec, cache: ArtifactCache, config: BenchConfig) -> BenchRow:
    result = BenchRow(**asdict(row))
    reason = get_target(row.target).unavailable_reason(exporting=not row.file)
    if reason:
        result.status = reason
        return result
    try:
        path = Path(row.file) if row.file else cache.get(row)
    except EvimError as err:
        result.status = f"export failed: {err}"
        return result
    except Exception as err:  # one broken exporter must not sink the other rows
        result.status = f"export failed (internal): {type(err).__name__}: {err}"
        return result
    result.file = str(path)
    result.file_mb = artifact_megabytes(path)
    measured = measure_file(path, row, config)
    if not measured.get("ok"):
        result.status = f"failed: {measured.get('error')}"
        return result
    result.timing = Timing(**measured["timing"])
    result.load_ms, result.first_ms = measured["load_ms"], measured["first_ms"]
    result.peak_rss_mb = measured["peak_rss_mb"]
    if row.file:
        result.resolution, result.precision = tuple(measured["resolution"]), measured["precision"]
    return result


def run(config: BenchConfig, on_row: Callable[[BenchRow], None] | None = None) -> list[BenchRow]:
    """Measure every planned row (exporting what is missing); ``on_row`` is called after each."""
    for target in config.targets:
        get_target(target)  # an unknown name is a one-line error before anything runs
    cache = ArtifactCache(config)
    rows = []
    for spec in plan(config):
        row = run_row(spec, cache, config)
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def scaling_slopes(rows: list[BenchRow]) -> dict[str, float]:
    """Least-squares slope of log(latency) vs log(pixels) per target/precision (1.0 = linear in pixels)."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.ok and row.batch == 1:
            pixels = row.resolution[0] * row.resolution[1]
            groups.setdefault(f"{row.label} @{row.threads}t", []).append((math.log(pixels),
                                                                         math.log(row.timing.median_ms)))
    slopes = {}
    for label, points in groups.items():
        if len({p for p, _ in points}) >= 3:
            mx = sum(p for p, _ in points) / len(points)
            my = sum(t for _, t in points) / len(points)
            slopes[label] = sum((p - mx) * (t - my) for p, t in points) / sum((p - mx) ** 2 for p, _ in points)
    return slopes
