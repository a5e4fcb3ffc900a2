"""Measure one model file in a fresh process, so every target runs under identical conditions.

``python -m evim_deploy.benchmark.worker '<json spec>'`` prints one JSON result line. The process
imports only the runtime it measures, so its peak RSS is the runtime's footprint.
"""
from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np


def run(spec: dict) -> dict:
    from ..targets import load
    from .stats import measure
    start = time.perf_counter()
    runtime = load(spec["file"], threads=spec.get("threads"), **spec.get("options", {}))
    load_ms = (time.perf_counter() - start) * 1e3
    batch = spec.get("batch", 1)
    shape = [batch if d is None or i == 0 else d for i, d in enumerate(runtime.input_shape)]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if np.issubdtype(runtime.input_dtype, np.integer):
        x = np.clip(x * 40, np.iinfo(runtime.input_dtype).min, np.iinfo(runtime.input_dtype).max)
    x = x.astype(runtime.input_dtype)
    start = time.perf_counter()
    runtime.predict(x)
    first_ms = (time.perf_counter() - start) * 1e3
    timing = measure(lambda: runtime.predict(x), warmup=spec.get("warmup", 10),
                     iterations=spec.get("iterations", 50), seconds=spec.get("seconds"))
    runtime.close()
    return {"load_ms": load_ms, "first_ms": first_ms, "timing": timing.to_dict(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "input_shape": shape, "input_dtype": str(runtime.input_dtype),
            "precision": runtime.manifest.precision, "resolution": list(runtime.manifest.input_size)}


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        print(json.dumps({"ok": True, **run(spec)}))
    except Exception as err:  # reported as the row's status, never a crash of the whole bench
        print(json.dumps({"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}))


if __name__ == "__main__":
    main()
