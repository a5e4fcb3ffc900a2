"""Latency measurement shared by ``evim-deploy bench`` and the scripts under ``bench/``."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass
class Timing:
    """Latency statistics of one configuration, in milliseconds."""

    samples: int
    median_ms: float
    mean_ms: float
    std_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float

    @classmethod
    def from_seconds(cls, times: list[float]) -> "Timing":
        if not times:
            raise ValueError("no timings")
        ms = sorted(t * 1e3 for t in times)
        return cls(len(ms), statistics.median(ms), statistics.fmean(ms), statistics.pstdev(ms),
                   percentile(ms, 90), percentile(ms, 99), ms[0])

    def throughput(self, batch: int = 1) -> float:
        """Images per second at the median latency."""
        return batch * 1e3 / self.median_ms

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (numpy's default method)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure(fn: Callable[[], object], warmup: int = 10, iterations: int | None = 100,
            seconds: float | None = None) -> Timing:
    """Time ``fn`` after ``warmup`` calls, for ``iterations`` calls or until ``seconds`` have passed."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds if seconds else None
    while True:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if deadline is not None:
            if time.perf_counter() >= deadline and len(times) >= 3:
                break
        elif len(times) >= (iterations or 100):
            break
    return Timing.from_seconds(times)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 10,
                iterations: int = 40) -> dict[str, Timing]:
    """Measure several candidates in alternating rounds so machine noise hits them alike; pool the samples."""
    pooled: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(iterations):
                start = time.perf_counter()
                fn()
                pooled[name].append(time.perf_counter() - start)
    return {name: Timing.from_seconds(times) for name, times in pooled.items()}
