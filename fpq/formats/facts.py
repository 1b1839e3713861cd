"""Derived facts of a Format: finfo, every value, codes, and the exact fixed-point carrier."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .parse import parse_format
from .types import Binary, Fixed, Format, Int, Minifloat
from .block import BlockFormat, E8M0

MAX_ENUMERABLE_BITS = 16


@dataclass(frozen=True)
class FormatInfo:
    """Numeric limits of a format (at scale 1), like numpy's finfo; ``fpq.finfo`` returns it.

    Args:
        format (Format): the format described.
        bits (int): bits of one code.
        max (float): largest finite value.
        min (float): most negative finite value (0 for unsigned).
        smallest_normal (float): smallest positive normal value (the step for fixed / int).
        smallest_subnormal (float): smallest positive value.
        eps (float): gap between 1.0 and the next value (the step for fixed / int).
        n_codes (int): 2**bits.
        n_values (int): distinct finite values (+0 and -0 counted once).
        has_inf (bool): the format has infinity codes.
        has_nan (bool): the format has NaN codes.

    Example:
        >>> import fpq
        >>> info = fpq.finfo("e2m1")
        >>> info.max, info.min, info.eps, info.n_values
        (6.0, -6.0, 0.5, 15)
    """

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
    """Numeric limits of a format at scale 1, like ``numpy.finfo``.

    Args:
        fmt (str | Format): a format string (see ``fpq.parse_format``) or a Format. A block format
            describes its element format at block scale 1; ``e8m0`` its scale values.

    Returns:
        FormatInfo: ``bits``, ``max`` (largest finite value), ``min`` (most negative finite value,
        0 for unsigned), ``smallest_normal``, ``smallest_subnormal`` (smallest positive value),
        ``eps`` (gap after 1.0; the step for fixed point / integers), ``n_codes`` (2**bits),
        ``n_values`` (distinct finite values, +0 and -0 once), ``has_inf``, ``has_nan``.

    Raises:
        ValueError: ``fmt`` is not a valid format string (the message lists the accepted forms).

    Example:
        >>> import fpq
        >>> info = fpq.finfo("e4m3")
        >>> info.max, info.smallest_subnormal, info.n_values, info.has_nan
        (448.0, 0.001953125, 253, True)
        >>> fpq.finfo("fixed<8,3>").eps
        0.03125
    """
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
    """Value (float64) of each integer code of a format.

    The bit layout is sign | exponent | mantissa for minifloats, two's complement for fixed point
    and integers, and 1 -> +1, 0 -> -1 for binary. NaN / inf codes decode per the format's
    specials; a block format decodes its element codes at block scale 1.

    Args:
        codes (array_like of int): codes, each in [0, 2**width).
        fmt (str | Format): the format (see ``fpq.parse_format``).

    Returns:
        numpy.ndarray: float64 values, the shape of ``codes``.

    Raises:
        ValueError: a code outside [0, 2**width), or an invalid format string.

    Example:
        >>> import fpq
        >>> fpq.decode([0, 1, 7, 8, 15], "e2m1").tolist()
        [0.0, 0.5, 6.0, -0.0, -6.0]
        >>> fpq.decode([255], "int8").tolist()
        [-1.0]
    """
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
    """Every finite representable value of a format, sorted ascending (+0 and -0 once).

    Args:
        fmt (str | Format): the format, at most 16 bits wide; a block format gives its element
            values at block scale 1.

    Returns:
        numpy.ndarray: float64 values, ascending.

    Raises:
        ValueError: an invalid format string, or a format wider than 16 bits (too many values).

    Example:
        >>> import fpq
        >>> fpq.values("e2m1").tolist()
        [-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
        >>> fpq.values("int8_narrow")[0]
        np.float64(-127.0)
    """
    fmt = parse_format(fmt)
    if isinstance(fmt, BlockFormat):
        fmt = fmt.elem
    return _code_table(fmt)[0].copy()


def encode(x, fmt) -> np.ndarray:
    """Code of each value of ``x``, which must already be a value of the format.

    Quantize first (``fpq.quantize``): a value that is not representable is refused, never
    rounded. NaN maps to the format's NaN code and +-inf to its infinity codes. For a block format
    pass element values (at block scale 1): the element codes come back.

    Args:
        x (array_like of float): values of the format.
        fmt (str | Format): the format, at most 16 bits wide.

    Returns:
        numpy.ndarray: int64 codes, the shape of ``x`` (``fpq.decode`` inverts it).

    Raises:
        ValueError: a value that is not in the format, a NaN / inf the format has no code for, an
            invalid format string, or a format wider than 16 bits.

    Example:
        >>> import fpq
        >>> fpq.encode([0.5, -6.0], "e2m1").tolist()
        [1, 15]
        >>> fpq.encode([0.7], "e2m1")
        Traceback (most recent call last):
        ...
        ValueError: 0.7 is not a value of e2m1; quantize before encoding
    """
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
        raise ValueError(f"{float(bad)!r} is not a value of {fmt}; quantize before encoding")
    return out.reshape(shape)


def exact_fixed(fmt, scale_exp: int = 0) -> Fixed:
    """The smallest Fixed that holds every finite value of ``fmt`` times ``2**scale_exp`` exactly.

    This carrier lets minifloat weights and products live in ap_fixed arithmetic with no rounding
    (the HLS writer and the TypePlan use it).

    Args:
        fmt (str | Format): a fixed-point, integer, binary or minifloat format.
        scale_exp (int): power-of-two scale exponent the values are multiplied by.

    Returns:
        Fixed: signed when ``fmt`` is, ties-to-even and saturating (a Fixed input keeps its modes).

    Raises:
        ValueError: a block format or ``e8m0`` (values span 2**-127 .. 2**127), a minifloat that
            needs a carrier wider than 64 bits, or an invalid format string.

    Example:
        >>> import fpq
        >>> str(fpq.exact_fixed("e2m1")), str(fpq.exact_fixed("e4m3"))
        ('fixed<5,4,RND_CONV,SAT>', 'fixed<19,10,RND_CONV,SAT>')
        >>> str(fpq.exact_fixed("int8", scale_exp=-5))
        'fixed<8,3,RND_CONV,SAT>'
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
