"""Formats: the single source of truth for number formats (numpy only, no torch import)."""
from .types import (OVERFLOW_MODES, QONNX_ROUNDING, ROUNDING_MODES, ROUNDING_TO_QONNX, SPECIALS,
                    Binary, Fixed, Format, Int, Minifloat, QuantSpec, default_specials)
from .block import SCALE_ROUNDINGS, BlockFormat, E8M0
from .parse import ACCEPTED_FORMS, format_to_str, parse_format
from .facts import FormatInfo, decode, encode, exact_fixed, finfo, values

__all__ = ["Format", "Fixed", "Int", "Minifloat", "Binary", "BlockFormat", "E8M0", "SCALE_ROUNDINGS", "QuantSpec", "parse_format",
           "format_to_str", "finfo", "FormatInfo", "values", "decode", "encode", "exact_fixed",
           "ROUNDING_MODES", "OVERFLOW_MODES", "SPECIALS", "ACCEPTED_FORMS", "default_specials",
           "QONNX_ROUNDING", "ROUNDING_TO_QONNX"]
