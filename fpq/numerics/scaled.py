"""Applying a scaled quantizer y = Q(x / s) * s, stored as float32: the one numpy definition the
emulator, the HLS lookup tables and the cost model's tables share.

The division and the multiplication happen in x's dtype (float32 at a float32 network input,
float64 for exact sums): that is the contract fpq's export writes and qonnx executes. A
power-of-two scale makes both exact in any float dtype, so for an Int format only rint and clip
remain (the fast path, the same arithmetic).
"""
from __future__ import annotations

import numpy as np

from ..formats import Format, Int
from .reference import po2_exponents, quantize_scaled


def apply_scaled(x: np.ndarray, fmt: Format, scale, pre_scale=None) -> np.ndarray:
    """Apply a scaled quantizer: ``Q_fmt(x / scale) * scale``.

    Computed in x's dtype, stored as float32; ``pre_scale`` (a Trunc's input grid) first rounds x
    to multiples of it. ``scale`` broadcasts against x (its layout).

    Args:
        x: the values.
        fmt: the Format.
        scale: the scale (scalar or broadcasting array).
        pre_scale: an optional grid x is first rounded to.

    Returns:
        np.ndarray: float32 quantized values.

    Example:
        >>> import numpy as np, fpq
        >>> from fpq.numerics import apply_scaled
        >>> apply_scaled(np.array([0.3, 1.0, -5.0], np.float32), fpq.parse_format("int4"), 0.25)
        array([ 0.25,  1.  , -2.  ], dtype=float32)
    """
    s = np.asarray(scale, dtype=np.float32)
    if pre_scale is not None:
        x = round_to_grid(x, pre_scale)
    if isinstance(fmt, Int) and po2_exponents(s) is not None:
        lo, hi = fmt.int_range
        y = x * (1.0 / s).astype(x.dtype)
        np.rint(y, out=y)
        np.clip(y, lo, hi, out=y)
        y *= s.astype(x.dtype)
        return y.astype(np.float32, copy=False)
    return quantize_scaled(x, fmt, s.astype(x.dtype)).astype(np.float32, copy=False)


def round_to_grid(x: np.ndarray, grid) -> np.ndarray:
    """x rounded (half to even) to multiples of ``grid`` (a Trunc's input grid), in x's dtype."""
    p = np.asarray(grid).astype(x.dtype)
    return np.rint(x / p) * p
