"""PyTorch runtime: a ``.pt2`` ``torch.export`` archive of the deploy form, run eagerly on the CPU."""
from __future__ import annotations

import numpy as np

from ..formats import torch as torch_format
from ..manifest import Manifest
from .base import Runtime


class TorchRuntime(Runtime):
    """Eager PyTorch on the CPU."""

    name = "torch"

    def _read(self) -> Manifest:
        program, manifest = torch_format.load(self.path)
        self.module = program.module()
        self.input_shape = (1, 3, *manifest.input_size)
        return manifest

    def _run(self, native: np.ndarray) -> np.ndarray:
        import torch
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(native))).float().numpy()
