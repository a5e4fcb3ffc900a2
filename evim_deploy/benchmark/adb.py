"""Android device seam: push a ``.tflite`` and run LiteRT's ``benchmark_model`` over adb.

Nothing here needs a phone to be tested: the command line is built by :func:`benchmark_command` and the
output parsed by :func:`parse_benchmark_output`, both unit-tested against recorded output.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from ..targets import TARGETS, TargetSpec, target_for_path

REMOTE_DIR = "/data/local/tmp"
_NUM = r"([0-9.]+(?:e[+-]?\d+)?)"
_RUN = re.compile(rf"count=(\d+) first={_NUM} curr={_NUM} min={_NUM} max={_NUM} avg={_NUM} std={_NUM}"
                  rf"(?: p5={_NUM} median={_NUM} p95={_NUM})?")
_SUMMARY = re.compile(rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}, "
                      rf"Warmup \(avg\): {_NUM}, Inference \(avg\): {_NUM}")
_MEMORY = re.compile(rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
                     rf"init={_NUM} overall={_NUM}")


@dataclass
class DeviceTiming:
    """What ``benchmark_model`` reports, in milliseconds and MB."""

    runs: int
    avg_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    median_ms: float | None
    init_ms: float
    first_ms: float
    memory_overall_mb: float | None


def parse_benchmark_output(text: str) -> DeviceTiming:
    """Parse ``benchmark_model`` stdout (plain, ``INFO:``-prefixed or logcat-prefixed lines)."""
    runs = [m for m in _RUN.finditer(text)]
    summary = _SUMMARY.search(text)
    if not runs or summary is None:
        tail = text.strip().splitlines()[-1:] or ["no output"]
        raise UsageError(f"benchmark_model output has no timings (last line: {tail[0][:200]})",
                         "check the model runs on the device: adb shell /data/local/tmp/benchmark_model --graph=...")
    run = runs[-1]  # the first 'count=' line is the warm-up phase
    memory = _MEMORY.search(text)
    us = lambda value: float(value) / 1e3  # noqa: E731
    return DeviceTiming(runs=int(run.group(1)), avg_ms=us(run.group(6)), std_ms=us(run.group(7)),
                        min_ms=us(run.group(4)), max_ms=us(run.group(5)),
                        median_ms=us(run.group(9)) if run.group(9) else None,
                        init_ms=us(summary.group(1)), first_ms=us(summary.group(2)),
                        memory_overall_mb=float(memory.group(2)) if memory else None)


def benchmark_command(serial: str, remote_model: str, threads: int = 4, runs: int = 50, xnnpack: bool = True,
                      binary: str = f"{REMOTE_DIR}/benchmark_model", adb: str = "adb") -> list[str]:
    """The adb invocation that runs ``benchmark_model`` on ``remote_model``. adb hands the phone's shell one
    string, so every word is quoted there: a file name with a space or ``;`` stays one argument."""
    remote = shlex.join([binary, f"--graph={remote_model}", f"--num_threads={threads}", f"--num_runs={runs}",
                         "--warmup_runs=10", f"--use_xnnpack={'true' if xnnpack else 'false'}"])
    return [adb, "-s", serial, "shell", remote]


def run_on_device(tflite: str | Path, device: str, threads: int = 4, runs: int = 50, adb: str = "adb",
                  runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> DeviceTiming:
    """Push ``tflite`` to the phone named by ``device`` (``adb:SERIAL``) and benchmark it there."""
    if not device.startswith("adb:") or len(device) <= 4:
        raise UsageError(f"bad device {device!r}", "use --device adb:SERIAL (serial from `adb devices`)")
    serial, tflite = device[4:], Path(tflite)
    if not target_for_path(tflite).on_device_benchmark:
        raise UsageError(f"{tflite} is no file LiteRT's benchmark_model runs", f"pass a {device_target().suffix} file")
    remote_model = f"{REMOTE_DIR}/{tflite.name}"

    def call(args: list[str]) -> str:
        try:
            proc = runner(args, capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            raise UsageError(f"'{adb}' not found", "install Android platform-tools and put adb on PATH") from None
        if proc.returncode != 0:
            raise UsageError(f"{shlex.join(args)} failed: {(proc.stderr or proc.stdout).strip()[:200]}",
                             "check `adb devices` lists the phone and benchmark_model is in /data/local/tmp")
        return proc.stdout

    call([adb, "-s", serial, "push", str(tflite), remote_model])  # push takes the path as is: no shell there
    return parse_benchmark_output(call(benchmark_command(serial, remote_model, threads, runs, adb=adb)))


def device_target() -> TargetSpec:
    """The target whose files :func:`run_on_device` runs (``on_device_benchmark`` in the table)."""
    return next(spec for spec in TARGETS.values() if spec.on_device_benchmark)
