"""fpq: PyTorch to FPGA in low precision, bit-exact from torch to HLS C simulation.

The Format layer (``fpq.formats``, ``fpq.quantize``) imports numpy only; the rest of the public
API is imported on first use so that ``import fpq`` stays light.
"""
from __future__ import annotations

import importlib

from .formats import (Binary, Fixed, Format, Int, Minifloat, QuantSpec, decode, encode, exact_fixed,
                      finfo, parse_format, values)
from .numerics import quantize

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily)
_LAZY = {
    "quantize_torch": "fpq.numerics.torch_ops",
    "convert": "fpq.convert",
    "calibrate": "fpq.calibrate",
    "plan": "fpq.typeplan",
    "TypePlan": "fpq.typeplan",
    "export_qonnx": "fpq.export",
    "emulate": "fpq.emulate",
    "to_hls": "fpq.hls",
    "verify": "fpq.verify",
    "estimate_cost": "fpq.cost_model",
    "profile_torch": "fpq.cost_model.profile",
    "ptq": "fpq.ptq",
    "sweep": "fpq.report",
    "report": "fpq.report",
}

__all__ = ["Binary", "Fixed", "Format", "Int", "Minifloat", "QuantSpec", "decode", "encode",
           "exact_fixed", "finfo", "parse_format", "values", "quantize", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fpq' has no attribute {name!r}")
