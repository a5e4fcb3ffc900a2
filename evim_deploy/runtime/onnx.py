"""ONNX Runtime runtime: an ``.onnx`` file in an ONNX Runtime session, its profiler, and what this host's
integer kernels do to an INT8 file (:func:`kernel_hazard`, :func:`pair_saturation`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import host
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

    def kernel_hazard(self) -> str | None:
        """Why this host's integer kernels may compute other numbers from this file than a VNNI host, or None."""
        return kernel_hazard(self.path)

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


def kernel_hazard(path: str | Path) -> str | None:
    """One line "problem; fix" when ``path`` has INT8 matrix products whose int16 pair sums can saturate here
    (x86 without VNNI, :func:`evim_deploy.host.int16_pair_saturation`), else None."""
    if not host.int16_pair_saturation():
        return None
    risky = onnx_format.pair_saturating_products(path)
    if not risky:
        return None
    return (f"{Path(path).name}: {len(risky)} INT8 matrix products have weights beyond 7 bits (|w| up to "
            f"{max(p.peak for p in risky)}) and this CPU has no VNNI, so ONNX Runtime sums pairs of their products in "
            f"saturating int16 (vpmaddubsw) and may compute other logits than the host that verified the file; "
            f"re-export it with evim-deploy's portable INT8 format (7-bit matrix weights, exact on every CPU)")


SATURATION_LIMIT = 32767  # a pair sum above int16's range is clipped by vpmaddubsw


def _pair_overflow(a: np.ndarray, w: np.ndarray) -> tuple[int, int]:
    """``(saturating pair sums, pair sums)`` of ``a`` (P, T, K) raw u8 by ``w`` (T, K, N), pairs along K."""
    if a.shape[-1] % 2:  # MLAS pads K with zeros
        a, w = np.pad(a, ((0, 0), (0, 0), (0, 1))), np.pad(w, ((0, 0), (0, 1), (0, 0)))
    over = 0
    for tap in range(a.shape[1]):
        sums = a[:, tap, 0::2, None] * w[None, tap, 0::2] + a[:, tap, 1::2, None] * w[None, tap, 1::2]
        over += int((np.abs(sums) > SATURATION_LIMIT).sum())
    return over, a.shape[0] * a.shape[1] * (a.shape[2] // 2) * w.shape[-1]


def _patches(node, x: np.ndarray, w: np.ndarray, zero: int) -> tuple[np.ndarray, np.ndarray]:
    """A Conv's input ``x`` (1, C, H, W) as ``(P, taps, C)`` patches padded with ``zero``; ``w`` as (taps, C, M)."""
    from onnx import helper
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kh, kw = w.shape[2:]
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    stride_h, stride_w = attrs.get("strides", [1, 1])
    padded = np.pad(x[0], ((0, 0), (top, bottom), (left, right)), constant_values=zero)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))[:, ::stride_h, ::stride_w]
    channels = windows.shape[0]
    patches = windows.transpose(1, 2, 3, 4, 0).reshape(-1, kh * kw, channels)
    return patches, w.transpose(2, 3, 1, 0).reshape(kh * kw, channels, -1)


def pair_saturation(path: str | Path, images: np.ndarray) -> dict[str, float]:
    """Emulate x86 kernels without VNNI on ``images`` (NCHW float): for each INT8 matrix product of the file,
    the fraction of adjacent-K pairs of u8 x s8 products whose sum leaves int16 (``vpmaddubsw`` clips it).

    K is ordered as MLAS's NHWC kernels pack it (kernel tap, then input channel); int8 activations count as
    uint8 + 128, which ONNX Runtime runs on x86. Depthwise convs are left out (exact everywhere)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    model = onnx.load(str(path))
    products = [p for p in onnx_format.integer_products(model) if not p.depthwise and p.weights == "int8"]
    nodes = {node.name: node for node in model.graph.node}
    inits = {i.name: numpy_helper.to_array(i).astype(np.int32) for i in model.graph.initializer}
    zeros = {p.activation: next(inits[n.input[2]] for n in model.graph.node
                                if n.op_type == "DequantizeLinear" and n.input[0] == p.activation) for p in products}
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in dict.fromkeys(zeros) if name not in known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every Q output
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    counts = {p.node: [0, 0] for p in products}
    for image in images:
        values = dict(zip(names, session.run(None, {session.get_inputs()[0].name: image[None]})))
        for p in products:
            raw = values[p.activation].astype(np.int32) + (128 if p.activations == "int8" else 0)
            zero = int(zeros[p.activation]) + (128 if p.activations == "int8" else 0)
            weight, node = inits[p.weight], nodes[p.node]
            if node.op_type == "Conv":
                a, w = _patches(node, raw, weight, zero)
            else:
                trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                a, w = raw.reshape(-1, 1, raw.shape[-1]), (weight.T if trans_b else weight)[None]
            over, total = _pair_overflow(a, w)
            counts[p.node][0] += over
            counts[p.node][1] += total
    return {node: over / max(total, 1) for node, (over, total) in counts.items()}
