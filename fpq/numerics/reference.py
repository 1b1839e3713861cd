"""The bit-exact numpy reference: ``quantize(x, fmt, scale)``.

This is the only hand-written oracle of fpq's numerics; every other path (torch, emulator,
QONNX, HLS C-sim) is tested against it, and it is tested against ml_dtypes and the ap_fixed
headers. Semantics, for every format:

* ``y = Q(x / scale) * scale``. The two scale operations run in the dtype of ``x`` (float32
  input: float32 arithmetic, exactly as a float32 torch fake-quant does); ``Q`` itself is
  computed exactly in float64.
* NaN in gives NaN out (fixed and integer hardware has no NaN: calibration and verification
  reject NaN inputs before they get here).
* +-inf: saturating formats give +-max; minifloats with ``saturate=False`` give inf (ieee) or
  NaN (fn, fnuz); fixed SAT_ZERO and WRAP give 0 (ap_fixed reads inf as 2**1024).
* Minifloat: round to nearest, ties to even; without subnormals, magnitudes below the smallest
  normal round to 0 or to it (ties to 0). With no mantissa bits (M=0) there is no mantissa bit
  to make even and a tie between two powers of two goes away from zero (as ml_dtypes'
  float8_e8m0fnu and qonnx's float_quant). Unsigned formats clamp negatives to 0.
* Fixed: exactly ap_fixed.h's conversion, from a double and from a wider ap_fixed (checked
  with g++ in tests/test_apfixed_oracle.py): the code k of the exact value is rounded first
  (TRN floor, TRN_ZERO toward 0, RND ties to +inf, RND_ZERO ties to 0, RND_MIN_INF ties to
  -inf, RND_INF ties away from 0, RND_CONV ties to even), then the overflow mode applies to
  the rounded code, so a value that rounds past the range overflows. SAT clamps; SAT_ZERO
  gives 0; SAT_SYM clamps a signed type to +-max: it never produces the most negative code,
  even for a value that is exactly it (ap_fixed counts it as an underflow), except at 1 bit
  where ap_fixed's "-max" is that code. WRAP keeps the low W bits of the two's complement code,
  unsigned types too: an unsigned negative is rounded like any other value (-0.4 LSB with RND
  gives 0) and, if still negative, saturates to 0 or wraps to 2**W + k. A tiny double (even
  subnormal) truncates to -1 LSB under TRN when negative; +-inf count as +-2**1024.
* Int: round half to even, saturate to the (narrow) range.
* Binary: +scale where x >= 0, else -scale.

Refused (ValueError, before any work): a format some of whose values float64 cannot hold
exactly (fixed<64,3> has 63 significant bits; a minifloat whose range leaves float64's); an
input dtype that cannot hold every value of the format (float32 input with fixed<32,8> or int32:
the result would be the float32 rounding of a code, possibly outside the format; pass float64);
complex, non-numeric or long-double input, and integers beyond 2**53 (not exact in float64); a
scale that does not broadcast to the input's shape.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..formats import Binary, BlockFormat, E8M0, Fixed, Format, Int, Minifloat, parse_format
from ..formats.types import MAX_QUANTIZE_WIDTH


def _as_float_array(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"fpq.quantize: x must hold real numbers (float, int or bool), got dtype {a.dtype}"
                         + (" (the imaginary part would be lost)" if a.dtype.kind == "c" else ""))
    if a.dtype.kind == "f" and a.dtype.itemsize > 8:
        raise ValueError(f"fpq.quantize: {a.dtype} input would be rounded to float64 before quantizing; "
                         "pass float64, float32 or float16")
    if a.dtype.kind in "iu" and a.dtype.itemsize > 4 and a.size and (
            int(a.max()) > 2 ** 53 or int(a.min()) < -2 ** 53):
        raise ValueError("fpq.quantize: integer inputs beyond +-2**53 are not exact in float64, where fpq "
                         "quantizes; pass them as float64 (rounded by you) or reduce them")
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    return a


@functools.lru_cache(maxsize=1024)
def _needs(fmt: Format) -> tuple[int, int, int]:
    """(significant bits, exponent of the lowest bit, exponent of the top bit) that holding every
    finite value of ``fmt`` exactly takes."""
    if isinstance(fmt, Binary):
        return 1, 0, 0
    if isinstance(fmt, (Fixed, Int)):
        lo, hi = fmt.int_range
        F = fmt.frac_bits if isinstance(fmt, Fixed) else 0
        return max(hi.bit_length(), 1), -F, max(hi.bit_length(), (-lo).bit_length(), 1) - 1 - F
    assert isinstance(fmt, Minifloat)
    top = fmt.max_exp_field - fmt.bias if fmt.max_exp_field > 0 else fmt.emin - 1  # only subnormals
    return fmt.man_bits + 1, fmt.emin - fmt.man_bits, top


def float_limits(info) -> tuple[int, int, int]:
    """(precision, exponent of the smallest subnormal, exponent of the top binade) of a float type
    from its numpy or torch finfo."""
    nmant = -math.frexp(float(info.eps))[1] + 1
    return nmant + 1, math.frexp(float(info.tiny))[1] - 1 - nmant, math.frexp(float(info.max))[1] - 1


FLOAT64_LIMITS = (53, -1074, 1023)


@functools.lru_cache(maxsize=1024)
def inexact_reason(fmt: Format, limits: tuple[int, int, int] = FLOAT64_LIMITS) -> str | None:
    """Why a float type of these ``limits`` (see float_limits) cannot hold every value of ``fmt``
    exactly, or None when it can."""
    prec, low, top = limits
    bits, f_low, f_top = _needs(fmt)
    if bits > prec:
        return f"its values have up to {bits} significant bits, more than the {prec} it holds"
    if f_low < low:
        return f"its values go down to multiples of 2**{f_low}, below its smallest 2**{low}"
    if f_top > top:
        return f"its values reach 2**{f_top}, beyond its range (below 2**{top + 1})"
    return None


def check_exact_in(fmt: Format, dtype, who: str, limits: tuple[int, int, int]) -> None:
    """Refuse an input dtype that cannot hold every value of ``fmt``: the result, returned in that
    dtype, would be the rounding of a code, possibly outside the format."""
    why = inexact_reason(fmt, limits)
    if why is not None:
        raise ValueError(f"{who}: {dtype} input cannot return every value of {fmt} exactly ({why}); "
                         "pass float64 input (or use a narrower format)")


def check_scale_shape(scale_shape, x_shape, who: str) -> None:
    """Refuse a scale that does not broadcast to the input's shape (numpy and torch quantizers); a
    wrong shape is an error even when every scale is 1."""
    scale_shape, x_shape = tuple(scale_shape), tuple(x_shape)
    try:
        shape = np.broadcast_shapes(scale_shape, x_shape)
    except ValueError:
        shape = None
    if shape != x_shape:
        raise ValueError(f"{who}: a scale of shape {scale_shape} does not broadcast to the input's shape "
                         f"{x_shape}; give one scale, or one per channel shaped to broadcast (e.g. (C, 1))")


def _as_scale(scale, x: np.ndarray) -> np.ndarray:
    s = np.asarray(scale)
    if s.dtype.kind not in "fiu":
        raise ValueError(f"fpq.quantize: scale must hold real numbers, got dtype {s.dtype}")
    check_scale_shape(s.shape, x.shape, "fpq.quantize")
    s = s.astype(x.dtype)
    if np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("scale must be finite and > 0")
    return s


def quantize(x, fmt, scale=1.0) -> np.ndarray:
    """Quantize ``x`` to ``fmt`` with ``scale``: ``Q(x / scale) * scale``, the numpy reference.

    ``Q`` rounds and saturates exactly as the format says (bit-exact to ap_fixed for fixed point,
    to ml_dtypes for the OCP minifloats); it runs in float64 and the result is returned in ``x``'s
    float dtype. A block format (``mxfp4``, ``nvfp4``, ``block<...>``) computes its own block scales
    (``fpq.numerics.blocks``) and returns float64.

    Args:
        x (array_like): real values (float or integer); a float dtype narrower than float64 must
            hold the format's values exactly.
        fmt (str | Format): the format (see ``fpq.parse_format``).
        scale (float | array_like): finite, > 0; a scalar or an array that broadcasts to ``x``'s
            shape (e.g. one per channel shaped (C, 1)). Must be 1 for a block format.

    Returns:
        numpy.ndarray: the quantized values, ``x``'s shape.

    Raises:
        ValueError: an invalid format; a format fpq cannot quantize to exactly (``e8m0``, fixed
            point wider than 64 bits or with values float64 cannot hold, or one the dtype of ``x``
            cannot hold); a scale that is not real, not finite, not > 0 or does not broadcast to
            ``x``; a scale other than 1 with a block format.

    Example:
        >>> import numpy as np, fpq
        >>> x = np.array([0.3, -1.26, 100.0])
        >>> fpq.quantize(x, "fixed<8,3>").tolist()          # step 1/32, saturates at 127/32
        [0.3125, -1.25, 3.96875]
        >>> fpq.quantize(x, "e2m1", scale=0.5).tolist()     # e2m1 values times 0.5
        [0.25, -1.5, 3.0]
    """
    fmt = parse_format(fmt)
    if isinstance(fmt, BlockFormat):
        if not (np.ndim(scale) == 0 and float(scale) == 1.0):
            raise ValueError(f"fpq.quantize: {fmt} computes its own block scales; pass no scale (its tensor "
                             "scale, if any, goes to fpq.numerics.blocks.block_quantize)")
        from .blocks import quantize_block  # blocks imports this module
        return quantize_block(x, fmt)
    check_quantizable(fmt)
    x = _as_float_array(x)
    dt = x.dtype
    if dt != np.float64:
        check_exact_in(fmt, dt.name, "fpq.quantize", float_limits(np.finfo(dt)))
    return quantize_scaled(x, fmt, _as_scale(scale, x))


def quantize_scaled(x: np.ndarray, fmt: Format, scale: np.ndarray) -> np.ndarray:
    """``Q(x / scale) * scale`` in x's dtype, without quantize's checks: x a float array, ``scale`` in
    x's dtype and layout. The one numpy application of a scaled quantizer (fpq.quantize and
    fpq.numerics.scaled.apply_scaled); Q runs in float64, where it is exact."""
    unit = bool(np.all(scale == 1))
    with np.errstate(over="ignore", under="ignore"):  # x / scale may leave the dtype's range: defined
        xs = x if unit else x / scale
        q = quantize_unscaled(xs.astype(np.float64, copy=False), fmt).astype(x.dtype, copy=False)
        return q if unit else q * scale


def check_quantizable(fmt: Format) -> None:
    """Refuse formats the quantizers cannot compute exactly: fixed formats wider than a tensor may
    be (wider ones exist only as derived accumulator types), and any whose values are not all
    float64 numbers (fpq's results are float64 values)."""
    if isinstance(fmt, E8M0):
        raise ValueError("e8m0 is a block scale format (OCP MX); quantize to block<ELEM,e8m0,K> (e.g. mxfp4)")
    if isinstance(fmt, BlockFormat):
        raise ValueError(f"{fmt} is a block format: its scales come from each block, so it has no scale-1 "
                         "quantizer; use fpq.quantize(x, fmt) or fpq.numerics.blocks.block_quantize")
    if isinstance(fmt, Fixed) and fmt.width > MAX_QUANTIZE_WIDTH:
        raise ValueError(f"{fmt}: fixed formats wider than {MAX_QUANTIZE_WIDTH} bits are derived accumulator "
                         "types; tensors are quantized to formats float64 holds (at most fixed<54,I> / "
                         "ufixed<53,I>)")
    why = inexact_reason(fmt)
    if why is not None:
        raise ValueError(f"{fmt}: not every value of this format is a float64 number ({why}); fpq quantizes "
                         "only to formats float64 holds exactly (fixed point: at most 53 significant bits, "
                         "i.e. fixed<54,I> / ufixed<53,I>, with values within 2**-1074 .. 2**1023)")


def dispatch_on_format(func):
    """singledispatch on the type of the second argument ``fmt`` (functools dispatches on the first),
    for the quantizers (numpy reference and torch twin), which refuse what check_quantizable does."""
    dispatcher = functools.singledispatch(func)

    @functools.wraps(func)
    def wrapper(x, fmt):
        check_quantizable(fmt)
        return dispatcher.dispatch(type(fmt))(x, fmt)

    wrapper.register = dispatcher.register
    return wrapper


@dispatch_on_format
def quantize_unscaled(x: np.ndarray, fmt: Format) -> np.ndarray:
    """Exact quantization at scale 1, float64 in and out. One function per Format class.

    Args:
        x: float64 values.
        fmt: the Format.

    Returns:
        np.ndarray: float64 values of the format.

    Raises:
        TypeError: a Format class with no numpy quantizer.

    Example:
        >>> import numpy as np, fpq
        >>> from fpq.numerics import quantize_unscaled
        >>> quantize_unscaled(np.array([0.3, 7.0, -0.26]), fpq.parse_format("e2m1"))
        array([ 0.5,  6. , -0.5])
    """
    raise TypeError(f"no numpy quantizer for {type(fmt).__name__}")


@quantize_unscaled.register(Binary)
def _(x: np.ndarray, fmt: Binary) -> np.ndarray:
    return np.where(np.isnan(x), np.nan, np.where(x >= 0, 1.0, -1.0))


@quantize_unscaled.register(Int)
def _(x: np.ndarray, fmt: Int) -> np.ndarray:
    lo, hi = fmt.int_range
    with np.errstate(invalid="ignore"):
        return np.clip(np.rint(x), lo, hi)


def round_fixed(s: np.ndarray, rounding: str) -> np.ndarray:
    """Round the real numbers ``s`` (float64, exact) to integers by an ap_fixed mode.

    Args:
        s: float64 values, exact.
        rounding: an ap_fixed rounding mode (RND, RND_ZERO, RND_MIN_INF, RND_INF, RND_CONV, TRN,
            TRN_ZERO).

    Returns:
        np.ndarray: float64 integers.

    Example:
        >>> import numpy as np
        >>> from fpq.numerics import round_fixed
        >>> round_fixed(np.array([0.5, 1.5, -2.5, 2.7]), "RND_CONV"), round_fixed(np.array([0.5, 2.7]), "TRN")
        (array([ 0.,  2., -2.,  3.]), array([0., 2.]))
    """
    if rounding == "RND_CONV":
        return np.rint(s)
    if rounding == "TRN":
        return np.floor(s)
    if rounding == "TRN_ZERO":
        return np.trunc(s)
    up, down = _ties(rounding)
    t = np.trunc(s)
    # s - trunc(s) is exact for every double (its bits below the binary point); s - floor(s) is
    # not for s in (-1/2, 0): -(1/2 - 2**-54) gave 1/2, a false tie
    frac = s - t
    return t + (frac >= 0.5 if up else frac > 0.5) - (frac <= -0.5 if down else frac < -0.5)


def _ties(rounding: str) -> tuple[bool, bool]:
    """Where a tie of a round-to-nearest mode goes: (up for +1/2, down for -1/2)."""
    ties = {"RND": (True, False), "RND_ZERO": (False, False), "RND_MIN_INF": (False, True),
            "RND_INF": (True, True)}
    if rounding not in ties:
        raise ValueError(f"unknown rounding mode {rounding!r}")
    return ties[rounding]


def overflow_fixed(k: np.ndarray, lo: int, hi: int, width: int, signed: bool, overflow: str) -> np.ndarray:
    """Apply an ap_fixed overflow mode to integer codes ``k`` (float64 holding integers).

    Args:
        k: float64 integer codes.
        lo: the smallest code.
        hi: the largest code.
        width: the bit width (for WRAP).
        signed: whether the type is signed.
        overflow: an ap_fixed overflow mode (SAT, SAT_ZERO, SAT_SYM, WRAP).

    Returns:
        np.ndarray: float64 codes within [lo, hi].

    Raises:
        ValueError: an unknown overflow mode.

    Example:
        >>> import numpy as np
        >>> from fpq.numerics import overflow_fixed
        >>> k = np.array([130.0, -200.0, 5.0])
        >>> overflow_fixed(k, -128, 127, 8, True, "SAT"), overflow_fixed(k, -128, 127, 8, True, "WRAP")
        (array([ 127., -128.,    5.]), array([-126.,   56.,    5.]))
    """
    if overflow == "SAT":
        return np.clip(k, lo, hi)
    if overflow == "SAT_ZERO":
        return np.where((k < lo) | (k > hi), 0.0, k)
    if overflow == "SAT_SYM":
        # ap_fixed.h (checked with g++, from double and from a wider ap_fixed): a signed
        # target never takes the most negative code, even when the value is exactly it; except
        # at 1 bit, where the header's "most negative + 1" is the most negative code again.
        return np.clip(k, -hi if signed and width > 1 else lo, hi)
    if overflow == "WRAP":
        return wrap_codes(np, k, lo, hi, width)
    raise ValueError(f"unknown overflow mode {overflow!r}")


def wrap_codes(xp, k, lo: int, hi: int, width: int, precision: int = 53):
    """k modulo 2**width into [lo, hi], exactly, for numpy or torch (``xp``) floats of ``precision``
    bits holding integers. fmod is exact for every float, and so is each step after it: np.mod /
    torch.remainder rounded k + 2**width for a negative k past 53 bits (fixed<54,8,TRN,WRAP>)."""
    span = float(2 ** width)
    r = xp.fmod(k, span)  # sign of k, |r| < span; NaN stays NaN
    if width + 2 <= precision:  # r + span - lo is a positive integer below 2**(width + 2): exact
        return xp.fmod(r + (span - lo), span) + lo  # (+0.0 for -0.0, as the wrap always gave)
    r = xp.where(r < lo, r + span, r)  # each correction yields a code of the format: exact
    return xp.where(r > hi, r - span, r) + 0.0


@quantize_unscaled.register(Fixed)
def _(x: np.ndarray, fmt: Fixed) -> np.ndarray:
    lo, hi = fmt.int_range
    with np.errstate(over="ignore", under="ignore"):
        s = np.ldexp(x, fmt.frac_bits)  # exact power-of-two scaling, except at the double limits:
    # a tiny x may underflow to +-0: any |s| in (0, 0.5) rounds as the true one in every mode
    # (TRN of a tiny negative is -1 LSB, as ap_fixed gives). A huge x may overflow to inf, and
    # ap_fixed reads +-inf as +-2**1024: 2**1000 behaves the same (saturates, SAT_ZERO gives
    # 0, and WRAP gives 0 as it is a multiple of 2**W LSBs).
    s = np.where((s == 0) & (x != 0), np.copysign(0.25, x), s)
    s = np.where(np.isinf(s), np.copysign(2.0 ** 1000, s), s)
    with np.errstate(invalid="ignore"):
        k = round_fixed(s, fmt.rounding)
        k = overflow_fixed(k, lo, hi, fmt.width, fmt.signed, fmt.overflow)
    return np.ldexp(k, -fmt.frac_bits)


@quantize_unscaled.register(Minifloat)
def _(x: np.ndarray, fmt: Minifloat) -> np.ndarray:
    M = fmt.man_bits
    mx = fmt.max_value
    a = np.abs(x)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        _, e2 = np.frexp(a)                 # a = f * 2**e2 with f in [0.5, 1): exponent exact
        e = np.maximum(e2 - 1, fmt.emin)    # binade exponent, clamped to the subnormal binade
        ulp_exp = e - M
        if not fmt.subnormals:
            ulp_exp = np.where(a < fmt.min_normal, fmt.emin, ulp_exp)  # round to {0, min_normal}
        finite = np.isfinite(a)
        q = np.where(finite, np.ldexp(np.rint(np.ldexp(np.where(finite, a, 0.0), -ulp_exp)), ulp_exp), a)
        over = q > mx
        if fmt.saturate:
            q = np.where(over, mx, q)
        elif fmt.specials == "ieee":
            q = np.where(over, np.inf, q)
        else:
            q = np.where(over, np.nan, q)
        y = np.where(x < 0, -q, q)
        if not fmt.signed:
            y = np.where(x < 0, 0.0, y)
        if fmt.specials == "fnuz":
            y = np.where(y == 0, 0.0, y)  # no negative zero
    return y


def po2_exponents(scale) -> np.ndarray | None:
    """Integer exponents if every scale is a power of two (finite, > 0, mantissa 1/2), else None:
    the one test of a power-of-two scale (typeplan, numerics.scaled, numerics.torch_ops)."""
    s = np.asarray(scale, dtype=np.float64)
    if np.any(~np.isfinite(s)) or np.any(s <= 0):
        return None
    m, e = np.frexp(s)
    if np.any(m != 0.5):
        return None
    return (e - 1).astype(np.int64)
