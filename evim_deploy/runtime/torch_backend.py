"""PyTorch backend: a ``.pt2`` ``torch.export`` archive of the deploy form."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UsageError
from ..manifest import Manifest
from .base import Backend


class TorchBackend(Backend):
    """Eager PyTorch on the CPU."""

    name = "torch"

    def _read(self) -> Manifest:
        from ..export.torch_export import MANIFEST_FILE
        extra = {MANIFEST_FILE: ""}
        try:
            program = torch.export.load(str(self.path), extra_files=extra)
        except Exception as err:  # torch raises many types for a bad archive
            raise UsageError(f"{self.path} is not a torch.export archive ({type(err).__name__})",
                             "export it with evim-deploy export --target torch") from None
        self.module = program.module()
        manifest = Manifest.from_json(extra[MANIFEST_FILE])
        self.input_shape = (1, 3, *manifest.input_size)
        return manifest

    @torch.inference_mode()
    def _run(self, native: np.ndarray) -> np.ndarray:
        if self.threads:
            torch.set_num_threads(self.threads)
        return self.module(torch.from_numpy(np.ascontiguousarray(native))).float().numpy()
