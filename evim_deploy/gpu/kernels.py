"""Triton kernels of the GPU plan. Layouts: NHWC / token-major ``(B, L, C)``, contiguous.

fp32 accumulation everywhere, fp16/bf16 storage. Launch wrappers and block-size choice live in
:mod:`.triton_ops`; each kernel's numerical reference is the same-named function of :mod:`.ops_torch`.
Index arithmetic is int32: every tensor must hold fewer than 2**31 elements (checked by the wrappers).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _output_pixels(npix, OH, OW, BP: tl.constexpr):
    """This program's block of flattened output pixels: (index, in range, image, y, x)."""
    p = tl.program_id(0) * BP + tl.arange(0, BP)
    rem = p % (OH * OW)
    return p, p < npix, p // (OH * OW), rem // OW, rem % OW


@triton.jit
def _tap(oy, ox, pmask, tap: tl.constexpr, STRIDE: tl.constexpr, H, W):
    """Input row and column a 3x3 tap (pad 1) reads for each output pixel, and whether it is inside."""
    iy = oy * STRIDE + (tap // 3 - 1)
    ix = ox * STRIDE + (tap % 3 - 1)
    return iy, ix, pmask & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)


@triton.jit
def _bias_act_store(acc, b_ptr, out_ptr, p, pmask, c, cmask, C, RELU: tl.constexpr):
    """``out[p, c] = act(acc + bias[c])`` for an NHWC output with ``C`` channels."""
    acc += tl.load(b_ptr + c, mask=cmask, other=0.0)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(out_ptr + p[:, None] * C + c[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=pmask[:, None] & cmask[None, :])


@triton.jit(do_not_specialize=["npix"])
def conv3x3_kernel(x_ptr, w_ptr, b_ptr, out_ptr, npix, H, W, OH, OW, CIN, COUT, sxb, sxh, sxw, sxc,
                   STRIDE: tl.constexpr, RELU: tl.constexpr, BP: tl.constexpr, CIN_P: tl.constexpr,
                   COUT_P: tl.constexpr):
    """Dense 3x3 conv (pad 1) as an implicit GEMM, one ``tl.dot`` per tap; input strided (NCHW or NHWC)."""
    p, pmask, img, oy, ox = _output_pixels(npix, OH, OW, BP)
    ci = tl.arange(0, CIN_P)
    co = tl.arange(0, COUT_P)
    cimask = ci < CIN
    comask = co < COUT
    acc = tl.zeros([BP, COUT_P], dtype=tl.float32)
    for tap in tl.static_range(9):
        iy, ix, ok = _tap(oy, ox, pmask, tap, STRIDE, H, W)
        a = tl.load(x_ptr + (img * sxb + iy * sxh + ix * sxw)[:, None] + ci[None, :] * sxc,
                    mask=ok[:, None] & cimask[None, :], other=0.0)
        w = tl.load(w_ptr + (tap * CIN + ci[:, None]) * COUT + co[None, :],
                    mask=cimask[:, None] & comask[None, :], other=0.0)
        acc += tl.dot(a.to(w.dtype), w)
    _bias_act_store(acc, b_ptr, out_ptr, p, pmask, co, comask, COUT, RELU)


@triton.jit(do_not_specialize=["npix"])
def stem_conv_kernel(x_ptr, w_ptr, b_ptr, out_ptr, npix, H, W, OH, OW, COUT, sxb, sxh, sxw, sxc,
                         CIN: tl.constexpr, STRIDE: tl.constexpr, RELU: tl.constexpr, BP: tl.constexpr,
                         COUT_P: tl.constexpr, KP: tl.constexpr):
    """Dense 3x3 conv (pad 1) for a few input channels (RGB) as one tensor-core dot: the 9 * CIN
    im2col columns (tap-major, padded to KP) gathered straight into registers, no K padded per tap."""
    p, pmask, img, oy, ox = _output_pixels(npix, OH, OW, BP)
    k = tl.arange(0, KP)
    kmask = k < 9 * CIN
    tap = k // CIN
    iy = (oy * STRIDE)[:, None] + (tap // 3 - 1)[None, :]
    ix = (ox * STRIDE)[:, None] + (tap % 3 - 1)[None, :]
    ok = pmask[:, None] & kmask[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    a = tl.load(x_ptr + (img * sxb)[:, None] + iy * sxh + ix * sxw + ((k % CIN) * sxc)[None, :], mask=ok, other=0.0)
    co = tl.arange(0, COUT_P)
    comask = co < COUT
    w = tl.load(w_ptr + k[:, None] * COUT + co[None, :], mask=kmask[:, None] & comask[None, :], other=0.0)
    _bias_act_store(tl.dot(a.to(w.dtype), w), b_ptr, out_ptr, p, pmask, co, comask, COUT, RELU)


@triton.jit(do_not_specialize=["npix"])
def depthwise_kernel(x_ptr, w_ptr, b_ptr, out_ptr, npix, H, W, OH, OW, C,
                     STRIDE: tl.constexpr, RELU: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    """Depthwise 3x3 conv (pad 1) + bias (+ ReLU) on NHWC; weights ``[9, C]`` float32."""
    p, pmask, img, oy, ox = _output_pixels(npix, OH, OW, BP)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cmask = c < C
    acc = tl.zeros([BP, BC], dtype=tl.float32)
    for tap in tl.static_range(9):
        iy, ix, ok = _tap(oy, ox, pmask, tap, STRIDE, H, W)
        v = tl.load(x_ptr + ((img * H + iy) * W + ix)[:, None] * C + c[None, :],
                    mask=ok[:, None] & cmask[None, :], other=0.0)
        acc += v.to(tl.float32) * tl.load(w_ptr + tap * C + c, mask=cmask, other=0.0)[None, :]
    _bias_act_store(acc, b_ptr, out_ptr, p, pmask, c, cmask, C, RELU)


@triton.jit(do_not_specialize=["M"])
def linear_kernel(a_ptr, w_ptr, b_ptr, s_ptr, r_ptr, keep_ptr, out_ptr, M, K, N, group_rows,
                  RELU: tl.constexpr, SCALE: tl.constexpr, RESIDUAL: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """``out = act((a * s) @ w + b) [+ keep * r]``; ``s [M // group_rows, K]`` float32 is an optional
    per-image channel scale, ``r [M, N]`` an optional residual with per-channel ``keep``."""
    rows = tl.program_id(1) * BM + tl.arange(0, BM)
    cols = tl.program_id(0) * BN + tl.arange(0, BN)
    rmask = rows < M
    cmask = cols < N
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        kmask = k < K
        a = tl.load(a_ptr + rows[:, None] * K + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        if SCALE:
            s = tl.load(s_ptr + (rows // group_rows)[:, None] * K + k[None, :],
                        mask=rmask[:, None] & kmask[None, :], other=0.0)
            a = (a.to(tl.float32) * s).to(a.dtype)
        w = tl.load(w_ptr + k[:, None] * N + cols[None, :], mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc += tl.dot(a, w)
    acc += tl.load(b_ptr + cols, mask=cmask, other=0.0)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if RESIDUAL:
        r = tl.load(r_ptr + rows[:, None] * N + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        acc += r.to(tl.float32) * tl.load(keep_ptr + cols, mask=cmask, other=0.0)[None, :]
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


@triton.jit(do_not_specialize=["M"])
def mlp_kernel(x_ptr, w1_ptr, b1_ptr, wz_ptr, bz_ptr, w2_ptr, b2_ptr, keep_ptr, out_ptr, M, C, HID, d_value,
               GATE: tl.constexpr, RESIDUAL: tl.constexpr, BM: tl.constexpr, CP: tl.constexpr, BH: tl.constexpr):
    """Two matmuls with the hidden layer kept on chip, in ``BH``-wide slices.

    ``GATE=False``: ``keep * x + relu(x @ w1 + b1) @ w2 + b2`` (the FFN).
    ``GATE=True``: ``((x @ w1 + b1) * (silu(x @ wz + bz) + d)) @ w2 + b2`` (HSM-SSD's hidden-state mix).
    """
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.arange(0, CP)
    rmask = rows < M
    cmask = cols < C
    x = tl.load(x_ptr + rows[:, None] * C + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    acc = tl.zeros([BM, CP], dtype=tl.float32)
    for h0 in range(0, HID, BH):
        hc = h0 + tl.arange(0, BH)
        hmask = hc < HID
        wmask = cmask[:, None] & hmask[None, :]
        w1 = tl.load(w1_ptr + cols[:, None] * HID + hc[None, :], mask=wmask, other=0.0)
        hid = tl.dot(x, w1) + tl.load(b1_ptr + hc, mask=hmask, other=0.0)[None, :]
        if GATE:
            wz = tl.load(wz_ptr + cols[:, None] * HID + hc[None, :], mask=wmask, other=0.0)
            z = tl.dot(x, wz) + tl.load(bz_ptr + hc, mask=hmask, other=0.0)[None, :]
            hid = hid * (z * tl.sigmoid(z) + d_value)
        else:
            hid = tl.maximum(hid, 0.0)
        w2 = tl.load(w2_ptr + hc[:, None] * C + cols[None, :], mask=hmask[:, None] & cmask[None, :], other=0.0)
        acc += tl.dot(hid.to(x.dtype), w2)
    acc += tl.load(b2_ptr + cols, mask=cmask, other=0.0)[None, :]
    if RESIDUAL:
        acc += x.to(tl.float32) * tl.load(keep_ptr + cols, mask=cmask, other=0.0)[None, :]
    tl.store(out_ptr + rows[:, None] * C + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


@triton.jit(do_not_specialize=["M"])
def ln_linear_kernel(x_ptr, g_ptr, be_ptr, w_ptr, t_ptr, p_ptr, M, C, NOUT, eps,
                     BM: tl.constexpr, CP: tl.constexpr, BN: tl.constexpr):
    """``t = LayerNorm(x)`` (stored by the first column block) and ``p = t @ w`` in one pass over ``x``."""
    rows = tl.program_id(1) * BM + tl.arange(0, BM)
    cols = tl.arange(0, CP)
    rmask = rows < M
    cmask = cols < C
    x = tl.load(x_ptr + rows[:, None] * C + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(cmask[None, :], x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    gamma = tl.load(g_ptr + cols, mask=cmask, other=0.0)
    beta = tl.load(be_ptr + cols, mask=cmask, other=0.0)
    t = (xc * rstd[:, None] * gamma[None, :] + beta[None, :]).to(t_ptr.dtype.element_ty)
    if tl.program_id(0) == 0:
        tl.store(t_ptr + rows[:, None] * C + cols[None, :], t, mask=rmask[:, None] & cmask[None, :])
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    nmask = n < NOUT
    w = tl.load(w_ptr + cols[:, None] * NOUT + n[None, :], mask=cmask[:, None] & nmask[None, :], other=0.0)
    p = tl.dot(t, w)
    tl.store(p_ptr + rows[:, None] * NOUT + n[None, :], p.to(p_ptr.dtype.element_ty),
             mask=rmask[:, None] & nmask[None, :])


@triton.jit
def state_kernel(bcdt_ptr, t_ptr, h_ptr, L, N, SEG, C, LP: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr):
    """Per image: ``h = (softmax over tokens of dt * B)^T @ t``; ``bcdt (B, L, 3 SEG)`` already depthwise-convolved."""
    img = tl.program_id(0)
    l = tl.arange(0, LP)
    n = tl.arange(0, NP)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    lmask = l < L
    nmask = n < N
    cmask = c < C
    rowbase = bcdt_ptr + img * L * 3 * SEG + l[:, None] * (3 * SEG)
    m2 = lmask[:, None] & nmask[None, :]
    dt = tl.load(rowbase + 2 * SEG + n[None, :], mask=m2, other=float("-inf")).to(tl.float32)
    dt = tl.where(nmask[None, :], dt, 0.0)                     # padded states: finite, weight 0 below
    b = tl.load(rowbase + n[None, :], mask=m2, other=0.0).to(tl.float32)
    e = tl.exp(dt - tl.max(dt, axis=0)[None, :])
    weights = e * b / tl.sum(e, axis=0)[None, :]               # (LP, NP)
    t = tl.load(t_ptr + img * L * C + l[:, None] * C + c[None, :], mask=lmask[:, None] & cmask[None, :], other=0.0)
    h = tl.dot(tl.trans(weights.to(t.dtype)), t)               # (NP, BC)
    tl.store(h_ptr + img * N * C + n[:, None] * C + c[None, :], h.to(h_ptr.dtype.element_ty),
             mask=nmask[:, None] & cmask[None, :])


@triton.jit
def scan_out_kernel(bcdt_ptr, h_ptr, x_ptr, keep_ptr, ys_ptr, out_ptr, L, N, SEG, C,
                    BL: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr):
    """``out = x * keep + (C @ h) * y_scale`` per image, token block and channel block."""
    img = tl.program_id(0)
    l = tl.program_id(1) * BL + tl.arange(0, BL)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    n = tl.arange(0, NP)
    lmask = l < L
    nmask = n < N
    cmask = c < C
    cmat = tl.load(bcdt_ptr + img * L * 3 * SEG + l[:, None] * (3 * SEG) + SEG + n[None, :],
                   mask=lmask[:, None] & nmask[None, :], other=0.0)
    h = tl.load(h_ptr + img * N * C + n[:, None] * C + c[None, :], mask=nmask[:, None] & cmask[None, :], other=0.0)
    y = tl.dot(cmat, h)
    offs = img * L * C + l[:, None] * C + c[None, :]
    omask = lmask[:, None] & cmask[None, :]
    x = tl.load(x_ptr + offs, mask=omask, other=0.0).to(tl.float32)
    keep = tl.load(keep_ptr + c, mask=cmask, other=0.0)
    scale = tl.load(ys_ptr + c, mask=cmask, other=0.0)
    tl.store(out_ptr + offs, (x * keep[None, :] + y * scale[None, :]).to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def ln_mean_kernel(x_ptr, out_ptr, N, C, out_stride, col0, eps, NP: tl.constexpr, CP: tl.constexpr):
    """Per image: LayerNorm (no affine) of each row of ``x (N, C)``, mean over rows -> ``out[img, col0:col0+C]``."""
    img = tl.program_id(0)
    n = tl.arange(0, NP)
    c = tl.arange(0, CP)
    nmask = n < N
    cmask = c < C
    x = tl.load(x_ptr + img * N * C + n[:, None] * C + c[None, :], mask=nmask[:, None] & cmask[None, :], other=0.0)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(cmask[None, :], x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    y = tl.where(nmask[:, None], xc * rstd[:, None], 0.0)
    tl.store(out_ptr + img * out_stride + col0 + c, tl.sum(y, axis=0) / N, mask=cmask)
