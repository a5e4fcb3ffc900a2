"""ExecuTorch export: deploy form -> ``.pte`` program with the XNNPACK delegate, the manifest a method of the program.

* ``fp32``: ``torch.export`` of the deploy form, lowered by ``to_edge_transform_and_lower`` with XNNPACK's
  partitioner.
* ``fp16``: the deploy form in half precision between a cast of the input and one of the logits, so apps
  feed and read float32 as in every other file; XNNPACK runs the half-precision subgraphs.
* ``int8``: PT2E with XNNPACK's quantizer, calibrated on the user's images, with the float-group policy of
  the other INT8 targets (:mod:`.executorch_int8`).

Input is NCHW float32, normalized as the manifest says; output is the logits. LayerNorm, ``split`` and the
head's token means are lowered in forms XNNPACK takes (:mod:`.executorch_form`), so fp32 and the default int8
run as one XNNPACK partition. What XNNPACK does not take (fp16's casts around its float32 LayerNorms) runs on
ExecuTorch's portable kernels: the delegation of each op is recorded in the manifest (``extra["delegation"]``)
and shown by the format's summary.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..calibration import CalibrationSet
from ..console import console, quiet
from ..errors import UsageError
from ..formats import executorch as executorch_format
from ..manifest import Manifest
from . import artifact_manifest, require_calibration

if TYPE_CHECKING:
    import torch

# Kept float unless the caller says otherwise, as ONNX and TFLite keep them; the mixers' projections run dynamic
# INT8 (XNNPACK qd8). The depthwise convs take the trained tiny fixture's cosine from 0.9953 (full integer) to
# 0.9996 (docs/executorch.md); the state path and dynamic projections take the demo's random-weight Gaussian
# cosine from 0.986 (logit scale 0.937x) to 0.9995 (docs/int8.md).
DEFAULT_FLOAT_GROUPS = ("stem_input", "mixer_state", "residual", "depthwise", "head")
DEFAULT_CALIB_METHOD = "percentile"  # XNNPACK's own choice: a histogram search of each activation's range
BOOKKEEPING = ("getitem",)  # tuple access on multi-output ops, no op of its own
QDQ = "quantized_decomposed"  # (de)quantize nodes: XNNPACK folds them into its int8 kernels, no op of their own
OVERLOAD = r"_(default|Tensor|tensor|dim|int|Scalar|using_ints)$"  # aten_mean_dim -> mean


def half_precision(model: "torch.nn.Module") -> "torch.nn.Module":
    """``model`` in float16 between a cast of its float32 input and one of its logits back to float32, its
    LayerNorms in float32: ExecuTorch's float16 LayerNorm sums squares in float16, which overflows (random-weight
    M1: cosine 0.35 with every LayerNorm in float16, where eager PyTorch's float16 gives 0.999998)."""
    import copy

    import torch

    class Float32(torch.nn.Module):
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module.float()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x.float()).to(x.dtype)

    class HalfPrecision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = copy.deepcopy(model).half().eval()
            for name, module in list(self.model.named_modules()):
                if isinstance(module, torch.nn.LayerNorm):
                    parent, _, child = name.rpartition(".")
                    setattr(self.model.get_submodule(parent), child, Float32(module))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x.half()).float()

    return HalfPrecision().eval()


def delegation(edge: Any) -> dict[str, Any]:
    """How many ops of the lowered program XNNPACK runs, in how many subgraphs, and which ops it does not."""
    from executorch.devtools.backend_debug import get_delegation_info
    info = get_delegation_info(edge.exported_program().graph_module)
    ops = {re.sub(OVERLOAD, "", key.removeprefix("aten_")): breakdown
           for key, breakdown in info.delegation_by_operator.items() if key not in BOOKKEEPING}
    rest = sorted(((op, b.non_delegated) for op, b in ops.items() if b.non_delegated), key=lambda kv: (-kv[1], kv[0]))
    return {"backend": "XnnpackBackend", "delegated": sum(b.delegated for op, b in ops.items() if QDQ not in op),
            "subgraphs": info.num_delegated_subgraphs, "not_delegated": dict(rest)}


def lower(program: "torch.export.ExportedProgram", manifest: Manifest) -> bytes:
    """The ``.pte`` of ``program`` with XNNPACK's partitions delegated and ``manifest`` (plus the delegation)
    as a method of the program."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, EdgeProgramManager, to_edge_transform_and_lower
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    manifest = manifest.replace(extra={**manifest.extra, "delegation": delegation(edge)})
    # the delegation is known only once lowered: the lowered program again, now with the manifest method
    # (what EdgeProgramManager.to_backend itself does with the programs it lowered)
    edge = EdgeProgramManager({name: edge.exported_program(name) for name in edge.methods},
                              executorch_format.manifest_methods(manifest), EdgeCompileConfig(_check_ir_validity=False))
    return edge.to_executorch().buffer


def export_executorch(model: "torch.nn.Module", output: Path, precision: str = "fp32",
                      calibration: CalibrationSet | None = None, calib_method: str | None = None,
                      per_channel: bool = True, float_groups: Iterable[str] | None = None, **_: Any) -> Path:
    """Write ``model`` (deploy form) to ``output`` as a ``.pte`` program in ``precision``.

    INT8 options: ``calib_method`` (:data:`.tflite_int8.CALIBRATION_OBSERVERS`, default
    :data:`DEFAULT_CALIB_METHOD`), ``per_channel`` weight scales and ``float_groups`` kept float
    (:mod:`evim_deploy.quantize.groups`; default :data:`DEFAULT_FLOAT_GROUPS`).
    """
    import torch

    from .executorch_form import for_xnnpack, primitive_layer_norms
    sample = torch.zeros(1, 3, *model.input_size)
    extra: dict[str, Any] = {}
    with quiet():
        if precision == "fp32":
            program = torch.export.export(primitive_layer_norms(model).eval(), (sample,))
        elif precision == "fp16":
            program = torch.export.export(primitive_layer_norms(half_precision(model)), (sample,))
        elif precision == "int8":
            from .executorch_int8 import quantize
            calibration = require_calibration(calibration, precision)
            calib_method = calib_method or DEFAULT_CALIB_METHOD
            float_groups = DEFAULT_FLOAT_GROUPS if float_groups is None else tuple(float_groups)
            program = quantize(primitive_layer_norms(model), sample, calibration, float_groups, per_channel,
                               calib_method)
            extra.update(float_groups=list(float_groups), calibration=calibration.describe(),
                         calib_method=calib_method, per_channel=per_channel)
        else:
            raise UsageError(f"executorch does not support precision {precision!r}", "choose fp32, fp16 or int8")
        content = lower(for_xnnpack(program), artifact_manifest(model, "executorch", precision, **extra))
    output.write_bytes(content)
    console.print(executorch_format.summary(output).line(f"executorch {precision}", top=5))
    return output
