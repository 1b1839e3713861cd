"""fpq.quantize for Fixed formats against ap_fixed itself (hls4ml's ap_types headers, g++).

tests/cpp/apfixed_oracle.cpp converts a dense grid (every code and every tie of the type, the
quarter-LSB neighbours of every tie up to 9 bits and near the range ends and zero above, values
far out of range on both sides) plus raw doubles (tiny, huge, +-inf, random) to
ap_[u]fixed<W,I,Q,O> for W in 1..12, I in -4..8, signed and unsigned, every quantization mode x
every overflow mode, in the two ways an HLS C simulation converts: from a double (network
inputs) and from a wide exact ap_fixed (a layer output from its accumulator). Every result must
equal fpq's numpy reference (atol=0).

Compile time decides the design. Each ap_fixed type costs g++ ~25-40 ms at -O0 and about twice
that at -O1 (measured: the 1144 types of one rounding mode take 31 s at -O0 and 72 s at -O1
on one core), so all 8736 (W, I, S, Q, O) types take minutes. ap_fixed's conversion depends on
I only through differences with the source exponent (F2 - F, I - I2 in ap_fixed_base.h), so
converting x to <W, I> is converting x * 2**(I0 - I) to <W, I0>, scaled back. The default run
instantiates every (S, W, Q, O) at one I (rotating so that every (W, I) and every (I, Q, O)
occurs), checks that invariance on types instantiated at two I, and checks the reference at all
13 I through it. FPQ_APFIXED_FULL=1 instantiates all 8736 types (minutes); FPQ_ORACLE_OPT sets
the optimisation flag (default -O0: it compiles twice as fast and the run takes seconds).

Issue 15 added, in the same compile: wide types (fixed<54,8> and ufixed<53,8>, the widest float64
holds, and fixed<32,8>) in every mode, which caught np.mod's rounding of WRAP past 53 bits; raw
inputs one double either side of the ties of every binary point the types use (the neighbour of
-1/2 LSB is -(1/2 - 2**-54) LSB, which `s - floor(s)` made a false tie under RND_MIN_INF / RND_INF);
and the refusals of what float64 or float32 input cannot hold (fixed<56,8>, fixed<64,8>, float32
into fixed<32,8>).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fpq import Fixed, quantize

QMODES = ["RND", "RND_ZERO", "RND_MIN_INF", "RND_INF", "RND_CONV", "TRN", "TRN_ZERO"]  # kQ order
OMODES = ["SAT", "SAT_ZERO", "SAT_SYM", "WRAP"]  # kO order
WIDTHS = range(1, 13)  # 2..12 asked for; 1 bit has its own SAT_SYM corner
INT_BITS = range(-4, 9)
INVARIANCE_WIDTHS = (3, 8, 12)   # signed types of these widths get a second I
FIXED_PATH_WIDTHS = (1, 4, 8, 12)  # types of these widths also convert from a wide ap_fixed
DENSE_MAX_WIDTH = 9  # up to this width every quarter LSB is on the grid
WIDE = ((1, 54, 8), (0, 53, 8), (1, 32, 8))  # (S, W, I): every (Q, O), from double only
GRID_WMAX = 64  # WMAX in the C++ file
SRC = Fixed(48, 20, True, "TRN", "SAT")  # SRC_T in the C++ file: holds every grid input exactly
CPP = Path(__file__).parent / "cpp" / "apfixed_oracle.cpp"
FULL = os.environ.get("FPQ_APFIXED_FULL", "") not in ("", "0")
OPT = os.environ.get("FPQ_ORACLE_OPT", "-O0")


def ap_types_dir() -> Path:
    import hls4ml

    return Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"


def type_list(full: bool) -> list[tuple[int, int, int, int, int, int]]:
    """(S, W, I, q, o, fx) of every type to instantiate, sorted."""
    n_i = len(INT_BITS)
    out = set()
    for s in (1, 0):
        for w in WIDTHS:
            fx = int(full or w in FIXED_PATH_WIDTHS)
            for q in range(len(QMODES)):
                for o in range(len(OMODES)):
                    if full:
                        out |= {(s, w, i, q, o, fx) for i in INT_BITS}
                        continue
                    # one I per (S, W, Q, O), rotating: for each (S, W) the 28 (Q, O) pairs meet
                    # all 13 I, and for each (Q, O) the 2 x 11 (S, W) pairs meet all 13 I
                    t = w + 4 * q + o + 7 * s
                    out.add((s, w, INT_BITS[t % n_i], q, o, fx))
                    if s == 1 and w in INVARIANCE_WIDTHS:
                        out.add((s, w, INT_BITS[(t + 6) % n_i], q, o, fx))
    return sorted(out)


def wide_types() -> list[tuple[int, int, int, int, int, int]]:
    return [(s, w, i, q, o, 0) for s, w, i in WIDE for q in range(len(QMODES)) for o in range(len(OMODES))]


def grid_j(signed: bool, w: int, rng: np.random.Generator) -> np.ndarray:
    """Inputs in quarter LSBs (x = j * LSB / 4): codes, ties, their neighbours, far values."""
    if w > max(WIDTHS):  # wide types: every quarter LSB near zero, random ones (int32 j); the extras
        return np.unique(np.concatenate([np.arange(-256, 257), rng.integers(-2 ** 31, 2 ** 31, 256)])).astype(np.int32)
    lo, hi = Fixed(w, w, signed).int_range
    span = np.arange(4 * (lo - 8), 4 * (hi + 8) + 1)
    if w <= DENSE_MAX_WIDTH:
        j = [span]
    else:  # every code and tie; quarter neighbours near the ends, zero and at random codes
        near = np.concatenate([np.arange(c - 64, c + 65) for c in (lo, 0, hi)] + [rng.integers(lo, hi, 512)])
        j = [span[span % 2 == 0], (4 * near[:, None] + np.array([1, 3])).ravel()]
    for m in (2 ** w - 1, 2 ** w, 2 ** w + 1, 2 ** (w + 1) + 3, 5 * 2 ** (w - 1) + 1):
        for c in (hi + m, lo - m):
            j.append(4 * c + np.arange(4))
    j.append(rng.integers(-2 ** (w + 4), 2 ** (w + 4), 64))
    return np.unique(np.concatenate(j)).astype(np.int32)


def extras(rng: np.random.Generator) -> np.ndarray:
    big = np.finfo(np.float64).max
    fixed = [0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300, 2.0 ** -40, -(2.0 ** -40), 1 / 3, -1 / 3,
             np.pi, -np.pi, 0.1, -0.1, 7.75, -7.75, 255.5, -255.5, 1e6, -1e6, 2.0 ** 40 + 0.5,
             1e300, -1e300, big, -big, np.inf, -np.inf, np.nextafter(0.5, 1),
             np.nextafter(-0.5, -1), 1 - 2.0 ** -53]
    mags = np.exp2(rng.uniform(-24, 14, 256))
    # one double either side of the ties 1/2 and 3/2 LSB of every binary point in use (F = W - I)
    frac_bits = {w - i for w in WIDTHS for i in INT_BITS} | {w - i for _, w, i in WIDE}
    ties = np.ldexp(np.array([0.5, 1.5])[:, None], -np.array(sorted(frac_bits))[None, :]).ravel()
    near = np.concatenate([np.nextafter(ties, 0), np.nextafter(ties, np.inf)])
    # the wide types' range (+-128, 256 unsigned) with every bit of a double, and 200 (> fixed<32,8>'s max)
    wide = np.concatenate([rng.uniform(-260, 260, 128), np.nextafter([128.0, 256.0], 0), [200.0]])
    return np.concatenate([fixed, mags * rng.choice([-1.0, 1.0], mags.size), near, -near, wide, -wide])


def _run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-4000:]}")


def _build(d: Path, types) -> float:
    (d / "types.inc").write_text("".join(f"T({k}, {', '.join(map(str, t))})\n" for k, t in enumerate(types)))
    flags = ["g++", "-std=c++17", OPT, "-w", f"-I{ap_types_dir()}", f'-DORACLE_TYPES="{d / "types.inc"}"']
    units = [[f"-DORACLE_Q={q}", "-c", str(CPP), "-o", f"q{q}.o"] for q in range(len(QMODES))]
    units.append(["-c", str(CPP), "-o", "main.o"])
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, len(units)))) as ex:
        list(ex.map(lambda u: _run(flags + u, d), units))
    _run(["g++", "-o", "oracle", "main.o", *[f"q{q}.o" for q in range(len(QMODES))]], d)
    return time.perf_counter() - t0


@pytest.fixture(scope="session")
def oracle(tmp_path_factory):
    """Build the oracle once per session and run it; returns what the tests compare."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    d = tmp_path_factory.mktemp("apfixed_oracle")
    types = type_list(FULL) + wide_types()
    compile_s = _build(d, types)

    rng = np.random.default_rng(20260101)
    ext = extras(rng)
    wide_w = {(s, w) for s, w, _ in WIDE}
    grids = {(s, w): grid_j(bool(s), w, rng) if w in WIDTHS or (s, w) in wide_w else np.zeros(0, np.int32)
             for s in (1, 0) for w in range(1, GRID_WMAX + 1)}
    with open(d / "in.bin", "wb") as f:
        f.write(np.int32(ext.size).tobytes() + ext.astype("<f8").tobytes())
        for s in (1, 0):
            for w in range(1, GRID_WMAX + 1):
                f.write(np.int32(grids[s, w].size).tobytes() + grids[s, w].astype("<i4").tobytes())
    t0 = time.perf_counter()
    _run([str(d / "oracle"), "in.bin", "out.bin"], d)
    run_s = time.perf_counter() - t0
    codes = np.fromfile(d / "out.bin", dtype="<i8")
    results, pos = [], 0
    for s, w, i, q, o, fx in types:
        j = grids[s, w]
        n = j.size
        c_dbl = codes[pos:pos + n + ext.size].astype(np.float64)
        pos += n + ext.size
        c_fix = codes[pos:pos + n].astype(np.float64) if fx else None
        pos += n if fx else 0
        results.append((Fixed(w, i, bool(s), QMODES[q], OMODES[o]), j, c_dbl, c_fix))
    assert pos == codes.size, "oracle output size does not match the type list"
    print(f"\napfixed oracle: {len(types)} types, compile {compile_s:.1f} s ({OPT}), "
          f"run {run_s:.1f} s, {codes.size} conversions")
    return {"results": results, "extras": ext}


def _grid_x(fmt: Fixed, j: np.ndarray) -> np.ndarray:
    return np.ldexp(j.astype(np.float64), -fmt.frac_bits - 2)


def _codes(fmt: Fixed, x: np.ndarray) -> np.ndarray:
    """fpq's result as ap_fixed codes (value / LSB)."""
    return np.ldexp(quantize(x, fmt), fmt.frac_bits)


def _mismatch(fmt, x, want, got) -> str | None:
    if np.array_equal(want, got):
        return None
    bad = np.flatnonzero(want != got)
    rows = ", ".join(f"x={x[k]!r}: ap_fixed {want[k]:g} vs fpq {got[k]:g}" for k in bad[:4])
    return f"{fmt}: {bad.size} mismatches, e.g. {rows}"


def _fail(bad):
    bad = [b for b in bad if b]
    assert not bad, f"{len(bad)} types disagree:\n" + "\n".join(bad[:20])


def test_type_list_covers_every_combination():
    types = type_list(False)
    assert {(w, i) for _, w, i, *_ in types} == {(w, i) for w in WIDTHS for i in INT_BITS}
    assert {(i, q, o) for _, _, i, q, o, _ in types} == {
        (i, q, o) for i in INT_BITS for q in range(7) for o in range(4)}
    assert {(s, w, q, o) for s, w, _, q, o, _ in types} == {
        (s, w, q, o) for s in (0, 1) for w in WIDTHS for q in range(7) for o in range(4)}
    assert {(s, q, o) for s, _, _, q, o, fx in types if fx} == {
        (s, q, o) for s in (0, 1) for q in range(7) for o in range(4)}
    assert len(type_list(True)) == 2 * len(WIDTHS) * len(INT_BITS) * 7 * 4 == 8736


@pytest.mark.slow
def test_grid_fits_source_type(oracle):
    for fmt, j, _, c_fix in oracle["results"]:
        if c_fix is not None:
            x = _grid_x(fmt, j)
            assert np.array_equal(quantize(x, SRC), x), f"grid of {fmt} is not exact in {SRC}"


@pytest.mark.slow
@pytest.mark.parametrize("q", QMODES)
def test_from_double(oracle, q):
    ext = oracle["extras"]
    bad = []
    for fmt, j, c_dbl, _ in oracle["results"]:
        if fmt.rounding == q:
            x = np.concatenate([_grid_x(fmt, j), ext])
            bad.append(_mismatch(fmt, x, c_dbl, _codes(fmt, x)))
    _fail(bad)


@pytest.mark.slow
@pytest.mark.parametrize("q", QMODES)
def test_from_wide_fixed(oracle, q):
    bad = []
    for fmt, j, _, c_fix in oracle["results"]:
        if fmt.rounding == q and c_fix is not None:
            x = _grid_x(fmt, j)
            bad.append(_mismatch(fmt, x, c_fix, _codes(fmt, x)))
    _fail(bad)


@pytest.mark.slow
def test_header_is_scale_invariant(oracle):
    """Same (S, W, Q, O) at two I: the codes on the j grid must be identical (both paths)."""
    by_kind = defaultdict(list)
    for fmt, j, c_dbl, c_fix in oracle["results"]:
        by_kind[fmt.width, fmt.signed, fmt.rounding, fmt.overflow].append((fmt, j.size, c_dbl, c_fix))
    pairs = 0
    for group in by_kind.values():
        for (f0, n, d0, x0), (f1, _, d1, x1) in zip(group, group[1:]):
            pairs += 1
            assert np.array_equal(d0[:n], d1[:n]), f"{f0} and {f1} differ on the scaled grid"
            if x0 is not None:
                assert np.array_equal(x0, x1), f"{f0} and {f1} differ from a wide ap_fixed"
    assert pairs >= (len(INVARIANCE_WIDTHS) * 28 if not FULL else 8736 - 672)


@pytest.mark.slow
def test_every_int_bits_through_scaling(oracle):
    """fpq at every I in -4..8 against the instantiated <W, I0> on the same j grid."""
    bad = []
    for fmt0, j, c_dbl, c_fix in oracle["results"]:
        if fmt0.width not in WIDTHS:
            continue  # the wide types are instantiated at one I only, for their own points
        if FULL and fmt0.int_bits != INT_BITS[0]:
            continue  # every type is instantiated: test_from_double covers it directly
        for i in INT_BITS:
            if i == fmt0.int_bits:
                continue
            fmt = Fixed(fmt0.width, i, fmt0.signed, fmt0.rounding, fmt0.overflow)
            x = _grid_x(fmt, j)
            bad.append(_mismatch(fmt, x, c_dbl[:j.size], _codes(fmt, x)))
    _fail(bad)


@pytest.mark.slow
def test_wide_and_near_tie_points_were_checked(oracle):
    """The issue-15 points are in the comparison above for every (Q, O): the wide types came back,
    and ap_fixed's answers at them are what the issue reports (a sanity check of the oracle)."""
    ext = oracle["extras"]
    seen = set()
    for fmt, j, c_dbl, _ in oracle["results"]:
        if fmt.width in (54, 53, 32):
            seen.add((fmt.width, fmt.rounding, fmt.overflow))
            dbl = dict(zip(ext.tolist(), c_dbl[j.size:].tolist()))
            if fmt.width == 32 and fmt.overflow == "SAT":
                assert dbl[200.0] == 2 ** 31 - 1  # saturates to max = 128 - 2**-24, not 128
        if (fmt.width, fmt.int_bits) == (2, 1) and fmt.signed and fmt.rounding in ("RND_MIN_INF", "RND_INF"):
            dbl = dict(zip(ext.tolist(), c_dbl[j.size:].tolist()))
            assert dbl[-float.fromhex("0x1.fffffffffffffp-3")] == 0  # -(1/2 - 2**-54) LSB -> 0
    assert seen == {(w, q, o) for w in (54, 53, 32) for q in QMODES for o in OMODES}
    assert -float.fromhex("0x1.fffffffffffffp-3") in set(ext.tolist())


@pytest.mark.parametrize("q", QMODES)
def test_what_float64_or_float32_cannot_hold_is_refused(q):
    """fixed<56,8> and fixed<64,8> have values float64 cannot hold (np.mod's WRAP was off by 6 and
    1638 LSB at -0.1); float32 input cannot hold fixed<32,8>'s (200 came back as 128 > max)."""
    for o in OMODES:
        for w in (56, 64):
            with pytest.raises(ValueError, match=f"fixed<{w},8,{q},{o}>: not every value of this format is a float64"):
                quantize(-0.1, Fixed(w, 8, True, q, o))
        with pytest.raises(ValueError, match="float32 input cannot return every value"):
            quantize(np.float32(200), Fixed(32, 8, True, q, o))
