"""Format strings: ``parse_format`` and the canonical ``str`` (``parse_format(str(f)) == f``).

Grammar (case-insensitive; ASCII only; spaces only at the ends and around ``<``, ``,`` and ``>``;
numbers are plain ASCII digits, a leading ``-`` where a negative is allowed):
  fixed<W,I[,Q[,O]]>, ufixed<...>      fpq fixed point; defaults RND_CONV, SAT (a quantizer)
  ap_fixed<W,I[,AP_Q[,AP_O]]>, ap_ufixed  C++ spelling; defaults AP_TRN, AP_WRAP as in ap_fixed.h
  intN, uintN, intN_narrow               integers used with a scale
  [u]eXmY[_bB][_ieee|_fn|_fnuz|_none][_nosub][_nosat]   minifloats, 3..16 bits
  binary                                 bipolar +-1
  e8m0 (float8_e8m0fnu)                  OCP MX's power-of-two scale (a block scale only); the
                                         9-bit signed minifloat of that split is e8m0_none
  block<ELEM,SCALE,K[,axis=A][,rounding=R]>  block-scaled: K values along axis A share one SCALE
                                         (e8m0 or ueXmY); R in floor, ceil, even, rceil (e8m0 only)
  mxfp8_e4m3, mxfp8_e5m2, mxfp6_e3m2, mxfp6_e2m3, mxfp4, mxint8 (OCP MX v1.0), nvfp4
A bare ``eXmY`` follows the OCP / ml_dtypes conventions: e4m3 is float8_e4m3fn (max 448),
e5m2, e5m10 (fp16) and e8m7 (bf16) are IEEE-like with inf and NaN, every other split has no
inf or NaN (OCP FP4 / FP6). Any other choice is spelled with a suffix, e.g. ``e4m3_none`` for
Brevitas' all-finite e4m3 (max 480).
"""
from __future__ import annotations

import re

from .types import (MAX_QUANTIZE_WIDTH, OVERFLOW_MODES, ROUNDING_MODES, SPECIALS, Binary, Fixed, Format, Int,
                    Minifloat, default_specials)
from .block import SCALE_ROUNDINGS, BlockFormat, E8M0

ALIASES = {
    "fp4": "e2m1",
    "fp6_e2m3": "e2m3",
    "fp6_e3m2": "e3m2",
    "fp8_e4m3": "e4m3",
    "fp8_e5m2": "e5m2",
    "fp8": "e4m3",
    "fp16": "e5m10",
    "half": "e5m10",
    "bf16": "e8m7",
    "bfloat16": "e8m7",
    "float16": "e5m10",
    "float8_e4m3fn": "e4m3",
    "float8_e5m2": "e5m2",
    "float8_e4m3fnuz": "e4m3_b8_fnuz",
    "float8_e5m2fnuz": "e5m2_b16_fnuz",
    "float8_e4m3b11fnuz": "e4m3_b11_fnuz",
    "float8_e4m3": "e4m3_ieee",
    "float8_e3m4": "e3m4_ieee",
    "float6_e2m3fn": "e2m3",
    "float6_e3m2fn": "e3m2",
    "float4_e2m1fn": "e2m1",
    "bipolar": "binary",
    "float8_e8m0fnu": "e8m0",
    # OCP Microscaling (MX) v1.0: block 32 along the reduction axis, E8M0 scale; MXINT8's elements
    # are int8 x 2**-6, symmetric (-127..127, as the OCP reference library microxscaling clamps)
    "mxfp8_e4m3": "block<e4m3,e8m0,32>",
    "mxfp8_e5m2": "block<e5m2,e8m0,32>",
    "mxfp6_e3m2": "block<e3m2,e8m0,32>",
    "mxfp6_e2m3": "block<e2m3,e8m0,32>",
    "mxfp4": "block<e2m1,e8m0,32>",
    "mxint8": "block<fixed<8,2,rnd_conv,sat_sym>,e8m0,32>",
    # NVIDIA NVFP4: e2m1 elements, block 16, E4M3 block scale (sign unused), fp32 tensor scale
    "nvfp4": "block<e2m1,ue4m3,16>",
}

ACCEPTED_FORMS = (
    "fixed<W,I[,ROUNDING[,OVERFLOW]]> / ufixed<...> (e.g. fixed<8,3>, fixed<6,2,RND,SAT>), "
    "ap_fixed<W,I[,AP_RND_CONV[,AP_SAT]]> / ap_ufixed<...>, "
    "intN / uintN / intN_narrow (e.g. int8, uint4), "
    "[u]eXmY[_bBIAS][_ieee|_fn|_fnuz|_none][_nosub][_nosat] with 3..16 bits (e.g. e2m1, e4m3, e5m2, e3m2_b5), "
    "e8m0 (a block scale), block<ELEM,SCALE,K[,axis=A][,rounding=floor|ceil|even|rceil]> "
    "(e.g. block<e2m1,ue5m3,16>, block<int4,e8m0,32>), "
    f"binary, and the aliases {', '.join(ALIASES)}"
)


def _bad(text: str, why: str) -> ValueError:
    return ValueError(f"invalid format {text!r}: {why}. Accepted forms: {ACCEPTED_FORMS}")


def parse_format(text) -> Format:
    """Parse a format string into its Format (a Format passes through unchanged).

    Accepted spellings (case-insensitive, spaces only around ``<``, ``,``, ``>``):
    ``fixed<W,I[,ROUNDING[,OVERFLOW]]>`` / ``ufixed<...>`` (fpq defaults RND_CONV, SAT),
    ``ap_fixed<W,I[,AP_Q[,AP_O]]>`` / ``ap_ufixed<...>`` (ap_fixed defaults TRN, WRAP),
    ``intN`` / ``uintN`` / ``intN_narrow``,
    ``[u]eXmY[_bBIAS][_ieee|_fn|_fnuz|_none][_nosub][_nosat]`` (3 .. 16 bits), ``e8m0`` (a block
    scale), ``block<ELEM,SCALE,K[,axis=A][,rounding=floor|ceil|even|rceil]>``, ``binary``, and
    aliases such as ``fp4``, ``fp8``, ``fp16``, ``bf16``, ``mxfp4``, ``nvfp4``. ``str(fmt)`` gives the
    canonical spelling back.

    Args:
        text (str | Format): the format string, or a Format.

    Returns:
        Format: a Fixed, Int, Minifloat, Binary, E8M0 or BlockFormat.

    Raises:
        ValueError: ``text`` is not a string or Format, or not a valid spelling; the message names
            the problem and lists the accepted forms.

    Example:
        >>> import fpq
        >>> fpq.parse_format("e2m1")
        Minifloat(exp_bits=2, man_bits=1, bias=1, signed=True, subnormals=True, specials='none', saturate=True)
        >>> str(fpq.parse_format("ap_fixed<8, 3>"))
        'fixed<8,3,TRN,WRAP>'
        >>> str(fpq.parse_format("mxfp4"))
        'block<e2m1,e8m0,32>'
        >>> fpq.parse_format("int0")
        Traceback (most recent call last):
        ...
        ValueError: invalid format 'int0': an integer needs at least 1 bit, got 0. Accepted forms: ...
    """
    if isinstance(text, Format):
        return text
    if not isinstance(text, str):
        raise ValueError(f"a format must be a string or a Format, got {type(text).__name__}. "
                         f"Accepted forms: {ACCEPTED_FORMS}")
    original = text
    if not text.isascii():
        c = next(ch for ch in text if not ch.isascii())
        raise _bad(original, f"non-ASCII character {c!r} (U+{ord(c):04X}); formats are spelled in ASCII letters "
                             "and digits 0-9")
    # spaces around the punctuation of fixed<W, I> read naturally; inside a name or number they
    # are a typo ('i n t 8', 'fixed<1 0,3>'), refused rather than guessed
    s = re.sub(r"\s*([<>,])\s*", r"\1", text.strip()).lower()
    if not s:
        raise _bad(original, "empty string")
    if re.search(r"\s", s):
        raise _bad(original, "spaces inside a name or number (allowed only at the ends and around '<', ',', '>')")
    s = ALIASES.get(s, s)
    try:
        if s == "binary":
            return Binary()
        if s == "e8m0":
            return E8M0()
        if s.startswith("block<"):
            return _parse_block(s, original)
        if "<" in s:
            return _parse_fixed(s, original)
        m = re.fullmatch(r"(u?)int(-?[0-9]+)(_narrow)?", s)
        if m:
            bits = int(m.group(2))
            if bits < 1:
                raise _bad(original, f"an integer needs at least 1 bit, got {bits}")
            return Int(bits, signed=not m.group(1), narrow=bool(m.group(3)))
        if re.fullmatch(r"u?e-?[0-9.]+m-?[0-9.]+(_.*)?", s):
            return _parse_minifloat(s, original)
    except ValueError as e:
        if "Accepted forms" in str(e):
            raise
        raise _bad(original, str(e)) from None
    raise _bad(original, "not a known format or alias")


def _parse_fixed(s: str, original: str) -> Fixed:
    m = re.fullmatch(r"(ap_)?(u?)fixed<([^>]*)>", s)
    if not m:
        raise _bad(original, "malformed fixed-point type")
    ap, unsigned, body = m.group(1), m.group(2), m.group(3)
    parts = body.split(",")
    if len(parts) < 2 or len(parts) > 4:
        raise _bad(original, "fixed point takes 2 to 4 parameters (width, int bits, rounding, overflow), "
                             f"got {len(parts)}")
    if not all(re.fullmatch(r"-?[0-9]+", p) for p in parts[:2]):  # int() would take '1_0' and '+8'
        raise _bad(original, "width and integer bits must be integers (ASCII digits, e.g. fixed<8,-2>)")
    width, int_bits = int(parts[0]), int(parts[1])
    rounding = "TRN" if ap else "RND_CONV"
    overflow = "WRAP" if ap else "SAT"
    if len(parts) > 2:
        rounding = parts[2].upper().removeprefix("AP_")
        if rounding not in ROUNDING_MODES:
            raise _bad(original, f"unknown rounding mode {parts[2].upper()!r} (allowed: {', '.join(ROUNDING_MODES)})")
    if len(parts) > 3:
        overflow = parts[3].upper().removeprefix("AP_")
        if overflow not in OVERFLOW_MODES:
            raise _bad(original, f"unknown overflow mode {parts[3].upper()!r} (allowed: {', '.join(OVERFLOW_MODES)})")
    if width < 1:
        raise _bad(original, f"width must be >= 1, got {width}")
    if width > MAX_QUANTIZE_WIDTH:
        raise _bad(original, f"width {width} > {MAX_QUANTIZE_WIDTH} is not supported for a tensor format")
    if int_bits > 1024 or width - int_bits > 1074:  # values past 2**1024 or below 2**-1074
        raise _bad(original, f"integer bits {int_bits} and fraction bits {width - int_bits} put values outside "
                             "float64's range (integer bits <= 1024, fraction bits <= 1074)")
    return Fixed(width, int_bits, signed=not unsigned, rounding=rounding, overflow=overflow)


def _split_top(body: str) -> list[str]:
    """Split at the commas outside any <...> (an element may be fixed<8,2>)."""
    parts, depth, cur = [], 0, ""
    for ch in body:
        depth += (ch == "<") - (ch == ">")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def _parse_block(s: str, original: str) -> BlockFormat:
    if not s.endswith(">") or s.count("<") != s.count(">"):
        raise _bad(original, "malformed block format (block<ELEM,SCALE,K[,axis=A][,rounding=R]>)")
    parts = _split_top(s[len("block<"):-1])
    if len(parts) < 3:
        raise _bad(original, f"a block format takes an element format, a scale format and a block size, "
                             f"got {len(parts)} parameter(s)")
    elem_s, scale_s, k_s, *opts = parts
    if not re.fullmatch(r"[0-9]+", k_s):
        raise _bad(original, f"the block size must be a positive integer, got {k_s!r}")
    elem = parse_format(elem_s)
    scale = parse_format(scale_s)
    if isinstance(elem, BlockFormat) or isinstance(scale, BlockFormat):
        raise _bad(original, "block formats do not nest")
    kwargs = {}
    for opt in opts:
        key, eq, val = opt.partition("=")
        if not eq or key not in ("axis", "rounding") or key in kwargs:
            raise _bad(original, f"unknown or repeated block option {opt!r} (allowed: axis=A, "
                                 f"rounding={'|'.join(SCALE_ROUNDINGS)}, each once)")
        if key == "axis":
            if not re.fullmatch(r"-?[0-9]+", val):
                raise _bad(original, f"the block axis must be an integer, got {val!r}")
            kwargs["axis"] = int(val)
        else:
            kwargs["scale_rounding"] = val
    return BlockFormat(elem, scale, int(k_s), **kwargs)


def _parse_minifloat(s: str, original: str) -> Minifloat:
    head, *suffixes = s.split("_")
    m = re.fullmatch(r"(u?)e(-?[0-9.]+)m(-?[0-9.]+)", head)
    if not m or not re.fullmatch(r"[0-9]+", m.group(2)) or not re.fullmatch(r"[0-9]+", m.group(3)):
        raise _bad(original, "exponent and mantissa bits must be non-negative integers (eXmY)")
    unsigned, e, mbits = bool(m.group(1)), int(m.group(2)), int(m.group(3))
    if e < 1:
        raise _bad(original, f"a minifloat needs at least 1 exponent bit, got e{e} "
                             "(with no exponent it is an integer: use intN)")
    kwargs = dict(signed=not unsigned, specials=default_specials(e, mbits))
    seen = set()
    for suf in suffixes:
        key = "b" if suf.startswith("b") else suf
        if key in seen:
            raise _bad(original, "exponent bias given twice" if key == "b" else f"suffix {suf!r} given twice")
        seen.add(key)
        if key == "b":
            val = suf[1:]
            if not re.fullmatch(r"-?[0-9]+", val):
                raise _bad(original, f"exponent bias must be an integer, got {val!r} "
                                     "(a real-valued range shift belongs in the scale)")
            kwargs["bias"] = int(val)
        elif suf in SPECIALS or suf == "finite":
            if "specials" in seen:
                raise _bad(original, "more than one specials suffix")
            seen.add("specials")
            kwargs["specials"] = "none" if suf == "finite" else suf
        elif suf == "nosub":
            kwargs["subnormals"] = False
        elif suf == "nosat":
            kwargs["saturate"] = False
        else:
            raise _bad(original, f"unknown minifloat suffix {suf!r} "
                                 f"(allowed: _bBIAS, {', '.join('_' + k for k in SPECIALS)}, _nosub, _nosat)")
    return Minifloat(e, mbits, **kwargs)


def format_to_str(fmt: Format) -> str:
    """Canonical string of a Format.

    Args:
        fmt: the Format.

    Returns:
        str: the spelling ``parse_format`` reads back to ``fmt``.

    Raises:
        TypeError: ``fmt`` is not a Format.

    Example:
        >>> import fpq
        >>> from fpq.formats import format_to_str
        >>> format_to_str(fpq.parse_format("fixed<8,3>"))
        'fixed<8,3,RND_CONV,SAT>'
    """
    if isinstance(fmt, Binary):
        return "binary"
    if isinstance(fmt, Int):
        return f"{'' if fmt.signed else 'u'}int{fmt.bits}{'_narrow' if fmt.narrow else ''}"
    if isinstance(fmt, Fixed):
        return f"{'' if fmt.signed else 'u'}fixed<{fmt.width},{fmt.int_bits},{fmt.rounding},{fmt.overflow}>"
    if isinstance(fmt, E8M0):
        return "e8m0"
    if isinstance(fmt, BlockFormat):
        s = f"block<{format_to_str(fmt.elem)},{format_to_str(fmt.scale)},{fmt.k}"
        if fmt.axis != -1:
            s += f",axis={fmt.axis}"
        if fmt.scale_rounding != "floor":
            s += f",rounding={fmt.scale_rounding}"
        return s + ">"
    if isinstance(fmt, Minifloat):
        s = f"{'' if fmt.signed else 'u'}e{fmt.exp_bits}m{fmt.man_bits}"
        if fmt.bias != fmt.default_bias:
            s += f"_b{fmt.bias}"
        if fmt.specials != default_specials(fmt.exp_bits, fmt.man_bits):
            s += f"_{fmt.specials}"
        if not fmt.subnormals:
            s += "_nosub"
        if not fmt.saturate:
            s += "_nosat"
        if s == "e8m0":   # the bare name is OCP's E8M0 scale: spell the minifloat's specials out
            s += "_none"
        return s
    raise TypeError(f"not a Format: {fmt!r}")
