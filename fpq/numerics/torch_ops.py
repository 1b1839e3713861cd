"""Torch twin of the numpy reference, with a straight-through gradient.

``quantize_torch(x, fmt, scale)`` returns exactly the values of ``reference.quantize`` on the
same inputs, on CPU and CUDA: the scale division / multiplication run in the dtype of ``x``
(as in the reference) and the rounding step runs in float64, where it is exact for every
format fpq has (float32 would overflow ``2**-ulp`` for bf16-like exponent ranges).

Gradient: straight through inside the representable range, zero outside (clipped STE); the
scale receives the usual LSQ-style gradient through the division and multiplication.
"""
from __future__ import annotations

import functools

import torch

from ..formats import Binary, Fixed, Format, Int, Minifloat, finfo, parse_format
from .reference import dispatch_on_format


@dispatch_on_format
def quantize_unscaled_torch(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Exact quantization at scale 1 of a float64 tensor (no gradient)."""
    raise TypeError(f"no torch quantizer for {type(fmt).__name__}")


@quantize_unscaled_torch.register(Binary)
def _(x: torch.Tensor, fmt: Binary) -> torch.Tensor:
    one = torch.ones_like(x)
    return torch.where(torch.isnan(x), x, torch.where(x >= 0, one, -one))


@quantize_unscaled_torch.register(Int)
def _(x: torch.Tensor, fmt: Int) -> torch.Tensor:
    lo, hi = fmt.int_range
    return torch.clamp(torch.round(x), lo, hi)


def round_fixed_torch(s: torch.Tensor, rounding: str) -> torch.Tensor:
    if rounding == "RND_CONV":
        return torch.round(s)  # half to even
    f = torch.floor(s)
    if rounding == "TRN":
        return f
    if rounding == "TRN_ZERO":
        return torch.trunc(s)
    frac = s - f
    above, tie = frac > 0.5, frac == 0.5
    if rounding == "RND":
        up = above | tie
    elif rounding == "RND_ZERO":
        up = above | (tie & (s < 0))
    elif rounding == "RND_MIN_INF":
        up = above
    elif rounding == "RND_INF":
        up = above | (tie & (s > 0))
    else:
        raise ValueError(f"unknown rounding mode {rounding!r}")
    return f + up.to(s.dtype)


def overflow_fixed_torch(k: torch.Tensor, lo: int, hi: int, width: int, signed: bool,
                         overflow: str) -> torch.Tensor:
    if overflow == "SAT":
        return torch.clamp(k, lo, hi)
    if overflow == "SAT_ZERO":
        return torch.where((k < lo) | (k > hi), torch.zeros_like(k), k)
    if overflow == "SAT_SYM":
        # as ap_fixed.h: a signed target never takes the most negative code (unless 1 bit wide)
        return torch.clamp(k, -hi if signed and width > 1 else lo, hi)
    if overflow == "WRAP":
        span = float(2 ** width)  # reduce first: k - lo is inexact for huge k
        return torch.remainder(torch.remainder(k, span) - lo, span) + lo
    raise ValueError(f"unknown overflow mode {overflow!r}")


@quantize_unscaled_torch.register(Fixed)
def _(x: torch.Tensor, fmt: Fixed) -> torch.Tensor:
    lo, hi = fmt.int_range
    s = torch.ldexp(x, torch.tensor(float(fmt.frac_bits), dtype=x.dtype, device=x.device))
    # the double limits, as in the numpy reference: underflow to +-0; inf read as 2**1024
    s = torch.where((s == 0) & (x != 0), torch.copysign(torch.full_like(s, 0.25), x), s)
    s = torch.where(torch.isinf(s), torch.copysign(torch.full_like(s, 2.0 ** 1000), s), s)
    k = round_fixed_torch(s, fmt.rounding)
    k = overflow_fixed_torch(k, lo, hi, fmt.width, fmt.signed, fmt.overflow)
    return k * (2.0 ** -fmt.frac_bits)


@quantize_unscaled_torch.register(Minifloat)
def _(x: torch.Tensor, fmt: Minifloat) -> torch.Tensor:
    M = fmt.man_bits
    mx = fmt.max_value
    a = torch.abs(x)
    finite = torch.isfinite(a)
    a0 = torch.where(finite, a, torch.zeros_like(a))
    _, e2 = torch.frexp(a0)
    e = torch.clamp(e2.to(torch.int64) - 1, min=fmt.emin)
    ulp_exp = e - M
    if not fmt.subnormals:
        ulp_exp = torch.where(a0 < fmt.min_normal, torch.full_like(ulp_exp, fmt.emin), ulp_exp)
    ulp_exp = ulp_exp.to(x.dtype)
    q = torch.ldexp(torch.round(torch.ldexp(a0, -ulp_exp)), ulp_exp)
    q = torch.where(finite, q, a)
    over = q > mx
    if fmt.saturate:
        q = torch.where(over, torch.full_like(q, mx), q)
    elif fmt.specials == "ieee":
        q = torch.where(over, torch.full_like(q, float("inf")), q)
    else:
        q = torch.where(over, torch.full_like(q, float("nan")), q)
    y = torch.where(x < 0, -q, q)
    if not fmt.signed:
        y = torch.where(x < 0, torch.zeros_like(y), y)
    if fmt.specials == "fnuz":
        y = torch.where(y == 0, torch.zeros_like(y), y)
    return y


class _QuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, fmt, lo, hi):
        ctx.save_for_backward(xs)
        ctx.bounds = (lo, hi)
        return quantize_unscaled_torch(xs.detach().to(torch.float64), fmt).to(xs.dtype)

    @staticmethod
    def backward(ctx, grad):
        (xs,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        inside = (xs >= lo) & (xs <= hi)
        return grad * inside.to(grad.dtype), None, None, None


def ste_quantize_unscaled(xs: torch.Tensor, fmt) -> torch.Tensor:
    """Q(xs) at scale 1 with a clipped straight-through gradient."""
    fmt = parse_format(fmt)
    info = finfo(fmt)
    return _QuantizeSTE.apply(xs, fmt, info.min, info.max)


def quantize_torch(x: torch.Tensor, fmt, scale=1.0) -> torch.Tensor:
    """Torch twin of ``fpq.quantize``: identical values, straight-through gradient."""
    fmt = parse_format(fmt)
    if not torch.is_floating_point(x):
        x = x.to(torch.float64)  # as the numpy reference: integers are quantized in float64
    if not torch.is_tensor(scale):
        scale = torch.tensor(scale, dtype=x.dtype, device=x.device)
    scale = scale.to(dtype=x.dtype, device=x.device)
    if scale.device.type == "cpu" and not bool(torch.all(torch.isfinite(scale) & (scale > 0))):
        raise ValueError("scale must be finite and > 0")  # checked on CPU only: no GPU sync
    unit = bool(torch.all(scale == 1))
    xs = x if unit else x / scale
    q = ste_quantize_unscaled(xs, fmt)
    return q if unit else q * scale
