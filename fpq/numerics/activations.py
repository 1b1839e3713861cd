"""Nonlinear activations as exact tables: the one numpy reference of each function, evaluated
once on every value its quantized input can take.

An activation follows a quantizer, so its input takes only the values of that quantizer's type
(at most 2**16 of them here). ``input_values(t)`` lists them (the float32 numbers the quantizer
outputs, as every path stores them); ``function_values(name, params, xs)`` is the reference
f(x) in float64 on them; the activation's output quantizer then rounds those once. torch
(``fpq.nn.tables``), both emulator backends, the QONNX file (``FpqTable``,
``fpq.export.custom_op``), the HLS project and the cost model all use that same table, so no
path evaluates exp / tanh / erf itself and a last-ulp difference between libm builds cannot make
two paths disagree.

The references follow torch's definitions (``torch.nn.functional``): sigmoid 1/(1+e^-x);
tanh; silu x*sigmoid(x); hardswish x*relu6(x+3)/6; hardsigmoid relu6(x+3)/6; gelu
x/2*(1+erf(x/sqrt 2)) or, approximate="tanh", x/2*(1+tanh(sqrt(2/pi)*(x+0.044715x^3))); elu
x>0 ? x : alpha*(e^x-1); softplus log(1+e^(beta x))/beta, x itself where beta*x > threshold;
leaky_relu / prelu x>=0 ? x : slope*x (prelu: one slope per channel, axis 1).
"""
from __future__ import annotations

import math

import numpy as np

from ..formats import Format
from ..formats.facts import MAX_ENUMERABLE_BITS, values as format_values

MAX_TABLE_BITS = MAX_ENUMERABLE_BITS     # an input of at most 2**16 values
MAX_TABLE_ENTRIES = 1 << 20              # per-channel tables (PReLU) all together

# name -> (parameter names with their torch defaults)
FUNCTIONS = {
    "sigmoid": {}, "tanh": {}, "silu": {}, "hardswish": {}, "hardsigmoid": {},
    "gelu": {}, "gelu_tanh": {}, "elu": {"alpha": 1.0}, "softplus": {"beta": 1.0, "threshold": 20.0},
    "leaky_relu": {"negative_slope": 0.01}, "prelu": {},
}


def _sigmoid(x):
    # the form without overflow on either side: e^x / (1 + e^x) for x < 0
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _relu6(x):
    return np.clip(x, 0.0, 6.0)


def _gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _softplus(x, beta, threshold):
    bx = beta * x
    with np.errstate(over="ignore"):
        return np.where(bx > threshold, x, np.log1p(np.exp(np.minimum(bx, threshold))) / beta)


def function_values(name: str, params: dict, xs: np.ndarray, slopes=None) -> np.ndarray:
    """f(xs) in float64 (fpq's reference): shape (N,), or (C, N) for prelu's C ``slopes``."""
    x = np.asarray(xs, dtype=np.float64)
    if name == "sigmoid":
        return _sigmoid(x)
    if name == "tanh":
        return np.tanh(x)
    if name == "silu":
        return x * _sigmoid(x)
    if name == "hardswish":
        return x * _relu6(x + 3.0) / 6.0
    if name == "hardsigmoid":
        return _relu6(x + 3.0) / 6.0
    if name == "gelu":
        return _gelu(x)
    if name == "gelu_tanh":
        return _gelu_tanh(x)
    if name == "elu":
        return np.where(x > 0, x, float(params["alpha"]) * np.expm1(np.minimum(x, 0.0)))
    if name == "softplus":
        return _softplus(x, float(params["beta"]), float(params["threshold"]))
    if name == "leaky_relu":
        return np.where(x >= 0, x, float(params["negative_slope"]) * x)
    if name == "prelu":
        a = np.asarray(slopes, dtype=np.float64).reshape(-1, 1)
        return np.where(x[None, :] >= 0, x[None, :], a * x[None, :])
    raise ValueError(f"unknown activation {name!r}; fpq's tables: {', '.join(FUNCTIONS)}")


def check_table_input(fmt: Format, who: str, channels: int = 1) -> None:
    """Refuse an input too wide for a table, naming ``who`` and what to do."""
    if fmt.width > MAX_TABLE_BITS:
        raise ValueError(f"{who}: its input is {fmt} ({fmt.width} bits), too wide for an exact table (at most "
                         f"{MAX_TABLE_BITS} bits, 2^{MAX_TABLE_BITS} entries): narrow the quantizer before it (e.g. "
                         "activations='int8' or an override of the layer before it)")
    n = 1 << fmt.width
    if channels * n > MAX_TABLE_ENTRIES:
        raise ValueError(f"{who}: {channels} per-channel tables of 2^{fmt.width} entries exceed "
                         f"{MAX_TABLE_ENTRIES} entries; narrow the quantizer before it or use one slope")


def input_values(fmt: Format, scale, who: str = "activation") -> np.ndarray:
    """Every value a tensor of ``fmt`` x ``scale`` (one scale) holds, ascending, as float64 of the
    float32 numbers the quantizer stores (q * s rounded once to float32)."""
    check_table_input(fmt, who)
    s = np.asarray(scale, dtype=np.float32).ravel()
    if s.size != 1:
        raise ValueError(f"{who}: its input has per-channel scales; a table needs one input scale "
                         "(use a per-tensor activation quantizer)")
    v = (format_values(fmt) * np.float64(s[0])).astype(np.float32).astype(np.float64)
    return np.unique(v)


def exact_leaky_relu_table(fmt: Format, scale, alpha: float, who: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a LeakyRelu whose slope is the float32 ``alpha`` (an ONNX attribute), over every
    input value: y = x for x >= 0, alpha * x below. Refused unless that product is exact in float32
    for every x (then a float32 executor such as qonnx's and fpq's float64 table agree)."""
    xs = input_values(fmt, scale, who)
    a32 = np.float32(alpha)
    neg = xs < 0
    prod = np.float64(a32) * xs[neg]
    if not np.array_equal((a32 * xs[neg].astype(np.float32)).astype(np.float64), prod):
        raise ValueError(f"{who}: alpha {float(a32)!r} times its input values is not exact in float32 (the file's "
                         "arithmetic rounds it); fpq reads a LeakyRelu only when every product is exact: use a "
                         "slope with fewer significant bits (e.g. a multiple of 2**-7)")
    ys = xs.copy()
    ys[neg] = prod
    return xs, ys


def lookup_index(xs: np.ndarray, x: np.ndarray, who: str) -> np.ndarray:
    """Indices of the values ``x`` in the ascending table inputs ``xs``; an x that is no table
    input (off its quantizer's grid) is an error naming ``who``."""
    x = np.asarray(x, dtype=np.float64)
    idx = np.clip(np.searchsorted(xs, x), 0, len(xs) - 1)
    bad = xs[idx] != x
    if np.any(bad):
        v = x[bad].ravel()[0]
        raise ValueError(f"{who}: input {v!r} is not one of the {len(xs)} values of its table (the input must come "
                         "from the quantizer the table was made for)")
    return idx


def lookup(xs: np.ndarray, ys: np.ndarray, x: np.ndarray, who: str, channel_axis: int = 1) -> np.ndarray:
    """ys at the position of each x in xs: ys (N,), or (C, N) per channel along ``channel_axis``."""
    idx = lookup_index(xs, x, who)
    if ys.ndim == 1:
        return ys[idx]
    c = np.arange(ys.shape[0]).reshape((-1,) + (1,) * (idx.ndim - channel_axis - 1))
    return ys[c, idx]


def describe(name: str, params: dict) -> str:
    """'elu(alpha=1.0)': the function as the QONNX node and the HLS comment name it."""
    return name + ("(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")" if params else "")


__all__ = ["FUNCTIONS", "MAX_TABLE_BITS", "MAX_TABLE_ENTRIES", "function_values", "input_values",
           "check_table_input", "lookup", "lookup_index", "describe"]
