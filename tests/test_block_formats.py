"""Block-scaled formats (OCP MX v1.0, NVFP4, block<ELEM,SCALE,K>): parsing, facts, and the numpy
reference (fpq.numerics.blocks) against independent oracles.

Oracles: ml_dtypes (the element grids, E8M0, and every element cast: RNE in the element format)
with the spec's scale rule written here with np.log2 on the float32 input (the reference uses
frexp), and torchao 0.18's pure-torch MX / NVFP4 path when it is installed (the ``oracles`` extra;
those tests skip without it). Where torchao disagrees with the spec the test says so and leaves
those blocks out: blocks of scale code 0 (torchao divides by 2**-126, not E8M0's 2**-127), blocks
holding inf (torchao: a finite scale and saturated elements; fpq: the spec's NaN scale), NVFP4
elements (torchao multiplies by a float32 reciprocal of s_b * s_t, fpq divides exactly).
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import fpq
from fpq.formats import BlockFormat, E8M0, Fixed, Int, Minifloat, decode, encode, finfo, parse_format, values
from fpq.numerics.blocks import block_quantize, quantize_block, tensor_scale_of

MX = {"mxfp8_e4m3": (ml_dtypes.float8_e4m3fn, 8), "mxfp8_e5m2": (ml_dtypes.float8_e5m2, 15),
      "mxfp6_e3m2": (ml_dtypes.float6_e3m2fn, 4), "mxfp6_e2m3": (ml_dtypes.float6_e2m3fn, 2),
      "mxfp4": (ml_dtypes.float4_e2m1fn, 2)}
ALL = [*MX, "mxint8", "nvfp4", "block<e2m1,ue5m3,16>", "block<int4,e8m0,32>"]


# ---------------------------------------------------------------- formats

@pytest.mark.parametrize("name", ALL)
def test_names_parse_roundtrip(name):
    f = parse_format(name)
    assert isinstance(f, BlockFormat) and parse_format(str(f)) == f
    assert f.k == (16 if "16" in str(f) else 32) and f.axis == -1


def test_named_formats_are_the_spec():
    for name, (_, emax) in MX.items():
        f = parse_format(name)
        assert isinstance(f.scale, E8M0) and f.k == 32 and f.emax_elem == emax and f.bits_per_value == f.elem.width + 0.25
    i8 = parse_format("mxint8")
    # int8 x 2**-6 in the symmetric range -127..127 (the OCP reference library, microxscaling, clamps
    # to +-max; the code -128 is never produced)
    assert i8.elem == Fixed(8, 2, True, "RND_CONV", "SAT_SYM") and i8.emax_elem == 0
    assert finfo(i8).max == 127 / 64 and finfo(i8).min == -2  # the element format's codes; values below
    assert fpq.quantize(np.array([-(2.0 ** 30 - 1)] + [0] * 31), i8)[0] == -2.0 ** 29 * 127 / 64  # not -2**30
    nv = parse_format("nvfp4")
    assert nv.elem == Minifloat(2, 1) and nv.scale == Minifloat(4, 3, signed=False) and nv.k == 16
    assert nv.scale.max_value == 448 and not nv.po2_scale
    g = parse_format(" Block< e2m1 , UE5M3 , 16 , axis=0 , rounding=floor > ")
    assert g == BlockFormat(Minifloat(2, 1), Minifloat(5, 3, signed=False), 16, 0) and str(g) == "block<e2m1,ue5m3,16,axis=0>"
    r = parse_format("block<int4,e8m0,32,rounding=rceil>")
    assert r.elem == Int(4) and r.scale_rounding == "rceil" and r.emax_elem == 2
    assert parse_format("e8m0") == parse_format("float8_e8m0fnu") == E8M0()
    # the minifloats of that split keep their own spellings (canonical strings round-trip)
    assert str(Minifloat(8, 0)) == "e8m0_none" and parse_format("e8m0_none") == Minifloat(8, 0)
    assert parse_format("ue8m0") == Minifloat(8, 0, signed=False)


@pytest.mark.parametrize("text, why", [
    ("block<e2m1,ue5m0,32>", "must hold every float32 exponent, 2**-127 .. 2**127; ue5m0 holds 2**-14 .. 2**16"),
    ("block<e2m1,ue3m0,32>", "power-of-two block scale is absolute"),
    ("block<e2m1,ue9m0,32>", "a power-of-two block scale is OCP's E8M0, spelled e8m0"),
    ("block<e2m1,e8m0,32,axis=-99999>", "block axis -99999 is out of range (-64 .. 63)"),
    ("block<e2m1,e4m3,16>", "a block scale is positive: use the unsigned ue4m3"),
    ("block<e2m1,int8,16>", "a block scale must be e8m0 or an unsigned minifloat"),
    ("block<int24,ue5m10,16>", "more than float64's 53"),
    ("block<e2m1,ue8m3,16>", "must lie within 2**-100 .. 2**100"),
    ("block<binary,e8m0,32>", "a block element must be a minifloat, an integer or a fixed point"),
    ("block<e5m2_nosat,e8m0,32>", "block elements saturate"),
    ("block<fixed<8,2,TRN>,e8m0,32>", "round to nearest even and saturate"),
    ("block<e2m1,e8m0,0>", "block size must be >= 1"),
    ("block<e2m1,e8m0,x>", "block size must be a positive integer"),
    ("block<e2m1,e8m0>", "got 2 parameter(s)"),
    ("block<e2m1,e8m0,32,foo=1>", "unknown or repeated block option"),
    ("block<e2m1,e8m0,32,rounding=up>", "unknown scale rounding 'up'; allowed: floor, ceil, even, rceil"),
    ("block<e2m1,ue4m3,16,rounding=ceil>", "applies to e8m0 scales"),
    ("block<mxfp4,e8m0,32>", "block formats do not nest"),
    ("block<e2m1,e8m0,32", "malformed block format"),
])
def test_bad_block_formats_refused_at_parse(text, why):
    with pytest.raises(ValueError, match="invalid format") as e:
        parse_format(text)
    assert why in str(e.value)


def test_e8m0_every_code_as_ml_dtypes():
    codes = np.arange(256)
    ref = codes.astype(np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float64)
    got = decode(codes, "e8m0")
    assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.array_equal(got[:255], ref[:255])
    assert np.array_equal(encode(got[:255], "e8m0"), codes[:255]) and int(encode(np.nan, "e8m0")) == 255
    fi = finfo("e8m0")
    assert (fi.max, fi.min, fi.n_values, fi.has_nan, fi.has_inf) == (2.0 ** 127, 2.0 ** -127, 255, True, False)
    with pytest.raises(ValueError, match="e8m0 is a block scale format"):
        fpq.quantize(np.ones(3), "e8m0")


@pytest.mark.parametrize("name", MX)
def test_element_grids_and_finfo_as_ml_dtypes(name):
    dt = MX[name][0]
    bits = parse_format(name).elem.width
    grid = np.arange(1 << bits).astype(np.uint8).view(dt).astype(np.float64)
    assert np.array_equal(values(name), np.unique(grid[np.isfinite(grid)]))
    fi = finfo(name)
    assert fi.max == float(ml_dtypes.finfo(dt).max) and fi.bits == bits
    assert fi.smallest_subnormal == float(ml_dtypes.finfo(dt).smallest_subnormal)


def test_cli_info_and_formats_table():
    from fpq.cli.formats import formats_table
    from fpq.cli.info import info_text
    t = info_text("nvfp4")
    assert "16 e2m1 elements along the last axis share one ue4m3 scale" in t and "4.4375 bits per value" in t
    assert "every code (16):" in t and "exact carrier   fixed<5,4,RND_CONV,SAT>" in t
    assert "floor(log2(amax)) - emax" in info_text("mxfp8_e4m3")
    assert "every code (256):" in info_text("e8m0")
    table = formats_table()
    for alias in ("mxfp4", "mxint8", "nvfp4", "float8_e8m0fnu"):
        assert alias in table


# ---------------------------------------------------------------- MX reference vs oracle

def mx_oracle(x: np.ndarray, name: str, mode: str = "floor") -> tuple[np.ndarray, np.ndarray]:
    """(values, scale codes) of float32 x (..., n*32) by the spec, written independently: the
    exponent from np.log2, elements cast by ml_dtypes (RNE), saturation by clipping first."""
    f = parse_format(name)
    b = x.astype(np.float64).reshape(x.shape[:-1] + (-1, 32))
    amax = np.abs(b).max(-1)
    with np.errstate(divide="ignore"):
        lg = np.log2(amax)
    emax_val = f.elem_max
    e = {"floor": np.floor(lg) - f.emax_elem, "ceil": np.ceil(lg) - f.emax_elem,
         "rceil": np.ceil(lg - np.log2(emax_val))}[mode]
    e = np.clip(np.where(amax == 0, -127, e), -127, 127).astype(np.int64)
    v = b * np.exp2(-e.astype(np.float64))[..., None]
    v = np.clip(v, -emax_val, emax_val)
    if name == "mxint8":
        el = np.rint(v * 64) / 64
    else:
        el = v.astype(MX[name][0]).astype(np.float64)
    return (el * np.exp2(e.astype(np.float64))[..., None]).reshape(x.shape), e + 127


def random_blocks(rng, n_blocks: int, k: int, lo: int = -135, hi: int = 120) -> np.ndarray:
    """float32 blocks spanning many binades: each block has its own top exponent, its elements
    spread 24 binades below it (subnormal elements, zero elements, sign of zero)."""
    top = rng.integers(lo, hi, size=(n_blocks, 1))
    ex = top - rng.integers(0, 24, size=(n_blocks, k))
    x = rng.uniform(1, 2, size=(n_blocks, k)) * np.exp2(ex) * rng.choice([-1.0, 1.0], size=(n_blocks, k))
    x[rng.random((n_blocks, k)) < 0.02] = 0.0
    return x.astype(np.float32)


@pytest.mark.parametrize("name", [*MX, "mxint8"])
def test_mx_random_blocks_match_oracle(name):
    x = random_blocks(np.random.default_rng(hash(name) % 2 ** 32), 100_000, 32)
    q = block_quantize(x, name)
    ref, codes = mx_oracle(x, name)
    assert np.array_equal(q.scale_codes[:, 0], codes[:, 0])
    # signs of zero: ml_dtypes keeps an input -0.0, fpq's minifloat quantizer (fpq.quantize) gives
    # +0.0 for it; a negative that rounds to zero is -0.0 in both
    assert np.array_equal(q.values, ref) and np.array_equal(np.signbit(q.values)[x != 0], np.signbit(ref)[x != 0])
    assert np.array_equal(q.values, q.elements * np.repeat(q.scales, 32, axis=1))


@pytest.mark.parametrize("mode", ["ceil", "rceil"])
def test_mx_scale_modes_match_oracle(mode):
    x = random_blocks(np.random.default_rng(7), 20_000, 32)
    for name in ("mxfp4", "mxfp6_e2m3", "mxfp8_e4m3"):
        f = parse_format(name)
        f = BlockFormat(f.elem, f.scale, 32, scale_rounding=mode)
        ref, codes = mx_oracle(x, name, mode)
        q = block_quantize(x, f)
        assert np.array_equal(q.values, ref) and np.array_equal(q.scale_codes[:, 0], codes[:, 0])


def test_mx_scale_modes_definitions():
    """ceil: amax <= 2**emax X; rceil: the smallest X at which no element saturates; even: floor
    of amax rounded half-up to the element's precision (checked on the edges of each)."""
    f = {m: BlockFormat(Minifloat(2, 1), E8M0(), 4, scale_rounding=m) for m in ("floor", "ceil", "even", "rceil")}
    code = lambda m, v: int(block_quantize(np.array([v, 0, 0, 0]), f[m]).scale_codes[0])  # noqa: E731
    # amax = 4 (a power of two): floor = ceil = 4 / 2**2 = 2**0; rceil: 6 * 2**-1 = 3 < 4 -> 2**0
    assert [code(m, 4.0) for m in f] == [127, 127, 127, 127]
    # amax = 5: floor 2**0, ceil 2**1, even (5 = 1.25 * 4 rounds at 2 bits to 1.5 * 4: no carry) 2**0,
    # rceil: 6 * 2**0 = 6 >= 5 -> 2**0
    assert [code(m, 5.0) for m in f] == [127, 128, 127, 127]
    # amax = 7: rceil 2**1 (6 < 7 <= 12); even: 1.75 * 4 rounds half-up to 2 * 4 -> 2**1
    assert [code(m, 7.0) for m in f] == [127, 128, 128, 128]
    assert code("even", 6.999) == 127 and code("even", 7 * 2.0 ** -3) == 127 - 2  # 6.999: below the tie 7
    assert code("even", 5.999) == 127  # 1.4997 * 4 < 1.75 * 4: no carry
    x = np.array([7.0, -1.0, 0.25, 3.0])
    assert np.array_equal(quantize_block(x, f["rceil"]), [8.0, -1.0, 0.0, 3.0])  # X = 2: 3.5 ties to 4, no saturation
    assert np.array_equal(quantize_block(x, f["floor"]), [6.0, -1.0, 0.0, 3.0])       # X = 1: 7 saturates to 6


@pytest.mark.parametrize("name", [*MX, "mxint8"])
def test_every_element_code_at_every_scale_edge(name):
    """Blocks made of every element value (the largest first, so X is the intended 2**e) come
    back unchanged, with the intended scale code, at scale exponents from -127 to 127."""
    f = parse_format(name)
    vals = values(f)
    vals = vals[vals >= -f.elem_max]  # mxint8: -2 is a code of fixed<8,2> but SAT_SYM never produces it
    vals = np.concatenate([vals, -vals])
    vals = np.concatenate([vals, np.zeros(-len(vals) % 31)]).reshape(-1, 31)
    vals = np.concatenate([np.full((len(vals), 1), f.elem_max), vals], axis=1)  # each block's amax: the max
    for e in (-127, -126, -100, -1, 0, 1, 50, 127 - f.emax_elem):
        x = vals * 2.0 ** e
        q = block_quantize(x, f)
        assert np.array_equal(q.values, x) and np.array_equal(q.elements, vals)
        assert np.all(q.scale_codes == e + 127)


def test_mx_scale_edges():
    f = parse_format("mxfp4")
    z = np.zeros(32)
    z[3] = -0.0
    q = block_quantize(z, f)  # a zero block: the spec leaves X free; fpq takes the smallest, code 0
    assert int(q.scale_codes[0]) == 0 and np.array_equal(q.values, z)
    x = np.zeros(32)
    x[0] = 2.0 ** 10            # amax a power of two: X = 2**(10 - 2)
    x[1] = 2.0 ** 10 * 1.99    # below it: 1.99 * 2**10 / 2**8 = 7.96 saturates to 6
    x[2] = 2.0 ** 8 * 0.25      # an element of 0.25 rounds half to even: 0
    x[3] = 2.0 ** 8 * 0.75      # 0.75 -> 1.0 (ties to even: 1.0 has the even mantissa)
    x[4] = 2.0 ** 8 * 0.2500001  # just above the tie: the smallest subnormal element 0.5
    q = block_quantize(x.reshape(1, 32), f)
    assert int(q.scale_codes[0, 0]) == 127 + 8
    assert q.values[0, :5].tolist() == [2.0 ** 10, 6 * 2.0 ** 8, 0.0, 2.0 ** 8, 0.5 * 2 ** 8]
    tiny = np.zeros(32)
    tiny[:4] = 2.0 ** -140, 2.0 ** -128, 2.0 ** -129, 1.5 * 2.0 ** -129  # X clamps to 2**-127: elements
    q = block_quantize(tiny, f)                                           # 0, 0.5, 0.25 -> 0 (tie), 0.375 -> 0.5
    assert int(q.scale_codes[0]) == 0 and q.values[:4].tolist() == [0.0, 2.0 ** -128, 0.0, 2.0 ** -128]
    huge = np.full(32, 2.0 ** 300)  # float64 beyond E8M0: X clamps to 2**127, elements saturate
    q = block_quantize(huge, f)
    assert int(q.scale_codes[0]) == 254 and np.all(q.values == 6 * 2.0 ** 127)


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "nvfp4", "mxint8"])
def test_nan_and_inf_make_their_block_nan(name):
    f = parse_format(name)
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    clean = block_quantize(x, f).values
    x[0, 5], x[2, 40] = np.nan, -np.inf
    q = block_quantize(x, f)
    k = f.k
    nan_blocks = np.zeros(q.values.shape, bool)
    nan_blocks[0, :k] = nan_blocks[2, 40 // k * k:40 // k * k + k] = True
    assert np.array_equal(np.isnan(q.values), nan_blocks)
    nan_code = 255 if f.po2_scale else 127  # E8M0 0xFF; ue4m3's NaN (0x7F, the sign bit unused)
    assert int(q.scale_codes[0, 0]) == nan_code and int(q.scale_codes[2, 40 // k]) == nan_code
    if f.po2_scale:  # the other blocks are untouched (nvfp4's tensor scale uses the finite values)
        assert np.array_equal(q.values[~nan_blocks], clean[~nan_blocks])


def test_padding_and_axis():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 40)).astype(np.float32)
    padded = np.concatenate([x, np.zeros((5, 24), np.float32)], axis=1)
    for name in ("mxfp4", "nvfp4"):
        f = parse_format(name)
        q, qp = block_quantize(x, f), block_quantize(padded, f)
        assert np.array_equal(q.values, qp.values[:, :40]) and np.array_equal(q.scale_codes, qp.scale_codes[:, :q.scale_codes.shape[1]])
        f0 = BlockFormat(f.elem, f.scale, f.k, axis=0)
        q0 = block_quantize(x.T.copy(), f0)
        assert np.array_equal(q0.values, q.values.T) and np.array_equal(q0.scales, q.scales.T)
    with pytest.raises(ValueError, match="block axis 2 is out of range for an input of shape"):
        block_quantize(x, "block<e2m1,e8m0,32,axis=2>")
    with pytest.raises(ValueError, match="needs at least one axis"):
        block_quantize(np.float32(1.0), "mxfp4")
    with pytest.raises(ValueError, match="float16, float32 or float64 input"):
        block_quantize(np.ones(4, np.int32), "mxfp4")
    with pytest.raises(ValueError, match="computes its own block scales"):
        fpq.quantize(x, "mxfp4", 0.5)
    assert np.array_equal(fpq.quantize(x, "mxfp4"), q.values if False else block_quantize(x, "mxfp4").values)


# ---------------------------------------------------------------- NVFP4 / tensor-scaled

def nv_oracle(x: np.ndarray, st: float, sdt=ml_dtypes.float8_e4m3fn, smax=448.0, tiny=2.0 ** -6) -> np.ndarray:
    """Two-level NVFP4 by its definition, with ml_dtypes casts: block scale = e4m3 cast of
    clamp(amax / (6 s_t), tiny, 448); elements = e2m1 cast of clamp(v / (s_b s_t), -6, 6)."""
    b = x.astype(np.float64).reshape(x.shape[:-1] + (-1, 16))
    d = np.clip(np.abs(b).max(-1) / (6.0 * st), tiny, smax)
    sb = d.astype(sdt).astype(np.float64)
    S = sb * st
    el = np.clip(b / S[..., None], -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(np.float64)
    return (el * S[..., None]).reshape(x.shape)


def test_nvfp4_random_blocks_match_oracle():
    rng = np.random.default_rng(11)
    x = random_blocks(rng, 100_000, 16, -30, 30)
    q = block_quantize(x, "nvfp4")
    st = float(np.float32(np.float32(np.abs(x).max()) / np.float32(2688.0)))
    assert q.tensor_scale == st == float(tensor_scale_of(x, "nvfp4"))
    assert np.array_equal(q.values, nv_oracle(x, st))
    assert np.nanmax(q.scales) == 448.0  # the block holding the tensor's amax uses the full scale range
    # a static tensor scale (weights) and the single-level case s_t = 1
    for st in (1.0, 2.0 ** -10, float(np.float32(0.3))):
        assert np.array_equal(block_quantize(x, "nvfp4", st).values, nv_oracle(x, st))
    with pytest.raises(ValueError, match="positive finite float32"):
        block_quantize(x, "nvfp4", 0.1)  # not a float32 number
    with pytest.raises(ValueError, match="takes no tensor scale"):
        block_quantize(x, "mxfp4", 1.0)


def test_tensor_scaled_general_and_edges():
    rng = np.random.default_rng(5)
    x = random_blocks(rng, 20_000, 16, -20, 20)
    st = float(tensor_scale_of(x, "block<e2m1,ue5m3,16>"))
    # ue5m3 has no ml_dtypes type: its cast is fpq's own minifloat quantizer (tested against
    # ml_dtypes in test_numerics_mldtypes); the block rule is the oracle's
    ue5m3 = Minifloat(5, 3, signed=False)
    b = x.astype(np.float64).reshape(-1, 1250, 16)
    d = np.clip(np.abs(b).max(-1) / (6.0 * st), ue5m3.min_normal, ue5m3.max_value)
    sb = fpq.quantize(d, ue5m3)
    el = np.clip(b / (sb * st)[..., None], -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(np.float64)
    assert np.array_equal(quantize_block(x.reshape(-1, 1250 * 16), "block<e2m1,ue5m3,16>"),
                          (el * (sb * st)[..., None]).reshape(-1, 1250 * 16))
    z = block_quantize(np.zeros((2, 32)), "nvfp4")  # all zero: s_t = 1, scales tiny (2**-6), values 0
    assert z.tensor_scale == 1.0 and np.all(z.scales == 2.0 ** -6) and np.all(z.values == 0)
    assert block_quantize(np.full(16, 1e-44), "nvfp4").tensor_scale == 2.0 ** -149  # s_t underflows
    with pytest.raises(ValueError, match="beyond float32"):
        block_quantize(np.full(16, 1e300), "nvfp4")


# ---------------------------------------------------------------- torchao (optional oracle)

@pytest.fixture(scope="module")
def torchao_mx():
    pytest.importorskip("torch")
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor",
                             reason="torchao (the oracles extra: pip install 'fpq[oracles]') is not installed")
    return mx


@pytest.mark.parametrize("mode", ["floor", "ceil", "even", "rceil"])
def test_mx_vs_torchao(torchao_mx, mode):
    import torch
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
    dts = {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2, "mxfp6_e3m2": DTYPE_FP6_E3M2,
           "mxfp6_e2m3": DTYPE_FP6_E2M3, "mxfp4": torch.float4_e2m1fn_x2}
    rng = np.random.default_rng(21)
    x = random_blocks(rng, 20_000, 32, -110, 120)
    x[5, 3] = np.nan
    for name, dt in dts.items():
        f = parse_format(name)
        f = BlockFormat(f.elem, f.scale, 32, scale_rounding=mode)
        t = torchao_mx.MXTensor.to_mx(torch.from_numpy(x), dt, 32, torchao_mx.ScaleCalculationMode(mode))
        ref = t.dequantize(torch.float32).numpy().astype(np.float64)
        ref_codes = t.scale.view(torch.uint8).numpy().reshape(-1, 1).astype(np.int64)
        q = block_quantize(x, f)
        # torchao disagrees with the spec on scale code 0 (it divides by 2**-126, the float32 min
        # normal, not 2**-127): those blocks are left out; here there are few
        keep = np.repeat(q.scale_codes[:, :1] != 0, 32, axis=1)
        assert keep.mean() > 0.99
        assert np.array_equal(q.scale_codes[q.scale_codes != 0], ref_codes[q.scale_codes != 0]), name
        assert np.array_equal(q.values[keep], ref[keep], equal_nan=True), name


def test_rceil_corner_vs_torchao(torchao_mx):
    """rceil is the smallest e8m0 scale at which no element saturates (elem_max * X >= amax). torchao
    0.18 gives one code less for some block maxima one float32 ulp above elem_max * 2**e (its largest
    element then saturates); fpq follows the definition, in the reference and in HLS (fpq_block.h)."""
    import torch
    f = parse_format("mxfp4")
    f = BlockFormat(f.elem, f.scale, 32, scale_rounding="rceil")
    amax = np.array([np.nextafter(np.float32(6.0), np.float32(9.0)) * np.float32(2.0 ** j) for j in range(-5, 6)])
    x = np.zeros((len(amax), 32), dtype=np.float32)
    x[:, 0], x[:, 1] = amax, 1e-3
    t = torchao_mx.MXTensor.to_mx(torch.from_numpy(x), torch.float4_e2m1fn_x2, 32,
                                  torchao_mx.ScaleCalculationMode("rceil"))
    theirs = t.scale.view(torch.uint8).numpy().reshape(-1).astype(np.int64)
    ours = block_quantize(x.astype(np.float64), f).scale_codes[:, 0]
    e = np.arange(-5, 6)                          # amax = 6 * 2**e * (1 + 2**-23)
    assert np.array_equal(ours, e + 1 + 127)       # 6 * 2**e < amax: the next scale
    low = theirs != ours
    assert low.any() and np.array_equal(theirs[low], ours[low] - 1), (theirs, ours)   # measured: 3 of 11


def test_nvfp4_vs_torchao(torchao_mx):
    import torch
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, unpack_uint4
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize
    x = random_blocks(np.random.default_rng(4), 20_000, 16, -10, 10)
    for st in (None, float(tensor_scale_of(x, "nvfp4"))):
        sc, data = nvfp4_quantize(torch.from_numpy(x), 16, None if st is None else torch.tensor(st))
        el_ref = f4_unpacked_to_f32(unpack_uint4(data)).numpy().reshape(x.shape).astype(np.float64)
        q = block_quantize(x, "nvfp4", 1.0 if st is None else st)
        # block scales: both round amax / (6 s_t) to e4m3, clamped to [2**-6, 448]; float32
        # vs float64 arithmetic before that rounding may differ only on an e4m3 tie, which random
        # float32 blocks do not hit
        assert np.array_equal(q.scales.reshape(-1), sc.to(torch.float32).numpy().astype(np.float64).reshape(-1))
        # elements: torchao multiplies by a float32 reciprocal of s_b * s_t; fpq divides exactly
        # (the spec's v / X). They may differ only where the exact quotient lies within float32
        # rounding (2**-22 relative) of an e2m1 rounding boundary
        S = np.repeat(q.scales * (1.0 if st is None else st), 16, axis=1)
        ratio = x.astype(np.float64) / S
        diff = q.elements != el_ref
        grid = values("e2m1")
        mids = (grid[1:] + grid[:-1]) / 2
        near = np.min(np.abs(np.abs(ratio[..., None]) - mids[mids > 0]), axis=-1) <= np.abs(ratio) * 2.0 ** -22
        assert np.all(near[diff]) and diff.mean() < 1e-3
