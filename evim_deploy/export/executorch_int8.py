"""INT8 for ExecuTorch's XNNPACK delegate: PT2E with XNNPACK's own quantizer, static activation ranges
calibrated on the user's images, int8 weights (per channel by default) and int8 activations.

XNNPACK's quantizer annotates what its int8 kernels run: convolutions, linears, add, mul, cat and pooling.
The token softmax, the state products (``bmm``) and LayerNorm have no int8 kernel there and stay float.
``float_groups`` (:mod:`evim_deploy.quantize.groups`) keep more in float through the same translation the
TFLite exporter uses (:func:`.tflite_int8.float_policy`: named groups to module-path patterns, layer groups
to module paths), handed to the quantizer as its node filter. The mixer's two state projections
(``mixer_projections``, a dynamic group of :mod:`evim_deploy.quantize.groups`) run dynamic INT8 when not kept
float: int8 weights, the input quantized per row at run time (XNNPACK's ``qd8-f32-qc8w`` kernels).
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..calibration import CalibrationSet
from ..console import track
from .executorch_form import in_primitive_norm
from .tflite_int8 import calibrated_config, dynamic_modules, float_policy


def make_quantizer(deploy: torch.nn.Module, float_groups: Iterable[str], per_channel: bool, calib_method: str):
    """XNNPACK's PT2E quantizer, symmetric int8, quantizing every node outside ``float_groups``: statically, but the
    linears of the dynamic groups (:func:`.tflite_int8.dynamic_modules`) dynamically (XNNPACK's ``qd8`` kernels)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    config = calibrated_config(get_symmetric_quantization_config(is_per_channel=per_channel), calib_method)
    keeps_float = float_policy(deploy, float_groups)
    quantizer = XNNPACKQuantizer().set_global(config).set_filter_function(
        lambda node: not keeps_float(node) and not in_primitive_norm(node))  # LayerNorm stays float, as before
    for name in dynamic_modules(deploy, float_groups):
        quantizer.set_module_name(name, get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=True))
    return quantizer


def quantize(deploy: torch.nn.Module, sample: torch.Tensor, calibration: CalibrationSet, float_groups: Iterable[str],
             per_channel: bool, calib_method: str) -> "torch.export.ExportedProgram":
    """Export, annotate, calibrate (NCHW float32, as the file takes it) and convert; the Q/DQ program to lower."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = make_quantizer(deploy, float_groups, per_channel, calib_method)
    prepared = prepare_pt2e(torch.export.export(deploy, (sample,)).module(), quantizer)
    with torch.no_grad():
        for batch in track(calibration.batches(1), "calibrating", total=len(calibration)):
            prepared(torch.from_numpy(batch))
    return torch.export.export(convert_pt2e(prepared), (sample,))
