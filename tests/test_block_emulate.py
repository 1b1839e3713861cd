"""Block-scaled formats through the emulator (numpy and torch backends) and fpq.verify: the exact
block dot product (fpq.numerics.block_dot) against Python's exact rationals, the reader of fpq's
BlockQuant node, and torch == emulator == qonnx's executor at atol=0."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from fpq.numerics.block_dot import block_linear, exact_sum_odd
from fpq.numerics.blocks import block_quantize


def ro53(fr: Fraction) -> float:
    """Round-to-odd of an exact rational at 53 bits (the oracle, by integers)."""
    if fr == 0:
        return 0.0
    sign = -1 if fr < 0 else 1
    a = abs(fr)
    e = math.floor(math.log2(a.numerator) - math.log2(a.denominator))
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    scaled = a / Fraction(2) ** (e - 52)
    m = scaled.numerator // scaled.denominator
    if m != scaled and m % 2 == 0:
        m += 1
    return sign * math.ldexp(m, e - 52)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_exact_sum_odd_against_rationals(backend):
    rng = np.random.default_rng(1)
    t = rng.standard_normal((300, 9)) * np.exp2(rng.integers(-300, 300, size=(300, 9)))
    t[::5, 3] = -t[::5, 4]                    # exact cancellation of the largest terms
    t[::7] = np.round(t[::7] * 0)             # all zero rows
    t[1::6, 0] = 2.0 ** 200
    t[1::6, 1] = -(2.0 ** 200)
    t[1::6, 2] = 2.0 ** -200                  # cancels to a tiny value
    arr = torch.tensor(t) if backend == "torch" else t
    got = np.asarray(exact_sum_odd(arr), dtype=np.float64)
    want = np.array([ro53(sum((Fraction(v) for v in row), Fraction(0))) for row in t])
    assert np.array_equal(got, want)


def exact_linear(x, w, b):
    return np.array([[ro53(sum((Fraction(a) * Fraction(c) for a, c in zip(xr, wr)), Fraction(b[o])))
                      for o, wr in enumerate(w)] for xr in x])


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxfp8_e5m2", "mxint8"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_block_linear_exact_over_wide_scale_ranges(fmt, backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 70)) * np.exp2(rng.integers(-60, 60, size=(12, 70)) // 8)
    x[:, 40:] *= 2.0 ** 90        # blocks hundreds of binades apart
    x[::4, :32] = 0.0
    x[3, 7] = 3e30
    w = rng.standard_normal((5, 70)) * np.exp2(rng.integers(-100, 100, size=(5, 1)))
    xq, wq = block_quantize(x, fmt).values, block_quantize(w, fmt).values
    b = np.array([0.25, -3.0, 2.0 ** -40, 0.0, 1e10])
    args = (torch.tensor(xq), torch.tensor(wq), torch.tensor(b)) if backend == "torch" else (xq, wq, b)
    y, fits = block_linear(*args, k=int(fpq_k(fmt)))
    y = np.asarray(y, dtype=np.float64)
    assert np.array_equal(y, exact_linear(xq, wq, b))
    fits = np.asarray(fits)
    assert not fits.all()
    assert np.array_equal(y[fits], (xq @ wq.T + b)[fits])   # where float64 suffices, it is the plain sum


def fpq_k(fmt):
    import fpq
    return fpq.parse_format(fmt).k
