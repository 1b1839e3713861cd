"""C++ spellings of fpq types and quantizers for the HLS projects.

Everything here is computed from the Format and the power-of-two scale exponent, so the C++
(``hls/fpq_minifloat.h``) and the numpy reference read the same numbers.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..formats import Binary, Fixed, Format, Int, Minifloat, exact_fixed

# The C++ fpq adds to hls4ml projects, shipped as package data. Its one source is the top-level
# hls/ folder of the repository; fpq/hls/include/ links to it, and a wheel build copies the file.
HLS_DIR = Path(__file__).resolve().parent / "include"
MINIFLOAT_HEADER = HLS_DIR / "fpq_minifloat.h"
NORMALIZATION_HEADER = HLS_DIR / "fpq_normalization.h"
BLOCK_HEADER = HLS_DIR / "fpq_block.h"
ATTENTION_HEADER = HLS_DIR / "fpq_attention.h"
STREAM_HEADER = HLS_DIR / "fpq_stream.h"   # io_stream helpers included by the three above


def header_path(path: Path = MINIFLOAT_HEADER) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"fpq's C++ header is missing: {path} (a broken fpq install: "
                                "reinstall fpq, whose package data includes fpq/hls/include/*.h)")
    return path


def ap_type(fmt: Fixed) -> str:
    """``ap_fixed<W,I,AP_Q,AP_O>`` / ``ap_ufixed<...>`` spelling of a Fixed."""
    base = "ap_fixed" if fmt.signed else "ap_ufixed"
    return f"{base}<{fmt.width},{fmt.int_bits},AP_{fmt.rounding},AP_{fmt.overflow}>"


def hls4ml_precision(fmt: Fixed) -> str:
    """hls4ml's precision string for a Fixed, with its rounding and overflow modes spelled out
    (a string, not a type object: hls4ml writes the config to YAML, which its
    link_existing_project reads back with safe_load)."""
    if str(fmt) == "float":  # builder.FloatPort
        return "float"
    base = "fixed" if fmt.signed else "ufixed"
    return f"{base}<{fmt.width},{fmt.int_bits},{fmt.rounding},{fmt.overflow}>"


def minifloat_params(fmt: Minifloat, scale_exp: int = 0) -> dict:
    """Integer parameters of ``fpq::quantize_minifloat`` for ``fmt`` at scale ``2**scale_exp``."""
    if not fmt.saturate:
        raise ValueError(f"{fmt}: a non-saturating minifloat produces inf/NaN, which no ap_fixed "
                         "carrier holds; use saturate=True for the HLS path")
    mx = fmt.max_value
    m, ex = math.frexp(mx)
    emaxb = ex - 1
    maxm = int(math.ldexp(mx, fmt.man_bits - emaxb))
    if math.ldexp(maxm, emaxb - fmt.man_bits) != mx:
        raise AssertionError("max value is not on the grid")  # cannot happen for a valid format
    if emaxb < fmt.emin:
        raise ValueError(f"{fmt}: formats with subnormal values only are not supported in HLS")
    return dict(M=fmt.man_bits, EMIN=fmt.emin + scale_exp, EMAXB=emaxb + scale_exp, MAXM=maxm,
                SUBN=fmt.subnormals, SIGNED=fmt.signed)


def quantizer_call(fmt: Format, scale_exp: int, in_t: str, out_t: str) -> str:
    """A C++ expression template ``{x}`` -> quantized value, for formats ap_fixed casts cannot
    express (minifloat, binary, narrow int). Fixed / plain Int need no call: a cast does it."""
    if isinstance(fmt, Minifloat):
        p = minifloat_params(fmt, scale_exp)
        args = ", ".join(str(p[k]).lower() if isinstance(p[k], bool) else str(p[k])
                         for k in ("M", "EMIN", "EMAXB", "MAXM", "SUBN", "SIGNED"))
        return f"fpq::quantize_minifloat<{in_t}, {out_t}, {args}>({{x}})"
    if isinstance(fmt, Binary):
        return f"fpq::quantize_binary<{in_t}, {out_t}, {scale_exp}>({{x}})"
    if isinstance(fmt, Int) and fmt.narrow:
        lo, hi = fmt.int_range
        rnd = Fixed(fmt.bits + 1, fmt.bits + 1 + scale_exp, True, "RND_CONV", "SAT")
        return f"fpq::quantize_clamp<{in_t}, {out_t}, {ap_type(rnd)}, {lo}LL, {hi}LL>({{x}})"
    raise ValueError(f"{fmt} needs no fpq quantizer call (an ap_fixed cast is exact)")


def cast_format(fmt: Format, scale_exp: int) -> Fixed | None:
    """The ap_fixed type whose cast IS the quantizer ``fmt`` at scale ``2**scale_exp``, or None
    when no cast is (minifloat, binary, narrow int: those use ``quantizer_call``)."""
    if isinstance(fmt, Fixed):
        return exact_fixed(fmt, scale_exp)  # keeps rounding and overflow modes
    if isinstance(fmt, Int) and not fmt.narrow:
        f = fmt.as_fixed()
        return Fixed(f.width, f.int_bits + scale_exp, f.signed, "RND_CONV", "SAT")
    return None
