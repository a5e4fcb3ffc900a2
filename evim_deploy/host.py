"""This host as INT8 kernels see it: the CPU's model and ISA flags (``/proc/cpuinfo``), and library versions.

Runtimes pick kernels from CPUID. Where CPUID is masked for this process (``bench/isa/cpuid_avx2.c``, which
sets :data:`CPUID_MASK_ENV`), the flags it hides are left out here too, so records and warnings describe the
kernels that actually run.

Integer kernels differ by ISA in more than speed. On x86 without a VNNI dot product (no ``avx512_vnni``,
``avx_vnni`` or AMX), ONNX Runtime's u8 x s8 matrix kernels multiply with ``vpmaddubsw``, which adds each
pair of adjacent u8 x s8 products into a *saturating* int16 before widening: a pair above 32767 is
clipped, so the same file computes different numbers than on a VNNI host (``vpdpbusd`` sums in int32).
ARM's dot-product and widening kernels, and depthwise kernels everywhere, are exact.
"""
from __future__ import annotations

import functools
import os
import platform
from importlib import metadata

# The flags worth reporting: SIMD width and the integer/bf16 dot products that change INT8 kernels.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "i8mm",
             "sve")
# x86 flags whose kernels accumulate u8 x s8 products in int32 directly (no int16 pair sum).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
RUNTIME_LIBRARIES = ("onnxruntime", "ai-edge-litert")
CPUID_MASK_ENV = "EVIM_DEPLOY_CPUID_MASK"  # "avx2": CPUID shows this process no AVX-512, VNNI or AMX
MASKED_PREFIXES = {"avx2": ("avx512", "avx_vnni", "avx_ifma", "avx_ne_convert", "amx")}


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


def cpuid_mask() -> str | None:
    """The ISA level CPUID is masked to for this process (:data:`CPUID_MASK_ENV`), or None."""
    return os.environ.get(CPUID_MASK_ENV) or None


def cpu_flags() -> frozenset[str]:
    """Every ISA flag the kernel reports (x86 ``flags``, ARM ``Features``), less those CPUID hides from us."""
    info = cpuinfo()
    flags = frozenset((info.get("flags") or info.get("Features") or "").split())
    hidden = MASKED_PREFIXES.get(cpuid_mask() or "", ())
    return frozenset(f for f in flags if not f.startswith(hidden)) if hidden else flags


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
            **({"cpuid_mask": cpuid_mask()} if cpuid_mask() else {}),
            **{name: library_version(name) for name in libraries}}
