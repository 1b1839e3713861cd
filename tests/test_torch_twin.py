"""quantize_torch (the torch twin) against the numpy reference, and its gradient.

Values: identical (atol=0, NaN where NaN) for every format kind, float32 and float64 inputs,
per-tensor and per-channel scales, power-of-two and other scales, on random off-grid inputs
that include out-of-range values, +-inf and NaN. Gradient: straight through inside the range,
zero outside; the scale receives d(Q(x/s)*s)/ds = Q(x/s) - (x/s) * inside.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fpq
from fpq import Fixed, Minifloat, quantize
from fpq.numerics.torch_ops import quantize_torch

FORMATS = [
    "fixed<8,3>", "fixed<6,2,RND,SAT_SYM>", "fixed<5,-1,RND_ZERO,WRAP>", "ufixed<7,3,RND_MIN_INF,SAT_ZERO>",
    "fixed<4,6,RND_INF,SAT>", "fixed<9,4,TRN,WRAP>", "fixed<10,1,TRN_ZERO,SAT_SYM>", "fixed<1,0,RND,SAT_SYM>",
    "int8", "int4_narrow", "uint3",
    "e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "e4m3_none", "float8_e4m3fnuz", "e4m3_nosat", "e5m2_nosat",
    "ue3m2", "e3m2_nosub", "e3m0", "e4m3_b11_fnuz_nosat", "fp16", "bf16",
    "binary",
]
DTYPES = [np.float32, np.float64]


def inputs(fmt, dtype, shape, seed=0, scale=1.0) -> np.ndarray:
    """Off-grid values in and out of the (scaled) range, tiny ones, +-inf, NaN, +-0."""
    rng = np.random.default_rng(seed)
    info = fpq.finfo(fmt)
    top = max(abs(info.max), abs(info.min))
    x = rng.uniform(-2.5 * top, 2.5 * top, shape)
    flat = x.reshape(-1)
    k = flat.size // 4
    flat[:k] = np.exp2(rng.uniform(-30, np.log2(top) + 2, k)) * rng.choice([-1, 1], k)
    flat[k:k + 6] = [np.inf, -np.inf, np.nan, 0.0, -0.0, top]
    with np.errstate(over="ignore"):  # bf16's range exceeds float32's: those become +-inf
        return (x * float(scale)).astype(dtype)


def scales(kind: str, dtype, channels: int):
    if kind == "unit":
        return 1.0
    if kind == "po2":
        return 2.0 ** -3
    if kind == "float":
        return 0.0371
    rng = np.random.default_rng(1)
    if kind == "po2_channel":
        return np.exp2(rng.integers(-4, 4, (channels, 1))).astype(dtype)
    return rng.uniform(0.01, 3.0, (channels, 1)).astype(dtype)  # float per channel


SCALES = ["unit", "po2", "float", "po2_channel", "float_channel"]


def _check_equal(fmt, x, s, device="cpu"):
    want = quantize(x, fmt, s)
    st = torch.as_tensor(s, device=device) if isinstance(s, np.ndarray) else s
    got = quantize_torch(torch.as_tensor(x, device=device), fmt, st)
    assert got.dtype == torch.from_numpy(want).dtype
    got = got.cpu().numpy()
    assert np.array_equal(got, want, equal_nan=True), (
        f"{fmt}: {np.sum(~((got == want) | (np.isnan(got) & np.isnan(want))))} values differ")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_values_equal_reference(fmt, dtype):
    for kind in SCALES:
        s = scales(kind, dtype, 8)
        # inputs sized to the scaled range, so scaled values land in and out of range
        _check_equal(fmt, inputs(fmt, dtype, (8, 500), scale=np.max(s)), s)


def test_integer_input_is_quantized_in_float64():
    x = np.arange(-40, 40)
    want = quantize(x, "fixed<8,3>", 0.3)
    got = quantize_torch(torch.arange(-40, 40), "fixed<8,3>", 0.3)
    assert got.dtype == torch.float64 and np.array_equal(got.numpy(), want)


def test_bad_scale_is_refused():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale must be finite and > 0"):
            quantize_torch(torch.ones(3), "int8", bad)
        with pytest.raises(ValueError, match="scale must be finite and > 0"):
            quantize(np.ones(3), "int8", bad)


@pytest.mark.parametrize("fmt", ["fixed<8,3>", "fixed<6,2,TRN,WRAP>", "int4", "e2m1", "e4m3_nosat",
                                 "e5m2", "ue3m2", "binary"])
@pytest.mark.parametrize("scale", [1.0, 0.25, 0.37])
def test_gradient_straight_through_inside_zero_outside(fmt, scale):
    info = fpq.finfo(fmt)
    x = torch.tensor(inputs(fmt, np.float64, (400,), seed=3)) * scale
    x = x[torch.isfinite(x)].clone().requires_grad_(True)
    quantize_torch(x, fmt, scale).sum().backward()
    xs = x.detach() / scale
    inside = (xs >= info.min) & (xs <= info.max)
    assert inside.any() and (~inside).any()
    assert torch.equal(x.grad, inside.to(x.dtype))


@pytest.mark.parametrize("fmt", ["fixed<8,3>", "int8", "e4m3", "e2m1"])
def test_gradient_reaches_the_scale(fmt):
    info = fpq.finfo(fmt)
    x = torch.tensor(inputs(fmt, np.float64, (4, 300), seed=5))
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x)) * 0.7
    s = torch.tensor([[0.5], [0.7], [1.3], [0.09]], dtype=torch.float64, requires_grad=True)
    q = quantize_torch(x, fmt, s)
    q.sum().backward()
    xs = x / s.detach()
    inside = ((xs >= info.min) & (xs <= info.max)).to(x.dtype)
    qs = torch.as_tensor(quantize(xs.numpy(), fmt))
    want = (qs - xs * inside).sum(dim=1, keepdim=True)
    assert s.grad is not None and torch.allclose(s.grad, want, rtol=1e-12, atol=1e-12)
    assert not torch.all(s.grad == 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_equals_reference(fmt):
    for dtype in DTYPES:
        for kind in SCALES:
            s = scales(kind, dtype, 8)
            _check_equal(fmt, inputs(fmt, dtype, (8, 500), scale=np.max(s)), s, device="cuda")
    x = torch.tensor(inputs(fmt, np.float32, (1000,), seed=9), device="cuda")
    x = x[torch.isfinite(x)].clone().requires_grad_(True)
    quantize_torch(x, fmt, 0.5).sum().backward()
    info = fpq.finfo(fmt)
    inside = (x.detach() / 0.5 >= info.min) & (x.detach() / 0.5 <= info.max)
    assert torch.equal(x.grad, inside.to(x.dtype))


# -- bit for bit on the grid: every value +-1 ulp, ties +-1 ulp, the edges, specials ----------------
GRID_FORMATS = [
    "e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "e4m3_none", "e4m3_nosat", "e5m2_nosat", "float8_e4m3fnuz",
    "e4m3_b11_fnuz_nosat", "ue3m2", "ue4m3_nosub_nosat", "e3m2_nosub", "e3m0", "e5m0_nosub", "fp16", "bf16",
    Minifloat(3, 2, bias=-2),                    # emin > 0: no value below 8
    Minifloat(4, 3, bias=12, subnormals=False, specials="ieee", saturate=False),
    Minifloat(5, 2, bias=-110),                  # beyond float32's range: float32 inputs take float64
    Minifloat(4, 3, bias=140),                   # below float32's normals: float64 too
    Minifloat(2, 1, signed=False, subnormals=False),
    "fixed<8,3>", "fixed<6,2,RND,SAT_SYM>", "fixed<5,-1,RND_ZERO,WRAP>", "ufixed<7,3,RND_MIN_INF,SAT_ZERO>",
    "fixed<4,6,RND_INF,SAT>", "fixed<9,4,TRN,WRAP>", "fixed<10,1,TRN_ZERO,SAT_SYM>", "fixed<16,-90>",
    "fixed<32,16>", "ufixed<30,2,RND,WRAP>", "fixed<54,10,RND_CONV,WRAP>", "fixed<12,-1000>", "fixed<8,1010>",
    "int8", "int4_narrow", "uint3", "int32", "binary",
]
# quiet NaNs of both signs, with and without a payload (signalling NaNs are not produced by
# arithmetic; the torch quantizer returns them quieted, the reference passes some through)
_QNAN = {np.float32: [0x7FC00000, 0xFFC00000, 0x7FC12345, 0xFFE00001],
         np.float64: [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF8000012345678, 0xFFFC000000000001]}


def _grid_points(fmt) -> np.ndarray:
    """The format's values (every one up to 16 bits, else codes near the ends and zero), in float64."""
    if fmt.width <= 16:
        return fpq.values(fmt)
    lo, hi = fmt.int_range
    k = np.unique(np.concatenate([np.arange(lo, lo + 40), np.arange(hi - 40, hi + 1), np.arange(-40, 40),
                                  np.random.default_rng(0).integers(lo, hi, 200, endpoint=True)]))
    step = fmt.step if isinstance(fmt, Fixed) else 1.0
    return np.unique(np.clip(k, lo, hi).astype(np.float64) * step)


def grid(fmt, dtype) -> np.ndarray:
    """Every value, every midpoint between neighbours (the ties), the overflow boundary and far
    beyond, the zero boundary and far below, each with its neighbours 1 ulp of ``dtype`` either
    side, both signs; +-0, +-inf, quiet NaNs; the dtype's subnormals and extremes."""
    fmt = fpq.parse_format(fmt)
    v = _grid_points(fmt)
    v = v[np.isfinite(v)]
    top = float(np.max(np.abs(v)))
    pos = np.abs(v[v != 0])
    small = float(np.min(pos)) if pos.size else 1.0
    gaps = np.diff(v)
    edge = [top + g * top * 2.0 ** -8 for g in (0.5, 1, 1.5, 2, 3)] + [2 * top, 8 * top, top * 2.0 ** 40]
    edge += [small * f for f in (0.25, 0.5, 0.75, 1.5)]
    with np.errstate(over="ignore"):
        pts = np.concatenate([v, v[:-1] + gaps / 2, edge, [1e30, 1e300]]).astype(dtype)
        pts = pts[np.isfinite(pts)]
        pts = np.concatenate([pts, np.nextafter(pts, np.inf), np.nextafter(pts, -np.inf)])
    info = np.finfo(dtype)
    pts = np.concatenate([pts, [info.max, info.tiny, info.smallest_subnormal, 3 * info.smallest_subnormal]])
    pts = np.concatenate([pts, -pts, np.array([0.0, np.inf], dtype)])
    pts = np.concatenate([pts, -pts[-2:]])  # -0.0, -inf
    nans = np.array(_QNAN[dtype], dtype=np.uint32 if dtype == np.float32 else np.uint64).view(dtype)
    return np.concatenate([pts, nans]).astype(dtype)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("fmt", GRID_FORMATS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_grid_bit_for_bit(fmt, dtype):
    from fpq.numerics import quantize_unscaled
    from fpq.numerics.reference import float_limits, inexact_reason
    from fpq.numerics.torch_ops import quantize_unscaled_torch, ste_quantize_unscaled

    fmt = fpq.parse_format(fmt)
    x = grid(fmt, dtype)
    with np.errstate(over="ignore"):  # values beyond float32's range become +-inf, as in fpq.quantize
        want = quantize_unscaled(x.astype(np.float64), fmt).astype(dtype)
    xt = torch.from_numpy(x.copy())
    if dtype == np.float32 and inexact_reason(fmt, float_limits(np.finfo(np.float32))):
        with pytest.raises(ValueError, match="float32 input cannot return every value"):
            quantize_torch(xt, fmt)  # the public twin refuses, as fpq.quantize; the internals round
        public = []
    else:
        public = [quantize_torch(xt, fmt)]
    for got in (quantize_unscaled_torch(xt, fmt), *public, ste_quantize_unscaled(xt, fmt)):
        assert got.dtype == xt.dtype
        bad = _bits(got.numpy()) != _bits(want)
        assert not bad.any(), f"{fmt} {dtype.__name__}: {x[bad][:5]} -> {got.numpy()[bad][:5]}, want {want[bad][:5]}"
    assert np.array_equal(_bits(xt.numpy()), _bits(x)), "the input was modified"
    # the clipped straight-through gradient, on the same grid
    info = fpq.finfo(fmt)
    xg = xt.clone().requires_grad_(True)
    ste_quantize_unscaled(xg, fmt).backward(torch.ones_like(xt))
    assert torch.equal(xg.grad, ((xt >= info.min) & (xt <= info.max)).to(xt.dtype))
