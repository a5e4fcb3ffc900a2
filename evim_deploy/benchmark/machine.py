"""What the benchmark ran on: CPU model, cores, ISA flags, library versions."""
from __future__ import annotations

import os
import platform
import re
from importlib import metadata

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "sve")
DISTRIBUTION = "evim-deploy"


def libraries() -> list[str]:
    """evim-deploy and every distribution it requires, its extras' included (the dev extra left out)."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return [DISTRIBUTION]
    names = [re.split(r"[\s<>=!~\[;(]", req, maxsplit=1)[0] for req in requirements if "extra == \"dev\"" not in req]
    return [DISTRIBUTION, *dict.fromkeys(n for n in names if n and n != DISTRIBUTION)]


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if ":" in line:
                    key, value = (part.strip() for part in line.split(":", 1))
                    info.setdefault(key, value)
    except OSError:
        pass
    return info


def machine_info() -> dict:
    """A JSON-able description of this machine and the libraries the benchmark used."""
    cpu = _cpuinfo()
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    versions = {}
    for name in libraries():
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "machine": platform.machine(), "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": sorted(f for f in ISA_FLAGS if f in flags), "libraries": versions,
    }
