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
"""
from __future__ import annotations

import functools

import numpy as np

from ..formats import Binary, Fixed, Format, Int, Minifloat, parse_format
from ..formats.types import MAX_QUANTIZE_WIDTH


def _as_float_array(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    return a


def quantize(x, fmt, scale=1.0) -> np.ndarray:
    """Quantize ``x`` to ``fmt`` with ``scale`` (scalar or broadcastable array)."""
    fmt = parse_format(fmt)
    x = _as_float_array(x)
    dt = x.dtype
    scale = np.asarray(scale, dtype=dt)
    if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError("scale must be finite and > 0")
    unit = bool(np.all(scale == 1))
    with np.errstate(over="ignore", under="ignore"):  # x / scale may leave dt's range: defined
        xs = x if unit else (x / scale).astype(dt)
        q = quantize_unscaled(xs.astype(np.float64), fmt).astype(dt)
        return q if unit else (q * scale).astype(dt)


def dispatch_on_format(func):
    """singledispatch on the type of the second argument ``fmt`` (functools dispatches on the first),
    for the quantizers (numpy reference and torch twin), which refuse fixed formats wider than a
    tensor may be (wider ones exist only as derived accumulator types)."""
    dispatcher = functools.singledispatch(func)

    @functools.wraps(func)
    def wrapper(x, fmt):
        if isinstance(fmt, Fixed) and fmt.width > MAX_QUANTIZE_WIDTH:
            raise ValueError(f"{fmt}: fixed formats wider than {MAX_QUANTIZE_WIDTH} bits are derived accumulator "
                             "types; tensors are quantized to at most 64 bits")
        return dispatcher.dispatch(type(fmt))(x, fmt)

    wrapper.register = dispatcher.register
    return wrapper


@dispatch_on_format
def quantize_unscaled(x: np.ndarray, fmt: Format) -> np.ndarray:
    """Exact quantization at scale 1, float64 in and out. One function per Format class."""
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
    """Round the real numbers ``s`` (float64, exact) to integers by an ap_fixed mode."""
    if rounding == "RND_CONV":
        return np.rint(s)
    f = np.floor(s)
    if rounding == "TRN":
        return f
    if rounding == "TRN_ZERO":
        return np.trunc(s)
    frac = s - f  # exact in float64
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
    return f + up


def overflow_fixed(k: np.ndarray, lo: int, hi: int, width: int, signed: bool, overflow: str) -> np.ndarray:
    """Apply an ap_fixed overflow mode to integer codes ``k`` (float64 holding integers)."""
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
        span = float(2 ** width)
        with np.errstate(invalid="ignore"):
            # reduce first: k - lo is not exact in float64 for huge k (e.g. 1e30 * 2**4)
            return np.mod(np.mod(k, span) - lo, span) + lo
    raise ValueError(f"unknown overflow mode {overflow!r}")


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
