"""The one table of backends. The CLI, the docs and the benchmark all read it.

Adding a backend means adding a row here and two modules (``export/<name>.py`` and
``runtime/<name>.py``); nothing else lists backends.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import MissingExtraError, UsageError


@dataclass(frozen=True)
class BackendSpec:
    """One deployment target."""

    name: str
    suffix: str                    # file suffix of its artifacts
    exporter: str                  # "module:function" that writes a file from a deploy model
    runtime: str                   # "module:Class" implementing runtime.Backend
    extra: str | None              # pip extra that installs it (None: core dependency)
    requires: tuple[str, ...]      # top-level modules it imports
    precisions: tuple[str, ...]    # precisions its exporter writes
    default_precision: str
    description: str
    options: tuple[tuple[str, dict[str, Any]], ...] = ()  # export CLI options of this target: (flag, argparse kwargs)

    def missing_modules(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def check_installed(self) -> None:
        missing = self.missing_modules()
        if missing:
            raise MissingExtraError(missing[0], self.extra or "all")

    def _resolve(self, target: str) -> Any:
        self.check_installed()
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def load_exporter(self) -> Callable[..., Path]:
        return self._resolve(self.exporter)

    def load_runtime(self) -> type:
        return self._resolve(self.runtime)


BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in [
    BackendSpec("onnx", ".onnx", "evim_deploy.export.onnx:export_onnx", "evim_deploy.runtime.onnx:OnnxBackend",
                None, ("onnx", "onnxruntime"), ("fp32", "fp16", "int8"), "fp32",
                "ONNX (opset 18) for ONNX Runtime on any platform", (
                    ("--opset", {"type": int, "default": 18, "help": "ONNX opset (onnx; >= 17)"}),
                    ("--dynamic-batch", {"action": "store_true", "help": "free batch dimension (onnx)"}))),
    BackendSpec("coreml", ".mlpackage", "evim_deploy.export.coreml:export_coreml",
                "evim_deploy.runtime.coreml:CoreMLBackend", "coreml", ("coremltools",),
                ("fp16", "fp32", "int8", "w8a8"), "fp16", "Core ML mlprogram for iOS/macOS (Neural Engine)", (
                    ("--min-target", {"choices": ["iOS16", "iOS17", "iOS18"], "default": "iOS16",
                                      "help": "minimum deployment target (coreml)"}),
                    ("--input", {"dest": "input_kind", "choices": ["image", "tensor"], "default": "image",
                                 "help": "camera-ready image input or float tensor (coreml)"}))),
    BackendSpec("tflite", ".tflite", "evim_deploy.export.tflite:export_tflite",
                "evim_deploy.runtime.tflite:TFLiteBackend", "tflite", ("ai_edge_litert", "litert_torch"),
                ("fp32", "fp16", "int8"), "fp32", "TFLite flatbuffer for the LiteRT interpreter on Android", (
                    ("--layout", {"choices": ["nhwc", "nchw"], "default": "nhwc", "help": "input layout (tflite)"}),
                    ("--int8-io", {"action": "store_true", "help": "int8 input and output tensors (tflite int8)"}),
                    ("--float-groups", {"dest": "keep_float", "nargs": "*", "metavar": "GROUP",
                                        "help": "tflite int8: module groups kept in float (default: the exporter's "
                                                "policy, docs/tflite.md); the flag alone gives full integer"}))),
    BackendSpec("torch", ".pt2", "evim_deploy.export.torch_export:export_torch",
                "evim_deploy.runtime.torch_backend:TorchBackend", None, ("torch",), ("fp32",), "fp32",
                "torch.export archive of the deploy form, run in eager PyTorch (reference runtime)"),
]}

EXPORT_TARGETS = list(BACKENDS)


def get_backend(name: str) -> BackendSpec:
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}", f"choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def backend_for_path(path: str | Path) -> BackendSpec:
    """The backend whose artifacts carry this file's suffix."""
    suffix = Path(str(path).rstrip("/")).suffix.lower()
    for spec in BACKENDS.values():
        if spec.suffix == suffix:
            return spec
    known = ", ".join(spec.suffix for spec in BACKENDS.values())
    raise UsageError(f"cannot tell the backend of {path} from its suffix {suffix or '(none)'}",
                     f"pass a file ending in one of {known}")
