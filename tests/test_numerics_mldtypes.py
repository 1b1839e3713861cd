"""fpq's minifloat decode and quantize against ml_dtypes (an independent implementation).

Every code of every format ml_dtypes shares with fpq decodes to the same value (NaN where
ml_dtypes has NaN, the same infinities), and 10**6 random float32 values inside the finite range
(uniform, log-uniform magnitudes, exact ties and their float32 neighbours, the subnormal range)
quantize exactly as the ml_dtypes cast, sign of zero included. Out of range, fpq's saturating
formats equal ml_dtypes where ml_dtypes saturates (the formats without inf/NaN), and the
``_nosat`` variants equal it where it overflows to inf/NaN.
"""
from __future__ import annotations

import zlib

import ml_dtypes
import numpy as np
import pytest

import fpq

# fpq name -> ml_dtypes type (the pairs must describe the same format)
PAIRS = {
    "e2m1": ml_dtypes.float4_e2m1fn,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "float8_e4m3b11fnuz": ml_dtypes.float8_e4m3b11fnuz,
    "float8_e4m3": ml_dtypes.float8_e4m3,
    "float8_e3m4": ml_dtypes.float8_e3m4,
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
}
N_RANDOM = 10 ** 6


def ml_decode(codes: np.ndarray, dtype) -> np.ndarray:
    """Value of each code by ml_dtypes (its codes live in the low bits of a byte or a uint16)."""
    store = np.uint16 if np.dtype(dtype).itemsize == 2 else np.uint8
    with np.errstate(invalid="ignore"):
        return codes.astype(store).view(dtype).astype(np.float64)


def ml_cast(x: np.ndarray, dtype) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(dtype).astype(x.dtype)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-level equality of float arrays: same values, same NaNs, same sign of zero."""
    return (np.array_equal(a, b, equal_nan=True)
            and np.array_equal(np.signbit(a[~np.isnan(a)]), np.signbit(b[~np.isnan(b)])))


def random_inputs(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n float32 values with |x| <= max: uniform, log-uniform, ties +- ulps, subnormal range."""
    fmt = fpq.parse_format(name)
    dtype = PAIRS[name]
    info = fpq.finfo(fmt)
    # the value grid from ml_dtypes, so the tie points do not come from the code under test
    vals = np.unique(ml_decode(np.arange(1 << fmt.width), dtype))
    vals = vals[np.isfinite(vals)]
    q = n // 4
    uniform = rng.uniform(-info.max, info.max, q)
    mags = np.exp2(rng.uniform(np.log2(info.smallest_subnormal) - 3, np.log2(info.max), q))
    logu = mags * rng.choice([-1.0, 1.0], q)
    k = rng.integers(0, vals.size - 1, q)
    ties = (vals[k] + vals[k + 1]) / 2  # exact: one more mantissa bit fits in float32
    ties32 = ties.astype(np.float32)
    assert np.array_equal(ties32.astype(np.float64), ties)
    steps = rng.integers(-2, 3, q)  # the tie itself and up to 2 float32 ulps on either side
    near = ties32.copy()
    for _ in range(2):
        up, down = steps > 0, steps < 0
        near[up] = np.nextafter(near[up], np.float32(np.inf))
        near[down] = np.nextafter(near[down], np.float32(-np.inf))
        steps = steps - np.sign(steps)
    sub = rng.uniform(-2 * info.smallest_normal, 2 * info.smallest_normal, n - 3 * q)
    x = np.concatenate([uniform, logu, sub]).astype(np.float32)
    x = np.concatenate([x, near])
    return np.clip(x, -info.max, info.max).astype(np.float32)


@pytest.mark.parametrize("name", list(PAIRS))
def test_every_code_decodes_as_ml_dtypes(name):
    fmt = fpq.parse_format(name)
    codes = np.arange(1 << fmt.width)
    assert _same(fpq.decode(codes, fmt), ml_decode(codes, PAIRS[name]))


@pytest.mark.parametrize("name", list(PAIRS))
def test_finfo_matches_ml_dtypes(name):
    fmt = fpq.parse_format(name)
    info, ml = fpq.finfo(fmt), ml_dtypes.finfo(PAIRS[name])
    assert info.max == float(ml.max)
    assert info.smallest_normal == float(ml.smallest_normal)
    assert info.smallest_subnormal == float(ml.smallest_subnormal)
    assert info.eps == float(ml.eps)
    assert info.has_inf == bool(np.isinf(ml_decode(np.arange(1 << fmt.width), PAIRS[name])).any())


@pytest.mark.parametrize("name", list(PAIRS))
def test_quantize_equals_ml_dtypes_cast(name):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = random_inputs(name, N_RANDOM, rng)
    assert x.size == N_RANDOM and x.dtype == np.float32
    got = fpq.quantize(x, fpq.parse_format(name))
    want = ml_cast(x, PAIRS[name])
    bad = np.flatnonzero(~((got == want) & (np.signbit(got) == np.signbit(want))))
    assert bad.size == 0, (f"{bad.size} of {x.size} differ, e.g. "
                           + ", ".join(f"{x[i]!r}: fpq {got[i]!r} vs ml_dtypes {want[i]!r}" for i in bad[:5]))


@pytest.mark.parametrize("name", list(PAIRS))
def test_out_of_range(name):
    """Beyond +-max and +-inf: ml_dtypes saturates formats without inf/NaN and overflows the
    others; fpq's default (saturating) and ``_nosat`` variants match the respective behaviour."""
    fmt = fpq.parse_format(name)
    mx = fpq.finfo(fmt).max
    rng = np.random.default_rng(7)
    top = np.log2(np.finfo(np.float32).max)
    x = np.concatenate([mx * rng.uniform(1, 4, 1000), np.exp2(rng.uniform(np.log2(mx), top, 1000)),
                        [np.inf, np.nextafter(np.float32(mx), np.inf)]])
    with np.errstate(over="ignore"):
        x = np.concatenate([x, -x]).astype(np.float32)
    want = ml_cast(x, PAIRS[name])
    if fmt.specials == "none":
        assert _same(fpq.quantize(x, fmt), want)
    else:
        nosat = fpq.parse_format(str(fmt) + "_nosat")
        assert _same(fpq.quantize(x, nosat), want)
        assert np.array_equal(fpq.quantize(x, fmt), np.sign(x) * np.float32(mx))


def test_float32_to_float32_without_double_rounding():
    """A float32 just above an e4m3 tie must round up: a float16 stop on the way would not."""
    tie = np.float32(1.0 + 2 ** -4)  # between 1 and 1.125 in e4m3
    x = np.nextafter(tie, np.float32(2), dtype=np.float32)
    assert fpq.quantize(x, "e4m3") == np.float32(1.125) == ml_cast(np.array([x]), ml_dtypes.float8_e4m3fn)[0]
