"""Block sizes of the Triton kernels: defaults, and per-GPU sweep winners shipped as JSON.

Triton-free, so it imports (and is tested) anywhere. A config is keyed by the op's static shape,
never by the batch, so a new batch size compiles nothing new. A config is a dict of block sizes
(plus ``num_warps`` / ``num_stages``), or ``"torch"`` (run the op's torch twin) or ``"split"``
(the FFN as two linear kernels).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

Config = dict[str, Any]
LAUNCH_KEYS = ("num_warps", "num_stages")


def pow2(n: int, floor: int = 16) -> int:
    """The next power of two >= ``n`` (and >= ``floor``): Triton block dimensions."""
    return max(floor, 1 << (int(n) - 1).bit_length())


def default_config(key: tuple) -> Config:
    """Block sizes for one op shape; ``key[0]`` names the op. Sizes are the winners of the bench's sweep
    (``bench/gpu_throughput.py --sweep``) on an H200 for M1 at 224x224, and sensible elsewhere."""
    name = key[0]
    if name == "conv3x3":                  # (name, cin, cout)
        return {"BP": 256 if key[1] <= 4 or key[2] == 64 else 128 if key[2] <= 32 else 64, "num_warps": 4}
    if name == "depthwise":                # (name, C, stride)
        return {"BP": 32, "BC": 128, "num_warps": 4} if key[2] == 2 else {"BP": 64, "BC": 64, "num_warps": 4}
    if name == "linear":                   # (name, K, N, "plain" | "scale" | "residual")
        wide = key[3] == "scale" and key[2] > 128
        return {"BM": 128, "BN": 256 if wide else 128 if key[2] > 64 else 64, "BK": 64, "num_warps": 8,
                "num_stages": 3}
    if name == "mlp":                      # (name, C, HID, gate)
        cp, gate = pow2(key[1]), key[3]
        if cp <= 128:
            return {"BM": 128, "BH": 64, "num_warps": 4, "num_stages": 2}
        if cp <= 256 and not gate:
            return {"BM": 128, "BH": 64, "num_warps": 8, "num_stages": 2}
        return {"BM": 64 if cp <= 256 or not gate else 32, "BH": 32, "num_warps": 8, "num_stages": 2}
    if name == "ln_linear":                # (name, C, NOUT)
        cp = pow2(key[1])
        return {"BM": 64 if cp <= 256 else 32, "BN": min(pow2(key[2]), 128), "num_warps": 8}
    if name == "state":                    # (name, L, N, C)
        return {"BC": 64, "num_warps": 4}
    if name == "scan_out":                 # (name, L, N, C)
        return {"BL": min(pow2(key[1]), 64), "BC": 64, "num_warps": 4}
    if name == "ln_mean":                  # (name, feature shapes)
        return {"num_warps": 4}
    raise KeyError(name)


TUNED_DIR = Path(__file__).with_name("tuned")


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def load_overrides(path: str | Path) -> dict[tuple, Config | str]:
    """Read ``[[key, config], ...]`` JSON (what the bench's sweep writes) into an overrides dict."""
    return {_hashable(key): cfg for key, cfg in json.loads(Path(path).read_text())}


def save_overrides(path: str | Path, overrides: dict[tuple, Config | str]) -> None:
    Path(path).write_text(json.dumps([[list(key), cfg] for key, cfg in overrides.items()]))


def shipped_overrides(device_name: str) -> dict[tuple, Config | str]:
    """Sweep winners shipped for this GPU model (``tuned/<gpu name>.json``), or none."""
    path = TUNED_DIR / (re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_") + ".json")
    return load_overrides(path) if path.exists() else {}
