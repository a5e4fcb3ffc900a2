"""A small numpy interpreter for the Core ML ML programs that evim-deploy writes.

Core ML predicts only on macOS. To verify a ``.mlpackage`` anywhere, this module loads the saved
program through coremltools (``milproto.load`` rebuilds the MIL program with its weights) and
evaluates it op by op with numpy kernels of its own.

- Only the ops our exports use are implemented (:data:`KERNELS`). An op it does not know is an
  :class:`UnsupportedOpError` naming the op, raised when the program is loaded, never a silent pass.
- Precision follows the program: every op's result is stored in the dtype MIL declares for it, so
  an fp16 program keeps fp16 weights and fp16 activations between ops. Inside one op the kernel
  computes in fp32 and rounds once (fp32 accumulation, as Core ML's GPU and Neural Engine kernels
  accumulate wider than they store).
- Compressed weights (``constexpr_affine_dequantize``, ``constexpr_blockwise_shift_scale``) are
  decompressed by our own kernels at load; activation ``quantize``/``dequantize`` pairs (W8A8)
  round half to even and saturate as the MIL spec says.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import EvimError, UsageError
from ..formats import coreml as coreml_format

WEIGHTS_DIR = ("Data", "com.apple.CoreML", "weights")


class UnsupportedOpError(EvimError):
    """The program contains an op (or an op form) the interpreter does not implement."""


class Args:
    """The inputs of one op: tensors by name (``args["x"]``) and const parameters (``args.param``)."""

    __slots__ = ("op", "_env")

    def __init__(self, op: Any, env: dict[str, Any]) -> None:
        self.op, self._env = op, env

    def __getitem__(self, name: str) -> Any:
        var = self.op.inputs[name]
        if isinstance(var, (list, tuple)):
            return [self._env[v.name] for v in var]
        return self._env[var.name]

    def f32(self, name: str) -> np.ndarray:
        """A tensor input as float32 (fp16 widened; exact)."""
        return np.asarray(self[name], dtype=np.float32)

    def has(self, name: str) -> bool:
        return self.op.inputs.get(name) is not None

    def param(self, name: str, default: Any = None) -> Any:
        """A const parameter as a Python/numpy value."""
        if not self.has(name):
            return default
        value = self[name]
        return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


Kernel = Callable[[Args], Any]
KERNELS: dict[str, Kernel] = {}


def kernel(*names: str) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        for name in names:
            KERNELS[name] = fn
        return fn
    return register


# ------------------------------------------------------------------------------------------ elementwise
_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide,
           "maximum": np.maximum, "minimum": np.minimum}
for _name, _fn in _BINARY.items():
    kernel(_name)(lambda a, fn=_fn: fn(a.f32("x"), a.f32("y")))

kernel("relu")(lambda a: np.maximum(a.f32("x"), 0))
kernel("sigmoid")(lambda a: _sigmoid(a.f32("x")))
kernel("silu")(lambda a: a.f32("x") * _sigmoid(a.f32("x")))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


@kernel("cast")
def _cast(a: Args) -> np.ndarray:
    return a["x"]  # the output dtype is applied by the interpreter (round-to-nearest for floats)


# ---------------------------------------------------------------------------------------- linear algebra
@kernel("linear")
def _linear(a: Args) -> np.ndarray:
    x, w = a.f32("x"), a.f32("weight")
    y = (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], w.shape[0])  # 2-D: one BLAS call
    return y + a.f32("bias") if a.has("bias") else y


@kernel("matmul")
def _matmul(a: Args) -> np.ndarray:
    x, y = a.f32("x"), a.f32("y")
    if a.param("transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if a.param("transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return x @ y


def _conv_padding(a: Args, spatial: tuple[int, ...], kernel_size: tuple[int, ...], strides, dilations):
    pad_type = a.param("pad_type", "valid")
    if pad_type == "valid":
        return [(0, 0)] * len(spatial)
    if pad_type == "custom":
        pad = [int(p) for p in a.param("pad")]
        return list(zip(pad[0::2], pad[1::2]))
    if pad_type in ("same", "same_lower"):
        pads = []
        for size, k, s, d in zip(spatial, kernel_size, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            pads.append((small, total - small) if pad_type == "same" else (total - small, small))
        return pads
    raise UnsupportedOpError(f"conv pad_type {pad_type!r} ({a.op.name}) is not implemented by the interpreter")


@kernel("conv")
def _conv(a: Args) -> np.ndarray:
    x, w = a.f32("x"), a.f32("weight")
    if x.ndim != 4:
        raise UnsupportedOpError(f"conv of rank {x.ndim} ({a.op.name}) is not implemented by the interpreter")
    groups = int(a.param("groups", 1))
    strides = [int(s) for s in a.param("strides", [1, 1])]
    dilations = [int(d) for d in a.param("dilations", [1, 1])]
    kh, kw = w.shape[2:]
    pads = _conv_padding(a, x.shape[2:], (kh, kw), strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    n, c, height, width = x.shape
    out_h = (height - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    out_w = (width - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    (sh, sw), (dh, dw) = strides, dilations

    def tap(i: int, j: int) -> np.ndarray:  # input pixels under kernel tap (i, j) for every output
        return x[:, :, i * dh:i * dh + sh * (out_h - 1) + 1:sh, j * dw:j * dw + sw * (out_w - 1) + 1:sw]

    out_c, in_per_group = w.shape[0], w.shape[1]
    if kh == kw == 1 and groups == 1:  # pointwise: one matmul
        y = (w.reshape(out_c, c) @ tap(0, 0).reshape(n, c, out_h * out_w)).reshape(n, out_c, out_h, out_w)
    elif in_per_group == 1 and out_c == c == groups:  # depthwise: one multiply-add per tap
        y = np.zeros((n, c, out_h, out_w), np.float32)
        for i in range(kh):
            for j in range(kw):
                y += tap(i, j) * w[:, 0, i, j][None, :, None, None]
    else:  # im2col per group, one matmul
        cols = np.stack([tap(i, j) for i in range(kh) for j in range(kw)], axis=2)  # n, c, k, oh, ow
        cols = cols.reshape(n, groups, in_per_group * kh * kw, out_h * out_w)
        weights = w.reshape(groups, out_c // groups, in_per_group * kh * kw)
        y = (weights[None] @ cols).reshape(n, out_c, out_h, out_w)
    if a.has("bias"):
        y = y + a.f32("bias").reshape(1, -1, 1, 1)
    return y


# ------------------------------------------------------------------------------------ normalization etc.
@kernel("layer_norm")
def _layer_norm(a: Args) -> np.ndarray:
    x = a.f32("x")
    axes = tuple(int(ax) for ax in a.param("axes"))
    mean = x.mean(axis=axes, keepdims=True)
    var = np.square(x - mean).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(a.param("epsilon", 1e-5)))
    if a.has("gamma"):
        y = y * a.f32("gamma")
    return y + a.f32("beta") if a.has("beta") else y


@kernel("softmax")
def _softmax(a: Args) -> np.ndarray:
    x = a.f32("x")
    axis = int(a.param("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@kernel("reduce_mean")
def _reduce_mean(a: Args) -> np.ndarray:
    axes = a.param("axes")
    axes = None if axes is None else tuple(int(ax) for ax in np.atleast_1d(axes))
    return a.f32("x").mean(axis=axes, keepdims=bool(a.param("keep_dims", False)))


# ------------------------------------------------------------------------------------------------ shapes
@kernel("reshape")
def _reshape(a: Args) -> np.ndarray:
    x = a["x"]
    shape = [int(s) for s in a.param("shape")]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]  # MIL: 0 copies the input dim
    return x.reshape(shape)


kernel("transpose")(lambda a: np.transpose(a["x"], [int(p) for p in a.param("perm")]))
kernel("squeeze")(lambda a: np.squeeze(a["x"], axis=None if not a.has("axes") else
                                       tuple(int(ax) for ax in a.param("axes"))))
kernel("expand_dims")(lambda a: np.expand_dims(a["x"], tuple(int(ax) for ax in a.param("axes"))))


@kernel("split")
def _split(a: Args) -> list[np.ndarray]:
    x, axis = a["x"], int(a.param("axis"))
    if a.has("split_sizes"):
        bounds = np.cumsum([int(s) for s in a.param("split_sizes")])[:-1]
    else:
        bounds = int(a.param("num_splits"))
    return np.split(x, bounds, axis=axis)


@kernel("concat")
def _concat(a: Args) -> np.ndarray:
    if a.param("interleave", False):
        raise UnsupportedOpError(f"concat with interleave=True ({a.op.name}) is not implemented by the interpreter")
    values = a["values"]
    dtype = np.result_type(*values)
    return np.concatenate([np.asarray(v, dtype) for v in values], axis=int(a.param("axis")))


# -------------------------------------------------------------------------------------------- classifier
@kernel("classify")
def _classify(a: Args) -> tuple[str, dict]:
    probs = a.f32("probabilities").reshape(-1)
    classes = list(a["classes"])
    return classes[int(np.argmax(probs))], dict(zip(classes, probs.tolist()))


# ---------------------------------------------------------------------------------------- quantization
def _broadcast(param: np.ndarray | None, rank: int, axis: int | None) -> np.ndarray | float:
    """A scalar or per-axis vector (MIL ``scale``/``zero_point``) shaped to broadcast against rank ``rank``."""
    if param is None:
        return 0.0
    param = np.asarray(param, np.float32)
    if param.ndim == 0 or param.size == 1 and axis is None:
        return param.reshape(())
    if param.ndim == rank:
        return param
    shape = [1] * rank
    shape[axis if axis is not None else 0] = param.size
    return param.reshape(shape)


@kernel("quantize")
def _quantize(a: Args) -> np.ndarray:
    x = a.f32("input")
    axis = a.param("axis")
    scale = _broadcast(a["scale"], x.ndim, axis)
    zero = _broadcast(a["zero_point"] if a.has("zero_point") else None, x.ndim, axis)
    info = np.iinfo(np.dtype(a.param("output_dtype")))
    return np.clip(np.rint(x / scale) + zero, info.min, info.max)


@kernel("dequantize")
def _dequantize(a: Args) -> np.ndarray:
    q = a.f32("input")
    axis = a.param("axis")
    zero = _broadcast(a["zero_point"] if a.has("zero_point") else None, q.ndim, axis)
    return (q - zero) * _broadcast(a["scale"], q.ndim, axis)


@kernel("constexpr_affine_dequantize")
def _affine_dequantize(a: Args) -> np.ndarray:
    q = a.f32("quantized_data")
    axis = int(a.param("axis"))
    return (q - _broadcast(a["zero_point"], q.ndim, axis)) * _broadcast(a["scale"], q.ndim, axis)


def _blockwise(param: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Repeat a per-block parameter (same rank as the data) up to the data's shape."""
    param = np.asarray(param, np.float32)
    for axis, (size, blocks) in enumerate(zip(shape, param.shape)):
        if blocks != size:
            param = np.repeat(param, size // blocks, axis=axis)
    return param


@kernel("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(a: Args) -> np.ndarray:
    data = a.f32("data")
    offset = _blockwise(a["offset"], data.shape) if a.has("offset") else 0.0
    return (data - offset) * _blockwise(a["scale"], data.shape)


# ------------------------------------------------------------------------------------------ interpreter
def load_program(package: str | Path) -> tuple[Any, Any]:
    """(spec, MIL program with weights) of a saved ``.mlpackage``, through coremltools."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto
    package = Path(package)
    spec = coreml_format.load_spec(package)
    if spec.WhichOneof("Type") != "mlProgram":
        raise UsageError(f"{package} is not an ML program ({spec.WhichOneof('Type')})",
                         "export it with evim-deploy export --target coreml")
    program = load_milproto(spec, spec.specificationVersion, file_weights_dir=str(package.joinpath(*WEIGHTS_DIR)))
    return spec, program


def _numpy_dtype(var: Any) -> np.dtype | None:
    from coremltools.converters.mil.mil import types
    if types.is_tensor(var.sym_type) or types.is_scalar(var.sym_type):
        dtype = var.dtype
        if types.is_str(dtype):
            return None
        return np.dtype(types.nptype_from_builtin(dtype))
    return None


class MILInterpreter:
    """Evaluates the ``main`` function of an ML program: ``run({"image": array}) -> {name: value}``."""

    def __init__(self, program: Any) -> None:
        function = program.functions["main"]
        self.input_names = list(function.inputs)
        self.input_shapes = {name: tuple(var.shape) for name, var in function.inputs.items()}
        self.input_dtypes = {name: _numpy_dtype(var) for name, var in function.inputs.items()}
        self.output_names = [var.name for var in function.outputs]
        self.constants: dict[str, Any] = {}
        self.steps: list[tuple[Any, Kernel, list[tuple[str, np.dtype | None]]]] = []
        self.op_counts: dict[str, int] = {}
        for op in function.operations:
            self.op_counts[op.op_type] = self.op_counts.get(op.op_type, 0) + 1
            if getattr(op, "blocks", None):
                raise UnsupportedOpError(f"control-flow op {op.op_type!r} ({op.name}) is not implemented by "
                                         "evim-deploy's MIL interpreter")
            outputs = [(var.name, _numpy_dtype(var)) for var in op.outputs]
            if op.op_type == "const":
                value = _store(op.outputs[0].val, outputs[0][1])
                self.constants[op.outputs[0].name] = _widen(value)
                continue
            fn = KERNELS.get(op.op_type)
            if fn is None:
                raise UnsupportedOpError(f"MIL op {op.op_type!r} ({op.name}) is not implemented by evim-deploy's "
                                         f"MIL interpreter; it implements {', '.join(sorted(KERNELS))}")
            if op.op_type.startswith("constexpr_"):  # weights: decompress once, with our own kernels
                self.constants[outputs[0][0]] = _widen(_store(fn(Args(op, self.constants)), outputs[0][1]))
            else:
                self.steps.append((op, fn, outputs))

    @classmethod
    def from_package(cls, package: str | Path) -> "MILInterpreter":
        return cls(load_program(package)[1])

    @property
    def ops(self) -> list[str]:
        """Op types in the program (consts and constexprs included), sorted."""
        return sorted(self.op_counts)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        env = dict(self.constants)
        for name in self.input_names:
            if name not in feeds:
                raise UsageError(f"missing input {name!r}", f"pass {', '.join(self.input_names)}")
            value = np.asarray(feeds[name])
            if value.shape != self.input_shapes[name]:
                raise UsageError(f"input {name!r} has shape {value.shape}, the program takes "
                                 f"{self.input_shapes[name]}", "resize the input")
            env[name] = _store(value, self.input_dtypes[name])
        for op, fn, outputs in self.steps:
            result = fn(Args(op, env))
            results = result if len(outputs) > 1 else [result]
            for (name, dtype), value in zip(outputs, results):
                env[name] = _store(value, dtype)
        return {name: env[name] for name in self.output_names}


def _store(value: Any, dtype: np.dtype | None) -> Any:
    """A value in the dtype MIL declares for it (fp16 results are rounded to fp16 here)."""
    if dtype is None or isinstance(value, (str, dict, list)):
        return value
    with np.errstate(over="ignore"):  # beyond fp16's range is inf, as on the device
        return np.asarray(value).astype(dtype, copy=False)


def _widen(value: Any) -> Any:
    """fp16 constants held as float32 (exact) so runs do not convert every weight again; every op's result
    is still rounded to the dtype MIL declares for it."""
    if isinstance(value, np.ndarray) and value.dtype == np.float16:
        return value.astype(np.float32)
    return value
