"""fpq.quantize for Fixed formats against ap_fixed itself (hls4ml's ap_types headers, g++).

tests/cpp/apfixed_oracle.cpp converts a dense grid (every code, every tie, both neighbours of
every tie, values far out of range on both sides) plus raw doubles to ap_[u]fixed<W,I,Q,O>, for
W in 2..12, I in -4..8, signed and unsigned, every quantization mode x every overflow mode, in
the two ways an HLS C simulation converts: from a double (network inputs) and from a wide
exact ap_fixed (a layer output from its accumulator). Every result must equal fpq's numpy
reference (atol=0).

Compile time: each ap_fixed type costs ~25 ms of g++ front end + code generation (measured:
1144 types of one rounding mode take 31 s at -O0, 72 s at -O1 on one core), so all 8008
(W, I, S, Q, O) types take minutes. By default each (S, W, Q, O) is instantiated at two
integer-bit counts chosen so that every (W, I) pair and every (I, Q, O) triple occurs;
FPQ_APFIXED_FULL=1 instantiates all 8008 types.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fpq import Fixed, quantize

QMODES = ["RND", "RND_ZERO", "RND_MIN_INF", "RND_INF", "RND_CONV", "TRN", "TRN_ZERO"]  # kQ order
OMODES = ["SAT", "SAT_ZERO", "SAT_SYM", "WRAP"]  # kO order
WIDTHS = range(2, 13)
INT_BITS = range(-4, 9)
SRC = Fixed(48, 20, True, "TRN", "SAT")  # SRC_T in the C++ file: holds every grid input exactly
CPP = Path(__file__).parent / "cpp" / "apfixed_oracle.cpp"
FULL = os.environ.get("FPQ_APFIXED_FULL", "") not in ("", "0")

pytestmark = pytest.mark.slow


def ap_types_dir() -> Path:
    import hls4ml

    return Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"


def type_list(full: bool) -> list[tuple[int, int, int, int, int]]:
    """(S, W, I, q, o) of every type to instantiate."""
    n_i = len(INT_BITS)
    out = []
    for s in (1, 0):
        for w in WIDTHS:
            for q in range(len(QMODES)):
                for o in range(len(OMODES)):
                    if full:
                        ints = list(INT_BITS)
                    else:
                        # rotate through I: over the 28 (q, o) pairs each W meets all 13 I, and
                        # over the 11 W (two picks each) each (q, o) meets all 13 I
                        t = w + 4 * q + o
                        ints = sorted({INT_BITS[t % n_i], INT_BITS[(t + 6 + s) % n_i]})
                    out += [(s, w, i, q, o) for i in ints]
    return out


def grid_j(signed: bool, w: int, rng: np.random.Generator) -> np.ndarray:
    """Quarter-LSB multiples: all codes +-8 around the range, far-out values, random ones."""
    lo, hi = Fixed(w, w, signed).int_range
    j = [np.arange(4 * (lo - 8), 4 * (hi + 8) + 1)]
    for m in (2 ** w - 1, 2 ** w, 2 ** w + 1, 2 ** (w + 1) + 3, 5 * 2 ** (w - 1) + 1):
        for c in (hi + m, lo - m):
            j.append(4 * c + np.arange(4))
    j.append(rng.integers(-2 ** (w + 4), 2 ** (w + 4), 64))
    return np.concatenate(j).astype(np.int32)


def extras(rng: np.random.Generator) -> np.ndarray:
    fixed = [0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300, 2.0 ** -40, -(2.0 ** -40), 1 / 3, -1 / 3,
             np.pi, -np.pi, 0.1, -0.1, 7.75, -7.75, 255.5, -255.5, 1e6, -1e6, 2.0 ** 40 + 0.5,
             1e300, -1e300, np.nextafter(0.5, 1), np.nextafter(-0.5, -1), 1 - 2.0 ** -53]
    mags = np.exp2(rng.uniform(-24, 14, 256))
    return np.concatenate([fixed, mags * rng.choice([-1.0, 1.0], mags.size)])


def _run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-4000:]}")


@pytest.fixture(scope="session")
def oracle(tmp_path_factory):
    """Build the oracle once per session and run it; returns everything the tests compare."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    d = tmp_path_factory.mktemp("apfixed_oracle")
    types = type_list(FULL)
    (d / "types.inc").write_text(
        "".join(f"T({k}, {s}, {w}, {i}, {q}, {o})\n" for k, (s, w, i, q, o) in enumerate(types)))
    flags = ["g++", "-std=c++17", os.environ.get("FPQ_ORACLE_OPT", "-O1"), "-w", f"-I{ap_types_dir()}", f'-DORACLE_TYPES="{d / "types.inc"}"']
    units = [(["-c", str(CPP), "-o", "main.o"])]
    units += [[f"-DORACLE_Q={q}", "-c", str(CPP), "-o", f"q{q}.o"] for q in range(len(QMODES))]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, len(units)))) as ex:
        list(ex.map(lambda u: _run(flags + u, d), units))
    _run(["g++", "-o", "oracle", "main.o", *[f"q{q}.o" for q in range(len(QMODES))]], d)
    compile_s = time.perf_counter() - t0

    rng = np.random.default_rng(20260101)
    ext = extras(rng)
    grids = {(s, w): grid_j(bool(s), w, rng) if w in WIDTHS else np.zeros(0, np.int32)
             for s in (1, 0) for w in range(1, 17)}
    with open(d / "in.bin", "wb") as f:
        f.write(np.int32(ext.size).tobytes() + ext.astype("<f8").tobytes())
        for s in (1, 0):
            for w in range(1, 17):
                g = grids[s, w]
                f.write(np.int32(g.size).tobytes() + g.astype("<i4").tobytes())
    t0 = time.perf_counter()
    _run([str(d / "oracle"), "in.bin", "out.bin"], d)
    run_s = time.perf_counter() - t0
    codes = np.fromfile(d / "out.bin", dtype="<i2")
    results, pos = [], 0
    for s, w, i, q, o in types:
        n = grids[s, w].size
        x = np.ldexp(grids[s, w].astype(np.float64), i - w - 2)
        c_dbl = codes[pos:pos + n + ext.size]
        c_fix = codes[pos + n + ext.size:pos + 2 * n + ext.size]
        pos += 2 * n + ext.size
        fmt = Fixed(w, i, bool(s), QMODES[q], OMODES[o])
        results.append((fmt, x, c_dbl, c_fix))
    assert pos == codes.size, "oracle output size does not match the type list"
    print(f"\napfixed oracle: {len(types)} types, compile {compile_s:.1f} s, run {run_s:.1f} s, "
          f"{codes.size} conversions")
    return {"results": results, "extras": ext, "n_types": len(types)}


def _codes(fmt: Fixed, x: np.ndarray) -> np.ndarray:
    """fpq's result as ap_fixed codes (value / LSB)."""
    return np.ldexp(quantize(x, fmt), fmt.frac_bits)


def _report(fmt, x, want, got):
    bad = np.flatnonzero(got != want)
    rows = ", ".join(f"x={x[k]!r}: ap_fixed {want[k]} vs fpq {got[k]}" for k in bad[:5])
    return f"{fmt}: {bad.size} mismatches, e.g. {rows}"


def test_type_list_covers_every_pair():
    types = type_list(False)
    assert {(w, i) for _, w, i, _, _ in types} == {(w, i) for w in WIDTHS for i in INT_BITS}
    for s in (0, 1):
        got = {(i, q, o) for s2, _, i, q, o in types if s2 == s}
        assert got == {(i, q, o) for i in INT_BITS for q in range(7) for o in range(4)}
    assert len(type_list(True)) == 2 * len(WIDTHS) * len(INT_BITS) * 7 * 4 == 8008


def test_grid_fits_source_type(oracle):
    for fmt, x, _, _ in oracle["results"]:
        assert np.array_equal(quantize(x, SRC), x), f"grid of {fmt} is not exact in {SRC}"


@pytest.mark.parametrize("q", QMODES)
def test_from_double(oracle, q):
    ext = oracle["extras"]
    bad = []
    for fmt, x, c_dbl, _ in oracle["results"]:
        if fmt.rounding != q:
            continue
        xx = np.concatenate([x, ext])
        got = _codes(fmt, xx)
        if not np.array_equal(got, c_dbl.astype(np.float64)):
            bad.append(_report(fmt, xx, c_dbl, got))
    assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize("q", QMODES)
def test_from_wide_fixed(oracle, q):
    bad = []
    for fmt, x, _, c_fix in oracle["results"]:
        if fmt.rounding != q:
            continue
        got = _codes(fmt, x)
        if not np.array_equal(got, c_fix.astype(np.float64)):
            bad.append(_report(fmt, x, c_fix, got))
    assert not bad, "\n".join(bad[:20])
