"""Third-party log noise stays off the terminal in ``export``, ``demo`` and ``bench``; ``--debug`` shows it.

Run in subprocesses: only there are file descriptors 1 and 2 the real ones, as C++ libraries (absl, LiteRT)
write to them."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from evim_deploy.testing.extras import require

NOISE = ("I0000", "W0000", "WARNING:absl", "absl::InitializeLog", "_pytree", "torchao", "Failed to load")

SNIPPET = """
import logging, os, sys, warnings
from evim_deploy.console import console, progress_bar, quiet, set_debug
set_debug({debug})
with quiet():
    os.write(2, b"I0000 00:00:1 port.cc:153] from C++\\n")
    os.write(1, b"W0000 stdout of C++\\n")
    print("torchao: print to stdout")
    print("WARNING:absl printed to stderr", file=sys.__stderr__)
    warnings.warn("_pytree register_constant is deprecated", FutureWarning)
    logging.getLogger("torchao").warning("torchao: Failed to load _C_mxfp8.so")
    with progress_bar() as bar:
        bar.add_task("ours-progress")
    console.print("ours-message")
    try:
        with quiet():
            raise RuntimeError("ours-error")
    except RuntimeError as err:
        console.print(f"caught {{err}}")
os.write(2, b"after-quiet\\n")
"""


def _run(debug: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SNIPPET.format(debug=debug)], capture_output=True, text=True,
                          timeout=120)


def test_quiet_drops_noise_at_the_descriptor_level_and_keeps_ours():
    proc = _run(debug=False)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in (proc.stdout + proc.stderr).splitlines() if any(n in line for n in NOISE)], proc
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == ["ours-message", "caught ours-error", "after-quiet"]


def test_progress_bars_and_messages_still_reach_a_terminal():
    """On a terminal (a pseudo-terminal here) the console writes to a copy of the terminal's descriptor."""
    pty = pytest.importorskip("pty", reason="pseudo-terminals exist only on POSIX systems")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", SNIPPET.format(debug=False)], stdin=slave, stdout=slave,
                            stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "ours-progress" in text and "ours-message" in text and "after-quiet" in text, text
    assert not any(n in text for n in NOISE), text


def test_debug_lets_everything_through():
    proc = _run(debug=True)
    text = proc.stdout + proc.stderr
    assert all(n in text for n in ("I0000", "W0000", "WARNING:absl", "_pytree", "torchao", "ours-message")), text


def test_an_error_inside_quiet_prints_its_message(tmp_path):
    """The exception leaves quiet() before the CLI prints it, so its one line reaches the terminal."""
    proc = subprocess.run([sys.executable, "-m", "evim_deploy.cli", "export", "--target", "onnx", "--model", "tiny",
                           "--resolution", "48x200", "--output", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "error:" in proc.stderr and "too small" in proc.stderr, proc.stderr


def _export_tflite(output, *debug: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evim_deploy.cli", *debug, "export", "--target", "tflite",
                           "--model", "tiny", "--output", str(output)],
                          capture_output=True, text=True, timeout=600, cwd=output.parent)


@pytest.mark.slow  # two LiteRT conversions
def test_export_tflite_shows_only_its_own_lines(tmp_path):
    require("litert_torch", "tflite")
    proc = _export_tflite(tmp_path / "m.tflite")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in (proc.stdout + proc.stderr).splitlines() if any(n in line for n in NOISE)] == []
    assert "wrote" in proc.stderr and "verify m.tflite: PASS" in proc.stderr, proc.stderr
    debug = _export_tflite(tmp_path / "d.tflite", "--debug")
    assert debug.returncode == 0, debug.stderr
    assert any(n in debug.stderr for n in NOISE), debug.stderr  # what the libraries chose to say, unfiltered
