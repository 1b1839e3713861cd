"""Exact convolutions of block-scaled tensors (numpy or torch arrays): the Conv1d / Conv2d of a block
format, for fpq's torch layers (eval mode) and both emulator backends, so all compute one value.

Block axis: the input channels, per kernel tap. A conv's input x (N, C, *spatial) is block-quantized
along axis 1 (``k`` channels of one pixel share a scale) and its weight (O, C, *kernel) along axis 1
too (``k`` input channels of one output channel and one tap). Why not blocks over im2col's flattened
C x kernel window:
* an activation is then quantized once, where it is produced (one scale per pixel and channel
  block), as the OCP MX reference library (Microsoft's microxcaling, mx/convolution.py, as we read
  it; not re-checked offline) quantizes both conv operands along axis 1; im2col blocks would give the same activation a different scale
  in every window that covers it, so the quantizer would have to run per window, after the unfold
  (up to kernel-size times the scale units, and the activation would no longer be one tensor);
* a 1x1 conv is then exactly a Linear over the channels, and a channels-last hardware datapath
  (hls4ml's io_stream / io_parallel convolutions read one pixel's channels at a time) sees whole
  blocks per tap.
The reference of the values is fpq.numerics.blocks (axis 1); this module only sums them exactly.

Sum: the patches are laid out tap-major, each tap's channels zero-padded to whole blocks, so the
reduction axis is (taps x channel blocks x k) and ``block_dot.block_linear`` sums it exactly, per
block pair (rounded to odd at 53 bits where the sum is wider than float64; see block_dot). Groups
other than 1 are not built (refused by fpq.convert).
"""
from __future__ import annotations

import itertools

import numpy as np

from .block_dot import _is_torch, block_linear

ROWS_PER_PASS = 8192   # output pixels per block_linear call: bounds its (rows, O, blocks) temporaries


def _split_pads(pads, nd: int):
    """ONNX pads (begin..., end...) -> [(begin, end)] per spatial axis."""
    pads = list(pads) if pads is not None else [0] * (2 * nd)
    if len(pads) != 2 * nd:
        raise ValueError(f"block_conv: pads {pads} do not match {nd} spatial axes (ONNX: begins then ends)")
    return [(int(pads[i]), int(pads[nd + i])) for i in range(nd)]


def conv_attrs(kernel, strides=None, pads=None, dilations=None, groups: int = 1) -> dict:
    """The ONNX Conv attributes block_conv takes (the emulator's op.attrs have this form)."""
    nd = len(kernel)
    return {"kernel": tuple(int(v) for v in kernel),
            "strides": tuple(int(v) for v in (strides or (1,) * nd)),
            "pads": tuple(int(v) for v in (pads or (0,) * (2 * nd))),
            "dilations": tuple(int(v) for v in (dilations or (1,) * nd)), "groups": int(groups)}


def patches_tap_major(x, kernel, strides, pads, dilations, k: int):
    """(rows (N * L, taps * cp), out spatial shape): every output pixel's input window, tap-major, each
    tap's C channels zero-padded to cp = a multiple of k (numpy or torch)."""
    torch_ = _is_torch(x)
    nd = len(kernel)
    pw = _split_pads(pads, nd)
    n, c = int(x.shape[0]), int(x.shape[1])
    if any(p != (0, 0) for p in pw):
        if torch_:
            import torch.nn.functional as F
            flat = [v for p in reversed(pw) for v in p]   # F.pad: the last axis first
            x = F.pad(x, flat)
        else:
            x = np.pad(x, [(0, 0), (0, 0)] + pw)
    out = []
    for i in range(nd):
        span = dilations[i] * (kernel[i] - 1) + 1
        size = int(x.shape[2 + i])
        if size < span:
            raise ValueError(f"block_conv: input axis {2 + i} of length {size} (padded) is shorter than the "
                             f"kernel's span {span}")
        out.append((size - span) // strides[i] + 1)
    cp = -(-c // k) * k
    views = []
    for tap in itertools.product(*[range(kv) for kv in kernel]):
        sl = tuple(slice(t * d, t * d + s * (o - 1) + 1, s) for t, d, s, o in zip(tap, dilations, strides, out))
        views.append(x[(slice(None), slice(None)) + sl])          # (N, C, *out)
    if torch_:
        import torch
        p = torch.stack(views, dim=-1)                            # (N, C, *out, T)
        p = p.movedim(1, -1)                                      # (N, *out, T, C)
        if cp != c:
            p = torch.cat([p, p.new_zeros(p.shape[:-1] + (cp - c,))], dim=-1)
    else:
        p = np.moveaxis(np.stack(views, axis=-1), 1, -1)
        if cp != c:
            p = np.concatenate([p, np.zeros(p.shape[:-1] + (cp - c,), dtype=p.dtype)], axis=-1)
    L = int(np.prod(out))
    return p.reshape(n * L, len(views) * cp), tuple(out)


def weight_tap_major(w, k: int):
    """w (O, C, *kernel) -> (O, taps * cp), the layout of patches_tap_major."""
    o, c = int(w.shape[0]), int(w.shape[1])
    cp = -(-c // k) * k
    if _is_torch(w):
        import torch
        t = w.reshape(o, c, -1).transpose(1, 2)                   # (O, T, C)
        if cp != c:
            t = torch.cat([t, t.new_zeros(t.shape[:-1] + (cp - c,))], dim=-1)
    else:
        t = np.swapaxes(w.reshape(o, c, -1), 1, 2)
        if cp != c:
            t = np.concatenate([t, np.zeros(t.shape[:-1] + (cp - c,), dtype=t.dtype)], axis=-1)
    return t.reshape(o, -1)


def block_conv(x, w, b, attrs: dict, k: int):
    """ONNX Conv (groups 1) of block-quantized float64 x (N, C, *spatial) and w (O, C, *kernel) plus
    the bias b (O,) or None, exact (see the module docstring). Returns (y (N, O, *out) float64 rounded
    to odd at 53 bits, in_float64 (N, O, *out) bool: a plain float64 conv sums it exactly)."""
    if attrs.get("groups", 1) != 1:
        raise ValueError(f"block_conv: groups={attrs['groups']}; block-scaled convolutions are built for groups=1")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"block_conv: the input has {x.shape[1]} channels, the weight {w.shape[1]}")
    torch_ = _is_torch(x)
    rows, out = patches_tap_major(x, attrs["kernel"], attrs["strides"], attrs["pads"], attrs["dilations"], k)
    wt = weight_tap_major(w, k)
    ys, fs = [], []
    for i in range(0, int(rows.shape[0]), ROWS_PER_PASS):
        y, fits = block_linear(rows[i:i + ROWS_PER_PASS], wt, b, k)
        ys.append(y)
        fs.append(fits)
    n, o = int(x.shape[0]), int(w.shape[0])
    if torch_:
        import torch
        y, fits = torch.cat(ys), torch.cat(fs)
        return y.reshape((n,) + out + (o,)).movedim(-1, 1), fits.reshape((n,) + out + (o,)).movedim(-1, 1)
    y, fits = np.concatenate(ys), np.concatenate(fs)
    return (np.moveaxis(y.reshape((n,) + out + (o,)), -1, 1), np.moveaxis(fits.reshape((n,) + out + (o,)), -1, 1))


__all__ = ["block_conv", "conv_attrs", "patches_tap_major", "weight_tap_major"]
