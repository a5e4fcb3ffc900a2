"""ONNX export: deploy form -> opset-18 graph, simplified, checked, manifest in ``metadata_props``."""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
import torch

from ..calibration import CalibrationSet
from ..console import console
from ..errors import UsageError
from . import artifact_manifest

MANIFEST_KEY = "evim_deploy.manifest"
INPUT_NAME, OUTPUT_NAME = "input", "logits"


NCHWC_BLOCK = 16  # channel block of ONNX Runtime's AVX-512 blocked convolutions


def ort_layout(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the deploy form laid out for ONNX Runtime: same outputs, state channels padded to NCHWc blocks."""
    from ..model.deploy import DeployHSMSSD
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, DeployHSMSSD):
            module.pad_state_channels(NCHWC_BLOCK)
    return model


def trace_to_onnx(model: torch.nn.Module, opset: int = 18, dynamic_batch: bool = False) -> onnx.ModelProto:
    """Torch -> ONNX through the TorchScript-based exporter (exact opset, no onnxscript rewrites)."""
    dummy = torch.zeros(1, 3, *model.input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None)
    return onnx.load_from_string(buffer.getvalue())


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim
    return onnxslim.slim(model)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and activations in float16; input and output stay float32 so apps feed the same tensor."""
    from onnxconverter_common import float16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns once per weight below fp16's smallest subnormal
        return float16.convert_float_to_float16(model, keep_io_types=True)


def embed_manifest(model: onnx.ModelProto, manifest_json: str, description: str) -> None:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {MANIFEST_KEY: manifest_json})
    model.producer_name = "evim-deploy"
    model.doc_string = description


def read_manifest_json(model: onnx.ModelProto) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == MANIFEST_KEY), None)


def export_onnx(model: torch.nn.Module, output: Path, precision: str = "fp32",
                calibration: CalibrationSet | None = None, opset: int = 18, dynamic_batch: bool = False,
                calib_method: str = "minmax", per_channel: bool = True, keep_float: Iterable[str] | None = None,
                float_layers: Iterable[str] = (), nodes_to_exclude: Iterable[str] = (), **_: Any) -> Path:
    """Write ``model`` (deploy form) to ``output`` as ONNX in ``precision``.

    INT8 options: ``calib_method`` (minmax | entropy | percentile), ``per_channel`` weight scales, and what
    stays float: ``keep_float`` (the exporter's node groups, default ``onnx_int8.DEFAULT_FLOAT_GROUPS``),
    ``float_layers`` (deploy-form modules such as ``stages.0.1.mixer`` or ``head``, on top) and
    ``nodes_to_exclude`` (ONNX node names).
    """
    if opset < 17:
        raise UsageError(f"opset {opset} is too old (LayerNormalization needs 17)", "use --opset 17 or newer")
    graph = simplify(trace_to_onnx(ort_layout(model), opset, dynamic_batch))
    extra: dict[str, Any] = {"opset": opset, "dynamic_batch": dynamic_batch}
    if precision == "fp16":
        graph = to_fp16(graph)
    elif precision == "int8":
        from .onnx_int8 import DEFAULT_FLOAT_GROUPS, quantize
        if calibration is None:
            raise UsageError("INT8 needs calibration images", "pass --calib DIR")
        keep_float = DEFAULT_FLOAT_GROUPS if keep_float is None else tuple(keep_float)
        excluded = list(nodes_to_exclude)
        if float_layers:
            from ..quantize_report import onnx_nodes_in_groups
            excluded += onnx_nodes_in_groups(graph, float_layers)
        graph = quantize(graph, calibration, method=calib_method, per_channel=per_channel, keep_float=keep_float,
                         nodes_to_exclude=excluded)
        extra.update(calibration=calibration.describe(), calib_method=calib_method, per_channel=per_channel,
                     float_groups=list(keep_float), **({"float_layers": list(float_layers)} if float_layers else {}))
    manifest = artifact_manifest(model, "onnx", precision, **extra)
    embed_manifest(graph, manifest.to_json(), f"EfficientViM-{manifest.variant} {precision}, input "
                   f"{INPUT_NAME} [N,3,{manifest.input_size[0]},{manifest.input_size[1]}] RGB normalized "
                   f"(mean {manifest.mean}, std {manifest.std}); output {OUTPUT_NAME} [N,{manifest.num_classes}]")
    onnx.save(graph, output)
    onnx.checker.check_model(str(output), full_check=True)
    summary = graph_summary(output)
    top = ", ".join(f"{op} {n}" for op, n in list(summary["ops"].items())[:6])
    console.print(f"onnx {precision}: {summary['nodes']} nodes ({top}, ...), opset {summary['opset']}, "
                  f"{summary['bytes'] / 1e6:.2f} MB")
    return output


def graph_summary(path: str | Path) -> dict[str, Any]:
    """Node count, op histogram and file size of an ONNX file."""
    graph = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for node in graph.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"nodes": len(graph.graph.node), "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
            "bytes": Path(path).stat().st_size, "opset": max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))}


def random_input(shape: tuple[int, ...], dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
