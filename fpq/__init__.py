"""fpq: PyTorch to FPGA in low precision, bit-exact from torch to HLS C simulation.

The Format layer (``fpq.formats``, ``fpq.quantize``) imports numpy only; the rest of the public
API is imported on first use so that ``import fpq`` stays light (no torch, no onnx).

Each public function is a plain function. Three of them share their name with the package that
defines them (``fpq.emulate``, ``fpq.ptq``, ``fpq.report``): those packages are imported here,
before the function is bound, because importing a submodule sets the package attribute of its
name; later imports (``from fpq.emulate import Emulator``) find the module in ``sys.modules`` and
leave ``fpq.emulate`` the function. These packages import numpy only at import time.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"   # first: a module imported below may read it (fpq.cli does)

from .formats import (Binary, Fixed, Format, Int, Minifloat, QuantSpec, decode, encode, exact_fixed,
                      finfo, parse_format, values)
from .numerics import quantize
from .emulate import emulate   # binds the function over the package of the same name (see above)
from .ptq import ptq           # likewise
from .report import report, sweep   # likewise (report)

if TYPE_CHECKING:   # what the lazy names below resolve to, for IDEs and type checkers
    from .calibration import calibrate
    from .conversion import convert
    from .cost_model import estimate_cost
    from .fitting import fit
    from .profiling import profile_torch
    from .export import export_qonnx
    from .hls import to_hls
    from .rtl import to_rtl
    from .numerics.torch_ops import quantize_torch
    from .export import plan
    from .typeplan import TypePlan
    from .verification import verify

# public name -> module that defines it (imported lazily)
_LAZY = {
    "quantize_torch": "fpq.numerics.torch_ops",
    "convert": "fpq.conversion",
    "calibrate": "fpq.calibration",
    "plan": "fpq.export",
    "TypePlan": "fpq.typeplan",
    "export_qonnx": "fpq.export",
    "to_hls": "fpq.hls",
    "to_rtl": "fpq.rtl",
    "verify": "fpq.verification",
    "estimate_cost": "fpq.cost_model",
    "fit": "fpq.fitting",
    "profile_torch": "fpq.profiling",
}

__all__ = ["Binary", "Fixed", "Format", "Int", "Minifloat", "QuantSpec", "decode", "encode",
           "exact_fixed", "finfo", "parse_format", "values", "quantize", "emulate", "ptq", "report", "sweep",
           *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fpq' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
