"""ExecuTorch runtime: a ``.pte`` program in ``executorch.runtime``, its XNNPACK partitions on the XNNPACK delegate.

The manifest is a method of the program (:mod:`evim_deploy.formats.executorch`); loading needs the runtime only,
not ExecuTorch's exporter.
"""
from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from ..console import quiet
from ..errors import UsageError
from ..formats import executorch as executorch_format
from ..manifest import Manifest
from .base import Runtime


def set_threads(threads: int | None) -> None:
    """Start ExecuTorch's one thread pool, which XNNPACK uses, with ``threads`` threads (None: one per core).
    The pool is process-wide: the last runtime loaded sets its size."""
    from executorch.extension.pybindings import portable_lib
    if portable_lib._threadpool_get_thread_count() != threads and threads:
        portable_lib._unsafe_reset_threadpool(threads)


class ExecuTorchRuntime(Runtime):
    """A ``.pte`` file in ExecuTorch's Python runtime.

    ``threads`` sizes ExecuTorch's thread pool, which is one per process: two runtimes in one process share
    the count of the last one loaded. A loaded method reuses its planned memory on every call, so calls are
    serialized.
    """

    name = "executorch"
    thread_safe = False

    def __init__(self, path, threads=None, provider=None) -> None:
        if provider not in (None, "cpu", "CPUExecutionProvider"):
            raise UsageError(f"the executorch runtime has no provider {provider!r}",
                             "drop the provider: ExecuTorch runs on the CPU (XNNPACK and portable kernels)")
        super().__init__(path, threads=threads, provider=provider)

    def _read(self) -> Manifest:
        with quiet():  # the runtime's cpuinfo lines about /sys files an x86 host has not
            from executorch.runtime import Runtime as ExecuTorch
            try:
                program = ExecuTorch.get().load_program(self.path)
            except (RuntimeError, ValueError) as err:
                self._refuse(str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__)
            if executorch_format.FORWARD not in program.method_names:
                self._refuse("it has no forward method")
            try:
                manifest = executorch_format.read_manifest(program)
            except (RuntimeError, ValueError):
                manifest = None
            if manifest is None:
                raise UsageError(f"{self.path} carries no evim-deploy manifest",
                                 "export it with evim-deploy export --target executorch")
            set_threads(self.threads)
            self.method = program.load_method(executorch_format.FORWARD)
        self.program = program
        self._io = executorch_format.method_io(program.metadata(executorch_format.FORWARD))
        first = self._io["inputs"][0]
        self.input_shape, self.input_dtype = tuple(first["shape"]), np.dtype(first["dtype"])
        if self.input_shape[2:] != tuple(manifest.input_size):
            self._refuse(f"its manifest is for {manifest.input_size[0]}x{manifest.input_size[1]} input, its "
                         f"forward takes {list(self.input_shape)}")
        return manifest

    def _refuse(self, why: str) -> NoReturn:
        raise UsageError(f"{self.path} is not a loadable ExecuTorch program ({why})",
                         "re-export it with evim-deploy export --target executorch") from None

    def _run(self, native: np.ndarray) -> np.ndarray:
        import torch
        return self.method.execute([torch.from_numpy(np.ascontiguousarray(native))])[0].numpy()

    def close(self) -> None:
        self.method = self.program = None

    def io(self) -> dict[str, Any]:
        """``forward``'s real input and output shapes and dtypes."""
        return self._io

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "delegation": self.manifest.extra.get("delegation")}
