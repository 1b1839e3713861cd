"""Block-scaled formats (OCP MX, NVFP4, ``block<ELEM,SCALE,K>``) and E8M0, their power-of-two scale.

Split from ``types.py`` (the scalar formats), whose ``Format`` base and argument checks they share.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .types import Fixed, Format, Int, Minifloat, _check_int


@dataclass(frozen=True, eq=True)
class E8M0(Format):
    """OCP MX's shared block scale (ml_dtypes' float8_e8m0fnu).

    8 bits, the value of code c is 2**(c - 127) for c in 0..254 and 0xFF is NaN; no sign, no zero,
    no inf. A scale format only: fpq quantizes no tensor to it (``block<ELEM,e8m0,K>`` uses it).

    Example:
        >>> from fpq.formats import E8M0
        >>> str(E8M0()), E8M0().width, E8M0().max_value == 2.0 ** 127
        ('e8m0', 8, True)
    """

    kind: ClassVar[str] = "e8m0"
    bias: ClassVar[int] = 127

    __str__ = Format.__str__

    @property
    def width(self) -> int:
        """8: the bits of one E8M0 scale code."""
        return 8

    @property
    def signed(self) -> bool:
        """False: an E8M0 scale is a power of two, never negative."""
        return False

    @property
    def max_value(self) -> float:
        """2**127, the largest E8M0 scale."""
        return math.ldexp(1.0, 127)

    @property
    def min_value(self) -> float:
        """2**-127, the smallest E8M0 scale."""
        return math.ldexp(1.0, -127)


# How an E8M0 block scale's exponent is chosen from the block's largest magnitude amax (names as
# torchao's ScaleCalculationMode; emax = floor(log2(largest element)); P = the element precision).
SCALE_ROUNDINGS = {
    "floor": "floor(log2(amax)) - emax (OCP MX v1.0; the largest elements may saturate)",
    "ceil": "ceil(log2(amax)) - emax",
    "even": "floor(log2(amax')) - emax, amax' = amax rounded half-up to the element's precision",
    "rceil": "ceil(log2(amax / max_elem)): the smallest scale at which no element saturates",
}


def element_precision(elem: Format) -> int:
    """Significant bits of the element format's largest binade (minifloat: M + 1; integer / fixed
    point: one less than the width when signed)."""
    if isinstance(elem, Minifloat):
        return elem.man_bits + 1
    return elem.width - int(elem.signed)


@dataclass(frozen=True, eq=True)
class BlockFormat(Format):
    """A block-scaled format: every ``k`` consecutive values along ``axis`` share one scale.

    ``elem`` is the element format (a saturating minifloat, an integer, or a SAT fixed point with
    ties-to-even rounding); ``scale`` is either ``E8M0`` (OCP MX: the scale is an absolute power of
    two, X = 2**(floor(log2(amax)) - emax_elem) under ``scale_rounding``) or an unsigned minifloat
    with mantissa bits (NVFP4 style: the block scale is amax_block / max_elem / s_t rounded to the
    scale format, clamped to its smallest and largest values, with one float32 tensor scale s_t =
    amax_tensor / (max_scale * max_elem)). The numerics are fpq.numerics.blocks.

    Args:
        elem: the element Format.
        scale: the block scale Format (E8M0 or an unsigned minifloat).
        k: the block size (1 .. 4096).
        axis: the axis the blocks run along.
        scale_rounding: how an E8M0 scale's exponent is chosen (a key of ``SCALE_ROUNDINGS``).

    Raises:
        ValueError: an element or scale format, block size, axis or scale rounding fpq does not support.

    Example:
        >>> import fpq
        >>> from fpq.formats import BlockFormat, E8M0
        >>> f = BlockFormat(fpq.parse_format("e2m1"), E8M0(), 32)
        >>> str(f), f == fpq.parse_format("mxfp4")
        ('block<e2m1,e8m0,32>', True)
    """

    elem: Format
    scale: Format
    k: int
    axis: int = -1
    scale_rounding: str = "floor"
    kind: ClassVar[str] = "block"

    def __post_init__(self):
        _check_int("block size", self.k, 1)
        _check_int("block axis", self.axis)
        if not -64 <= self.axis < 64:
            raise ValueError(f"block axis {self.axis} is out of range (-64 .. 63)")
        e, s = self.elem, self.scale
        if isinstance(e, Minifloat):
            if not e.saturate:
                raise ValueError(f"block elements saturate (OCP MX); {e} does not: drop _nosat")
        elif isinstance(e, Fixed):
            if e.rounding != "RND_CONV" or e.overflow not in ("SAT", "SAT_SYM"):
                raise ValueError(f"fixed-point block elements round to nearest even and saturate "
                                 f"(RND_CONV, SAT or SAT_SYM); {e} does not")
        elif not isinstance(e, Int):
            raise ValueError(f"a block element must be a minifloat, an integer or a fixed point, got {e}")
        if self.k > 4096:
            raise ValueError(f"block size {self.k} > 4096 is not supported")
        if isinstance(s, E8M0):
            pass
        elif isinstance(s, Minifloat):
            if s.signed:
                raise ValueError(f"a block scale is positive: use the unsigned u{s}, not {s}")
            if s.man_bits == 0:
                lo, hi = math.log2(s.min_subnormal), math.log2(s.max_value)
                if lo <= -127 and hi >= 127:
                    raise ValueError(f"a power-of-two block scale is OCP's E8M0, spelled e8m0 (2**-127 .. 2**127, "
                                     f"no zero code, 0xFF NaN); {s} is another code layout: use e8m0")
                raise ValueError(
                    f"a power-of-two block scale is absolute (OCP MX, no tensor scale): it must hold every "
                    f"float32 exponent, 2**-127 .. 2**127; {s} holds 2**{lo:g} .. 2**{hi:g}. Use e8m0 (OCP "
                    "E8M0), or a scale with mantissa bits (e.g. ue4m3), which a float32 tensor scale positions")
            # the product elem * scale must be exact in float64 with the float32 tensor scale (24 bits)
            need = element_precision(e) + s.man_bits + 1 + 24
            if need > 53:
                raise ValueError(f"an element of {e} times a scale of {s} times the float32 tensor scale has "
                                 f"up to {need} significant bits, more than float64's 53")
            if s.max_value > 2.0 ** 100 or s.min_subnormal < 2.0 ** -100:
                raise ValueError(f"the scale {s} spans 2**{math.log2(s.min_subnormal):g} .. "
                                 f"2**{math.log2(s.max_value):g}; a tensor-scaled block scale must lie within "
                                 "2**-100 .. 2**100 so that it times the float32 tensor scale stays a float64 "
                                 "number and max_scale * max_elem a float32 one")
        else:
            raise ValueError(f"a block scale must be e8m0 or an unsigned minifloat with mantissa bits "
                             f"(ueXmY, e.g. ue4m3, ue5m3), got {s}")
        if self.scale_rounding not in SCALE_ROUNDINGS:
            raise ValueError(f"unknown scale rounding {self.scale_rounding!r}; allowed: {', '.join(SCALE_ROUNDINGS)}")
        if self.scale_rounding != "floor" and not isinstance(s, E8M0):
            raise ValueError(f"scale rounding {self.scale_rounding!r} applies to e8m0 scales; a {s} scale "
                             "rounds to nearest even")

    __str__ = Format.__str__

    @property
    def width(self) -> int:
        """Bits of one element code (the scale adds scale.width / k per value)."""
        return self.elem.width

    @property
    def signed(self) -> bool:
        """Whether the elements are signed (the element format's)."""
        return self.elem.signed

    @property
    def bits_per_value(self) -> float:
        """Storage bits per value: the element width plus the shared scale's width over the block size."""
        return self.elem.width + self.scale.width / self.k

    @property
    def po2_scale(self) -> bool:
        """True for E8M0 (absolute power-of-two) scales, False for tensor-scaled ones (NVFP4)."""
        return isinstance(self.scale, E8M0)

    @property
    def elem_max(self) -> float:
        """The largest element value (before the scale)."""
        if isinstance(self.elem, Minifloat):
            return self.elem.max_value
        hi = self.elem.int_range[1]
        return hi * (self.elem.step if isinstance(self.elem, Fixed) else 1.0)

    @property
    def emax_elem(self) -> int:
        """floor(log2(largest element)): OCP MX's emax_elem (8, 15, 4, 2, 2 for e4m3, e5m2, e3m2,
        e2m3, e2m1; 0 for MXINT8's int8 x 2**-6)."""
        return math.frexp(self.elem_max)[1] - 1
