"""Hypothesis properties of fpq.quantize over random formats of every kind.

For a random Fixed (every rounding and overflow mode), Int, Minifloat (random exponent /
mantissa split, bias, specials, subnormals, saturation) or Binary, and random inputs (off-grid
values around and far beyond the range, exact ties, +-inf, the format's own values):
idempotent, monotone, sign-symmetric where the format is, output in ``fpq.values(fmt)``,
nearest value (ties to even) where the format rounds to nearest even, power-of-two scales are
exact, and ``parse_format(str(fmt)) == fmt``.
"""
from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fpq
from fpq import Binary, Fixed, Int, Minifloat, parse_format
from fpq.formats import OVERFLOW_MODES, ROUNDING_MODES, SPECIALS

# FPQ_HYPOTHESIS_EXAMPLES raises the budget for a deeper search (run with 2000 before release)
SETTINGS = settings(max_examples=int(os.environ.get("FPQ_HYPOTHESIS_EXAMPLES", 120)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def fixed_formats(roundings=tuple(ROUNDING_MODES), overflows=tuple(OVERFLOW_MODES), signed=st.booleans(),
                  min_width=1):
    return st.builds(Fixed, st.integers(min_width, 16), st.integers(-8, 24), signed,
                     st.sampled_from(roundings), st.sampled_from(overflows))


@st.composite
def int_formats(draw, narrow=None):
    signed = True if narrow else draw(st.booleans())
    bits = draw(st.integers(2 if signed else 1, 16))
    return Int(bits, signed, narrow=signed and (narrow if narrow is not None else draw(st.booleans())))


@st.composite
def minifloat_formats(draw, signed=None, subnormals=None, monotone=False):
    """Random valid minifloats; ``monotone``: only those that never produce NaN from a number."""
    signed = draw(st.booleans()) if signed is None else signed
    e = draw(st.integers(1, 8))
    m = draw(st.integers(max(0, 3 - e - int(signed)), min(10, 16 - e - int(signed))))
    specials = draw(st.sampled_from(list(SPECIALS)))
    if specials == "ieee" and e < 2:
        specials = "none"
    if specials == "fnuz" and not signed:
        specials = "fn"
    if specials == "fn" and m == 0 and e < 2:
        specials = "none"
    saturate = specials == "none" or draw(st.booleans())
    if monotone and specials in ("fn", "fnuz"):
        saturate = True  # overflow to NaN is not ordered
    return Minifloat(e, m, bias=(1 << (e - 1)) - 1 + draw(st.integers(-6, 6)), signed=signed,
                     subnormals=draw(st.booleans()) if subnormals is None else subnormals,
                     specials=specials, saturate=saturate)


formats = st.one_of(fixed_formats(), int_formats(), minifloat_formats(), st.just(Binary()))
# WRAP folds out-of-range values back into the range and SAT_ZERO sends them to 0: neither is
# monotone; neither is a minifloat that overflows to NaN.
monotone_formats = st.one_of(fixed_formats(overflows=("SAT", "SAT_SYM")), int_formats(),
                             minifloat_formats(monotone=True), st.just(Binary()))
# symmetric range and a rounding that commutes with negation (Binary: except at 0 -> +1)
symmetric_formats = st.one_of(
    fixed_formats(("RND_CONV", "RND_ZERO", "RND_INF", "TRN_ZERO"), ("SAT_SYM",), st.just(True), min_width=2),
    int_formats(narrow=True), minifloat_formats(signed=True), st.just(Binary()))
nearest_even_formats = st.one_of(fixed_formats(("RND_CONV",)), int_formats(), minifloat_formats())


def inputs(fmt, seed: int, n: int = 300) -> np.ndarray:
    """Off-grid values in and beyond the range, exact midpoints, the values, +-inf (float64)."""
    rng = np.random.default_rng(seed)
    v = fpq.values(fmt)
    top = max(abs(v[0]), abs(v[-1]))
    mids = (v[:-1] + v[1:]) / 2
    parts = [rng.uniform(-3 * top, 3 * top, n), rng.choice(v, n // 4), rng.choice(mids, n // 4),
             np.exp2(rng.uniform(-30, 30, n // 4)) * rng.choice([-1, 1], n // 4),
             [np.inf, -np.inf, 0.0, -0.0]]
    return np.concatenate(parts).astype(np.float64)


def _same(a, b) -> bool:
    return np.array_equal(a, b, equal_nan=True)


@SETTINGS
@given(formats)
def test_canonical_string_round_trips(fmt):
    assert parse_format(str(fmt)) == fmt


@SETTINGS
@given(formats, st.integers(0, 2 ** 32 - 1))
def test_idempotent(fmt, seed):
    q = fpq.quantize(inputs(fmt, seed), fmt)
    assert _same(fpq.quantize(q, fmt), q)


@SETTINGS
@given(monotone_formats, st.integers(0, 2 ** 32 - 1))
def test_monotone(fmt, seed):
    x = np.sort(inputs(fmt, seed))
    q = fpq.quantize(x, fmt)
    assert not np.isnan(q).any()
    assert np.all(q[1:] >= q[:-1])


@SETTINGS
@given(symmetric_formats, st.integers(0, 2 ** 32 - 1))
def test_sign_symmetric(fmt, seed):
    x = inputs(fmt, seed)
    if isinstance(fmt, Binary):
        x = x[x != 0]
    assert _same(fpq.quantize(-x, fmt), -fpq.quantize(x, fmt))


@SETTINGS
@given(formats, st.integers(0, 2 ** 32 - 1))
def test_output_is_a_value_of_the_format(fmt, seed):
    x = inputs(fmt, seed)
    q = fpq.quantize(x, fmt)
    finite = np.isfinite(q)
    assert np.isin(q[finite], fpq.values(fmt)).all()
    # non-finite outputs only from a minifloat that does not saturate
    if not (isinstance(fmt, Minifloat) and not fmt.saturate):
        assert finite.all()
    elif fmt.specials == "ieee":
        assert np.isinf(q[~finite]).all()


@SETTINGS
@given(nearest_even_formats, st.integers(0, 2 ** 32 - 1))
def test_nearest_value_ties_to_even(fmt, seed):
    """Inside the range, the result is the nearest value of ``values(fmt)``; on a tie the one
    with an even code (the last mantissa / integer bit 0). Computed from the value list alone."""
    v = fpq.values(fmt)
    if isinstance(fmt, Fixed) and fmt.overflow == "SAT_SYM" and fmt.signed and fmt.width > 1:
        v = v[1:]  # SAT_SYM never produces the most negative code
    x = inputs(fmt, seed)
    x = x[(x >= v[0]) & (x <= v[-1])]
    if isinstance(fmt, Minifloat) and not fmt.subnormals:
        x = x[(np.abs(x) >= fmt.min_normal) | (x == 0)]  # flush-to-zero region: checked below
    q = fpq.quantize(x, fmt)
    i = np.clip(np.searchsorted(v, x), 1, v.size - 1)
    lo, hi = v[i - 1], v[i]
    d_lo, d_hi = x - lo, hi - x
    nearest = np.where(d_lo < d_hi, lo, hi)
    tie = d_lo == d_hi
    even = np.where(fpq.encode(lo, fmt) % 2 == 0, lo, hi)
    if isinstance(fmt, Minifloat) and fmt.man_bits == 0:
        # no mantissa bit to make even: a tie leaves zero (as ml_dtypes' float8_e8m0fnu and
        # qonnx's float_quant do), except the tie between 0 and the smallest value
        even = np.where((lo == 0) | (hi == 0), 0.0, np.where(np.abs(lo) > np.abs(hi), lo, hi))
    want = np.where(tie, even, nearest)
    want = np.where(np.isin(x, v), x, want)
    assert np.array_equal(q, want)


@SETTINGS
@given(minifloat_formats(signed=True, subnormals=False), st.integers(0, 2 ** 32 - 1))
def test_without_subnormals_small_values_flush(fmt, seed):
    mn = fmt.min_normal
    x = np.random.default_rng(seed).uniform(-mn, mn, 200)
    q = fpq.quantize(x, fmt)
    assert np.array_equal(q, np.where(np.abs(x) > mn / 2, np.sign(x) * mn, 0.0))


@SETTINGS
@given(formats, st.integers(0, 2 ** 32 - 1), st.integers(-20, 20))
def test_power_of_two_scale_is_exact(fmt, seed, k):
    x = inputs(fmt, seed)
    x = x[np.abs(x) < 2.0 ** 900]
    s = 2.0 ** k
    assert _same(fpq.quantize(x, fmt, scale=s), fpq.quantize(x / s, fmt) * s)
