"""Torch twin of the numpy reference, with a straight-through gradient.

``quantize_torch(x, fmt, scale)`` returns exactly the values of ``reference.quantize`` on the
same inputs, on CPU and CUDA: the scale division / multiplication run in the dtype of ``x``
(as in the reference) and the rounding step runs in float64, where it is exact for every
format fpq has, or in float32 for a float32 ``x`` where every step of it is exact there too
(not for bf16-like exponent ranges, whose ulps leave float32's normal range).

Gradient: straight through inside the representable range, zero outside (clipped STE); the
scale receives the usual LSQ-style gradient through the division and multiplication.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..formats import Binary, Fixed, Format, Int, Minifloat, finfo, parse_format
from .reference import (_ties, check_exact_in, check_quantizable, check_scale_shape, dispatch_on_format, float_limits,
                        po2_exponents, quantize_unscaled, wrap_codes)


# Speed (the quantizer is in every fpq forward pass): each format works on one or two temporaries
# with in-place, vectorised float / integer ops. Comparisons (bool tensors), torch.where and
# masked_fill are several times slower per element on CPU and torch.ldexp computes pow(2, e) per
# element; the hot formats avoid them. Powers of two are built from exponent bits and applied by
# multiplication or division, which is exact (unlike ldexp's pow, whose result is only as exact
# as the libm). A float32 tensor is quantized in float32 where every step is exact there (half
# the memory traffic, no conversions); otherwise in float64 as the reference.

# float dtype -> (integer dtype of its bit pattern, mantissa bits, exponent bits)
_IEEE = {torch.float32: (torch.int32, 23, 8), torch.float64: (torch.int64, 52, 11)}


def _compute_dtype(x: torch.Tensor, float32_exact: bool) -> torch.dtype:
    return torch.float32 if x.dtype == torch.float32 and float32_exact else torch.float64


def _via_reference(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """The numpy reference itself, for formats outside the exactness conditions of the fast paths
    (fixed point with |frac_bits| > 1000, minifloats whose range leaves float64's)."""
    y = quantize_unscaled(x.detach().cpu().to(torch.float64).numpy(), fmt)
    return torch.from_numpy(y).to(device=x.device, dtype=x.dtype)


@dispatch_on_format
def quantize_unscaled_torch(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Exact quantization at scale 1: ``reference.quantize_unscaled`` of ``x`` in float64, returned
    in the dtype of ``x`` (float64 for integer input). No gradient; ``x`` is not modified."""
    raise TypeError(f"no torch quantizer for {type(fmt).__name__}")


def _float_input(x: torch.Tensor) -> torch.Tensor:
    return x if torch.is_floating_point(x) else x.to(torch.float64)


@quantize_unscaled_torch.register(Binary)
def _(x: torch.Tensor, fmt: Binary) -> torch.Tensor:
    x = _float_input(x)
    y = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return y.masked_fill_(torch.isnan(x), float("nan"))  # the reference's NaN, not the input's


@quantize_unscaled_torch.register(Int)
def _(x: torch.Tensor, fmt: Int) -> torch.Tensor:
    x = _float_input(x)
    lo, hi = fmt.int_range
    # rounding is exact in any float dtype; the bounds are exact in float32 up to 24 bits
    y = torch.round(x.to(_compute_dtype(x, fmt.bits <= 24)))
    return y.clamp_(lo, hi).to(x.dtype)


# torch twin of reference.round_fixed, kept apart: torch's in-place ops (the hot path) have no numpy spelling
def round_fixed_torch(s: torch.Tensor, rounding: str) -> torch.Tensor:
    if rounding == "RND_CONV":
        return torch.round(s)  # half to even
    if rounding == "TRN":
        return torch.floor(s)
    if rounding == "TRN_ZERO":
        return torch.trunc(s)
    up, down = _ties(rounding)
    t = torch.trunc(s)
    frac = s - t  # exact in any float dtype (s - floor(s) is not for s in (-1/2, 0)); see round_fixed
    t += (frac >= 0.5 if up else frac > 0.5).to(s.dtype)
    return t.sub_((frac <= -0.5 if down else frac < -0.5).to(s.dtype))


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
        wrapped = wrap_codes(torch, k, lo, hi, width, _limits(k.dtype)[0])
        return torch.where(torch.isnan(k), k, wrapped)  # NaN as it came (torch.fmod alters the payload)
    raise ValueError(f"unknown overflow mode {overflow!r}")


@quantize_unscaled_torch.register(Fixed)
def _(x: torch.Tensor, fmt: Fixed) -> torch.Tensor:
    x = _float_input(x)
    F = fmt.frac_bits
    if abs(F) > 1000:  # 2**F is not a (normal) double
        return _via_reference(x, fmt)
    lo, hi = fmt.int_range
    # float32 holds every code of <= 24 bits times 2**+-F exactly (|F| <= 100 keeps them normal),
    # and every rounding step (s - trunc(s) included) is exact there
    dt = _compute_dtype(x, fmt.width <= 24 and abs(F) <= 100)
    xd = x.to(dt)
    s = xd * 2.0 ** F  # exact (as the reference's ldexp), except at the dtype's limits:
    if F < 0:  # underflow to +-0 is possible: any |s| in (0, 0.5) rounds as the true one in every mode
        s = torch.where((s == 0) & (xd != 0), torch.copysign(torch.full_like(s, 0.25), xd), s)
    # +-inf (input or overflow) reads as 2**1024 in the reference. Every |s| >= 2**116 is an integer
    # multiple of 2**64 (float64 has 53 significant bits) and acts as it does: it saturates, and
    # SAT_ZERO and WRAP give 0. Clamping to 2**120 (a float32 too) keeps that and removes inf.
    s.clamp_(-2.0 ** 120, 2.0 ** 120)
    if fmt.rounding == "RND_CONV":
        k = s.round_()  # half to even, in place
    else:
        k = round_fixed_torch(s, fmt.rounding)
    if fmt.overflow == "SAT":
        k.clamp_(lo, hi)
    else:
        k = overflow_fixed_torch(k, lo, hi, fmt.width, fmt.signed, fmt.overflow)
    return k.mul_(2.0 ** -F).to(x.dtype)


def _minifloat_float32_exact(fmt: Minifloat) -> bool:
    """Every value of ``fmt`` and every power of two the quantizer scales by is a normal float32."""
    return fmt.man_bits <= 23 and fmt.emin - fmt.man_bits >= -126 and _top_exponent(fmt) <= 127


def _top_exponent(fmt: Minifloat) -> int:
    """Binade exponent of the largest finite value: larger exponents all overflow."""
    return math.frexp(fmt.max_value)[1] - 1


@quantize_unscaled_torch.register(Minifloat)
def _(x: torch.Tensor, fmt: Minifloat) -> torch.Tensor:
    x = _float_input(x)
    M = fmt.man_bits
    dt = _compute_dtype(x, _minifloat_float32_exact(fmt))
    itype, mant, ebits = _IEEE[dt]
    bias = (1 << (ebits - 1)) - 1
    # range of the binade exponent e: below emin every value has the subnormal spacing; above the
    # top binade every value overflows, so e + 1 stands for all (inf and NaN included)
    e_lo, e_hi = fmt.emin, min(_top_exponent(fmt) + 1, bias)
    if e_lo - M < 1 - bias:  # 2**(e_lo - M) is not normal (not reached: |bias| <= 1000, width <= 16)
        return _via_reference(x, fmt)
    xd = x.to(dt)
    # ulp = 2**(e - M) per element, built in the exponent field of the dtype's bit pattern:
    # the field of |x| (sign and mantissa masked off) clamped to [e_lo, e_hi], minus M
    field = xd.view(itype) & (((1 << ebits) - 1) << mant)
    if not fmt.subnormals:  # below the smallest normal: round to a multiple of it ({0, min_normal})
        tiny = field < ((e_lo + bias) << mant)
    field.clamp_((e_lo + bias) << mant, (e_hi + bias) << mant).sub_(M << mant)
    if not fmt.subnormals:
        field.masked_fill_(tiny, (e_lo + bias) << mant)
    ulp = field.view(dt)
    q = xd / ulp  # exact: division by a power of two; +-inf and NaN pass through
    if not fmt.signed:
        q.clamp_(min=0.0)  # negatives quantize to 0 (the sign of -0 and NaN is cleared below)
    q.round_().mul_(ulp)  # nearest multiple of the ulp, ties to even; exact
    mx = fmt.max_value
    if fmt.saturate:
        q.clamp_(-mx, mx)
    else:
        q.masked_fill_(q.abs() > mx, float("inf") if fmt.specials == "ieee" else float("nan"))
    if fmt.signed:
        # the reference negates where x < 0: -0.0 and NaN (of either sign) come out positive.
        # The sign source (in the ulp's memory, no longer needed) is x with those made positive.
        sign = torch.add(xd, 0.0, out=ulp).nan_to_num_(nan=0.0)  # -0.0 + 0.0 = +0.0
        q.copysign_(sign)
        if fmt.specials == "fnuz":
            q.add_(0.0)  # no negative zero
    else:
        q.abs_()  # -0.0 and -NaN to positive; every other value is >= 0 already
    return q.to(x.dtype)


class _QuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, fmt, lo, hi):
        ctx.save_for_backward(xs)
        ctx.bounds = (lo, hi)
        return quantize_unscaled_torch(xs.detach(), fmt)

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


def scaled_apply(quant, x: torch.Tensor, scale: torch.Tensor | float | None) -> torch.Tensor:
    """``quant(x / scale) * scale`` in x's dtype, ``quant`` an unscaled quantizer (with or without a
    gradient: the format's, or the K-hot codes' of fpq.nn.multfree), ``scale`` a tensor or a float
    (calibration's MSE search); None: quant(x), no division (scale 1, or a format that carries its
    own scaling). The torch application of a scaled quantizer every torch path shares (the numpy
    one: reference.quantize_scaled)."""
    if scale is None:
        return quant(x)
    return quant(x / scale) * scale


def ste_apply_scaled(x: torch.Tensor, fmt: Format, scale: torch.Tensor | None) -> torch.Tensor:
    """Q(x / scale) * scale with the clipped straight-through gradient in x and the LSQ-style
    gradient in a tensor ``scale`` (the layers' learnable scales): quantize_torch, fpq.nn's
    quantizers; ``apply_scaled_torch`` is its no-gradient twin for the emulator."""
    return scaled_apply(lambda v: ste_quantize_unscaled(v, fmt), x, scale)


def quantize_torch(x: torch.Tensor, fmt, scale=1.0) -> torch.Tensor:
    """Torch twin of ``fpq.quantize``: identical values, with a straight-through gradient.

    The gradient with respect to ``x`` is 1 where ``x / scale`` lies within the format's range and 0
    where it saturates (clipped straight-through estimator); a ``scale`` tensor (not all ones) that
    requires grad gets the LSQ-style gradient. Runs on ``x``'s device.

    Args:
        x (torch.Tensor): real values (float, or integers within +-2**53).
        fmt (str | Format): the format (see ``fpq.parse_format``); not a block format.
        scale (float | torch.Tensor | array_like): finite, > 0, broadcasting to ``x``'s shape.

    Returns:
        torch.Tensor: the quantized values, ``x``'s shape and dtype.

    Raises:
        ValueError: ``x`` not a tensor or complex; a format fpq cannot quantize to exactly (as
            ``fpq.quantize``, plus block formats); a scale that is not real, does not broadcast to
            ``x``, or (on the CPU) is not finite and > 0.

    Example:
        >>> import torch, fpq
        >>> x = torch.tensor([0.3, -1.26, 100.0], requires_grad=True)
        >>> y = fpq.quantize_torch(x, "e2m1", scale=0.5)
        >>> y.tolist()
        [0.25, -1.5, 3.0]
        >>> y.sum().backward(); x.grad.tolist()     # 100.0 saturated: no gradient
        [1.0, 1.0, 0.0]
    """
    fmt = parse_format(fmt)
    check_quantizable(fmt)
    if not torch.is_tensor(x):
        raise ValueError(f"quantize_torch: x must be a torch tensor, got {type(x).__name__} (use fpq.quantize)")
    x = _real_input(x)
    if x.dtype != torch.float64:
        check_exact_in(fmt, str(x.dtype).removeprefix("torch."), "quantize_torch", _limits(x.dtype))
    if not torch.is_tensor(scale):
        kind = np.asarray(scale).dtype
        if kind.kind not in "fiu":
            raise ValueError(f"quantize_torch: scale must hold real numbers, got {kind}")
        scale = torch.tensor(scale, dtype=x.dtype, device=x.device)
    elif scale.is_complex() or scale.dtype == torch.bool:
        raise ValueError(f"quantize_torch: scale must hold real numbers, got {scale.dtype}")
    check_scale_shape(scale.shape, x.shape, "quantize_torch")
    scale = scale.to(dtype=x.dtype, device=x.device)
    if scale.device.type == "cpu" and not bool(torch.all(torch.isfinite(scale) & (scale > 0))):
        raise ValueError("scale must be finite and > 0")  # checked on CPU only: no GPU sync
    return ste_apply_scaled(x, fmt, None if bool(torch.all(scale == 1)) else scale)


def apply_scaled_torch(x: torch.Tensor, fmt: Format, scale, pre_scale=None) -> torch.Tensor:
    """Torch twin of ``fpq.numerics.scaled.apply_scaled`` (the emulator's torch backend): Q(x / s) * s
    in x's dtype, stored as float32, no gradient; ``scale`` / ``pre_scale`` are numpy arrays in
    x's broadcast layout."""
    s = np.asarray(scale, dtype=np.float32)
    if pre_scale is not None:
        p = torch.tensor(np.asarray(pre_scale, dtype=np.float32), device=x.device, dtype=x.dtype)
        x = torch.round(x / p) * p
    sd = torch.tensor(s, device=x.device, dtype=x.dtype)
    if isinstance(fmt, Int) and po2_exponents(s) is not None:   # po2: x / s and q * s exact
        lo, hi = fmt.int_range
        return torch.clamp(torch.round(x / sd), lo, hi).mul_(sd).to(torch.float32)
    # Q in x's dtype returns what Q in float64 rounded to it does (it computes exactly, in float64
    # where x's dtype cannot)
    y = scaled_apply(lambda v: quantize_unscaled_torch(v, fmt), x, None if bool(np.all(s == 1)) else sd)
    return y.to(torch.float32)


def _real_input(x: torch.Tensor) -> torch.Tensor:
    """x as a float tensor, as the numpy reference takes it; refuses what it refuses."""
    if x.is_complex():
        raise ValueError(f"quantize_torch: x must hold real numbers, got {x.dtype} (the imaginary part would "
                         "be lost)")
    if torch.is_floating_point(x):
        return x
    if x.dtype == torch.int64 and x.numel() and bool(((x > 2 ** 53) | (x < -2 ** 53)).any()):
        raise ValueError("quantize_torch: integer inputs beyond +-2**53 are not exact in float64, where fpq "
                         "quantizes; pass them as float64 (rounded by you) or reduce them")
    return x.to(torch.float64)  # as the numpy reference: integers are quantized in float64


@functools.lru_cache(maxsize=None)
def _limits(dtype: torch.dtype) -> tuple[int, int, int]:
    return float_limits(torch.finfo(dtype))
