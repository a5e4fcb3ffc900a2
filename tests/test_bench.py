"""Benchmark statistics, report writers, the adb seam, and one real `evim-deploy bench` run. No timing is asserted."""
from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from evim_deploy.benchmark import Timing, measure, percentile
from evim_deploy.benchmark import adb, report, runner
from evim_deploy.benchmark.machine import machine_info
from evim_deploy.errors import UsageError
from evim_deploy.targets import export, get_target

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    values = sorted(np.random.default_rng(1).exponential(size=37).tolist())
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_timing_statistics():
    t = Timing.from_seconds([0.004, 0.001, 0.002, 0.003, 0.010])
    assert (t.samples, t.median_ms, t.min_ms) == (5, pytest.approx(3.0), pytest.approx(1.0))
    assert t.mean_ms == pytest.approx(4.0) and t.std_ms == pytest.approx(np.std([4, 1, 2, 3, 10]))
    assert t.p90_ms == pytest.approx(np.percentile([1, 2, 3, 4, 10], 90))
    assert t.throughput(batch=8) == pytest.approx(8 / 0.003)
    with pytest.raises(ValueError):
        Timing.from_seconds([])


def test_measure_counts_warmup_and_iterations():
    calls = []
    t = measure(lambda: calls.append(1), warmup=3, iterations=7)
    assert len(calls) == 10 and t.samples == 7


def _row(target, precision, size, ms, ok=True):
    row = runner.BenchRow(target, precision, (size, size), 2, 1, status="ok" if ok else "needs macOS")
    if ok:
        row.timing = Timing.from_seconds([ms / 1e3 * f for f in (0.9, 1.0, 1.1)])
        row.load_ms, row.first_ms, row.peak_rss_mb, row.file_mb = 50.0, 9.0, 300.0, 26.7
    return row


@pytest.fixture
def rows():
    return [_row("onnx", "fp32", s, 5.0 * (s / 224) ** 2) for s in (224, 448, 896)] + [
        _row("onnx", "int8", 224, 2.5), _row("coreml", "fp16", 224, 0, ok=False)]


def test_scaling_slope_of_quadratic_pixels_is_one(rows):
    slopes = runner.scaling_slopes(rows)
    assert list(slopes) == ["onnx fp32 @2t"] and slopes["onnx fp32 @2t"] == pytest.approx(1.0, abs=1e-9)


def test_report_writers(rows, tmp_path):
    machine = machine_info()
    report.write_json(tmp_path / "b.json", rows, machine, {"model": "m1"})
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["machine"]["logical_cores"] >= 1 and "libraries" in data["machine"]
    assert data["rows"][3]["timing"]["median_ms"] == pytest.approx(2.5)
    assert data["rows"][4]["status"] == "needs macOS" and data["rows"][4]["timing"] is None
    report.write_csv(tmp_path / "b.csv", rows)
    table = list(csv.reader((tmp_path / "b.csv").open()))
    assert table[0][0] == "target" and table[4][-2] == "1.00" and table[1][-2] == "2.00"  # fp32 = 2x int8
    assert "needs macOS" in table[5]
    md = report.markdown(rows, machine)
    assert md.count("\n| onnx") == 4 and "Slope" in md
    report.plot(tmp_path / "b.png", rows)
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_plan_sweeps_resolution_only_for_sweep_targets():
    config = runner.BenchConfig(targets=["onnx", "tflite"], precisions=["fp32", "int8"], resolutions=[224, 512],
                                threads=[1, 2])
    planned = [(r.target, r.precision, r.resolution[0], r.threads) for r in runner.plan(config)]
    assert ("onnx", "fp32", 512, 2) in planned and ("onnx", "int8", 512, 2) not in planned
    assert ("tflite", "fp32", 512, 1) not in planned and ("tflite", "int8", 224, 1) in planned
    assert len(planned) == 10


def test_coreml_row_says_needs_macos_on_linux():
    import platform
    reason = get_target("coreml").unavailable_reason()
    if platform.system() == "Darwin":
        assert reason is None or "not installed" in reason
    else:
        assert reason == "needs macOS" or "not installed" in reason


@pytest.mark.parametrize("name,runs,avg,median,init,memory", [
    ("benchmark_model_info_prefixed.txt", 108, 9.24566, 9.192, 61.204, 58.9805),
    ("benchmark_model_plain.txt", 50, 2950.34, None, 17.187, 46.0859)])
def test_adb_parser_on_recorded_output(name, runs, avg, median, init, memory):
    timing = adb.parse_benchmark_output((DATA / name).read_text())
    assert timing.runs == runs and timing.avg_ms == pytest.approx(avg)
    assert timing.median_ms == (pytest.approx(median) if median else None)
    assert timing.init_ms == pytest.approx(init) and timing.memory_overall_mb == pytest.approx(memory)


def test_adb_parser_rejects_output_without_timings():
    with pytest.raises(UsageError, match="no timings"):
        adb.parse_benchmark_output("ERROR: Could not open '/data/local/tmp/x.tflite'.\n")


def test_adb_invocation_pushes_then_benchmarks(tmp_path):
    model = tmp_path / "m1.tflite"
    model.write_bytes(b"tfl3")
    calls = []

    def fake_run(args, **kwargs):
        calls.append(args)
        out = (DATA / "benchmark_model_info_prefixed.txt").read_text() if "shell" in args else ""
        return subprocess.CompletedProcess(args, 0, out, "")

    timing = adb.run_on_device(model, "adb:R58M123", threads=2, runner=fake_run)
    assert calls[0] == ["adb", "-s", "R58M123", "push", str(model), "/data/local/tmp/m1.tflite"]
    assert calls[1][:4] == ["adb", "-s", "R58M123", "shell"]
    assert "--graph=/data/local/tmp/m1.tflite" in calls[1][4] and "--num_threads=2" in calls[1][4]
    assert timing.avg_ms == pytest.approx(9.24566)


def test_adb_failures_are_one_line_errors(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    failing = lambda args, **kw: subprocess.CompletedProcess(args, 1, "", "error: device 'X' not found")  # noqa: E731
    with pytest.raises(UsageError, match="device 'X' not found"):
        adb.run_on_device(model, "adb:X", runner=failing)
    with pytest.raises(UsageError, match="adb:SERIAL"):
        adb.run_on_device(model, "usb")


def test_bench_cli_on_an_onnx_file(cli, tmp_path):
    from evim_deploy import create_model, reparameterize
    path = export(reparameterize(create_model("m1"), (64, 64)), target="onnx", output=tmp_path / "m1.onnx")
    code, _, err = cli("bench", path, "--iterations", "3", "--warmup", "1", "--workdir", tmp_path,
                           "--csv", tmp_path / "b.csv", "--markdown", tmp_path / "b.md")
    assert code == 0, err
    data = json.loads((tmp_path / "bench.json").read_text())
    (row,) = data["rows"]
    assert row["status"] == "ok" and row["target"] == "onnx" and row["resolution"] == [64, 64]
    assert row["timing"]["samples"] == 3 and row["peak_rss_mb"] > 10 and row["load_ms"] > 0
    assert (tmp_path / "bench.png").exists() and "| onnx" in (tmp_path / "b.md").read_text()


def test_bench_cli_missing_file(cli, tmp_path):
    code, _, err = cli("bench", tmp_path / "nope.onnx")
    assert code == 2 and "not found" in err
