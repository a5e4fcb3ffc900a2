"""The one table of targets. The CLI, the bundle, the benchmark, the mixed-precision search and the docs read it;
nothing else names a target.

A target is a file format with three modules, one per role: ``export/<name>.py`` (deploy model -> file),
``runtime/<name>.py`` (file -> logits) and ``formats/<name>.py`` (what the file holds: manifest, ops, I/O,
app snippet). Adding one means those three modules and one :class:`TargetSpec` row in :data:`TARGETS`.

The exporters and runtimes are imported here as objects; their modules import their heavy libraries
(torch, onnx, coremltools, litert) only when called, so reading the table costs none of them.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .calibration import CalibrationSet
from .errors import MissingExtraError, UsageError
from .export import coreml as coreml_export
from .export import executorch as executorch_export
from .export import onnx as onnx_export
from .export import tflite as tflite_export
from .export import torch as torch_export
from .files import refuse_existing, staged_output
from .formats import FileSummary
from .formats import coreml as coreml_format
from .formats import coreml_apptest, executorch_apptest, tflite_apptest
from .formats import executorch as executorch_format
from .formats import onnx as onnx_format
from .formats import tflite as tflite_format
from .formats import torch as torch_format
from .runtime import Runtime
from .runtime import coreml as coreml_runtime
from .runtime import executorch as executorch_runtime
from .runtime import onnx as onnx_runtime
from .runtime import tflite as tflite_runtime
from .runtime import torch as torch_runtime

if TYPE_CHECKING:
    import torch

Exporter = Callable[..., Path]                     # (deploy model, output, precision, calibration, **options) -> path
Snippet = Callable[[str, dict, dict], "str | None"]  # (file name, io(), manifest dict) -> markdown for an app
AppTest = Callable[[list, dict, dict], "tuple[str, str, str]"]  # (its golden entries, golden, bundle manifest)
#                                                               -> device test: file name, source, how to run it


@dataclass(frozen=True)
class Option:
    """A command-line option of one target: its flag, argparse's keywords, and the precisions it applies to."""

    flag: str
    kwargs: Mapping[str, Any]
    precisions: tuple[str, ...] = ()  # () = every precision

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest", self.flag.lstrip("-").replace("-", "_"))

    def applies_to(self, precision: str) -> bool:
        return not self.precisions or precision in self.precisions


@dataclass(frozen=True)
class TargetSpec:
    """One deployment target. Every way targets differ is a field here, as data or as a function it points to."""

    name: str
    suffix: str                                # file suffix of its artifacts
    description: str
    exporter: Exporter
    runtime: type[Runtime]
    summary: Callable[[str | Path], FileSummary]  # ops, count and size of one of its files
    extra: str | None                          # pip extra that installs it (None: core dependency)
    requires: tuple[str, ...]                  # top-level modules its runtime (and its exporter) import
    precisions: tuple[str, ...]                # what its exporter writes; the first quantized one is its INT8
    default_precision: str
    calibrated: tuple[str, ...] = ()           # precisions that need calibration images (activations quantized)
    mobile: bool = True                        # part of the app bundle (``export --target all``)
    mixed_precision: bool = False              # honours ``float_groups`` (and so ``--fidelity``)
    default_float_groups: tuple[str, ...] = ()  # what its INT8 keeps float by default (quantize.groups names)
    default_calib_method: str | None = None    # None: the exporter has one method of its own
    options: tuple[Option, ...] = ()           # export options of this target
    runtime_options: tuple[Option, ...] = ()   # load() options offered by verify / predict
    snippet: Snippet | None = None             # app code for the bundle README (None: the Python snippet)
    app_test: AppTest | None = None            # the device test of its bundle files (bundle/golden.py), or None
    bench_unavailable: Callable[[], str | None] = field(default=lambda: None)  # why it cannot be timed here
    batch_option: str | None = None            # export option that frees the batch dimension
    ranks_groups: bool = False                 # fast enough to rank layer groups for slower targets' --fidelity
    sweep: bool = False                        # measured at every resolution by default in ``bench``
    on_device_benchmark: bool = False          # ``bench --device adb:SERIAL`` runs its files (benchmark_model)
    export_requires: tuple[str, ...] = ()      # modules only its exporter imports: running a file needs none

    def missing_modules(self, exporting: bool = True) -> list[str]:
        """Modules of :attr:`requires` (and, ``exporting``, of :attr:`export_requires`) not installed here."""
        needed = self.requires + (self.export_requires if exporting else ())
        return [m for m in needed if importlib.util.find_spec(m) is None]

    def check_installed(self, exporting: bool = True) -> None:
        missing = self.missing_modules(exporting)
        if missing:
            raise MissingExtraError(missing[0], self.extra or "all")

    def unavailable_reason(self, exporting: bool = True) -> str | None:
        """Why files of this target cannot be (exported,) run and timed on this host, or None."""
        if self.missing_modules(exporting):
            return f"not installed: pip install 'evim-deploy[{self.extra or 'all'}]'"
        return self.bench_unavailable()

    def needs_calibration(self, precision: str) -> bool:
        return precision in self.calibrated

    @property
    def int8_precision(self) -> str | None:
        """Its fully quantized precision (int8, or w8a8 for Core ML), if it has one."""
        return self.calibrated[0] if self.calibrated else None

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UsageError(f"{self.name} does not support precision {precision!r}",
                             f"choose one of {', '.join(self.precisions)}")

    def output_path(self, model: Any, precision: str, output: str | Path | None, force: bool = False) -> Path:
        """Where an export goes (default ``<variant>_<precision><suffix>``); a wrong suffix, or an existing file
        without ``force``, is refused before any work is done."""
        path = Path(output or f"{model.manifest.variant}_{precision}{self.suffix}")
        if path.suffix != self.suffix:  # runtimes pick the target by suffix: a mismatch would never load
            raise UsageError(f"{self.name} writes {self.suffix} files, not {path.name!r}",
                             f"name the output {path.with_suffix(self.suffix).name}, or pick the target for "
                             f"{path.suffix or 'that name'}")
        refuse_existing(path, force)
        return path

    def export_options(self, precision: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` without this target's options that do not apply to ``precision`` (``int8_io`` on fp16)."""
        skip = {o.dest for o in self.options if not o.applies_to(precision)}
        return {k: v for k, v in options.items() if k not in skip}


CALIB_METHODS = ("minmax", "entropy", "percentile")  # what --calib-method may name (each INT8 target maps them)

TARGETS: dict[str, TargetSpec] = {spec.name: spec for spec in [
    TargetSpec(
        "onnx", ".onnx", "ONNX (opset 18) for ONNX Runtime on any platform",
        onnx_export.export_onnx, onnx_runtime.OnnxRuntime, onnx_format.summary, None, ("onnx", "onnxruntime"),
        ("fp32", "fp16", "int8"), "fp32", calibrated=("int8",), mixed_precision=True,
        default_float_groups=onnx_export.DEFAULT_FLOAT_GROUPS, default_calib_method=onnx_export.DEFAULT_CALIB_METHOD,
        options=(Option("--opset", {"type": int, "default": 18, "help": "ONNX opset (onnx; >= 17)"}),
                 Option("--dynamic-batch", {"action": "store_true", "help": "free batch dimension (onnx)"}),
                 Option("--fused-layer-norm", {"action": "store_true", "help": "keep LayerNormalization fused "
                        "(onnx; for the CoreML EP's legacy NeuralNetwork format, which has no ReduceMean; the "
                        "default writes it as primitive ops so NNAPI takes the whole graph)"})),
        batch_option="dynamic_batch", ranks_groups=True, sweep=True),
    TargetSpec(
        "coreml", ".mlpackage", "Core ML mlprogram for iOS/macOS (Neural Engine)",
        coreml_export.export_coreml, coreml_runtime.CoreMLRuntime, coreml_format.summary, "coreml",
        ("coremltools",), ("fp16", "fp32", "int8", "w8a8"), "fp16", calibrated=("w8a8",), mixed_precision=True,
        default_float_groups=coreml_export.DEFAULT_FLOAT_GROUPS,
        options=(Option("--min-target", {"choices": list(coreml_export.MIN_TARGETS), "default": "iOS16",
                                         "help": "minimum deployment target (coreml)"}),
                 Option("--input", {"dest": "input_kind", "choices": list(coreml_export.INPUT_KINDS),
                                    "default": "image", "help": "camera-ready image input or float tensor (coreml)"})),
        snippet=coreml_format.swift_snippet, app_test=coreml_apptest.swift_golden_tests,
        bench_unavailable=coreml_runtime.bench_unavailable),
    TargetSpec(
        "tflite", ".tflite", "TFLite flatbuffer for the LiteRT interpreter on Android",
        tflite_export.export_tflite, tflite_runtime.TFLiteRuntime, tflite_format.summary, "tflite",
        ("ai_edge_litert",), ("fp32", "fp16", "int8"), "fp32", calibrated=("int8",), export_requires=("litert_torch",),
        mixed_precision=True, default_float_groups=tflite_export.DEFAULT_FLOAT_GROUPS,
        default_calib_method=tflite_export.DEFAULT_CALIB_METHOD,
        options=(Option("--layout", {"choices": list(tflite_export.LAYOUTS), "default": "nhwc",
                                     "help": "input layout (tflite)"}),
                 Option("--int8-io", {"action": "store_true", "help": "int8 input and output tensors (tflite int8)"},
                        precisions=("int8",))),
        runtime_options=(Option("--reference-kernels", {"action": "store_true", "help": "tflite: TFLite's reference "
                                "kernels instead of XNNPACK (slow; a numerics check)"}),),
        snippet=tflite_format.kotlin_snippet, app_test=tflite_apptest.kotlin_golden_tests, on_device_benchmark=True),
    TargetSpec(
        "executorch", ".pte", "ExecuTorch program with the XNNPACK delegate for Android, iOS and embedded Linux",
        executorch_export.export_executorch, executorch_runtime.ExecuTorchRuntime, executorch_format.summary,
        "executorch", ("executorch",), ("fp32", "fp16", "int8"), "fp32", calibrated=("int8",), mixed_precision=True,
        default_float_groups=executorch_export.DEFAULT_FLOAT_GROUPS,
        default_calib_method=executorch_export.DEFAULT_CALIB_METHOD, snippet=executorch_format.kotlin_snippet,
        app_test=executorch_apptest.kotlin_golden_tests),
    TargetSpec(
        "torch", ".pt2", "torch.export archive of the deploy form, run in eager PyTorch (reference runtime)",
        torch_export.export_torch, torch_runtime.TorchRuntime, torch_format.summary, None, ("torch",),
        ("fp32",), "fp32", mobile=False),
]}


def get_target(name: str) -> TargetSpec:
    if name not in TARGETS:
        raise UsageError(f"unknown target {name!r}", f"choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def target_for_path(path: str | Path) -> TargetSpec:
    """The target whose files carry this file's suffix."""
    suffix = Path(str(path).rstrip("/")).suffix.lower()
    for spec in TARGETS.values():
        if spec.suffix == suffix:
            return spec
    known = ", ".join(spec.suffix for spec in TARGETS.values())
    raise UsageError(f"cannot tell the target of {path} from its suffix {suffix or '(none)'}",
                     f"pass a file ending in one of {known}")


def mobile_targets() -> list[str]:
    return [name for name, spec in TARGETS.items() if spec.mobile]


def ranking_target() -> TargetSpec:
    """The fast mixed-precision target that ranks layer groups for slower targets' ``--fidelity``."""
    return next(spec for spec in TARGETS.values() if spec.ranks_groups)


def export(model: "torch.nn.Module", target: str = "onnx", output: str | Path | None = None,
           precision: str | None = None, calibration: CalibrationSet | None = None, force: bool = False,
           **options: Any) -> Path:
    """Export a deploy model (from :func:`evim_deploy.reparameterize`) to ``target``; return the file's path.

    The file is written to a temporary sibling and renamed onto ``output`` only when complete.
    ``options`` are the target's export options (:attr:`TargetSpec.options`) and, for its INT8 precision,
    ``calib_method``, ``per_channel`` and ``float_groups`` (:mod:`evim_deploy.quantize.groups`).
    """
    spec = get_target(target)
    precision = precision or spec.default_precision
    spec.check_precision(precision)
    if not hasattr(model, "input_size"):
        raise UsageError("export takes the deploy form", "pass evim_deploy.reparameterize(model, input_size)")
    if options.get("float_groups") is not None and not spec.mixed_precision:
        raise UsageError(f"the {target} exporter cannot keep layer groups in float",
                         f"use one of {', '.join(n for n, s in TARGETS.items() if s.mixed_precision)}")
    output = spec.output_path(model, precision, output, force)
    spec.check_installed()
    with staged_output(output, force) as staged:
        spec.exporter(model, staged, precision=precision, calibration=calibration, **options)
    return output


def load(path: str | Path, target: str | None = None, threads: int | None = None, provider: str | None = None,
         **options: Any) -> Runtime:
    """Open an exported file (``.onnx``, ``.mlpackage``, ``.tflite``, ``.pte``, ``.pt2``) with its target's runtime."""
    spec = get_target(target) if target else target_for_path(path)
    spec.check_installed(exporting=False)  # a phone-side install (the runtime alone) runs and verifies files
    return spec.runtime(path, threads=threads, provider=provider, **options)
