"""This host as INT8 kernels see it: the CPU's model and ISA flags (``/proc/cpuinfo``), and library versions.

Integer kernels differ by ISA in more than speed. On x86 without a VNNI dot product (no ``avx512_vnni``,
``avx_vnni`` or AMX), ONNX Runtime's u8 x s8 matrix kernels multiply with ``vpmaddubsw``, which adds each
pair of adjacent u8 x s8 products into a *saturating* int16 before widening: a pair above 32767 is
clipped, so the same file computes different numbers than on a VNNI host (``vpdpbusd`` sums in int32).
ARM's dot-product and widening kernels, and depthwise kernels everywhere, are exact.
"""
from __future__ import annotations

import functools
import platform
from importlib import metadata

# The flags worth reporting: SIMD width and the integer/bf16 dot products that change INT8 kernels.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "i8mm",
             "sve")
# x86 flags whose kernels accumulate u8 x s8 products in int32 directly (no int16 pair sum).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
RUNTIME_LIBRARIES = ("onnxruntime", "ai-edge-litert")


@functools.lru_cache(maxsize=1)
def cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    """Every ISA flag the kernel reports (x86 ``flags``, ARM ``Features``)."""
    info = cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_model() -> str:
    info = cpuinfo()
    return info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def int16_pair_saturation() -> bool:
    """True where ONNX Runtime's u8 x s8 matrix kernels sum product pairs in saturating int16 (x86, no VNNI)."""
    return is_x86() and not (cpu_flags() & set(INT8_DOT_FLAGS))


def isa() -> list[str]:
    """The reported flags of :data:`ISA_FLAGS` that this CPU has."""
    flags = cpu_flags()
    return [flag for flag in ISA_FLAGS if flag in flags]


def library_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe(libraries: tuple[str, ...] = RUNTIME_LIBRARIES) -> dict:
    """A JSON-able record of this host for a manifest: CPU, ISA flags, whether INT8 pairs saturate, versions."""
    return {"cpu": cpu_model(), "machine": platform.machine(), "isa": isa(),
            "int16_pair_saturation": int16_pair_saturation(),
            **{name: library_version(name) for name in libraries}}
