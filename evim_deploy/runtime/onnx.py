"""ONNX Runtime runtime: an ``.onnx`` file in an ONNX Runtime session."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..formats import onnx as onnx_format
from ..manifest import Manifest
from .base import Runtime


def session_options(threads: int | None, profile: bool = False):
    """ORT CPU settings for batch-1 latency: every graph optimization (incl. the NCHWc blocked-conv
    layout), ``threads`` intra-op threads that spin between the many small kernels, no inter-op pool."""
    import tempfile

    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="evim-ort-profile-")) / "ort")
    return options


class OnnxRuntime(Runtime):
    """An ``.onnx`` file in an ONNX Runtime session (CPU unless ``provider`` says otherwise)."""

    name = "onnx"

    def __init__(self, path, threads=None, provider=None, profile: bool = False) -> None:
        self.profile = profile
        super().__init__(path, threads=threads, provider=provider)

    def _read(self) -> Manifest:
        import onnxruntime as ort
        providers = [self.provider] if self.provider else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(self.threads, self.profile),
                                                providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise UsageError(f"{self.path} is not a loadable ONNX model ({str(err).splitlines()[0][:200]})",
                             "re-export it with evim-deploy export --target onnx") from None
        manifest = onnx_format.read_manifest(self.session.get_modelmeta().custom_metadata_map, self.path)
        node = self.session.get_inputs()[0]
        self.input_name = node.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in node.shape)
        self.input_dtype = np.dtype(onnx_format.DTYPES.get(node.type, np.float32))
        return manifest

    def io(self) -> dict:
        return {"inputs": onnx_format.describe_io(self.session.get_inputs()),
                "outputs": onnx_format.describe_io(self.session.get_outputs())}

    def from_nchw(self, x: np.ndarray) -> np.ndarray:
        return x.astype(self.input_dtype, copy=False)

    def _run(self, native: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: native})[0]

    def end_profiling(self) -> str:
        """Stop ORT's profiler (``profile=True``); return the path of its JSON trace (in a temp folder)."""
        if not self.profile:
            raise UsageError("this session was opened without profiling", "load it with profile=True")
        return self.session.end_profiling()

    def close(self) -> None:
        self.session = None


def profile_by_op(trace_path: str | Path, runs: int = 1) -> list[tuple[str, float, int]]:
    """An ORT profiler trace summed per op type: ``(op, ms per run, kernels per run)``, slowest first."""
    import json
    totals: dict[str, list[float]] = {}
    for event in json.loads(Path(trace_path).read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            entry = totals.setdefault(event["args"]["op_name"], [0.0, 0])
            entry[0] += event["dur"] / 1e3
            entry[1] += 1
    rows = [(op, ms / runs, round(count / runs)) for op, (ms, count) in totals.items()]
    return sorted(rows, key=lambda row: -row[1])
