"""What the benchmark ran on: CPU model, cores, ISA flags, library versions."""
from __future__ import annotations

import os
import platform
import re
from importlib import metadata

from .. import host

DISTRIBUTION = "evim-deploy"


def libraries() -> list[str]:
    """evim-deploy and every distribution it requires, its extras' included (the dev extra left out)."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return [DISTRIBUTION]
    names = [re.split(r"[\s<>=!~\[;(]", req, maxsplit=1)[0] for req in requirements if "extra == \"dev\"" not in req]
    return [DISTRIBUTION, *dict.fromkeys(n for n in names if n and n != DISTRIBUTION)]


def machine_info() -> dict:
    """A JSON-able description of this machine and the libraries the benchmark used."""
    versions = {name: host.library_version(name) for name in libraries()}
    return {
        "cpu": host.cpu_model(),
        "machine": platform.machine(), "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": sorted(host.isa()), "libraries": versions,
    }
