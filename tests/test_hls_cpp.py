"""fpq's C++ quantizers (hls/fpq_minifloat.h) against the numpy reference, atol=0.

One g++ program holds every case; each case quantizes an ap_fixed input type's values (every
value of the format, every midpoint between neighbours, each +- one input LSB, values beyond the
range, random ones) and is compared with ``fpq.quantize``. The float -> ap_fixed conversion
that the C-sim bridge applies to network inputs is checked here too, from float32 values.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import fpq
from fpq.formats import Fixed, Minifloat, Binary, Int
from fpq.hls import cpp

pytestmark = pytest.mark.slow

HLS4ML_TEMPLATES = Path(__import__("hls4ml").__file__).parent / "templates" / "vivado"


def _grid_inputs(fmt, scale_exp, in_fmt: Fixed, rng) -> np.ndarray:
    """Inputs on in_fmt's grid that probe every rounding decision of fmt."""
    scale = 2.0 ** scale_exp
    lsb = in_fmt.step
    if isinstance(fmt, Binary):
        v = np.array([-1.0, 1.0]) * scale
    elif isinstance(fmt, Int):
        lo, hi = fmt.int_range
        v = np.arange(lo - 3, hi + 4, dtype=np.float64) * scale
    else:
        v = fpq.values(fmt) * scale
        v = np.concatenate([v, -v])
    v = np.unique(v)
    mids = (v[1:] + v[:-1]) / 2
    top = float(np.max(np.abs(v)))
    pts = [v, mids, mids - lsb, mids + lsb, v - lsb, v + lsb, [0.0, lsb, -lsb, 2 * lsb, -2 * lsb],
           top * np.array([1.01, 1.5, 2.0, 3.9, -1.01, -1.5, -3.9]),
           rng.uniform(-2 * top, 2 * top, 4000), rng.standard_normal(2000) * scale]
    x = np.concatenate([np.ravel(np.asarray(p, dtype=np.float64)) for p in pts])
    # onto the input grid, saturating at the input type's range (the value the hardware sees)
    x = fpq.quantize(x, Fixed(in_fmt.width, in_fmt.int_bits, in_fmt.signed, "TRN", "SAT"))
    return np.unique(x)


def _in_type(fmt, scale_exp, extra_frac=3, extra_int=3, signed=True) -> Fixed:
    c = cpp.cast_format(fmt, scale_exp) or fpq.exact_fixed(fmt, scale_exp)
    frac = c.frac_bits + extra_frac
    ints = c.int_bits + extra_int
    return Fixed(ints + frac, ints, signed)


CASES = [
    # (format, scale exponent, input type; None: derived by _in_type)
    ("e4m3", 0, None), ("e2m1", 0, None), ("e3m2", 0, None), ("e2m3", 0, None), ("e5m2", 0, None),
    ("e4m3", -3, None), ("e3m2", 4, None), ("e3m0", 0, None), ("e1m2", 0, None),
    (Minifloat(4, 3, bias=10), 0, None), (Minifloat(4, 3, bias=-2), 0, None),
    (Minifloat(3, 2, subnormals=False), 0, None), (Minifloat(2, 1, subnormals=False), 2, None),
    (Minifloat(2, 1, signed=False), 0, None), (Minifloat(4, 3, specials="ieee"), 0, None),
    (Minifloat(4, 3, specials="fnuz"), 0, None), (Minifloat(5, 10), -8, None),
    ("e4m3", 0, "coarse"), ("e3m2", 0, "unsigned"), ("e2m1", 0, "narrow_int"),
    ("binary", 0, None), ("binary", -2, None), (Int(8, narrow=True), -4, None), (Int(4, narrow=True), 1, None),
]


def _case_types(fmt, s, kind):
    out = fpq.exact_fixed(fmt, s)
    if kind is None:
        return _in_type(fmt, s), out
    if kind == "coarse":  # input grid coarser than the format's smallest subnormal
        c = fpq.exact_fixed(fmt, s)
        return Fixed(c.int_bits + 2 + c.frac_bits - 6, c.int_bits + 2), out
    if kind == "unsigned":
        return _in_type(fmt, s, signed=False), out
    if kind == "narrow_int":  # input with fewer integer bits than the format's range
        return Fixed(8, 2), out
    raise ValueError(kind)


DRIVER = r"""
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "fpq_minifloat.h"

template <class in_T, class out_T, out_T (*Q)(in_T)>
static void run(const char *src, const char *dst) {
    FILE *f = std::fopen(src, "rb");
    std::vector<double> x;
    double v;
    while (std::fread(&v, sizeof v, 1, f) == 1) x.push_back(v);
    std::fclose(f);
    FILE *g = std::fopen(dst, "wb");
    for (double xi : x) {
        in_T a = xi;
        double y = Q(a).to_double();
        std::fwrite(&y, sizeof y, 1, g);
    }
    std::fclose(g);
}

template <class T>
static void convert_float(const char *src, const char *dst) {  // the C-sim bridge's input cast
    FILE *f = std::fopen(src, "rb");
    FILE *g = std::fopen(dst, "wb");
    float v;
    while (std::fread(&v, sizeof v, 1, f) == 1) {
        T a = v;
        double y = a.to_double();
        std::fwrite(&y, sizeof y, 1, g);
    }
    std::fclose(f);
    std::fclose(g);
}

%(funcs)s

int main(int argc, char **argv) {
    int k = std::atoi(argv[1]);
    switch (k) {
%(cases)s
    }
    return 0;
}
"""


def _build(tmp_path, quant_cases, conv_types):
    funcs, cases = [], []
    for i, (in_t, out_t, call) in enumerate(quant_cases):
        funcs.append(f"static {out_t} q{i}({in_t} x) {{ return {call.format(x='x')}; }}")
        cases.append(f"    case {i}: run<{in_t}, {out_t}, q{i}>(argv[2], argv[3]); break;")
    for j, t in enumerate(conv_types):
        cases.append(f"    case {1000 + j}: convert_float<{t}>(argv[2], argv[3]); break;")
    src = tmp_path / "driver.cpp"
    src.write_text(DRIVER % {"funcs": "\n".join(funcs), "cases": "\n".join(cases)})
    exe = tmp_path / "driver"
    subprocess.run(["g++", "-O0", "-std=c++14", f"-I{cpp.HLS_DIR}", f"-I{HLS4ML_TEMPLATES / 'ap_types'}",
                    f"-I{HLS4ML_TEMPLATES / 'nnet_utils'}", str(src), "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    return exe


def _call(exe, k, x, tmp_path):
    src, dst = tmp_path / f"in{k}.bin", tmp_path / f"out{k}.bin"
    x.tofile(src)
    subprocess.run([str(exe), str(k), str(src), str(dst)], check=True)
    return np.fromfile(dst, dtype=np.float64)


CONV_TYPES = [Fixed(8, 4, True, "RND_CONV", "SAT"), Fixed(8, 3, True, "RND", "SAT"), Fixed(6, 2, True, "RND", "SAT"),
              Fixed(8, 4, True, "TRN", "WRAP"), Fixed(7, 1, True, "RND_ZERO", "SAT_SYM"),
              Fixed(9, 9, False, "RND_INF", "SAT_ZERO"), Fixed(24, 2, True, "RND_MIN_INF", "SAT"),
              Fixed(12, 6, True, "TRN_ZERO", "SAT")]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hls_cpp")
    rng = np.random.default_rng(0)
    quant, data = [], []
    for fmt, s, kind in CASES:
        fmt = fpq.parse_format(fmt)
        in_f, out_f = _case_types(fmt, s, kind)
        call = cpp.quantizer_call(fmt, s, "in_T", "out_T")
        quant.append((cpp.ap_type(in_f), cpp.ap_type(out_f), call.replace("in_T", cpp.ap_type(in_f))
                      .replace("out_T", cpp.ap_type(out_f))))
        data.append((fmt, s, _grid_inputs(fmt, s, in_f, rng)))
    return _build(tmp, quant, [cpp.ap_type(t) for t in CONV_TYPES]), data, tmp


@pytest.mark.parametrize("k", range(len(CASES)), ids=[f"{c[0]}-s{c[1]}-{c[2]}" for c in CASES])
def test_cpp_quantizer_matches_reference(driver, k):
    exe, data, tmp = driver
    fmt, s, x = data[k]
    got = _call(exe, k, x, tmp)
    want = fpq.quantize(x, fmt, 2.0 ** s)
    bad = np.flatnonzero(got != want)
    assert x.size >= 50
    assert bad.size == 0, f"{fmt} s={s}: x={x[bad[:5]]} C++={got[bad[:5]]} numpy={want[bad[:5]]}"


@pytest.mark.parametrize("j", range(len(CONV_TYPES)), ids=[str(t) for t in CONV_TYPES])
def test_float_to_ap_fixed_rounds_from_all_bits(driver, j):
    """The bridge converts float32 inputs with ap_fixed's constructor: it must equal
    fpq.quantize of the float32 value exactly, ties and near-ties included."""
    exe, _, tmp = driver
    t = CONV_TYPES[j]
    rng = np.random.default_rng(j)
    lo, hi = fpq.finfo(t).min, fpq.finfo(t).max
    # every value and tie of the type (a random 100k of them for the wide ones), and beyond the range
    half = np.arange(round(lo / t.step) * 2 - 8, round(hi / t.step) * 2 + 9, dtype=np.int64)
    if half.size > 100_000:
        half = rng.choice(half, 100_000, replace=False)
    grid = half * (t.step / 2)
    x32 = np.concatenate([grid, rng.uniform(2 * lo - 1, 2 * hi + 1, 20000)]).astype(np.float32)
    # nudge by one float32 ulp either side of every tie: rounding must see the low bits
    x32 = np.concatenate([x32, np.nextafter(x32, np.float32(np.inf)), np.nextafter(x32, np.float32(-np.inf)),
                          np.float32([1e-30, -1e-30, 3e-39, -3e-39, 1e30, -1e30])])
    got = _call(exe, 1000 + j, x32, tmp)
    want = fpq.quantize(x32.astype(np.float64), t)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{t}: x={x32[bad[:5]]} ap_fixed={got[bad[:5]]} numpy={want[bad[:5]]}"
