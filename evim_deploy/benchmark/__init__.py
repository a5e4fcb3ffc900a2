"""Latency benchmarking: statistics, per-target measurement in isolated processes, reports and plots."""
from __future__ import annotations

from .stats import Timing, interleaved, measure, percentile

__all__ = ["Timing", "interleaved", "measure", "percentile"]
