"""Run a bench script as an AVX2-only x86 CPU would: ONNX Runtime and XNNPACK pick their kernels from CPUID, so
with CPUID masked (``bench/isa/cpuid_avx2.c``, through CPUID faulting) they take their AVX2 paths on this CPU.

``rerun_masked("avx2")`` builds the library with gcc and re-executes the running script under ``LD_PRELOAD``;
where the kernel or CPU offers no CPUID faulting the library stops the run (exit 97) with one line saying so.
The masked run is still this CPU (its caches, clocks and memory): it times AVX2 kernels, not an AVX2-only host.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from evim_deploy import host

LIBRARIES = {"avx2": Path(__file__).parent / "isa" / "cpuid_avx2.c"}


def rerun_masked(level: str) -> None:
    """Re-execute this script with CPUID masked to ``level``; return at once when it already is."""
    if host.cpuid_mask() == level:
        return
    source = LIBRARIES[level]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    library = Path(tempfile.gettempdir()) / f"evim-cpuid-{level}-{digest}.so"
    if not library.exists():
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    preload = " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD")]))
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "LD_PRELOAD": preload})
