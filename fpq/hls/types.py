"""Exact HLS types and layouts of the tensors fpq.hls builds: the hls4ml-order shape and
torch permutation of a tensor (``_Tensor``), the constant and port carriers (``values_carrier``,
``_carrier``, ``input_capture_type``, ``FloatPort``), and the refusal every HLS step raises
(``HLSUnsupportedError``), and ``HLSPlan``, the builder's result. Split from ``builder`` so that
the layer builder reads as layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..formats import Binary, Fixed, Minifloat, exact_fixed
from ..typeplan import TensorType, constant_carrier, po2_exponents
from ..typeplan import values_carrier as _values_carrier
from . import cpp


def c_array(values: np.ndarray) -> str:
    """A C++ initializer list whose double literals parse back to exactly these float64 values."""
    return "{" + ", ".join(repr(float(v)) for v in values) + "}"


class HLSUnsupportedError(ValueError):
    """The network (a layer, a format or a scale) cannot be made exact in HLS: the message says which and why.

    Example:
        >>> from fpq.hls import HLSUnsupportedError
        >>> issubclass(HLSUnsupportedError, ValueError)
        True
    """


@dataclass
class _Tensor:
    layer: str                 # hls4ml layer whose output holds it
    fixed: Fixed               # exact type of its values (that layer's result precision)
    torch_shape: tuple         # per sample, torch layout
    hls_shape: tuple           # per sample, hls4ml (channels-last) layout
    perm: np.ndarray | None    # hls flat index i holds torch flat element perm[i]; None: same order
    sum_of: tuple | None = None  # (pool op, N): it holds an average pool's exact window sums, not / N yet


@dataclass
class HLSPlan:
    """Everything needed to build the hls4ml model; no file is written while making it."""

    layers: list = field(default_factory=list)        # hls4ml layer dicts, in order
    precisions: dict = field(default_factory=dict)    # layer name -> {var: Fixed}
    input_name: str = "fpq_input"
    input_shape: tuple = ()                           # torch layout, per sample
    input_perm: np.ndarray | None = None
    input_float32: bool = False                       # the port is exact for float32 values only
    output_layer: str = ""
    output_shape: tuple = ()                          # torch layout, per sample
    output_perm: np.ndarray | None = None
    op_layer: dict = field(default_factory=dict)      # IR op name -> hls4ml layer that computes it
    layer_op: dict = field(default_factory=dict)      # hls4ml layer -> IR op whose value it finally holds
    layer_shape: dict = field(default_factory=dict)   # hls4ml layer -> (torch shape, perm)
    notes: list = field(default_factory=list)


def channels_last_perm(torch_shape: tuple) -> np.ndarray | None:
    """perm such that hls_flat[i] = torch_flat[perm[i]] for the channels-last layout."""
    if len(torch_shape) <= 1:
        return None
    idx = np.arange(int(np.prod(torch_shape))).reshape(torch_shape)
    return np.moveaxis(idx, 0, -1).ravel()


def _ungroup(w: np.ndarray, groups: int) -> np.ndarray:
    """(cout, cin / groups, *k) grouped conv weight -> (cout, cin, *k) block-diagonal dense weight."""
    cout, cg = w.shape[:2]
    dense = np.zeros((cout, cg * groups) + w.shape[2:], dtype=w.dtype)
    per = cout // groups
    for g in range(groups):
        dense[g * per:(g + 1) * per, g * cg:(g + 1) * cg] = w[g * per:(g + 1) * per]
    return dense


def hls_shape_of(torch_shape: tuple) -> tuple:
    return tuple(torch_shape[1:]) + (torch_shape[0],) if len(torch_shape) > 1 else tuple(torch_shape)


def values_carrier(v) -> Fixed:
    """fpq.typeplan.values_carrier, refusing non-finite values as an HLS error."""
    try:
        return _values_carrier(v)
    except ValueError as e:
        raise HLSUnsupportedError(f"weight or bias values: {e}") from None


def _scale_exp(tt: TensorType, what: str) -> int:
    exps = po2_exponents(tt.scale)
    if exps is None:
        raise HLSUnsupportedError(
            f"{what}: scale {np.ravel(tt.scale)[:4]} of {tt.format} is not a power of two. y = Q(x / s) * s "
            "needs an exact division by s, which a fixed-point datapath cannot do bit-exactly; "
            "convert with scale='po2' for the HLS path")
    exps = np.unique(exps)
    if exps.size != 1:
        raise HLSUnsupportedError(
            f"{what}: per-channel activation scales ({exps.size} different powers of two) are not supported "
            "in HLS; use a per-tensor activation scale")
    return int(exps[0])


def _check_format(fmt, what: str) -> None:
    if isinstance(fmt, Minifloat):
        try:
            cpp.minifloat_params(fmt)
        except ValueError as e:
            raise HLSUnsupportedError(f"{what}: {e}") from None


def _carrier(tt: TensorType | None, values, what: str) -> Fixed:
    """Exact fixed type of a constant tensor (weight / bias): the TypePlan's constant carrier
    (its type's for a power-of-two scale, else the values' own), as an HLS precision."""
    if values is None:
        return Fixed(2, 2, True)
    if tt is not None and tt.po2:
        _check_format(tt.format, what)
    try:
        c = constant_carrier(tt, values)
    except ValueError as e:
        raise HLSUnsupportedError(f"{what}: {e}") from None
    return Fixed(c.width, c.int_bits, c.signed)


class FloatPort:
    """A float32 input port (hls4ml precision ``float``): only for binary inputs with a scale >= 2,
    where fpq's float32 division by the scale decides the sign of tiny inputs."""

    width = 32
    rounding = overflow = None

    def __str__(self):
        return "float"

    def __eq__(self, other):
        return isinstance(other, FloatPort)

    def __hash__(self):
        return hash("float")


def input_capture_type(fmt, scale_exp: int):
    """A wide input port type for quantizers that run after the port (minifloat, binary, narrow
    int). Every float32 value whose rounding matters is exact in it: magnitudes from half the
    smallest step up (float32 has 24 significant bits), and saturation happens beyond twice
    the format's range. TRN_ZERO keeps smaller magnitudes below the first tie; binary uses TRN so
    that a tiny negative input keeps its sign."""
    if isinstance(fmt, Binary):
        if scale_exp >= 1:
            return FloatPort()  # see fpq::quantize_binary_float
        return Fixed(32, 2, True, "TRN", "SAT")  # TRN: a tiny negative input keeps its sign
    c = exact_fixed(fmt, scale_exp)
    frac = c.frac_bits + 1 + 24
    ints = c.int_bits + 2
    return Fixed(ints + frac, ints, True, "TRN_ZERO", "SAT")


def _same_perm(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(a, b)


def _is_channels_last(t: _Tensor) -> bool:
    return t.hls_shape == hls_shape_of(t.torch_shape) and _same_perm(t.perm, channels_last_perm(t.torch_shape))
