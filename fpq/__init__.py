"""fpq: PyTorch to FPGA in low precision, bit-exact from torch to HLS C simulation."""
from .formats import (Binary, Fixed, Format, Int, Minifloat, QuantSpec, decode, encode, exact_fixed,
                      finfo, parse_format, values)
from .numerics import quantize

__version__ = "0.1.0"

__all__ = ["Binary", "Fixed", "Format", "Int", "Minifloat", "QuantSpec", "decode", "encode",
           "exact_fixed", "finfo", "parse_format", "values", "quantize", "quantize_torch"]


def quantize_torch(x, fmt, scale=1.0):
    """Torch twin of ``quantize`` with a straight-through gradient (imports torch on first use)."""
    from .numerics.torch_ops import quantize_torch as _q
    return _q(x, fmt, scale)
