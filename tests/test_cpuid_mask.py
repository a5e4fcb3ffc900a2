"""bench/isa/cpuid_avx2.c: the AVX2 view of a CPU for benchmarks (bench/int8_speed.py --isa avx2), and what
evim_deploy.host reports under it. The library either masks CPUID (hosts with CPUID faulting, such as the
device machine's Xeon) or refuses to run; it never lets a run pass as AVX2 unmasked."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evim_deploy import host

ROOT = Path(__file__).resolve().parents[1]
VNNI_HOST = frozenset("sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx_vnni amx_int8 amx_tile".split())


def test_host_reports_what_cpuid_shows_the_runtimes(monkeypatch):
    monkeypatch.setattr(host, "cpuinfo", lambda: {"flags": " ".join(sorted(VNNI_HOST)), "model name": "Xeon"})
    monkeypatch.setattr(host.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv(host.CPUID_MASK_ENV, raising=False)
    assert "avx512_vnni" in host.isa() and host.int16_pair_saturation() is False
    assert "cpuid_mask" not in host.describe(())
    monkeypatch.setenv(host.CPUID_MASK_ENV, "avx2")
    assert host.isa() == ["sse4_2", "avx", "avx2", "fma"] and host.int16_pair_saturation() is True
    assert host.describe(())["cpuid_mask"] == "avx2"


@pytest.mark.skipif(not host.is_x86() or shutil.which("gcc") is None,
                    reason="CPUID masking is x86 only, and gcc is needed to build bench/isa/cpuid_avx2.c")
def test_a_masked_rerun_sees_avx2_or_refuses_to_run(tmp_path):
    """The path ``bench/int8_speed.py --isa avx2`` takes: bench/cpuid.py builds the library and re-executes the
    script under it; after the re-run, numpy's own CPUID probe shows what the runtimes see."""
    script = tmp_path / "probe.py"
    script.write_text(f"""import os, sys
sys.path.insert(0, {str(ROOT / "bench")!r})
from cpuid import rerun_masked
rerun_masked("avx2")
from numpy._core._multiarray_umath import __cpu_features__ as f
print(os.environ.get("EVIM_DEPLOY_CPUID_MASK"), f["AVX2"], f["AVX512F"], f["AVX512VNNI"])
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    if done.returncode == 97:  # this host offers no CPUID faulting (host A): one line, nothing run
        assert done.stdout == "" and "offers no CPUID faulting" in done.stderr and "refusing" in done.stderr
    else:  # masked (the device machine): numpy's own CPUID probe sees AVX2 and nothing above it
        assert done.returncode == 0 and done.stdout.split() == ["avx2", "True", "False", "False"], done
