"""Issue 15, items 5 and 14: the numerics against an exact rational oracle, and their refusals.

The oracle (exact rational arithmetic in Python integers) rounds and overflows the exact value of each
double as ap_fixed.h does (the same rules test_apfixed_oracle.py checks against g++); fpq.quantize
and quantize_torch must equal it bit for bit (atol=0) on points built to break float shortcuts:
just inside a tie by one ulp of the input (-(1/2 - 2**-54) LSB), ties, random off-grid values, and
wrap-around at 53/54 bits. What float64 (or the input's dtype) cannot hold is refused.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fpq
from fpq import Fixed, parse_format
from fpq.formats import OVERFLOW_MODES, ROUNDING_MODES
from fpq.numerics import quantize_torch


def oracle(x: float, fmt: Fixed) -> float:
    """ap_fixed<W, I, Q, O> of the double x, in exact rational arithmetic: x * 2**F = n / d with
    Python integers, the rounding decided by comparing twice the remainder with d."""
    if math.isnan(x):
        return math.nan
    if math.isinf(x):
        n, d = (1 << 1024) if x > 0 else -(1 << 1024), 1  # ap_fixed reads +-inf as +-2**1024
    else:
        n, d = x.as_integer_ratio()
    F = fmt.frac_bits
    n, d = (n << F, d) if F >= 0 else (n, d << -F)
    fl = n // d
    twice = 2 * (n - fl * d)  # 2 * (s - floor(s)) * d: a tie when it equals d
    q = fmt.rounding
    if q == "TRN":
        k = fl
    elif q == "TRN_ZERO":
        k = fl + (twice > 0 and n < 0)
    elif twice != d:
        k = fl + (twice > d)
    else:  # a tie
        k = {"RND": fl + 1, "RND_MIN_INF": fl, "RND_ZERO": fl + (n < 0), "RND_INF": fl + (n > 0),
             "RND_CONV": fl + (fl % 2)}[q]
    lo, hi = fmt.int_range
    o = fmt.overflow
    if o == "SAT":
        k = min(max(k, lo), hi)
    elif o == "SAT_ZERO":
        k = k if lo <= k <= hi else 0
    elif o == "SAT_SYM":
        k = min(max(k, -hi if fmt.signed and fmt.width > 1 else lo), hi)
    else:
        k = (k - lo) % (1 << fmt.width) + lo
    return math.ldexp(k, -F)  # exact: the format's values are float64 numbers


def probes(fmt: Fixed, rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    """Ties of codes near zero (the issue's -(1/2 - 2**-54) LSB is the neighbour below -1/2 LSB),
    at the ends and at random, random off-grid values in and beyond the range, each with its two
    neighbouring values of ``dtype``; and +-0.1, +-0."""
    lo, hi = fmt.int_range
    lsb = 2.0 ** -fmt.frac_bits
    codes = np.concatenate([[0, -1, 1, 2, -2, lo, hi, lo + 1, hi - 1, lo - 1, hi + 1],
                            rng.integers(lo, hi, 8, endpoint=True)]).astype(np.float64)
    span = float(hi - lo + 1)
    with np.errstate(over="ignore"):
        t = (np.concatenate([codes + 0.5, codes - 0.5, rng.uniform(lo - span, hi + span, 24)]) * lsb).astype(dtype)
        t = t[np.isfinite(t)]
        x = np.concatenate([t, np.nextafter(t, dtype(np.inf)), np.nextafter(t, dtype(-np.inf)),
                            np.array([-0.1, 0.1, 0.0, -0.0], dtype)])
    return x[np.isfinite(x)]


# every round-to-nearest mode's tie rule, every overflow mode, narrow to 54 bits (the widest
# signed type float64 holds), at several binary points
FORMATS = [Fixed(w, i, s, q, o) for q in ROUNDING_MODES for o in OVERFLOW_MODES
           for w, i, s in [(2, 1, True), (5, -2, True), (12, 4, False), (24, 9, True), (53, 8, False),
                           (54, 60, True)]]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_numpy_and_torch_equal_the_rational_oracle(fmt):
    rng = np.random.default_rng(abs(hash(str(fmt))) % 2 ** 32)
    for dtype in (np.float64, np.float32):
        if dtype == np.float32 and fmt.width > 24:
            continue  # refused: test_float32_input_refuses_formats_it_cannot_hold
        x = probes(fmt, rng, dtype)
        want = np.array([oracle(float(v), fmt) for v in x])
        got = fpq.quantize(x, fmt)
        bad = want != got
        assert not bad.any(), f"{fmt} {dtype.__name__}: x={x[bad][:4]!r}: numpy {got[bad][:4]}, exact {want[bad][:4]}"
        got_t = quantize_torch(torch.from_numpy(x.copy()), fmt).numpy()
        bad = want != got_t
        assert not bad.any(), f"{fmt} {dtype.__name__}: x={x[bad][:4]!r}: torch {got_t[bad][:4]}, exact {want[bad][:4]}"


def test_the_issue_points():
    x = -float.fromhex("0x1.fffffffffffffp-3")  # -(1/2 - 2**-54) LSB of fixed<2,1>
    for q in ("RND_MIN_INF", "RND_INF", "RND", "RND_ZERO"):
        fmt = f"fixed<2,1,{q},SAT>"
        assert fpq.quantize(x, fmt) == 0.0
        assert quantize_torch(torch.tensor(x, dtype=torch.float64), fmt).item() == 0.0
    # wrap at 54 bits: the widest signed type float64 holds; np.mod rounded k + 2**54
    fmt = Fixed(54, 8, True, "TRN", "WRAP")
    x = -np.random.default_rng(3).uniform(0, 100, 200)
    want = np.array([oracle(float(v), fmt) for v in x])
    assert np.array_equal(fpq.quantize(x, fmt), want)
    assert np.array_equal(quantize_torch(torch.from_numpy(x), fmt).numpy(), want)


@pytest.mark.parametrize("text", ["fixed<64,3>", "fixed<56,8,TRN,WRAP>", "fixed<64,8>", "ufixed<54,2>",
                                  "fixed<55,0,RND,SAT>", "e5m2_b-1000"])
def test_formats_float64_cannot_hold_are_refused(text):
    fmt = parse_format(text)
    for call in (lambda: fpq.quantize(100, fmt), lambda: fpq.quantize(np.array([-0.1]), fmt),
                 lambda: quantize_torch(torch.tensor([100.0], dtype=torch.float64), fmt)):
        with pytest.raises(ValueError, match=r"not every value of this format is a float64 number") as e:
            call()
        assert str(fmt) in str(e.value) and "53" in str(e.value)
    # the widest that float64 holds still work, exactly
    assert fpq.quantize(100.0, "fixed<54,3>") == 4.0 - 2.0 ** -51
    assert fpq.quantize(-100.0, "fixed<54,3>") == -4.0


@pytest.mark.parametrize("text", ["fixed<32,8,TRN,SAT>", "ufixed<25,1>", "int32", "fixed<12,-200>", "fixed<8,200>"])
def test_float32_input_refuses_formats_it_cannot_hold(text):
    x = np.array([200.0, -3.3, 1e-3], np.float32)
    with pytest.raises(ValueError, match=r"float32 input cannot return every value of .*pass float64"):
        fpq.quantize(x, text)
    with pytest.raises(ValueError, match=r"float32 input cannot return every value of .*pass float64"):
        quantize_torch(torch.from_numpy(x), text)
    # float64 gives the format's values: 200 saturates to max = 128 - 2**-24, not 128
    y = fpq.quantize(x.astype(np.float64), text)
    assert np.all(y <= fpq.finfo(text).max) and np.all(y >= fpq.finfo(text).min)
    assert np.array_equal(quantize_torch(torch.from_numpy(x.astype(np.float64)), text).numpy(), y)


def test_float32_input_still_works_where_exact():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 50
    for fmt in ("fixed<24,9,RND,WRAP>", "int24", "e4m3", "fixed<8,3,RND_MIN_INF,SAT>"):
        want = fpq.quantize(x.astype(np.float64), fmt).astype(np.float32)
        assert np.array_equal(fpq.quantize(x, fmt), want)
        assert np.array_equal(quantize_torch(torch.from_numpy(x), fmt).numpy(), want)


def test_scale_of_wrong_shape_is_refused_even_when_all_ones():
    x = np.random.default_rng(0).standard_normal((4, 3))
    for scale in (np.ones(5), np.ones((4, 1, 1)), np.ones((2, 3)), np.ones((1, 4, 3))):
        with pytest.raises(ValueError, match=r"scale of shape .* does not broadcast to the input's shape \(4, 3\)"):
            fpq.quantize(x, "int8", scale)
        with pytest.raises(ValueError, match=r"scale of shape .* does not broadcast to the input's shape \(4, 3\)"):
            quantize_torch(torch.from_numpy(x), "int8", torch.from_numpy(scale))
    # shapes that broadcast still work (per row, per column, scalar)
    for scale in (np.full((4, 1), 0.5), np.full(3, 0.25), 0.125, np.ones((4, 3))):
        y = fpq.quantize(x, "int8", scale)
        assert y.shape == x.shape
        assert np.array_equal(quantize_torch(torch.from_numpy(x), "int8", torch.as_tensor(scale)).numpy(), y)


def test_complex_and_non_numeric_input_is_refused():
    with pytest.raises(ValueError, match="real numbers.*complex128.*imaginary part"):
        fpq.quantize(np.array([1 + 2j]), "int8")
    with pytest.raises(ValueError, match="real numbers.*complex"):
        fpq.quantize(1.5j, "fixed<8,3>")
    with pytest.raises(ValueError, match="real numbers.*complex64.*imaginary part"):
        quantize_torch(torch.tensor([1 + 2j], dtype=torch.complex64), "int8")
    with pytest.raises(ValueError, match="scale must hold real numbers"):
        fpq.quantize(np.ones(2), "int8", 1 + 1j)
    with pytest.raises(ValueError, match="scale must hold real numbers"):
        quantize_torch(torch.ones(2), "int8", 1 + 1j)
    with pytest.raises(ValueError, match="real numbers.*dtype <U3"):
        fpq.quantize(np.array(["1.5"]), "int8")  # astype(float) would parse the string
    with pytest.raises(ValueError, match="beyond \\+-2\\*\\*53"):
        fpq.quantize(np.array([2 ** 53 + 1], np.int64), "fixed<8,60>")
    with pytest.raises(ValueError, match="beyond \\+-2\\*\\*53"):
        quantize_torch(torch.tensor([-2 ** 53 - 1]), "fixed<8,60>")
    assert np.array_equal(fpq.quantize(np.array([3, -200], np.int64), "int8"), [3.0, -128.0])


@pytest.mark.parametrize("text, why", [
    ("int\u0668", "non-ASCII character"),                 # Arabic-Indic digit eight
    ("int\uff18", "non-ASCII character"),                 # fullwidth 8
    ("e4m3_b\u0661", "non-ASCII character"),
    ("i n t 8", "spaces inside a name or number"),
    ("int 8", "spaces inside a name or number"),
    ("fixed<1 0,3>", "spaces inside a name or number"),
    ("fixed<8,3,RND _CONV>", "spaces inside a name or number"),
    ("fixed<1_0,3>", "must be integers (ASCII digits"),
    ("fixed<+8,3>", "must be integers (ASCII digits"),
    ("fixed<8,100000>", "outside float64's range"),
    ("fixed<8,-1100>", "outside float64's range"),
])
def test_parse_format_accepts_ascii_digits_only(text, why):
    with pytest.raises(ValueError, match="Accepted forms") as e:
        parse_format(text)
    assert why in str(e.value) and repr(text) in str(e.value)


def test_parse_format_still_accepts_spaces_at_the_ends_and_around_punctuation():
    assert parse_format(" fixed < 8 , 3 > ") == Fixed(8, 3)
    assert parse_format("\tE4M3 ") == parse_format("e4m3")
    assert parse_format("fixed<8,-2>") == Fixed(8, -2)
