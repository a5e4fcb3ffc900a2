"""Launch wrappers for :mod:`.kernels`: same functions, signatures and layouts as :mod:`.ops_torch`.

Block sizes come from :mod:`.configs`, keyed by the op's static shape; ``TritonOps(overrides)``
replaces any of them (the bench's sweep uses this), and an override ``"torch"`` sends that op shape
to its torch twin (cuDNN / cuBLAS) where those are faster or a kernel fails to compile on some GPU.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import triton

from . import kernels as K
from . import ops_torch
from .configs import LAUNCH_KEYS, Config, default_config, pow2, shipped_overrides
from .plan import Conv3x3, Depthwise, Linear, MLP, Mixer


def _split(config: Config) -> tuple[Config, Config]:
    meta = {k: v for k, v in config.items() if k not in LAUNCH_KEYS}
    return meta, {k: v for k, v in config.items() if k in LAUNCH_KEYS}


def _check(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.numel() >= 2 ** 31:
            raise ValueError(f"tensor of {t.numel()} elements: the kernels index with int32; use a smaller batch")


class TritonOps:
    """The plan's ops as Triton kernels. ``overrides`` maps op keys to configs, ``"torch"`` or ``"split"``;
    they go over the winners shipped for the current GPU (:func:`shipped_overrides`), which go over
    :func:`default_config`."""

    def __init__(self, overrides: dict[tuple, Config | str] | None = None,
                 record: Callable[[tuple, Callable[[Config | str], Any]], None] | None = None,
                 compile_only: bool = False) -> None:
        shipped = shipped_overrides(torch.cuda.get_device_name()) if torch.cuda.is_available() else {}
        self.overrides = {**shipped, **(overrides or {})}
        self.compile_only = compile_only  # launches only compile (see precompile): outputs stay uninitialized
        self.record = record    # called with (key, run(config)) for every op: the bench's sweep

    def _launch(self, kernel: Any, grid: tuple, *args: Any, **kwargs: Any) -> None:
        if self.compile_only:
            kernel.warmup(*args, grid=grid, **kwargs)
        else:
            kernel[grid](*args, **kwargs)

    def config(self, key: tuple) -> Config | str:
        return self.overrides.get(key) or default_config(key)

    def _run(self, key: tuple, launch: Callable[[Config], Any], reference: Callable[[], Any],
             split: Callable[[], Any] | None = None) -> Any:
        """Run one op under ``key``'s config: block sizes, ``"torch"`` (its twin) or ``"split"`` (two kernels)."""
        def run(config: Config | str) -> Any:
            if config == "torch":
                return reference()
            if config == "split":
                return split()
            return launch(config)
        if self.record is not None:
            self.record(key, run)
        return run(self.config(key))

    # ------------------------------------------------------------------ convolutions
    def conv3x3(self, x: torch.Tensor, op: Conv3x3, dtype: torch.dtype) -> torch.Tensor:
        batch, height, width, cin = x.shape
        _, _, cout = op.weight.shape
        oh, ow = (height - 1) // op.stride + 1, (width - 1) // op.stride + 1
        out = torch.empty(batch, oh, ow, cout, device=x.device, dtype=dtype)
        _check(x, out)
        sb, sh, sw, sc = x.stride()

        def launch(cfg: Config) -> torch.Tensor:
            meta, opts = _split(cfg)
            grid = (triton.cdiv(batch * oh * ow, meta["BP"]),)
            args = (x, op.weight, op.bias, out, batch * oh * ow, height, width, oh, ow)
            if cin <= 4:      # RGB: im2col in registers, one dot with K = 9 * cin (not 16 per tap)
                self._launch(K.stem_conv_kernel, grid, *args, cout, sb, sh, sw, sc, CIN=cin, STRIDE=op.stride,
                             RELU=op.relu, COUT_P=pow2(cout), KP=pow2(9 * cin), **meta, **opts)
            else:
                self._launch(K.conv3x3_kernel, grid, *args, cin, cout, sb, sh, sw, sc, STRIDE=op.stride, RELU=op.relu,
                             CIN_P=pow2(cin), COUT_P=pow2(cout), **meta, **opts)
            return out
        return self._run(("conv3x3", cin, cout), launch, lambda: ops_torch.conv3x3(x, op, dtype))

    def depthwise(self, x: torch.Tensor, op: Depthwise) -> torch.Tensor:
        batch, height, width, channels = x.shape
        oh, ow = (height - 1) // op.stride + 1, (width - 1) // op.stride + 1
        out = torch.empty(batch, oh, ow, channels, device=x.device, dtype=x.dtype)
        _check(x)

        def launch(cfg: Config) -> torch.Tensor:
            meta, opts = _split(cfg)
            grid = (triton.cdiv(batch * oh * ow, meta["BP"]), triton.cdiv(channels, meta["BC"]))
            self._launch(K.depthwise_kernel, grid, x, op.weight, op.bias, out, batch * oh * ow, height, width, oh, ow,
                         channels, STRIDE=op.stride, RELU=op.relu, **meta, **opts)
            return out
        return self._run(("depthwise", channels, op.stride), launch, lambda: ops_torch.depthwise(x, op))

    # ------------------------------------------------------------------ matmuls
    def linear(self, x: torch.Tensor, op: Linear, scale: torch.Tensor | None = None,
               residual: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, k = x.shape
        n = op.weight.shape[1]
        out = torch.empty(batch, tokens, n, device=x.device, dtype=x.dtype)
        _check(x, out)
        s = scale.contiguous() if scale is not None else op.bias
        r, kp = (residual, keep) if residual is not None else (out, op.bias)
        kind = "scale" if scale is not None else "residual" if residual is not None else "plain"

        def launch(cfg: Config) -> torch.Tensor:
            meta, opts = _split(cfg)
            grid = (triton.cdiv(n, meta["BN"]), triton.cdiv(batch * tokens, meta["BM"]))
            self._launch(K.linear_kernel, grid, x, op.weight, op.bias, s, r, kp, out, batch * tokens, k, n, tokens,
                         RELU=op.relu, SCALE=scale is not None, RESIDUAL=residual is not None, **meta, **opts)
            return out
        return self._run(("linear", k, n, kind), launch, lambda: ops_torch.linear(x, op, scale, residual, keep))

    def _mlp(self, x: torch.Tensor, fc1: torch.Tensor, b1: torch.Tensor, wz: torch.Tensor,
             bz: torch.Tensor, fc2: Linear, keep: torch.Tensor, d: float, gate: bool) -> Callable[[Config], Any]:
        rows, channels = x.numel() // x.shape[-1], x.shape[-1]
        out = torch.empty_like(x)
        _check(x)

        def launch(cfg: Config) -> torch.Tensor:
            meta, opts = _split(cfg)
            self._launch(K.mlp_kernel, (triton.cdiv(rows, meta["BM"]),),
                         x, fc1, b1, wz, bz, fc2.weight, fc2.bias, keep, out, rows, channels, fc1.shape[1], d,
                         GATE=gate, RESIDUAL=not gate, CP=pow2(channels), **meta, **opts)
            return out
        return launch

    def mlp(self, x: torch.Tensor, op: MLP) -> torch.Tensor:
        launch = self._mlp(x, op.fc1.weight, op.fc1.bias, op.fc1.weight, op.fc1.bias, op.fc2, op.keep, 0.0,
                           gate=False)
        return self._run(("mlp", x.shape[-1], op.fc1.weight.shape[1], False), launch, lambda: ops_torch.mlp(x, op),
                         split=lambda: self.linear(self.linear(x, op.fc1), op.fc2, residual=x, keep=op.keep))

    def mix(self, h: torch.Tensor, mixer: Mixer) -> torch.Tensor:
        launch = self._mlp(h, mixer.wh, mixer.bh, mixer.wz, mixer.bz, mixer.out, mixer.bh, mixer.d, gate=True)
        return self._run(("mlp", h.shape[-1], mixer.wh.shape[1], True), launch, lambda: ops_torch.mix(h, mixer))

    def ln_linear(self, x: torch.Tensor, mixer: Mixer) -> tuple[torch.Tensor, torch.Tensor]:
        batch, tokens, channels = x.shape
        nout = mixer.bcdt.shape[1]
        t = torch.empty_like(x)
        p = torch.empty(batch, tokens, nout, device=x.device, dtype=x.dtype)
        _check(x, p)

        def launch(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
            meta, opts = _split(cfg)
            grid = (triton.cdiv(nout, meta["BN"]), triton.cdiv(batch * tokens, meta["BM"]))
            self._launch(K.ln_linear_kernel, grid, x, mixer.norm_weight, mixer.norm_bias, mixer.bcdt, t, p,
                         batch * tokens, channels, nout, mixer.eps, CP=pow2(channels), **meta, **opts)
            return t, p
        return self._run(("ln_linear", channels, nout), launch, lambda: ops_torch.ln_linear(x, mixer))

    # ------------------------------------------------------------------ HSM-SSD state products
    def state(self, bcdt: torch.Tensor, tokens: torch.Tensor, state_dim: int) -> torch.Tensor:
        batch, length, channels = tokens.shape
        h = torch.empty(batch, state_dim, channels, device=tokens.device, dtype=tokens.dtype)

        def launch(cfg: Config) -> torch.Tensor:
            meta, opts = _split(cfg)
            self._launch(K.state_kernel, (batch, triton.cdiv(channels, meta["BC"])),
                         bcdt, tokens, h, length, state_dim, bcdt.shape[-1] // 3, channels, LP=pow2(length),
                         NP=pow2(state_dim), **meta, **opts)
            return h
        return self._run(("state", length, state_dim, channels), launch,
                         lambda: ops_torch.state(bcdt, tokens, state_dim))

    def scan_out(self, bcdt: torch.Tensor, hidden: torch.Tensor, x: torch.Tensor, keep: torch.Tensor,
                 y_scale: torch.Tensor, state_dim: int) -> torch.Tensor:
        batch, length, channels = x.shape
        out = torch.empty_like(x)

        def launch(cfg: Config) -> torch.Tensor:
            meta, opts = _split(cfg)
            grid = (batch, triton.cdiv(length, meta["BL"]), triton.cdiv(channels, meta["BC"]))
            self._launch(K.scan_out_kernel, grid, bcdt, hidden, x, keep, y_scale, out, length, state_dim,
                         bcdt.shape[-1] // 3, channels,
                                    NP=pow2(state_dim), **meta, **opts)
            return out
        return self._run(("scan_out", length, state_dim, channels), launch,
                         lambda: ops_torch.scan_out(bcdt, hidden, x, keep, y_scale, state_dim))


    def ln_mean(self, features: list[torch.Tensor], eps: float) -> torch.Tensor:
        batch = features[0].shape[0]
        widths = [f.shape[-1] for f in features]
        out = torch.empty(batch, sum(widths), device=features[0].device, dtype=torch.float32)

        def launch(cfg: Config) -> torch.Tensor:
            col = 0
            for f, width in zip(features, widths):
                self._launch(K.ln_mean_kernel, (batch,), f, out, f.shape[1], width, out.shape[1], col, eps,
                             NP=pow2(f.shape[1], 1), CP=pow2(width), **cfg)
                col += width
            return out
        key = ("ln_mean", tuple(tuple(f.shape[1:]) for f in features))
        return self._run(key, launch, lambda: ops_torch.ln_mean(features, eps))


def precompile(plan: Any, example: torch.Tensor, overrides: dict | None = None, workers: int = 16) -> None:
    """Compile every kernel of a forward pass on ``example`` in parallel threads (Triton's AsyncCompileMode)."""
    from concurrent.futures import ThreadPoolExecutor

    from .model import PlanModel
    with ThreadPoolExecutor(workers) as pool, triton.AsyncCompileMode(pool), torch.inference_mode():
        PlanModel(plan, TritonOps(overrides, compile_only=True))(example)
