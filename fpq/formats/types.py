"""The Format types: the single source of truth for every number format fpq knows.

Each Format is a frozen dataclass validated on construction. The bit width is derived, never
stored. ``str(fmt)`` is canonical and ``parse_format(str(fmt)) == fmt`` (see ``parse.py``).
This module imports numpy only; torch, Brevitas and hls4ml consumers read these objects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

# ap_fixed quantization (rounding) modes, with the ap_fixed.h meaning of each.
ROUNDING_MODES = {
    "RND": "round to nearest, ties toward +inf",
    "RND_ZERO": "round to nearest, ties toward zero",
    "RND_MIN_INF": "round to nearest, ties toward -inf",
    "RND_INF": "round to nearest, ties away from zero",
    "RND_CONV": "round to nearest, ties to even (convergent)",
    "TRN": "truncate toward -inf (drop bits)",
    "TRN_ZERO": "truncate toward zero",
}
# QONNX Quant / Trunc rounding_mode -> the ap_fixed rounding it computes on x / scale (qonnx's
# intquant.resolve_rounding_mode), and back. RND (ties to +inf) and RND_MIN_INF (ties to -inf)
# have no QONNX mode: fpq's export writes them as two Quant nodes (fpq.export.qonnx_codec).
QONNX_ROUNDING = {"ROUND": "RND_CONV", "HALF_EVEN": "RND_CONV", "FLOOR": "TRN", "DOWN": "TRN_ZERO",
                  "HALF_UP": "RND_INF", "HALF_DOWN": "RND_ZERO"}
ROUNDING_TO_QONNX = {ap: mode for mode, ap in QONNX_ROUNDING.items() if mode != "HALF_EVEN"}
# ap_fixed overflow modes.
OVERFLOW_MODES = {
    "SAT": "clamp to the largest / smallest value",
    "SAT_ZERO": "an out-of-range value becomes zero",
    "SAT_SYM": "clamp symmetrically to +-max (signed: the most negative code is not produced)",
    "WRAP": "two's complement wrap-around (drop the high bits)",
}
SPECIALS = {
    "none": "every code is a finite number (OCP FP4/FP6, Brevitas' generic minifloat)",
    "ieee": "the top exponent holds inf (mantissa 0) and NaN (else), as IEEE 754",
    "fn": "no inf; only the all-ones code (per sign) is NaN (float8_e4m3fn)",
    "fnuz": "no inf, no negative zero; the negative-zero code is the single NaN",
}


# The specials a minifloat gets when none is named (OCP / ml_dtypes conventions): e4m3 is
# float8_e4m3fn, e5m2 / fp16 / bf16 are IEEE-like; every other split has no inf or NaN.
DEFAULT_SPECIALS = {(4, 3): "fn", (5, 2): "ieee", (5, 10): "ieee", (8, 7): "ieee"}


def default_specials(exp_bits: int, man_bits: int) -> str:
    """The special values a bare ExMy name implies (OCP / ml_dtypes conventions).

    Args:
        exp_bits: exponent bits E.
        man_bits: mantissa bits M.

    Returns:
        str: "fn" for e4m3, "ieee" for e5m2, fp16 and bf16, "none" for every other split.

    Example:
        >>> from fpq.formats import default_specials
        >>> default_specials(4, 3), default_specials(2, 1)
        ('fn', 'none')
    """
    return DEFAULT_SPECIALS.get((exp_bits, man_bits), "none")


class Format:
    """Base class of every number format (Fixed, Int, Minifloat, Binary and the block formats).

    Subclasses are frozen dataclasses validated when constructed; their bit width is derived, never
    stored. ``str(fmt)`` is the canonical spelling and ``fpq.parse_format(str(fmt)) == fmt``.
    Construct a subclass, or parse a string with ``fpq.parse_format``; ``Format`` itself holds no
    value set.

    Example:
        >>> import fpq
        >>> fmt = fpq.parse_format("e4m3")
        >>> isinstance(fmt, fpq.Format), str(fmt)
        (True, 'e4m3')
    """

    kind: ClassVar[str] = "format"

    def __str__(self) -> str:
        from .parse import format_to_str

        return format_to_str(self)


def _check_int(name: str, value, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


# Tensors are quantized to at most 64-bit fixed point (numpy's int64 codes); wider Fixed types
# exist as derived exact products / accumulators (e5m2 x e5m2 sums need 72 bits), which HLS
# carries as ap_fixed (up to 1024 bits) and fpq.numerics.wide sums exactly.
MAX_QUANTIZE_WIDTH = 64
MAX_FIXED_WIDTH = 128


@dataclass(frozen=True, eq=True, repr=True)
class Fixed(Format):
    """Two's complement (or unsigned) fixed point, exactly as ``ap_fixed<W, I, Q, O>``.

    Values are ``k * 2**-(width - int_bits)`` for an integer ``k`` in the signed or unsigned
    ``width``-bit range. Quantizing to it (``fpq.quantize``) rounds with ``rounding`` and handles
    values out of range with ``overflow``, bit-exactly as the ap_fixed headers do.

    Args:
        width (int): total bits, 1 .. 128 (tensors are quantized to at most 64; wider types are
            derived accumulators).
        int_bits (int): bits left of the binary point, sign included; may be negative or larger than
            ``width``, as in ap_fixed.
        signed (bool): two's complement (True) or unsigned (False).
        rounding (str): an ap_fixed quantization mode: "RND", "RND_ZERO", "RND_MIN_INF", "RND_INF",
            "RND_CONV" (ties to even, the default), "TRN", "TRN_ZERO".
        overflow (str): an ap_fixed overflow mode: "SAT" (default), "SAT_ZERO", "SAT_SYM", "WRAP".

    Raises:
        ValueError: a non-integer or out-of-range width / int_bits, a non-bool ``signed``, or an
            unknown rounding or overflow mode (the message lists the allowed ones).

    Example:
        >>> import fpq
        >>> f = fpq.Fixed(8, 3)
        >>> str(f), f.step, f.int_range
        ('fixed<8,3,RND_CONV,SAT>', 0.03125, (-128, 127))
        >>> fpq.parse_format("ap_fixed<8,3>") == fpq.Fixed(8, 3, rounding="TRN", overflow="WRAP")
        True
    """

    width: int
    int_bits: int
    signed: bool = True
    rounding: str = "RND_CONV"
    overflow: str = "SAT"
    kind: ClassVar[str] = "fixed"

    def __post_init__(self):
        _check_int("fixed width", self.width, 1)
        _check_int("fixed int_bits", self.int_bits)
        _check_bool("signed", self.signed)
        if self.width > MAX_FIXED_WIDTH:
            raise ValueError(f"fixed width {self.width} > {MAX_FIXED_WIDTH} is not supported")
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"unknown rounding mode {self.rounding!r}; allowed: {', '.join(ROUNDING_MODES)}")
        if self.overflow not in OVERFLOW_MODES:
            raise ValueError(f"unknown overflow mode {self.overflow!r}; allowed: {', '.join(OVERFLOW_MODES)}")

    __str__ = Format.__str__

    @property
    def frac_bits(self) -> int:
        """Number of bits right of the binary point (``width - int_bits``).
        """
        return self.width - self.int_bits

    @property
    def step(self) -> float:
        """Value of one least significant bit, ``2**-frac_bits``.
        """
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def int_range(self) -> tuple[int, int]:
        """Range (lo, hi) of the integer code k, value = k * step.
        """
        if self.signed:
            return -(1 << (self.width - 1)), (1 << (self.width - 1)) - 1
        return 0, (1 << self.width) - 1


@dataclass(frozen=True, eq=True)
class Int(Format):
    """Integer codes used with a scale: value = k * scale, k in the (narrow) integer range.

    Rounding is half to even (as torch.round and Brevitas); values out of range saturate.

    Args:
        bits (int): code width, 1 .. 32 (a signed integer needs at least 2).
        signed (bool): two's complement codes (True) or unsigned (False).
        narrow (bool): signed only: drop the most negative code, so the range is symmetric
            (-(2**(bits-1) - 1) .. 2**(bits-1) - 1).

    Raises:
        ValueError: non-integer or out-of-range ``bits``, a 1-bit signed integer (use
            ``Binary``), non-bool flags, or ``narrow`` with ``signed=False``.

    Example:
        >>> import fpq
        >>> fpq.Int(4).int_range, fpq.Int(8, narrow=True).int_range
        ((-8, 7), (-127, 127))
        >>> str(fpq.Int(4, signed=False))
        'uint4'
    """

    bits: int
    signed: bool = True
    narrow: bool = False
    kind: ClassVar[str] = "int"

    def __post_init__(self):
        _check_int("int bits", self.bits, 1)
        _check_bool("signed", self.signed)
        _check_bool("narrow", self.narrow)
        if self.signed and self.bits < 2:
            raise ValueError("a signed integer needs at least 2 bits (int2); for +-1 use 'binary'")
        if self.bits > 32:
            raise ValueError(f"int bits {self.bits} > 32 is not supported")
        if self.narrow and not self.signed:
            raise ValueError("narrow range applies to signed integers only")

    __str__ = Format.__str__

    @property
    def width(self) -> int:
        """Bits of one code (``bits``).
        """
        return self.bits

    @property
    def int_range(self) -> tuple[int, int]:
        """Range (lo, hi) of the integer code (narrow: lo is -hi).
        """
        if self.signed:
            lo = -(1 << (self.bits - 1))
            return (lo + 1 if self.narrow else lo), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    def as_fixed(self) -> Fixed:
        """The Fixed format with the same value set at scale 1.

        Returns:
            Fixed: ``fixed<bits, bits>`` with ties-to-even rounding, saturating (``SAT_SYM`` when narrow).

        Example:
            >>> import fpq
            >>> str(fpq.Int(8, narrow=True).as_fixed())
            'fixed<8,8,RND_CONV,SAT_SYM>'
        """
        return Fixed(self.bits, self.bits, self.signed, "RND_CONV", "SAT_SYM" if self.narrow else "SAT")


@dataclass(frozen=True, eq=True)
class Minifloat(Format):
    """A small floating-point format ExMy: an optional sign bit, exponent bits and mantissa bits.

    value = (-1)**s * 2**(e - bias) * (1 + m / 2**M) for normal codes (e > 0) and
    (-1)**s * 2**(1 - bias) * (m / 2**M) for subnormal codes (e == 0) when ``subnormals``;
    without subnormals an exponent field of 0 encodes zero only. Rounding is to nearest, ties to
    even (with no mantissa bit, M=0, ties go away from zero).

    Args:
        exp_bits (int): exponent bits E >= 1.
        man_bits (int): mantissa bits M >= 0; sign + E + M must be 3 .. 16 bits.
        bias (int | None): exponent bias, |bias| <= 1000; None: ``2**(E-1) - 1``.
        signed (bool): has a sign bit.
        subnormals (bool): exponent field 0 holds subnormal values (True) or only zero (False).
        specials (str | None): which codes are inf / NaN: "none" (every code finite), "ieee"
            (top exponent holds inf and NaN), "fn" (no inf, all-ones code is NaN, as
            float8_e4m3fn), "fnuz" (no inf, no -0; its code is the NaN). None: "fn" for e4m3,
            "ieee" for e5m2 / e5m10 / e8m7, "none" otherwise (OCP / ml_dtypes conventions).
        saturate (bool): values beyond the largest finite one clamp to it (True) or become inf
            (ieee) / NaN (fn, fnuz) (False; not allowed with specials "none").

    Raises:
        ValueError: a field of the wrong type or range, a width outside 3 .. 16 bits, or a
            combination the code layout cannot hold (e.g. "fnuz" unsigned, "ieee" with one
            exponent bit, "none" without saturation); the message names it.

    Example:
        >>> import fpq
        >>> f = fpq.Minifloat(2, 1)
        >>> str(f), f.max_value, f.min_subnormal
        ('e2m1', 6.0, 0.5)
        >>> fpq.Minifloat(4, 3).max_value   # float8_e4m3fn
        448.0
    """

    exp_bits: int
    man_bits: int
    bias: int | None = None
    signed: bool = True
    subnormals: bool = True
    specials: str | None = None
    saturate: bool = True
    kind: ClassVar[str] = "minifloat"

    def __post_init__(self):
        _check_int("exponent bits", self.exp_bits, 1)
        _check_int("mantissa bits", self.man_bits, 0)
        bias = self.bias
        if bias is None:  # `is None`, never truthiness: a bias of 0 is a bias
            bias = (1 << (self.exp_bits - 1)) - 1
        if isinstance(bias, float):
            if not bias.is_integer():
                raise ValueError(f"exponent bias must be an integer, got {bias} "
                                 "(a real-valued range shift belongs in the scale)")
            bias = int(bias)
        _check_int("exponent bias", bias)
        object.__setattr__(self, "bias", bias)
        if self.specials is None:
            object.__setattr__(self, "specials", default_specials(self.exp_bits, self.man_bits))
        _check_bool("signed", self.signed)
        _check_bool("subnormals", self.subnormals)
        _check_bool("saturate", self.saturate)
        if self.specials not in SPECIALS:
            raise ValueError(f"unknown specials {self.specials!r}; allowed: {', '.join(SPECIALS)}")
        if not 3 <= self.width <= 16:
            raise ValueError(f"minifloat width {self.width} (sign+exponent+mantissa) must be 3..16 bits")
        if self.specials == "none" and not self.saturate:
            raise ValueError("a minifloat without inf/NaN codes must saturate (saturate=True)")
        if self.specials == "fnuz" and not self.signed:
            raise ValueError("fnuz uses the negative-zero code as NaN: it needs a sign bit")
        if self.specials == "ieee" and self.exp_bits < 2:
            raise ValueError("ieee specials reserve the top exponent: at least 2 exponent bits needed")
        if self.specials == "fn" and self.man_bits == 0 and self.exp_bits < 2:
            raise ValueError("fn specials with 0 mantissa bits need at least 2 exponent bits")
        if abs(bias) > 1000:
            raise ValueError(f"exponent bias {bias} is out of the supported range (|bias| <= 1000)")

    __str__ = Format.__str__

    @property
    def width(self) -> int:
        """Bits of one code: sign + exponent + mantissa.
        """
        return int(self.signed) + self.exp_bits + self.man_bits

    @property
    def default_bias(self) -> int:
        """The IEEE-style bias ``2**(exp_bits-1) - 1``.
        """
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal value."""
        return 1 - self.bias

    @property
    def max_exp_field(self) -> int:
        """Largest exponent field value that encodes finite numbers."""
        top = (1 << self.exp_bits) - 1
        if self.specials == "ieee":
            return top - 1
        if self.specials == "fn" and self.man_bits == 0:
            return top - 1
        return top

    @property
    def max_value(self) -> float:
        """Largest finite value."""
        e = self.max_exp_field
        m_max = (1 << self.man_bits) - 1
        if self.specials == "fn" and self.man_bits > 0:
            m_max -= 1  # the all-ones mantissa of the top exponent is NaN
        if e == 0:  # only subnormals (tiny formats)
            return math.ldexp(m_max, self.emin - self.man_bits)
        return math.ldexp((1 << self.man_bits) + m_max, e - self.bias - self.man_bits)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, ``2**emin``.
        """
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (the smallest normal without subnormals or mantissa bits).
        """
        if not self.subnormals or self.man_bits == 0:
            return self.min_normal
        return math.ldexp(1.0, self.emin - self.man_bits)

    @property
    def has_inf(self) -> bool:
        """True when the format has infinity codes (specials 'ieee').
        """
        return self.specials == "ieee"

    @property
    def has_nan(self) -> bool:
        """True when the format has NaN codes (any specials but 'none').
        """
        return self.specials != "none"


@dataclass(frozen=True, eq=True)
class Binary(Format):
    """Bipolar binary: every value is -1 or +1 (times the scale); sign(0) = +1, as QONNX BipolarQuant.

    Takes no arguments; spelled ``"binary"``.

    Example:
        >>> import fpq
        >>> fpq.parse_format("binary") == fpq.Binary(), fpq.values("binary").tolist()
        (True, [-1.0, 1.0])
    """

    kind: ClassVar[str] = "binary"

    __str__ = Format.__str__

    @property
    def width(self) -> int:
        """Bits of one code: 1.
        """
        return 1

    @property
    def signed(self) -> bool:
        """Always True: the values are -1 and +1.
        """
        return True


SCALE_KINDS = ("none", "po2", "float", "block")
GRANULARITIES = ("tensor", "channel", "block")
ROLES = ("weight", "bias", "input", "output", "accumulator")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: its Format, the kind of scale and its granularity.

    Args:
        format (Format): the value format (a Format object, not a string).
        scale (str): "none" (scale 1), "po2" (power of two, default), "float" or "block".
        granularity (str): "tensor" (one scale), "channel" (one per output channel) or "block".
        role (str): "weight", "bias", "input", "output" or "accumulator".
        block_size (int | None): values per scale; required with granularity "block", else None.

    Raises:
        ValueError: ``format`` not a Format, an unknown scale / granularity / role (the message
            lists the allowed ones), or ``block_size`` given without block granularity or missing
            with it.

    Example:
        >>> import fpq
        >>> spec = fpq.QuantSpec(fpq.parse_format("int8"), scale="po2", granularity="channel")
        >>> str(spec.format), spec.granularity
        ('int8', 'channel')
    """

    format: Format
    scale: str = "po2"
    granularity: str = "tensor"
    role: str = "weight"
    block_size: int | None = None

    def __post_init__(self):
        if not isinstance(self.format, Format):
            raise ValueError(f"QuantSpec.format must be a Format, got {self.format!r}")
        if self.scale not in SCALE_KINDS:
            raise ValueError(f"unknown scale kind {self.scale!r}; allowed: {', '.join(SCALE_KINDS)}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; allowed: {', '.join(GRANULARITIES)}")
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; allowed: {', '.join(ROLES)}")
        if (self.granularity == "block") != (self.block_size is not None):
            raise ValueError("block granularity needs block_size, and block_size needs block granularity")
        if self.block_size is not None:
            _check_int("block_size", self.block_size, 1)
