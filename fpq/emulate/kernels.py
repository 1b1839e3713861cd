"""The emulator's numpy kernels: bias adds, quantizer application, N-d convolution (im2col or a
dense unrolled matrix) and pooling, in ONNX's conventions (pads: begins then ends). Every sum the
kernels form is exact where the emulator calls them (float64 below 2**53, else the wide path of
fpq.numerics.wide); the Emulator (``fpq.emulate``) decides which kernel runs on which op.
"""
from __future__ import annotations

import numpy as np

from ..ir import Op, Quantizer
from ..numerics.scaled import apply_scaled
from ..typeplan import po2_exponents


def _add_bias(acc, b, batch_dims, channel_axis=None):
    if b is None:
        return acc
    if channel_axis is not None:
        b = b.reshape((-1,) + (1,) * (acc.ndim - 2))
    if acc.dtype != b.dtype:
        acc = acc.astype(np.float64)
    acc += b
    return acc


def batch_shape(shape, exported_in_shape, actual_in_shape):
    """ONNX Reshape target for a batch other than the exported one (dimension 0 is the batch)."""
    shape = list(shape)
    shape = [actual_in_shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if exported_in_shape is not None and shape and shape[0] == exported_in_shape[0] and \
            actual_in_shape[0] != exported_in_shape[0]:
        shape[0] = actual_in_shape[0] if -1 in shape[1:] else -1
    return tuple(shape)


def apply_quantizer(op: Op, x: np.ndarray) -> np.ndarray:
    """A quant / input_quant op's output: the emulator's definition of it (the HLS lookup tables
    of float-scaled quantizers, fpq.numerics.thresholds.quantizer_table, compute the same)."""
    if op.quant.is_block:   # block-scaled: float64 values (an NVFP4 value has up to 30 bits)
        return op.quant(x)
    if op.kind == "quant" and po2_exponents(op.quant.scale) is None:
        x = x.astype(np.float64, copy=False)  # a float scale divides the exact value in float64
    return quantize_fast(x, op.quant)


def quantize_fast(x: np.ndarray, q: Quantizer) -> np.ndarray:
    """``fpq.quantize(x, fmt, scale)`` stored as float32, with a fast path for po2-scaled ints.

    The fast path is the same arithmetic: a power-of-two scale makes x / scale and q * scale
    exact in any float dtype, so only rint and clip remain.

    Args:
        x: the values to quantize.
        q: the IR quantizer (format, scale, optional pre-scale).

    Returns:
        np.ndarray: float32 values on the quantizer's grid.

    Example:
        >>> import numpy as np
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> from fpq.emulate import as_graph, quantize_fast
        >>> quant = as_graph(q).ops[0].quant          # the input quantizer: int8 x 2^-5
        >>> quantize_fast(np.array([0.3, 1.0], np.float32), quant)
        array([0.3125, 1.    ], dtype=float32)
    """
    return apply_scaled(x, q.format, q.scale, q.pre_scale)


# ----------------------------------------------------------------------------- conv / pool

def _pads_split(pads, nd):
    return [(int(pads[i]), int(pads[i + nd])) for i in range(nd)]


def _padded(x, kernel, strides, dilations, pads, fill=0.0, ceil_mode=0):
    """x padded with ``fill`` (ONNX pads; ceil_mode adds right padding) and the output size."""
    nd = len(kernel)
    pw = _pads_split(pads, nd)
    out = []
    for i in range(nd):
        size = x.shape[2 + i] + pw[i][0] + pw[i][1]
        span = dilations[i] * (kernel[i] - 1) + 1
        n_out = (size - span) // strides[i] + 1
        if ceil_mode:
            n_ceil = -(-(size - span) // strides[i]) + 1
            # ONNX: a window that starts in the right padding is dropped
            if (n_ceil - 1) * strides[i] >= x.shape[2 + i] + pw[i][0]:
                n_ceil -= 1
            extra = max(0, (n_ceil - 1) * strides[i] + span - size)
            pw[i] = (pw[i][0], pw[i][1] + extra)
            n_out = n_ceil
        out.append(int(n_out))
    if any(p != (0, 0) for p in pw):
        x = np.pad(x, [(0, 0), (0, 0)] + list(pw), constant_values=fill)
    return x, out


def _offsets(xp, kernel, strides, dilations, out):
    """(N, C, *out) strided views of the padded input, one per kernel offset (row-major)."""
    nd = len(kernel)
    for off in np.ndindex(*kernel):
        idx = (slice(None), slice(None)) + tuple(
            slice(off[d] * dilations[d], off[d] * dilations[d] + (out[d] - 1) * strides[d] + 1, strides[d])
            for d in range(nd))
        yield xp[idx]


def conv_nd(x, w, attrs):
    """ONNX Conv (1-D / 2-D, groups, strides, pads, dilations) as im2col and matrix products.

    Many output pixels: patches (N, C*kk, L) and a batched matmul whose result is already
    (N, O, L). Few (L < 16): the batched matmul would run N tiny products, so patches are laid
    out (N*L, C*kk) for one large product, then transposed to channels first.
    """
    kernel, strides, dil = attrs["kernel"], attrs["strides"], attrs["dilations"]
    xp, out = _padded(x, kernel, strides, dil, attrs["pads"])
    n, c = x.shape[:2]
    kk = int(np.prod(kernel))
    L = int(np.prod(out))
    g = attrs["groups"]
    cout = w.shape[0]
    cout_g, width = cout // g, w.shape[1] * kk
    dt = np.result_type(x.dtype, w.dtype)
    if L < 16:
        rows = np.empty((n,) + tuple(out) + (c, kk), dtype=x.dtype)
        for j, v in enumerate(_offsets(xp, kernel, strides, dil, out)):
            rows[..., j] = np.moveaxis(v, 1, -1)
        rows = rows.reshape(n * L, c * kk)
        y = np.empty((n * L, cout), dtype=dt)
        for gi in range(g):
            wg = w[gi * cout_g:(gi + 1) * cout_g].reshape(cout_g, width)
            y[:, gi * cout_g:(gi + 1) * cout_g] = rows[:, gi * width:(gi + 1) * width] @ wg.T
        return np.ascontiguousarray(np.moveaxis(y.reshape(n, L, cout), 2, 1)).reshape(n, cout, *out)
    patches = np.empty((n, c * kk, L), dtype=x.dtype)
    for j, v in enumerate(_offsets(xp, kernel, strides, dil, out)):
        patches[:, j::kk, :] = v.reshape(n, c, L)
    if g == 1:
        y = np.matmul(w.reshape(cout, width), patches)
    else:
        y = np.empty((n, cout, L), dtype=dt)
        for gi in range(g):
            wg = w[gi * cout_g:(gi + 1) * cout_g].reshape(cout_g, width)
            y[:, gi * cout_g:(gi + 1) * cout_g] = np.matmul(wg, patches[:, gi * width:(gi + 1) * width])
    return y.reshape(n, cout, *out)


DENSE_CONV_MAX_ENTRIES = 1 << 18  # the unrolled matrix stays cache-sized (1 MiB of float32)
DENSE_CONV_MAX_WORK = 8           # and costs at most 8x the multiply-adds of im2col


def dense_conv_matrix(w, attrs, in_shape):
    """A small convolution as one (inputs, outputs) matrix T: conv(x) = x.reshape(N, -1) @ T.

    Why: on small feature maps (the first layers of trigger / edge nets) building im2col patches
    costs more than the products; one GEMM against the unrolled conv is 2x faster on the digits
    conv net (measured) although it multiplies by zeros. Exact: each output sums the same products
    plus exact zeros, so every partial sum is bounded as im2col's are. T is conv_nd applied to the
    identity basis (each entry one weight times 1, or 0). None when T would be large or the extra
    zero products more than DENSE_CONV_MAX_WORK times im2col's work."""
    n_in = int(np.prod(in_shape))
    c_g, kk = w.shape[1], int(np.prod(w.shape[2:]))
    xp, out = _padded(np.zeros((1, 1) + tuple(in_shape[1:])), attrs["kernel"], attrs["strides"],
                      attrs["dilations"], attrs["pads"])
    n_out = w.shape[0] * int(np.prod(out))
    if n_in * n_out > DENSE_CONV_MAX_ENTRIES or n_in > DENSE_CONV_MAX_WORK * c_g * kk:
        return None
    eye = np.eye(n_in, dtype=w.dtype).reshape((n_in,) + tuple(in_shape))
    t = conv_nd(eye, w, attrs)
    return np.ascontiguousarray(t.reshape(n_in, n_out)), tuple(t.shape[1:])


def pool_nd(x, attrs, mode):
    nd = len(attrs["kernel"])
    kernel, strides = attrs["kernel"], attrs["strides"]
    dil = attrs.get("dilations", (1,) * nd)
    fill = -np.inf if mode == "max" else 0.0
    xp, out = _padded(x, kernel, strides, dil, attrs["pads"], fill, attrs.get("ceil_mode", 0))
    acc = None
    for v in _offsets(xp, kernel, strides, dil, out):
        if acc is None:
            acc = v.copy()
        elif mode == "max":
            np.maximum(acc, v, out=acc)
        else:
            acc += v
    if mode == "max":
        return acc
    if attrs.get("count_include_pad", 0) and not attrs.get("ceil_mode", 0):
        return acc / float(np.prod(kernel))
    return acc / window_counts(x.shape[2:], attrs)


def window_counts(spatial_shape, attrs) -> np.ndarray:
    """How many real (not padded) inputs each window of a pool covers, shape (1, 1, *out): the
    divisor of an average that excludes padding (ONNX count_include_pad=0)."""
    nd = len(attrs["kernel"])
    kernel, strides = attrs["kernel"], attrs["strides"]
    dil = attrs.get("dilations", (1,) * nd)
    ones = np.ones((1, 1) + tuple(spatial_shape), dtype=np.float64)
    op, out = _padded(ones, kernel, strides, dil, attrs["pads"], 0.0, attrs.get("ceil_mode", 0))
    return sum(v for v in _offsets(op, kernel, strides, dil, out))
