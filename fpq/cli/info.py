"""``fpq info FORMAT``: finfo, the exact carrier and every value of one format (numpy only)."""
from __future__ import annotations

import numpy as np

from ..formats import Binary, BlockFormat, E8M0, Fixed, Int, Minifloat, decode, exact_fixed, finfo, parse_format
from ..formats.block import SCALE_ROUNDINGS
from ..formats.parse import ACCEPTED_FORMS

MAX_LISTED_BITS = 8


def _describe(fmt) -> str:
    if isinstance(fmt, E8M0):
        return "OCP MX block scale: 2**(code - 127), codes 0..254; 0xFF NaN; no sign, no zero"
    if isinstance(fmt, BlockFormat):
        how = (f"absolute power-of-two scale 2**e, e = {SCALE_ROUNDINGS[fmt.scale_rounding]} (emax {fmt.emax_elem})"
               if fmt.po2_scale else "scale = amax_block / max_elem / s_t rounded to the scale format, one "
               "float32 tensor scale s_t = amax / (max_scale * max_elem)")
        axis = "the last axis" if fmt.axis == -1 else f"axis {fmt.axis}"
        return (f"block-scaled: {fmt.k} {fmt.elem} elements along {axis} share one {fmt.scale} scale; {how}; "
                f"{fmt.bits_per_value:g} bits per value. Limits and codes below are per element at scale 1")
    if isinstance(fmt, Minifloat):
        return (f"minifloat: {int(fmt.signed)} sign, {fmt.exp_bits} exponent, {fmt.man_bits} mantissa bits, "
                f"bias {fmt.bias}, specials {fmt.specials}, subnormals {'yes' if fmt.subnormals else 'no'}, "
                f"{'saturating' if fmt.saturate else 'overflows to ' + ('inf' if fmt.has_inf else 'NaN')}")
    if isinstance(fmt, Fixed):
        return (f"{'signed' if fmt.signed else 'unsigned'} fixed point, {fmt.width} bits, {fmt.int_bits} "
                f"integer bits (LSB 2**{-fmt.frac_bits}), rounding {fmt.rounding}, overflow {fmt.overflow}")
    if isinstance(fmt, Int):
        return (f"{'signed' if fmt.signed else 'unsigned'} {fmt.bits}-bit integer"
                f"{' (narrow range)' if fmt.narrow else ''}, used with a scale; round half to even, saturate")
    assert isinstance(fmt, Binary)
    return "bipolar binary: -1 or +1 (sign(0) = +1), used with a scale"


def info_text(text: str) -> str:
    """finfo, the exact fixed-point carrier and, up to 8 bits, every code and its value."""
    fmt = parse_format(text)
    try:
        info = finfo(fmt)
    except OverflowError:  # e.g. fixed<8,100000>: its LSB or max is beyond float64
        raise ValueError(f"format {text!r}: its values lie outside the float64 range "
                         f"(about 2**-1074 .. 2**1023), so fpq cannot represent them") from None
    try:
        carrier = str(exact_fixed(fmt.elem if isinstance(fmt, BlockFormat) else fmt))
    except ValueError as e:
        carrier = f"none ({e})"
    lines = [f"{fmt}  ({_describe(fmt)})",
             f"  bits            {info.bits}",
             f"  max             {info.max!r}",
             f"  min             {info.min!r}",
             f"  smallest normal {info.smallest_normal!r}",
             f"  smallest subn.  {info.smallest_subnormal!r}",
             f"  eps             {info.eps!r}",
             f"  codes / values  {info.n_codes} / {info.n_values}",
             f"  inf / NaN       {'yes' if info.has_inf else 'no'} / {'yes' if info.has_nan else 'no'}",
             f"  exact carrier   {carrier}"]
    if info.bits <= MAX_LISTED_BITS:
        codes = np.arange(1 << info.bits)
        vals = decode(codes, fmt)
        lines += ["", f"  every code ({info.n_codes}):",
                  *(f"  {c:0{info.bits}b}  {v!r}" for c, v in zip(codes.tolist(), vals.tolist()))]
    else:
        lines.append(f"  (codes listed for formats of at most {MAX_LISTED_BITS} bits)")
    return "\n".join(lines)


def cli_register(subparsers) -> None:
    p = subparsers.add_parser("info", help="facts of one format (finfo, carrier, every value up to 8 bits)",
                              epilog=f"Format strings: {ACCEPTED_FORMS}")
    p.add_argument("format", help="a format string, e.g. e4m3, fixed<8,3>, int4")
    p.set_defaults(func=run)


def run(args) -> int:
    print(info_text(args.format))  # a bad format string: main() prints the one error line
    return 0
