"""One application of a scaled quantizer y = Q(x / s) * s (issue #16 item 3).

fpq.quantize, the emulator's apply_scaled, the graph's Quantizer, quantize_torch and the layers'
tensor quantizers all apply it through numerics.reference.quantize_scaled (numpy) or
numerics.torch_ops.ste_apply_scaled (torch). Each test keeps the expression its caller had
before as the oracle and compares bit for bit (NaN where NaN), gradients included, over a matrix
of formats and scale kinds on random off-grid inputs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fpq.formats import Fixed, parse_format
from fpq.formats.types import OVERFLOW_MODES, ROUNDING_MODES
from fpq.ir import Quantizer
from fpq.numerics import quantize, quantize_unscaled
from fpq.numerics.reference import _as_scale
from fpq.numerics.scaled import apply_scaled
from fpq.numerics.torch_ops import quantize_torch, ste_quantize_unscaled
from fpq.typeplan import TensorType

FORMATS = (["int8", "uint4", "int4_narrow", "int16", "binary", "e4m3", "e5m2", "e2m1", "e3m2", "e4m3_ieee_nosat",
            "e3m2_fnuz", "ue4m3", "e4m3_nosub"]
           + [f"fixed<8,3,{r},{o}>" for r in ROUNDING_MODES for o in OVERFLOW_MODES]
           + ["ufixed<6,2,RND,WRAP>", "ufixed<6,2,TRN,SAT>", "fixed<16,5>"])
C = 4  # channels of the per-channel scales
SCALES = {"po2": np.float32(0.25), "float": np.float32(0.3125 * 1.1),
          "channel_po2": np.array([2.0 ** -3, 0.5, 1.0, 4.0], np.float32),
          "channel_float": np.array([0.37, 1.0, 0.013, 5.5], np.float32), "one": np.float32(1.0)}


def _inputs(dtype, seed=0) -> np.ndarray:
    """(C, 64) off-grid values over many binades, with NaN, +-inf, +-0, ties and huge / tiny ones."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((C, 64)) * 2.0 ** rng.integers(-12, 12, (C, 64))
    x[:, :8] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e-30, 2.5]
    x[:, 8:16] = rng.integers(-40, 40, (C, 8)) / 8.0  # ties of many grids
    return x.astype(dtype)


def _layout(scale: np.ndarray) -> np.ndarray:
    return scale.reshape(C, 1) if scale.ndim else scale


def _same(a, b) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)  # NaN where NaN, values exactly
    assert np.array_equal(np.signbit(a), np.signbit(b))


# ------------------------------------------------------------------ the expressions before the change

def _old_quantize(x, fmt, scale):  # fpq.quantize's body after its checks
    dt = x.dtype
    scale = _as_scale(scale, x)
    unit = bool(np.all(scale == 1))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        xs = x if unit else (x / scale).astype(dt)
        q = quantize_unscaled(xs.astype(np.float64), fmt).astype(dt)
        return q if unit else (q * scale).astype(dt)


def _old_apply_scaled(x, fmt, scale, pre_scale=None):
    s = np.asarray(scale, dtype=np.float32)
    if pre_scale is not None:
        p = np.asarray(pre_scale).astype(x.dtype)
        x = np.rint(x / p) * p
    # (its unchanged fast path for po2-scaled Int formats is the same arithmetic: checked against this)
    dt = x.dtype
    sc = s.astype(dt)
    unit = bool(np.all(s == 1))
    xs = x if unit else x / sc
    y = quantize_unscaled(xs.astype(np.float64, copy=False), fmt).astype(dt, copy=False)
    if not unit:
        y = y * sc
    return y.astype(np.float32, copy=False)


def _old_quantizer_call(q: Quantizer, x):
    if q.pre_scale is not None:
        x = np.rint(x / q.pre_scale) * q.pre_scale
    return quantize(x, q.ttype.format, q.scale)


def _fits(fmt, dtype) -> bool:
    from fpq.numerics.reference import float_limits, inexact_reason
    return dtype == np.float64 or inexact_reason(fmt, float_limits(np.finfo(dtype))) is None


# ------------------------------------------------------------------ numpy

def _matrix(dtypes):
    """Every format x every scale kind x ``dtypes``: (name, kind, dtype)."""
    return pytest.mark.parametrize("name,kind,dtype", [(n, k, d) for n in FORMATS for k in SCALES for d in dtypes])


@_matrix([np.float32, np.float64])
def test_numpy_application_unchanged(name, kind, dtype):
    fmt, scale, x = parse_format(name), _layout(SCALES[kind]), _inputs(dtype)
    with np.errstate(all="ignore"):
        _same(apply_scaled(x, fmt, scale), _old_apply_scaled(x, fmt, scale))
        if _fits(fmt, dtype):
            _same(quantize(x, fmt, scale), _old_quantize(x, fmt, scale))
        pre = np.float32(0.5) if isinstance(fmt, Fixed) else None  # a Trunc's input grid
        _same(apply_scaled(x, fmt, scale, pre), _old_apply_scaled(x, fmt, scale, pre))
        q = Quantizer(TensorType(fmt, np.asarray(SCALES[kind]).reshape(-1) if np.ndim(SCALES[kind]) else
                                 np.float32(SCALES[kind])), np.asarray(scale, np.float32), "q", "Quant", pre_scale=pre)
        if _fits(fmt, dtype):
            _same(q(x), _old_quantizer_call(q, x))


# ------------------------------------------------------------------ torch

def _same_with_grads(new, old, x: torch.Tensor, params=()) -> None:
    """new(x) and old(x): the same values and the same gradients in x and ``params``."""
    res = []
    for f in (new, old):
        xi = x.detach().clone().requires_grad_()
        y = f(xi)
        res.append((y.detach(), torch.autograd.grad(y.nan_to_num(0.0, 0.0, 0.0).sum(), [xi, *params])))
    (y, g), (yo, go) = res
    _same(y.numpy(), yo.numpy())
    for a, b in zip(g, go):
        _same(a.numpy(), b.numpy())


@pytest.mark.parametrize("kind", ["po2", "float", "channel_float", "one"])
@pytest.mark.parametrize("name", FORMATS)
def test_quantize_torch_unchanged(name, kind):
    fmt = parse_format(name)
    x = torch.from_numpy(_inputs(np.float64, 1))
    scale = torch.tensor(_layout(SCALES[kind]), dtype=torch.float64)

    def before(xo):  # quantize_torch's last lines before the change
        unit = bool(torch.all(scale == 1))
        q = ste_quantize_unscaled(xo if unit else xo / scale, fmt)
        return q if unit else q * scale
    _same_with_grads(lambda v: quantize_torch(v, fmt, scale), before, x)


def _tensor_quant(name, kind, channels):
    from fpq.nn.quantizers import FpqFloatTensorQuant, FpqTensorQuant, default_scale_kind
    fmt = parse_format(name)
    cls = FpqFloatTensorQuant if type(fmt).__name__ == "Minifloat" else FpqTensorQuant
    tq = cls(name, default_scale_kind(fmt, kind), channels, "weight")
    if tq.scale_kind != "none":
        s = SCALES["channel_po2" if kind == "po2" else "channel_float"] if channels else SCALES[kind]
        tq.set_scale(torch.tensor(np.asarray(s, np.float64)))
    return tq


@pytest.mark.parametrize("channels", [0, C])
@pytest.mark.parametrize("kind", ["po2", "float"])
@pytest.mark.parametrize("name", FORMATS)
def test_layer_quantizer_unchanged(name, kind, channels):
    """FpqTensorQuant.quantize: values and the gradients in x and in the learnable log2 scale."""
    tq = _tensor_quant(name, kind, channels)
    params = [p for p in [tq.log2_scale] if p.requires_grad]

    def before(xo):  # the quantizer's body before the change
        sv = tq._view(tq.scale(), xo).to(xo.dtype)
        y = ste_quantize_unscaled(xo, tq.fmt) if tq.scale_kind == "none" else ste_quantize_unscaled(xo / sv, tq.fmt) * sv
        return y.to(torch.float32)
    _same_with_grads(lambda v: tq.quantize(v)[0], before, torch.from_numpy(_inputs(np.float32, 2)), params)


@_matrix([torch.float32, torch.float64])
def test_emulator_torch_application_unchanged(name, kind, dtype):
    """apply_scaled_torch (the emulator's torch backend), against its body before the change."""
    from fpq.numerics.torch_ops import apply_scaled_torch, quantize_unscaled_torch
    fmt, scale, x = parse_format(name), _layout(SCALES[kind]), torch.from_numpy(_inputs(np.float64, 3)).to(dtype)
    s = np.asarray(scale, dtype=np.float32)
    sd = torch.tensor(s, dtype=dtype)
    unit = bool(np.all(s == 1))  # (the unchanged po2 Int fast path is the same arithmetic)
    y = quantize_unscaled_torch((x if unit else x / sd).to(torch.float64), fmt).to(x.dtype)
    old = (y if unit else y * sd).to(torch.float32)
    _same(apply_scaled_torch(x, fmt, scale).numpy(), old.numpy())


@pytest.mark.parametrize("channels", [0, C])
@pytest.mark.parametrize("k", [1, 2])
def test_khot_quantizer_unchanged(k, channels):
    from fpq.nn.multfree import KHotWeightQuant, _KHotSTE
    tq = KHotWeightQuant("int6", "po2", channels, "weight", k)
    tq.set_scale(torch.tensor(np.asarray(SCALES["channel_po2"] if channels else SCALES["po2"], np.float64)))

    def before(xo):
        sv = tq._view(tq.scale(), xo).to(xo.dtype)
        return (_KHotSTE.apply(xo / sv, tq.codes) * sv).to(torch.float32)
    _same_with_grads(lambda v: tq.quantize(v)[0], before, torch.from_numpy(_inputs(np.float32, 4)), [tq.log2_scale])


@pytest.mark.parametrize("name", FORMATS)
def test_calibration_mse_unchanged(name):
    """The MSE scale search's error (fpq.nn.calibration_stats._mse), against its expression before."""
    from fpq.nn.calibration_stats import _mse
    from fpq.numerics.torch_ops import quantize_unscaled_torch
    tq = _tensor_quant(name, "float", 0)
    x = torch.from_numpy(_inputs(np.float64, 5)).nan_to_num(0.0, 1e3, -1e3).reshape(-1)
    for s in (0.25, 0.37, 1.0):
        old = float(torch.mean((quantize_unscaled_torch(x / s, tq.fmt) * s - x) ** 2))
        _same(np.float64(_mse(tq, x, s)), np.float64(old))
