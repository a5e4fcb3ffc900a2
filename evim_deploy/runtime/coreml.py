"""Core ML runtime: a ``.mlpackage`` run by Core ML on macOS, or by the numpy MIL interpreter elsewhere.

Engines (``engine=``):

- ``"coreml"``: real Core ML prediction with ``compute_units`` (``all``, ``cpu``, ``cpu_gpu``,
  ``cpu_ne``). macOS only: coremltools cannot predict anywhere else.
- ``"interpreter"``: :mod:`evim_deploy.runtime.mil_interpreter` evaluates the saved program in numpy,
  in the program's own precision. It gives the file's numbers, not Core ML's speed.
- ``None`` (default): ``"coreml"`` on macOS; elsewhere ``"interpreter"``, announced with a warning.
  So ``predict`` and ``verify`` work on Linux, while :attr:`CoreMLRuntime.benchmark_unavailable` says
  why a latency measurement would be meaningless (benchmarks must skip the row and print it).

Native input: for an image-input file, uint8 RGB pixels ``(1, H, W, 3)`` (what a camera frame
holds); for a tensor-input file, normalized float32 ``(1, 3, H, W)``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..console import warn
from ..errors import TargetUnavailableError, UsageError
from ..manifest import Manifest
from ..formats import coreml as coreml_format
from .base import Runtime

COMPUTE_UNITS = {"all": "ALL", "cpu": "CPU_ONLY", "cpu_gpu": "CPU_AND_GPU", "cpu_ne": "CPU_AND_NE"}
ENGINES = ("coreml", "interpreter")
NEEDS_MACOS = "Core ML prediction and latency need macOS (coremltools: 'Model prediction is only supported on macOS')"


def default_engine() -> str:
    return "coreml" if sys.platform == "darwin" else "interpreter"


def bench_unavailable() -> str | None:
    """Why Core ML cannot be timed on this host (None on macOS)."""
    return None if sys.platform == "darwin" else "needs macOS"


class CoreMLRuntime(Runtime):
    """A ``.mlpackage`` (ML program) exported by evim-deploy."""

    name = "coreml"
    thread_safe = False

    def __init__(self, path, threads=None, provider=None, compute_units: str | None = None,
                 engine: str | None = None) -> None:
        units = compute_units or provider or "all"
        if units not in COMPUTE_UNITS:
            raise UsageError(f"unknown Core ML compute units {units!r}", f"choose one of {', '.join(COMPUTE_UNITS)}")
        if engine is not None and engine not in ENGINES:
            raise UsageError(f"unknown Core ML engine {engine!r}", f"choose one of {', '.join(ENGINES)}")
        self.compute_units = units
        self.engine = engine or default_engine()
        self._announce = engine is None and self.engine == "interpreter"
        self._interpreter = None
        self._model = None
        super().__init__(path, threads=threads, provider=provider)

    # -------------------------------------------------------------------------------------- opening
    def _read(self) -> Manifest:
        self.spec = coreml_format.load_spec(self.path)
        manifest = coreml_format.read_manifest(self.spec, self.path)
        feature = self.spec.description.input[0]
        self.input_name = feature.name
        self.image_input = feature.type.WhichOneof("Type") == "imageType"
        if self.image_input:
            self.input_shape = (1, feature.type.imageType.height, feature.type.imageType.width, 3)
            self.input_dtype = np.dtype(np.uint8)
        else:
            self.input_shape = tuple(int(d) for d in feature.type.multiArrayType.shape)
            self.input_dtype = np.dtype(np.float32)
        if self.engine == "coreml":
            if sys.platform != "darwin":
                raise TargetUnavailableError(NEEDS_MACOS, "on Linux pass engine='interpreter' (numpy MIL "
                                              "interpreter: the file's numbers, not Core ML's speed)")
            ct = coreml_format.import_coremltools()
            self._model = ct.models.MLModel(str(self.path),
                                            compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[self.compute_units]))
        return manifest

    @property
    def benchmark_unavailable(self) -> str | None:
        """Why this file cannot be timed here (None when it can): the interpreter is not Core ML."""
        return None if self.engine == "coreml" else NEEDS_MACOS + "; the numpy MIL interpreter is not timed"

    @property
    def interpreter(self):
        """The numpy MIL interpreter of this package (built on first use)."""
        if self._interpreter is None:
            from .mil_interpreter import MILInterpreter
            if self._announce:
                warn(f"{NEEDS_MACOS}: running {self.path.name} through evim-deploy's numpy MIL interpreter "
                     "(the program's numbers in its own precision, not Core ML's kernels or speed)")
                self._announce = False
            self._interpreter = MILInterpreter.from_package(self.path)
        return self._interpreter

    # -------------------------------------------------------------------------------------- running
    def from_nchw(self, x: np.ndarray) -> np.ndarray:
        """Normalized NCHW -> this file's input. Image input: float pixels ``(x * std + mean) * 255`` in
        NHWC, not rounded, so random inputs stay exact through the interpreter."""
        if not self.image_input:
            return x.astype(np.float32, copy=False)
        mean = np.asarray(self.manifest.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.manifest.std, np.float32).reshape(1, 3, 1, 1)
        return np.ascontiguousarray(((x * std + mean) * 255.0).transpose(0, 2, 3, 1), dtype=np.float32)

    def _run(self, native: np.ndarray) -> np.ndarray:
        if self.engine == "interpreter":
            x = native.astype(np.float32).transpose(0, 3, 1, 2) if self.image_input else native
            return self.interpreter.run({self.input_name: np.ascontiguousarray(x, dtype=np.float32)})["logits"]
        return self._predict_coreml(native)

    def _predict_coreml(self, native: np.ndarray) -> np.ndarray:  # pragma: no cover - macOS only
        if self.image_input:
            from PIL import Image
            pixels = np.rint(native[0]) if native.dtype != np.uint8 else native[0]
            if pixels.min() < 0 or pixels.max() > 255:
                warn("pixels outside 0..255 clipped: an image input takes 8-bit pixels only")
            feed = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        else:
            feed = native
        return np.asarray(self._model.predict({self.input_name: feed})["logits"], np.float32)

    def io(self) -> dict:
        """Inputs and outputs as an app sees them: the image (or tensor), the classifier outputs, the logits."""
        return coreml_format.describe_io(self.spec)

    def describe(self) -> dict:
        info = super().describe()
        outputs = [o.name for o in self.spec.description.output]
        info.update(engine=self.engine, compute_units=self.compute_units, input=self.input_name,
                    image_input=self.image_input, outputs=outputs,
                    min_target=self.manifest.extra.get("min_target"), benchmark_unavailable=self.benchmark_unavailable)
        return info

    def close(self) -> None:
        self._model = None
        self._interpreter = None
