"""Torch twin of the block-format reference (fpq.numerics.blocks), for QAT: the same values bit for
bit (float64 throughout, each step the same IEEE operation on the same operands; the element and
scale roundings are fpq.numerics.torch_ops' exact quantizers), a straight-through gradient, and
stochastic rounding of the elements as a training-only option.

Gradient: straight through to x where the element did not saturate (|v / X| <= max_elem), zero
where it did and in NaN / inf blocks; the block scales are treated as constants (they follow the
block's max, as the hardware computes them).
"""
from __future__ import annotations

import torch

from ..formats import BlockFormat, Minifloat, values
from ..formats.block import element_precision
from .blocks import E8M0_MAX_EXP, E8M0_MIN_EXP, _tensor_scale_from_amax, as_block_format, check_tensor_scale
from .torch_ops import quantize_unscaled_torch


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """2.0**e (float64) for integer e in -1022..1023, built from the exponent bits: exact (torch.ldexp
    and exp2 go through pow)."""
    return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)


def _to_blocks(x: torch.Tensor, k: int, axis: int) -> tuple[torch.Tensor, int]:
    xm = x.movedim(axis, -1)
    n = xm.shape[-1]
    nb = -(-n // k)
    if nb * k != n:
        xm = torch.cat([xm, xm.new_zeros(xm.shape[:-1] + (nb * k - n,))], dim=-1)
    return xm.reshape(xm.shape[:-1] + (nb, k)), n


def _from_blocks(b: torch.Tensor, n: int, axis: int) -> torch.Tensor:
    return b.reshape(b.shape[:-2] + (-1,))[..., :n].movedim(-1, axis)


def e8m0_exponents_torch(amax: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """Twin of blocks.e8m0_exponents (int64)."""
    m, e2 = torch.frexp(amax)
    e2 = e2.to(torch.int64)
    mode = fmt.scale_rounding
    if mode == "floor":
        e = e2 - 1 - fmt.emax_elem
    elif mode == "ceil":
        e = e2 - 1 + (m != 0.5).to(torch.int64) - fmt.emax_elem
    elif mode == "even":
        up = m >= 1.0 - 2.0 ** -(element_precision(fmt.elem) + 1)
        e = e2 - 1 + up.to(torch.int64) - fmt.emax_elem
    else:
        me, ee = torch.frexp(torch.tensor(fmt.elem_max, dtype=torch.float64))
        e = e2 - int(ee) + (m > me).to(torch.int64)
    e = torch.where(amax == 0, torch.full_like(e, E8M0_MIN_EXP), e)
    return e.clamp(E8M0_MIN_EXP, E8M0_MAX_EXP)


def _stochastic(r: torch.Tensor, fmt: BlockFormat, generator: torch.Generator) -> torch.Tensor:
    """Stochastic rounding of r (float64, at block scale 1) to the element grid: the upper neighbour
    with probability (r - lo) / (hi - lo); saturating outside the grid."""
    grid = torch.tensor(values(fmt.elem), dtype=torch.float64, device=r.device)
    lo_v, hi_v = float(grid[grid >= -fmt.elem_max][0]), fmt.elem_max
    rc = r.clamp(lo_v, hi_v)
    i = torch.searchsorted(grid, rc, right=True).clamp(1, len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    p = (rc - lo) / (hi - lo)
    u = torch.rand(r.shape, generator=generator, dtype=torch.float64, device="cpu").to(r.device)
    return torch.where(u < p, hi, lo)


def block_quantize_torch(x: torch.Tensor, fmt, tensor_scale=None, *, stochastic: bool = False,
                         generator: torch.Generator | None = None):
    """(values, elements, block scales, tensor scale) of x, float64, bit-identical to
    blocks.block_quantize with round-to-nearest-even elements. ``stochastic``: round the elements
    stochastically with ``generator`` (required: seeded, reproducible) - a training option only."""
    return _quantize(x, as_block_format(fmt), tensor_scale, stochastic, generator)[0]


def _quantize(x: torch.Tensor, fmt: BlockFormat, tensor_scale, stochastic: bool, generator):
    """block_quantize_torch's result and the mask of saturated elements (and NaN / inf blocks)."""
    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise ValueError("block_quantize_torch takes a floating-point torch tensor")
    if x.ndim == 0:
        raise ValueError("block quantization needs at least one axis to block along, got a scalar")
    if not -x.ndim <= fmt.axis < x.ndim:
        raise ValueError(f"{fmt}: block axis {fmt.axis} is out of range for an input of shape {tuple(x.shape)}")
    if stochastic and not isinstance(generator, torch.Generator):
        raise ValueError("stochastic rounding needs a seeded torch.Generator (reproducible training)")
    xd = x.detach().to(torch.float64)
    blocks, n = _to_blocks(xd, fmt.k, fmt.axis)
    a = blocks.abs()
    finite = torch.isfinite(a)
    bad = ~finite.all(dim=-1)
    amax = torch.where(finite, a, torch.zeros_like(a)).amax(dim=-1)
    st = None
    if fmt.po2_scale:
        if tensor_scale is not None:
            raise ValueError(f"{fmt} has absolute e8m0 scales; it takes no tensor scale")
        e = e8m0_exponents_torch(amax, fmt)
        scales = _pow2(e)
        r = blocks * _pow2(-e)[..., None]
    else:
        sf: Minifloat = fmt.scale
        if tensor_scale is None:
            fin = torch.isfinite(xd)
            amax_t = float(xd.abs()[fin].max()) if bool(fin.any()) else 0.0
            st = float(_tensor_scale_from_amax(amax_t, fmt))
        else:
            st = float(check_tensor_scale(tensor_scale, fmt))
        d = torch.minimum(amax / (fmt.elem_max * st), torch.tensor(sf.max_value, dtype=torch.float64))
        scales = quantize_unscaled_torch(d, sf).clamp_min(sf.min_normal)
        S = scales * st
        r = blocks / S[..., None]
    elems = _stochastic(r, fmt, generator) if stochastic else quantize_unscaled_torch(r, fmt.elem)
    vals = elems * (scales if fmt.po2_scale else scales * st)[..., None]
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=x.device)
    elems = torch.where(bad[..., None], nan, elems)
    vals = torch.where(bad[..., None], nan, vals)
    scales = torch.where(bad, nan, scales)
    saturated = (r.abs() > fmt.elem_max) | bad[..., None]
    out = (_from_blocks(vals, n, fmt.axis), _from_blocks(elems, n, fmt.axis),
           scales.movedim(-1, fmt.axis % x.ndim), st)
    return out, _from_blocks(saturated, n, fmt.axis)


class _BlockSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fmt, tensor_scale, stochastic, generator, exact):
        (vals, _, _, _), saturated = _quantize(x, fmt, tensor_scale, stochastic, generator)
        ctx.save_for_backward(saturated)
        ctx.in_dtype = x.dtype
        return vals if exact else vals.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (saturated,) = ctx.saved_tensors
        return (grad * (~saturated).to(grad.dtype)).to(ctx.in_dtype), None, None, None, None, None


def ste_block_quantize(x: torch.Tensor, fmt, tensor_scale=None, *, training: bool = False,
                       stochastic: bool = False, generator: torch.Generator | None = None,
                       exact: bool = False) -> torch.Tensor:
    """Block fake-quantization for QAT, in x's dtype (an MX value of a float32 x is a float32
    number; an NVFP4 value, 2 + 4 + 24 bits, is rounded to float32 then), or float64 with ``exact``
    (every value exact: the eval forward), with the straight-through gradient. ``stochastic`` rounding is
    refused outside training (``training=False``): inference and export round to nearest even."""
    if stochastic and not training:
        raise ValueError("stochastic rounding is a training option only; inference and export round to nearest even")
    return _BlockSTE.apply(x, as_block_format(fmt), tensor_scale, stochastic, generator, exact)


__all__ = ["block_quantize_torch", "ste_block_quantize", "e8m0_exponents_torch"]
