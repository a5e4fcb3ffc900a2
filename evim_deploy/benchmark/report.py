"""Benchmark reports: a rich table, JSON, CSV, Markdown, and the latency plots."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from rich.table import Table

from .runner import BenchRow, scaling_slopes

COLUMNS = ("target", "precision", "input", "threads", "batch", "median ms", "mean±σ ms", "p90 ms", "p99 ms",
           "img/s", "load ms", "first ms", "peak RSS MB", "file MB", "x best")


def _cells(row: BenchRow, ratio: float | None) -> list[str]:
    size = f"{row.resolution[0]}x{row.resolution[1]}"
    head = [row.target, row.precision, size, str(row.threads), str(row.batch)]
    if not row.ok:
        return head + [row.status] + [""] * (len(COLUMNS) - len(head) - 1)
    t = row.timing
    return head + [f"{t.median_ms:.2f}", f"{t.mean_ms:.2f}±{t.std_ms:.2f}", f"{t.p90_ms:.2f}", f"{t.p99_ms:.2f}",
                   f"{row.throughput():.0f}", f"{row.load_ms:.0f}", f"{row.first_ms:.1f}", f"{row.peak_rss_mb:.0f}",
                   f"{row.file_mb:.1f}", f"{ratio:.2f}" if ratio else ""]


def common_resolution(rows: list[BenchRow]) -> tuple[int, int] | None:
    sizes = [r.resolution for r in rows if r.ok]
    return max(set(sizes), key=sizes.count) if sizes else None


def ratios(rows: list[BenchRow]) -> list[float | None]:
    """Each row's median over the fastest median at the most common input size (None at other sizes)."""
    common = common_resolution(rows)
    peers = [r.timing.median_ms for r in rows if r.ok and r.resolution == common]
    return [r.timing.median_ms / min(peers) if r.ok and r.resolution == common else None for r in rows]


def table(rows: list[BenchRow], title: str = "evim-deploy bench") -> Table:
    out = Table(title=title)
    for name in COLUMNS:
        out.add_column(name, justify="left" if name in ("target", "precision", "input") else "right")
    for row, ratio in zip(rows, ratios(rows)):
        out.add_row(*_cells(row, ratio), style=None if row.ok else "yellow")
    return out


def write_json(path: str | Path, rows: list[BenchRow], machine: dict, config: dict) -> None:
    data = {"machine": machine, "config": config, "rows": [r.to_dict() for r in rows],
            "scaling_slopes": scaling_slopes(rows)}
    Path(path).write_text(json.dumps(data, indent=2))


def write_csv(path: str | Path, rows: list[BenchRow]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS + ("status",))
        for row, ratio in zip(rows, ratios(rows)):
            writer.writerow(_cells(row, ratio) + [row.status])


def markdown(rows: list[BenchRow], machine: dict) -> str:
    lines = [f"Machine: {machine['cpu']}, {machine['usable_cores']} cores, ISA {' '.join(machine['isa'])}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r, ratio)) + " |" for r, ratio in zip(rows, ratios(rows))]
    slopes = scaling_slopes(rows)
    if slopes:
        lines += ["", "Slope of log-latency vs log-pixels (1.0 = linear in pixels):"]
        lines += [f"- {label}: {slope:.3f}" for label, slope in slopes.items()]
    return "\n".join(lines) + "\n"


def plot(path: str | Path, rows: list[BenchRow]) -> None:
    """Left: latency vs pixels per target, log-log, with a slope-1 guide. Right: latency per target."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r.ok and r.batch == 1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    series: dict[str, list[BenchRow]] = {}
    for row in ok:
        series.setdefault(f"{row.label} ({row.threads}t)", []).append(row)
    for label, points in series.items():
        points = sorted(points, key=lambda r: r.resolution[0] * r.resolution[1])
        if len(points) > 1:
            left.plot([p.resolution[0] * p.resolution[1] for p in points], [p.timing.median_ms for p in points],
                      "o-", label=label)
    swept = [r for pts in series.values() if len(pts) > 1 for r in pts]
    if swept:
        anchor = min(swept, key=lambda r: r.resolution[0] * r.resolution[1])
        x0 = anchor.resolution[0] * anchor.resolution[1]
        xs = [x0, max(r.resolution[0] * r.resolution[1] for r in swept)]
        left.plot(xs, [anchor.timing.median_ms * x / x0 for x in xs], "k--", alpha=0.5, label="slope 1 (linear)")
        left.legend(fontsize=8)
    left.set(xscale="log", yscale="log", xlabel="input pixels (H×W)", ylabel="median latency (ms)",
             title="Latency vs resolution (HSM-SSD is linear in tokens)")
    left.grid(True, which="both", alpha=0.3)
    common = common_resolution(ok)
    bars = [r for r in ok if r.resolution == common]
    spread = [[r.timing.median_ms - r.timing.min_ms for r in bars], [r.timing.p90_ms - r.timing.median_ms for r in bars]]
    right.barh([f"{r.label} {r.threads}t b{r.batch}" for r in bars], [r.timing.median_ms for r in bars],
               xerr=spread, color="tab:blue")
    right.set(xlabel="median latency (ms); whiskers: min to p90",
              title=f"Latency per target at {common[0]}x{common[1]}" if common else "")
    right.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
