"""LiteRT (TFLite) runtime: ``ai_edge_litert.interpreter`` with XNNPACK, or the reference kernels.

The manifest travels inside the flatbuffer (:mod:`evim_deploy.formats.tflite`), so loading needs no PyTorch.
"""
from __future__ import annotations

from typing import NoReturn

import numpy as np

from ..errors import UsageError
from ..formats import tflite as tflite_format
from ..manifest import Manifest
from .base import Runtime


class TFLiteRuntime(Runtime):
    """A ``.tflite`` file in the LiteRT interpreter.

    XNNPACK runs it by default; ``reference_kernels=True`` uses TFLite's reference kernels
    (``OpResolverType.BUILTIN_REF``, slow, for a numerics check) and ``xnnpack=False`` the
    optimized builtin kernels without any delegate. The interpreter is not thread-safe, so the
    base class serializes calls.
    """

    name = "tflite"
    thread_safe = False

    def __init__(self, path, threads=None, provider=None, reference_kernels: bool = False,
                 xnnpack: bool = True) -> None:
        if provider not in (None, "cpu", "CPUExecutionProvider"):
            raise UsageError(f"the tflite runtime has no provider {provider!r}",
                             "drop the provider: LiteRT runs on the CPU (XNNPACK or the reference kernels)")
        self.reference_kernels, self.xnnpack = reference_kernels, xnnpack and not reference_kernels
        super().__init__(path, threads=threads, provider=provider)

    def _read(self) -> Manifest:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        data = self.path.read_bytes()
        try:
            manifest = tflite_format.read_manifest(data)
        except Exception:  # the flatbuffer accessors fail in many ways on a file that is no flatbuffer
            self._refuse("it is not a TFLite flatbuffer")
        if manifest is None:
            raise UsageError(f"{self.path} carries no evim-deploy manifest", "export it with evim-deploy")
        resolver = (OpResolverType.BUILTIN_REF if self.reference_kernels else
                    OpResolverType.AUTO if self.xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads or None,
                                           experimental_op_resolver_type=resolver)
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as err:
            self._refuse(str(err).strip().splitlines()[0][:200])
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"])
        self.input_dtype = np.dtype(self._input["dtype"])
        return manifest

    def _refuse(self, why: str) -> NoReturn:
        raise UsageError(f"{self.path} is not a loadable TFLite model ({why})",
                         "re-export it with evim-deploy export --target tflite") from None

    @property
    def input_quantization(self) -> tuple[float, int] | None:
        """(scale, zero point) of an integer input tensor; None for a float input."""
        return self._input["quantization"] if self.input_dtype.kind in "iu" else None

    def from_nchw(self, x: np.ndarray) -> np.ndarray:
        """Normalized NCHW float32 -> this file's layout, quantized with its scale and zero point if integer."""
        if self.manifest.layout == "nhwc":
            x = x.transpose(0, 2, 3, 1)
        if self.input_quantization is None:
            return np.ascontiguousarray(x, dtype=self.input_dtype)
        scale, zero_point = self.input_quantization
        info = np.iinfo(self.input_dtype)
        return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(self.input_dtype)

    def _run(self, native: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._input["index"], np.ascontiguousarray(native))
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self._output["index"])
        if np.dtype(self._output["dtype"]).kind in "iu":
            scale, zero_point = self._output["quantization"]
            return (logits.astype(np.float32) - zero_point) * scale
        return logits

    def close(self) -> None:
        self.interpreter = None

    def io(self) -> dict:
        """The file's real tensor names, shapes and dtypes, with scale / zero point of integer tensors."""
        return {"inputs": [tflite_format.describe_io(self._input)], "outputs": [tflite_format.describe_io(self._output)]}

    def delegation(self) -> dict:
        """How XNNPACK took the graph: ``partitions`` (delegate kernels) and ``undelegated``, a count of the
        file's ops left to TFLite's own kernels as ``"OP dtype"`` (each runs outside the delegate, with a
        thread pool of its own). A file with no undelegated op runs as one XNNPACK partition."""
        return tflite_format.delegation(self.interpreter)

    def describe(self) -> dict:
        kernels = "reference" if self.reference_kernels else "xnnpack" if self.xnnpack else "builtin"
        return {**super().describe(), "layout": self.manifest.layout, "kernels": kernels,
                "input_quantization": self.input_quantization}

