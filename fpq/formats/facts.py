"""Derived facts of a Format: finfo, every value, codes, and the exact fixed-point carrier."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .parse import parse_format
from .types import Binary, BlockFormat, E8M0, Fixed, Format, Int, Minifloat

MAX_ENUMERABLE_BITS = 16


@dataclass(frozen=True)
class FormatInfo:
    """Numeric limits of a format (at scale 1), like numpy's finfo."""

    format: Format
    bits: int
    max: float            # largest finite value
    min: float            # most negative finite value (0 for unsigned)
    smallest_normal: float
    smallest_subnormal: float  # smallest positive value
    eps: float            # gap between 1.0 and the next value (the step for fixed / int)
    n_codes: int          # 2**bits
    n_values: int         # distinct finite values (+0 and -0 counted once)
    has_inf: bool
    has_nan: bool


def finfo(fmt) -> FormatInfo:
    fmt = parse_format(fmt)
    return _finfo(fmt)


@functools.lru_cache(maxsize=512)
def _finfo(fmt: Format) -> FormatInfo:
    if isinstance(fmt, BlockFormat):  # per element, at block scale 1 (the scale is per block)
        e = _finfo(fmt.elem)
        return FormatInfo(fmt, e.bits, e.max, e.min, e.smallest_normal, e.smallest_subnormal, e.eps,
                          e.n_codes, e.n_values, e.has_inf, e.has_nan)
    if isinstance(fmt, E8M0):  # no zero: min is its smallest value, 2**-127
        return FormatInfo(fmt, 8, fmt.max_value, fmt.min_value, fmt.min_value, fmt.min_value, 1.0, 256, 255,
                          False, True)
    if isinstance(fmt, Minifloat):
        mx = fmt.max_value
        return FormatInfo(fmt, fmt.width, mx, -mx if fmt.signed else 0.0, fmt.min_normal,
                          fmt.min_subnormal, math.ldexp(1.0, -fmt.man_bits), 1 << fmt.width,
                          _count_values(fmt), fmt.has_inf, fmt.has_nan)
    if isinstance(fmt, (Fixed, Int)):
        lo, hi = fmt.int_range
        step = fmt.step if isinstance(fmt, Fixed) else 1.0
        return FormatInfo(fmt, fmt.width, hi * step, lo * step, step, step, step, 1 << fmt.width,
                          hi - lo + 1, False, False)
    if isinstance(fmt, Binary):
        return FormatInfo(fmt, 1, 1.0, -1.0, 1.0, 1.0, 2.0, 2, 2, False, False)
    raise TypeError(f"not a Format: {fmt!r}")


def _count_values(fmt: Minifloat) -> int:
    if fmt.width <= MAX_ENUMERABLE_BITS:
        return len(values(fmt))
    raise ValueError("too wide to enumerate")  # pragma: no cover - width <= 16 is enforced


def decode(codes, fmt) -> np.ndarray:
    """Value (float64) of each integer code; bit layout sign | exponent | mantissa (or two's
    complement for fixed / int; 1 -> +1, 0 -> -1 for binary). NaN / inf per the specials."""
    fmt = parse_format(fmt)
    c = np.asarray(codes, dtype=np.int64)
    if np.any((c < 0) | (c >= (1 << fmt.width))):
        raise ValueError(f"codes of {fmt} must lie in [0, {1 << fmt.width})")
    if isinstance(fmt, BlockFormat):  # element codes, at block scale 1
        return decode(c, fmt.elem)
    if isinstance(fmt, E8M0):
        return np.where(c == 255, np.nan, np.ldexp(1.0, c - 127))
    if isinstance(fmt, Binary):
        return np.where(c == 1, 1.0, -1.0)
    if isinstance(fmt, (Fixed, Int)):
        k = c - ((c >> (fmt.width - 1)) << fmt.width) if fmt.signed else c
        step = fmt.step if isinstance(fmt, Fixed) else 1.0
        return k.astype(np.float64) * step
    assert isinstance(fmt, Minifloat)
    M, E = fmt.man_bits, fmt.exp_bits
    man = c & ((1 << M) - 1)
    exp = (c >> M) & ((1 << E) - 1)
    neg = ((c >> (M + E)) & 1).astype(bool) if fmt.signed else np.zeros(c.shape, bool)
    if fmt.subnormals:
        mag = np.where(exp == 0, np.ldexp(man.astype(np.float64), fmt.emin - M),
                       np.ldexp((man + (1 << M)).astype(np.float64), exp - fmt.bias - M))
    else:
        mag = np.where(exp == 0, 0.0, np.ldexp((man + (1 << M)).astype(np.float64), exp - fmt.bias - M))
    val = np.where(neg, -mag, mag)
    top = (1 << E) - 1
    if fmt.specials == "ieee":
        val = np.where((exp == top) & (man == 0), np.where(neg, -np.inf, np.inf), val)
        val = np.where((exp == top) & (man != 0), np.nan, val)
    elif fmt.specials == "fn":
        val = np.where((exp == top) & (man == (1 << M) - 1), np.nan, val)
    elif fmt.specials == "fnuz":
        val = np.where(neg & (exp == 0) & (man == 0), np.nan, val)
    return val


@functools.lru_cache(maxsize=256)
def _code_table(fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    if fmt.width > MAX_ENUMERABLE_BITS:
        raise ValueError(f"{fmt} has {fmt.width} bits; enumeration is limited to {MAX_ENUMERABLE_BITS}")
    codes = np.arange(1 << fmt.width, dtype=np.int64)
    vals = decode(codes, fmt)
    finite = np.isfinite(vals)
    if isinstance(fmt, Int) and fmt.narrow:  # the most negative code is not a value
        finite &= vals >= fmt.int_range[0]
    # one code per value: +0 wins over -0 (lower code first, stable sort)
    v, idx = np.unique(vals[finite], return_index=True)
    return v, codes[finite][idx]


def values(fmt) -> np.ndarray:
    """Every finite representable value, sorted ascending, as float64 (+0 and -0 once); for a
    block format, every element value at block scale 1."""
    fmt = parse_format(fmt)
    if isinstance(fmt, BlockFormat):
        fmt = fmt.elem
    return _code_table(fmt)[0].copy()


def encode(x, fmt) -> np.ndarray:
    """Code of each value of ``x``, which must already be representable (use quantize first).
    NaN maps to the format's NaN code; raises for values not in the format. A block format's
    element codes: pass element values (at block scale 1)."""
    fmt = parse_format(fmt)
    if isinstance(fmt, BlockFormat):
        fmt = fmt.elem
    vals, codes = _code_table(fmt)
    x = np.asarray(x, dtype=np.float64)
    shape, x = x.shape, x.ravel()
    pos = np.clip(np.searchsorted(vals, x), 0, len(vals) - 1)
    ok = vals[pos] == x
    out = codes[pos].copy()
    nan = np.isnan(x)
    inf = np.isinf(x)
    if nan.any() or inf.any():
        allc = np.arange(1 << fmt.width, dtype=np.int64)
        allv = decode(allc, fmt)
        if nan.any():
            nan_codes = allc[np.isnan(allv)]
            if not len(nan_codes):
                raise ValueError(f"{fmt} has no NaN code")
            out[nan] = nan_codes[-1]
            ok |= nan
        for sign in (1.0, -1.0):
            sel = x == sign * np.inf
            if sel.any():
                inf_codes = allc[allv == sign * np.inf]
                if not len(inf_codes):
                    raise ValueError(f"{fmt} has no infinity code")
                out[sel] = inf_codes[0]
                ok |= sel
    if not ok.all():
        bad = x[~ok].ravel()[0]
        raise ValueError(f"{bad!r} is not a value of {fmt}; quantize before encoding")
    return out.reshape(shape)


def exact_fixed(fmt, scale_exp: int = 0) -> Fixed:
    """The smallest Fixed that holds every finite value of ``fmt`` times ``2**scale_exp`` exactly.

    This is the carrier that lets minifloat weights and products live in ap_fixed arithmetic
    with no rounding, e.g. e2m1 -> fixed<5,4>, e4m3 -> fixed<19,10>.
    """
    fmt = parse_format(fmt)
    if isinstance(fmt, (BlockFormat, E8M0)):
        raise ValueError(f"{fmt} has no fixed-point carrier: its values span 2**-127 .. 2**127 (a block format's "
                         "elements are carried by exact_fixed(elem), shifted by the block's scale exponent)")
    if isinstance(fmt, Fixed):
        return Fixed(fmt.width, fmt.int_bits + scale_exp, fmt.signed, fmt.rounding, fmt.overflow)
    if isinstance(fmt, Int):
        lo, hi = fmt.int_range
        width = max(hi.bit_length(), (-lo - 1).bit_length()) + int(fmt.signed)
        return Fixed(width, width + scale_exp, fmt.signed)
    if isinstance(fmt, Binary):
        return Fixed(2, 2 + scale_exp, True)
    assert isinstance(fmt, Minifloat)
    frac = fmt.man_bits - fmt.emin           # every value is a multiple of 2**-frac
    kmax = int(fmt.max_value * 2.0 ** frac)   # exact: max_value is such a multiple
    width = kmax.bit_length() + int(fmt.signed)
    if width > 64:
        raise ValueError(f"{fmt} needs a {width}-bit fixed-point carrier to hold every value exactly; "
                         "exact_fixed supports at most 64 bits (Fixed's limit)")
    return Fixed(width, width - frac + scale_exp, fmt.signed)
