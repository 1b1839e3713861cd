"""Format types, parsing, canonical strings, finfo, values, encode/decode and exact_fixed."""
from __future__ import annotations

import math

import numpy as np
import pytest

import fpq
from fpq import Binary, Fixed, Int, Minifloat, QuantSpec, parse_format
from fpq.formats import E8M0, BlockFormat
from fpq.formats.parse import ALIASES

# Every spelling DESIGN.md and parse.py name, with the Format it must give.
E4M3 = Minifloat(4, 3, specials="fn")
SPELLINGS = {
    # DESIGN.md
    "e2m1": Minifloat(2, 1, bias=1, specials="none"),
    "fp4": Minifloat(2, 1, bias=1, specials="none"),
    "e4m3": E4M3,
    "float8_e4m3fn": E4M3,
    "e5m2": Minifloat(5, 2, bias=15, specials="ieee"),
    "e3m2": Minifloat(3, 2, bias=3, specials="none"),
    "e2m3": Minifloat(2, 3, bias=1, specials="none"),
    "int4": Int(4),
    "uint8": Int(8, signed=False),
    "fixed<8,3>": Fixed(8, 3, True, "RND_CONV", "SAT"),
    "ap_fixed<8,3,AP_RND_CONV,AP_SAT>": Fixed(8, 3, True, "RND_CONV", "SAT"),
    "ufixed<6,2>": Fixed(6, 2, False, "RND_CONV", "SAT"),
    "binary": Binary(),
    # parse.py aliases
    "fp6_e2m3": Minifloat(2, 3, specials="none"),
    "fp6_e3m2": Minifloat(3, 2, specials="none"),
    "fp8_e4m3": E4M3,
    "fp8_e5m2": Minifloat(5, 2, specials="ieee"),
    "fp8": E4M3,
    "fp16": Minifloat(5, 10, bias=15, specials="ieee"),
    "half": Minifloat(5, 10, specials="ieee"),
    "float16": Minifloat(5, 10, specials="ieee"),
    "bf16": Minifloat(8, 7, bias=127, specials="ieee"),
    "bfloat16": Minifloat(8, 7, specials="ieee"),
    "float8_e5m2": Minifloat(5, 2, specials="ieee"),
    "float8_e4m3fnuz": Minifloat(4, 3, bias=8, specials="fnuz"),
    "float8_e5m2fnuz": Minifloat(5, 2, bias=16, specials="fnuz"),
    "float8_e4m3b11fnuz": Minifloat(4, 3, bias=11, specials="fnuz"),
    "float8_e4m3": Minifloat(4, 3, specials="ieee"),
    "float8_e3m4": Minifloat(3, 4, specials="ieee"),
    "float6_e2m3fn": Minifloat(2, 3, specials="none"),
    "float6_e3m2fn": Minifloat(3, 2, specials="none"),
    "float4_e2m1fn": Minifloat(2, 1, specials="none"),
    "bipolar": Binary(),
    # block-scaled (OCP MX v1.0, NVFP4) and their scale; tests/test_block_formats.py
    "e8m0": E8M0(),
    "float8_e8m0fnu": E8M0(),
    "e8m0_none": Minifloat(8, 0),  # the 9-bit minifloat; bare e8m0 is OCP's scale
    "ue8m0": Minifloat(8, 0, signed=False),
    "mxfp8_e4m3": BlockFormat(Minifloat(4, 3), E8M0(), 32),
    "mxfp8_e5m2": BlockFormat(Minifloat(5, 2), E8M0(), 32),
    "mxfp6_e3m2": BlockFormat(Minifloat(3, 2), E8M0(), 32),
    "mxfp6_e2m3": BlockFormat(Minifloat(2, 3), E8M0(), 32),
    "mxfp4": BlockFormat(Minifloat(2, 1), E8M0(), 32),
    "mxint8": BlockFormat(Fixed(8, 2, True, "RND_CONV", "SAT_SYM"), E8M0(), 32),
    "nvfp4": BlockFormat(Minifloat(2, 1), Minifloat(4, 3, signed=False), 16),
    # the grammar's other forms
    "ap_fixed<8,3>": Fixed(8, 3, True, "TRN", "WRAP"),  # ap_fixed.h defaults
    "ap_ufixed<4,-2,AP_RND,AP_SAT_SYM>": Fixed(4, -2, False, "RND", "SAT_SYM"),
    "fixed<6,2,TRN_ZERO,SAT_ZERO>": Fixed(6, 2, True, "TRN_ZERO", "SAT_ZERO"),
    "fixed<6,9,RND_MIN_INF>": Fixed(6, 9, True, "RND_MIN_INF", "SAT"),
    "int8_narrow": Int(8, narrow=True),
    "uint1": Int(1, signed=False),
    "e4m3_none": Minifloat(4, 3, specials="none"),
    "e4m3_finite": Minifloat(4, 3, specials="none"),
    "ue4m3": Minifloat(4, 3, signed=False),
    "e3m2_b5_ieee_nosub": Minifloat(3, 2, bias=5, specials="ieee", subnormals=False),
    "e4m3_b0": Minifloat(4, 3, bias=0),  # a bias of 0 is a bias
    "e4m3_b-3_nosat": Minifloat(4, 3, bias=-3, saturate=False),
    " E4M3 ": E4M3,  # case and spaces do not matter
    "Fixed< 8 , 3 >": Fixed(8, 3),
}


@pytest.mark.parametrize("text", list(SPELLINGS))
def test_parse(text):
    assert parse_format(text) == SPELLINGS[text]


def test_every_alias_is_tested():
    assert set(ALIASES) <= set(SPELLINGS)


ROUNDTRIP = [*SPELLINGS.values(), Fixed(1, 0), Fixed(64, 70, False, "RND_INF", "WRAP"),
             Fixed(5, -9, True, "RND_ZERO", "SAT_SYM"), Int(32), Int(2, narrow=True),
             Minifloat(1, 2), Minifloat(8, 7, bias=-100, specials="fnuz", subnormals=False),
             Minifloat(5, 10, specials="none"), Minifloat(2, 1, specials="fn"),
             Minifloat(3, 0, signed=False, specials="fn"), Minifloat(6, 9, specials="ieee", saturate=False)]


@pytest.mark.parametrize("fmt", ROUNDTRIP, ids=str)
def test_canonical_string_round_trips(fmt):
    s = str(fmt)
    assert parse_format(s) == fmt
    assert str(parse_format(s)) == s
    assert " " not in s


def test_canonical_strings_are_short_for_defaults():
    assert str(parse_format("float8_e4m3fn")) == "e4m3"
    assert str(parse_format("bf16")) == "e8m7"
    assert str(parse_format("float8_e4m3fnuz")) == "e4m3_b8_fnuz"
    assert str(parse_format("ap_fixed<8,3>")) == "fixed<8,3,TRN,WRAP>"
    assert str(Minifloat(4, 3, bias=7.0)) == "e4m3"  # integral float bias is accepted as int


def test_parse_passes_formats_through():
    f = Fixed(4, 2)
    assert parse_format(f) is f


FINFO_MAX = {"e2m1": 6.0, "e2m3": 7.5, "e3m2": 28.0, "e4m3": 448.0, "e5m2": 57344.0,
             "e4m3_none": 480.0, "fp16": 65504.0, "bf16": (2 - 2 ** -7) * 2.0 ** 127,
             "float8_e4m3fnuz": 240.0, "float8_e5m2fnuz": 57344.0, "e3m4_ieee": 15.5}


@pytest.mark.parametrize("name", list(FINFO_MAX))
def test_finfo_max(name):
    info = fpq.finfo(name)
    assert info.max == FINFO_MAX[name]
    assert info.min == -FINFO_MAX[name]
    assert info.max == fpq.values(name).max()


def test_finfo_details():
    e4m3 = fpq.finfo("e4m3")
    assert (e4m3.smallest_normal, e4m3.smallest_subnormal, e4m3.eps) == (2 ** -6, 2 ** -9, 2 ** -3)
    assert (e4m3.n_codes, e4m3.n_values, e4m3.has_inf, e4m3.has_nan) == (256, 253, False, True)
    e5m2 = fpq.finfo("e5m2")
    assert (e5m2.smallest_normal, e5m2.smallest_subnormal, e5m2.has_inf) == (2 ** -14, 2 ** -16, True)
    assert fpq.finfo("e2m1").n_values == 15 and fpq.finfo("e2m1").smallest_subnormal == 0.5
    assert fpq.finfo("e4m3_nosub").smallest_subnormal == 2 ** -6
    assert fpq.finfo("fp16").smallest_subnormal == 2 ** -24
    f = fpq.finfo("fixed<8,3>")
    assert (f.max, f.min, f.eps) == (127 / 32, -4.0, 1 / 32)
    assert (fpq.finfo("ufixed<4,6>").max, fpq.finfo("ufixed<4,6>").eps) == (60.0, 4.0)
    assert (fpq.finfo("int8_narrow").min, fpq.finfo("int8").min, fpq.finfo("uint4").max) == (-127, -128, 15)
    assert (fpq.finfo("binary").max, fpq.finfo("binary").min, fpq.finfo("binary").n_values) == (1, -1, 2)


def test_values_golden():
    """OCP MX spec tables (FP4 E2M1, FP6) and a few fixed / int value sets."""
    e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert fpq.values("e2m1").tolist() == sorted({-v for v in e2m1} | set(e2m1))
    e3m2_pos = fpq.values("e3m2")[fpq.values("e3m2") >= 0]
    assert e3m2_pos[:5].tolist() == [0, 0.0625, 0.125, 0.1875, 0.25]
    assert e3m2_pos[-4:].tolist() == [16, 20, 24, 28]
    assert fpq.values("e2m3")[-8:].tolist() == [4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5]
    assert fpq.values("ufixed<3,1>").tolist() == [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75]
    assert fpq.values("int2_narrow").tolist() == [-1, 0, 1]
    assert fpq.values("binary").tolist() == [-1, 1]
    assert fpq.values("e2m1_nosub").tolist() == [-6, -4, -3, -2, -1.5, -1, 0, 1, 1.5, 2, 3, 4, 6]


def test_decode_golden_codes():
    """OCP FP8 spec: e4m3 0x7E = 448, 0x7F NaN, 0x08 = 2**-6, 0x01 = 2**-9; e5m2 0x7B = 57344,
    0x7C inf, 0x7D..0x7F NaN, 0xFC -inf."""
    v = fpq.decode([0x7E, 0x08, 0x01, 0x80, 0xFE], "e4m3")
    assert v.tolist() == [448, 2 ** -6, 2 ** -9, 0, -448] and math.copysign(1, v[3]) == -1
    assert np.isnan(fpq.decode([0x7F, 0xFF], "e4m3")).all()
    assert fpq.decode([0x7B, 0x7C, 0xFC, 0x04], "e5m2").tolist() == [57344, np.inf, -np.inf, 2 ** -14]
    assert np.isnan(fpq.decode([0x7D, 0x7E, 0x7F], "e5m2")).all()
    assert np.isnan(fpq.decode(0x80, "float8_e4m3fnuz")) and fpq.decode(0x7F, "float8_e4m3fnuz") == 240
    assert fpq.decode([0b1000, 0b0111], "fixed<4,2>").tolist() == [-2.0, 1.75]
    assert fpq.decode([0, 1], "binary").tolist() == [-1, 1]


ENUMERABLE = ["e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "e4m3_b8_fnuz", "e3m4_ieee", "e4m3_none",
              "ue3m2", "e3m2_nosub", "e2m1_fn", "e5m10", "fixed<6,2>", "ufixed<5,-1>", "int4_narrow",
              "uint3", "binary"]


@pytest.mark.parametrize("name", ENUMERABLE)
def test_encode_decode_round_trip(name):
    fmt = parse_format(name)
    v = fpq.values(fmt)
    assert np.all(np.diff(v) > 0) and v.size == fpq.finfo(fmt).n_values
    assert np.array_equal(fpq.decode(fpq.encode(v, fmt), fmt), v)
    codes = np.arange(1 << fmt.width)
    dec = fpq.decode(codes, fmt)
    ok = np.isin(dec, v)  # finite, and not the unused most negative code of a narrow int
    assert np.array_equal(fpq.decode(fpq.encode(dec[ok], fmt), fmt), dec[ok])
    assert np.array_equal(fpq.encode(v[:, None], fmt), fpq.encode(v, fmt)[:, None])  # keeps shape
    if fpq.finfo(fmt).has_nan:
        assert np.isnan(fpq.decode(fpq.encode(np.nan, fmt), fmt))


def test_encode_refuses_unrepresentable():
    with pytest.raises(ValueError, match=r"^0\.75 is not a value of e2m1; quantize before encoding"):  # not np.float64(0.75)
        fpq.encode([0.75], "e2m1")
    with pytest.raises(ValueError, match="no NaN code"):
        fpq.encode([np.nan], "e2m1")
    with pytest.raises(ValueError, match="no infinity code"):
        fpq.encode([np.inf], "e4m3")
    with pytest.raises(ValueError, match=r"codes of e2m1 must lie in \[0, 16\)"):
        fpq.decode([16], "e2m1")


CARRIERS = {"e2m1": 5, "e4m3": 19, "e2m3": 7, "e3m2": 10, "e5m2": 33, "e4m3_none": 19,
            "e4m3_b8_fnuz": 19, "fp16": 41, "ue4m3": 18, "e3m2_nosub": 10, "int8": 8,
            "uint4": 4, "int4_narrow": 4, "fixed<7,-2>": 7, "binary": 2}


def _holds_all(carrier: Fixed, v: np.ndarray) -> bool:
    """Every value in v is k * 2**-frac with k in the carrier's integer range (exact arithmetic)."""
    k = np.ldexp(v, carrier.frac_bits)
    lo, hi = carrier.int_range
    return bool(np.all(k == np.round(k)) and k.min() >= lo and k.max() <= hi)


@pytest.mark.parametrize("name", list(CARRIERS))
@pytest.mark.parametrize("scale_exp", [0, -3, 5])
def test_exact_fixed_is_the_smallest_carrier(name, scale_exp):
    fmt = parse_format(name)
    c = fpq.exact_fixed(fmt, scale_exp)
    assert c.width == CARRIERS[name]
    v = np.ldexp(fpq.values(fmt), scale_exp)
    assert _holds_all(c, v)
    # one bit less does not do: neither dropping the LSB nor the MSB
    if c.width > 1:
        assert not _holds_all(Fixed(c.width - 1, c.int_bits, c.signed), v)
        assert not _holds_all(Fixed(c.width - 1, c.int_bits - 1, c.signed), v)


def test_exact_fixed_refuses_too_wide():
    with pytest.raises(ValueError, match=r"e8m7.*262-bit.*at most 64"):
        fpq.exact_fixed("bf16")


# bad string -> a phrase the message must contain (besides the string and the accepted forms)
BAD = {
    "e0m3": "at least 1 exponent bit",
    "e2m-1": "non-negative integers",
    "e2.5m1": "non-negative integers",
    "fixed<4,9,FOO>": "unknown rounding mode 'FOO'",
    "fixed<8,3,RND,FOO>": "unknown overflow mode 'FOO'",
    "fixed<8>": "2 to 4 parameters",
    "fixed<8,3,RND,SAT,1>": "2 to 4 parameters",
    "fixed<0,3>": "width must be >= 1",
    "fixed<a,b>": "must be integers",
    "fixed<65,3>": "> 64",
    "ap_fixed<8,3>x": "malformed",
    "int0": "at least 1 bit",
    "int1": "at least 2 bits",
    "int33": "> 32",
    "uint8_narrow": "narrow range applies to signed",
    "e4m3_b7.5": "bias must be an integer",
    "e4m3_bx": "bias must be an integer",
    "foo": "not a known format",
    "": "empty",
    "e2m1_nosat": "must saturate",
    "e9m9": "3..16 bits",
    "e1m0": "3..16 bits",
    "e4m3_xyz": "unknown minifloat suffix 'xyz'",
    "e4m3_fn_ieee": "more than one specials suffix",
    "e4m3_b1_b2": "bias given twice",
    "e4m3_nosub_nosub": "given twice",
    "ue4m3_fnuz": "needs a sign bit",
    "e1m1_ieee": "at least 2 exponent bits",
    "e4m3_b2000": "out of the supported range",
}


@pytest.mark.parametrize("text", list(BAD))
def test_bad_strings_say_what_and_what_is_allowed(text):
    with pytest.raises(ValueError) as e:
        parse_format(text)
    msg = str(e.value)
    assert BAD[text] in msg
    assert repr(text) in msg
    assert "Accepted forms:" in msg and "fixed<W,I" in msg and "eXmY" in msg and "intN" in msg


def test_non_string_is_refused():
    with pytest.raises(ValueError, match="a format must be a string or a Format, got int"):
        parse_format(8)


@pytest.mark.parametrize("make, phrase", [
    (lambda: Fixed(0, 0), "width must be >= 1"),
    (lambda: Fixed(8, 2.5), "int_bits must be an integer"),
    (lambda: Fixed(8, 2, rounding="ROUND"), "unknown rounding mode 'ROUND'; allowed: RND"),
    (lambda: Fixed(8, 2, overflow="CLAMP"), "unknown overflow mode 'CLAMP'; allowed: SAT"),
    (lambda: Fixed(8, 2, signed=1), "signed must be True or False"),
    (lambda: Int(True), "int bits must be an integer"),
    (lambda: Minifloat(4, 3, bias=7.5), "bias must be an integer"),
    (lambda: Minifloat(4, 3, specials="nan"), "unknown specials 'nan'; allowed: none, ieee, fn, fnuz"),
    (lambda: Minifloat(2, 1, specials="none", saturate=False), "must saturate"),
    (lambda: Minifloat(0, 3), "exponent bits must be >= 1"),
    (lambda: Minifloat(3, -1), "mantissa bits must be >= 0"),
    (lambda: QuantSpec("int8"), "QuantSpec.format must be a Format"),
    (lambda: QuantSpec(Int(8), scale="log"), "unknown scale kind 'log'"),
    (lambda: QuantSpec(Int(8), granularity="block"), "block granularity needs block_size"),
    (lambda: QuantSpec(Int(8), role="gate"), "unknown role 'gate'"),
])
def test_constructors_validate(make, phrase):
    with pytest.raises(ValueError, match=phrase):
        make()


def test_formats_are_frozen_and_hashable():
    f = Minifloat(4, 3)
    with pytest.raises(AttributeError):
        f.bias = 3
    assert len({Minifloat(4, 3), parse_format("e4m3"), parse_format("float8_e4m3fn")}) == 1
    assert Minifloat(4, 3, bias=0).bias == 0 and Minifloat(4, 3).bias == 7
    assert Int(8).as_fixed() == Fixed(8, 8, True, "RND_CONV", "SAT")
    x = np.linspace(-40, 40, 641)
    assert np.array_equal(fpq.quantize(x, Int(6, narrow=True)), fpq.quantize(x, Int(6, narrow=True).as_fixed()))
    assert fpq.values("int6_narrow").min() == -31
    with pytest.raises(ValueError, match="not a value of int6_narrow"):
        fpq.encode(-32, "int6_narrow")
    assert QuantSpec(Int(8), "block", "block", "weight", 32).block_size == 32
