"""The ``Runtime`` protocol every target's runtime implements, and the input handling they share."""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import UsageError
from ..manifest import Manifest
from ..preprocess import preprocess

ImageLike = str | Path | Image.Image


class Runtime(ABC):
    """A loaded model file. Subclasses implement ``_read``, ``_run`` and, if their input is not
    normalized NCHW float32, ``from_nchw``.

    ``predict`` takes image paths / PIL images, or an array already in the file's native input
    form (``input_shape``, ``input_dtype``), and returns float32 logits ``(B, num_classes)``.
    ``run_nchw`` takes normalized NCHW float32 whatever the file's layout (used by ``verify``).
    """

    name: str = "base"         # the target's name in the table
    thread_safe: bool = True   # False: calls are serialized with a lock

    def __init__(self, path: str | Path, threads: int | None = None, provider: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise UsageError(f"model file not found: {self.path}", "check the path")
        self.threads = threads
        self.provider = provider
        self._lock = threading.Lock()
        self.manifest: Manifest = self._read()

    @abstractmethod
    def _read(self) -> Manifest:
        """Open the file; return its embedded manifest and set ``input_shape``/``input_dtype``."""

    @abstractmethod
    def _run(self, native: np.ndarray) -> np.ndarray:
        """Run one batch in native input form; return float32 logits."""

    input_shape: tuple[int | None, ...] = ()
    input_dtype: np.dtype = np.dtype(np.float32)

    @property
    def fixed_batch(self) -> int | None:
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None

    def from_nchw(self, x: np.ndarray) -> np.ndarray:
        """Normalized NCHW float32 -> this file's native input (identity by default)."""
        return x.astype(np.float32, copy=False)

    def check_input(self, array: np.ndarray) -> np.ndarray:
        """Reject an array whose shape, dtype or layout the file cannot take."""
        if not isinstance(array, np.ndarray):
            raise UsageError(f"expected a numpy array, got {type(array).__name__}", "pass images or an ndarray")
        expected = tuple(self.input_shape[1:])
        if array.ndim == len(self.input_shape) - 1:
            array = array[None]
        if tuple(array.shape[1:]) != expected:
            hint = ""
            if sorted(array.shape[1:]) == sorted(expected):
                hint = f" (layout: this file takes {self.manifest.layout.upper()})"
            raise UsageError(f"input shape {tuple(array.shape)} does not fit {self.path.name}, which takes "
                             f"(batch, {', '.join(map(str, expected))}){hint}",
                             "resize/transpose the array, or pass image files and let predict preprocess them")
        if array.dtype != self.input_dtype:
            if not (np.issubdtype(array.dtype, np.floating) and np.issubdtype(self.input_dtype, np.floating)):
                raise UsageError(f"input dtype {array.dtype} does not fit {self.path.name}, which takes "
                                 f"{self.input_dtype}", f"pass {self.input_dtype} data")
            array = array.astype(self.input_dtype)
        return array

    def _run_batched(self, native: np.ndarray) -> np.ndarray:
        batch = self.fixed_batch
        if batch is None or len(native) == batch:
            return self._locked_run(native)
        if batch != 1:
            raise UsageError(f"{self.path.name} takes batches of exactly {batch}", f"pass {batch} images")
        return np.concatenate([self._locked_run(native[i:i + 1]) for i in range(len(native))])

    def _locked_run(self, native: np.ndarray) -> np.ndarray:
        if self.thread_safe:
            return np.asarray(self._run(native), dtype=np.float32)
        with self._lock:
            return np.asarray(self._run(native), dtype=np.float32)

    def predict(self, inputs: np.ndarray | ImageLike | Sequence[ImageLike]) -> np.ndarray:
        if isinstance(inputs, np.ndarray):
            return self._run_batched(self.check_input(inputs))
        items = [inputs] if isinstance(inputs, (str, Path, Image.Image)) else list(inputs)
        if not items:
            raise UsageError("no images given", "pass at least one image")
        return self.run_nchw(np.stack([preprocess(item, self.manifest) for item in items]))

    def run_nchw(self, x: np.ndarray) -> np.ndarray:
        return self._run_batched(self.from_nchw(np.asarray(x, dtype=np.float32)))

    def kernel_hazard(self) -> str | None:
        """Why this host's kernels may compute other numbers from this file than the host that verified it, or None."""
        return None

    def close(self) -> None:
        """Release the runtime's resources."""

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def io(self) -> dict:
        """Names, shapes and dtypes of the file's inputs and outputs, as an app sees them."""
        batch = self.input_shape[0] if self.input_shape else None
        return {"inputs": [{"name": "input", "shape": list(self.input_shape), "dtype": str(self.input_dtype)}],
                "outputs": [{"name": "logits", "shape": [batch, self.manifest.num_classes], "dtype": "float32"}]}

    def describe(self) -> dict:
        return {"target": self.name, "file": str(self.path), "input_shape": list(self.input_shape),
                "input_dtype": str(self.input_dtype), "precision": self.manifest.precision}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def top_k(logits: np.ndarray, labels: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """Per image: the ``k`` most probable (label, probability) pairs."""
    probs = softmax(np.asarray(logits, dtype=np.float64))
    order = np.argsort(-probs, axis=-1)[:, :k]
    return [[(labels[i], float(p[i])) for i in row] for row, p in zip(order, probs)]
