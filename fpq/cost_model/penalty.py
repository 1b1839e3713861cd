"""The cost model as a differentiable training penalty: estimated LUTs of every Linear / Conv /
kept BatchNorm datapath as a function of its input and weight widths, with gradients through
QFX's learned widths (fpq.nn does not import it: call ``cost_penalty(q)`` beside the loss).

It prices with this package's measured operator table and fits (``ops.OperatorCosts``), so a
model trained against it is steered by the same figures ``fpq.estimate_cost`` reports.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..formats import exact_fixed
from ..ir import WEIGHTED_KINDS
from ..nn.layers import input_sources
from ..nn.qfx import QfxTensorQuant
from .ops import default_costs


def _width_of(tq) -> tuple[torch.Tensor, bool]:
    """(width in bits as a tensor, signed) of a value leaving quantizer ``tq``: the learned
    width (straight-through) of a QFX quantizer, else the exact fixed-point carrier's width."""
    if isinstance(tq, QfxTensorQuant):
        return tq.width().reshape(-1)[0], bool(tq._base.signed)  # channels share one width
    c = exact_fixed(tq.fmt)
    return torch.tensor(float(c.width)), bool(c.signed)


def _source_quantizers(q: nn.Module) -> dict:
    """{weighted layer name: tensor quantizer whose value that layer reads} (None where no
    quantizer reaches it through value-passing ops: relu, max pooling, flatten, reshape)."""
    modules = dict(q.named_modules())
    sources = input_sources(q)
    return {name: (modules[sources[name][0]].fpq_output if name in sources else None)
            for name, m in modules.items() if getattr(m, "fpq_op", None) in WEIGHTED_KINDS}


def _mul_fit_torch(costs, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The cost model's fitted a x b multiplier LUTs (``ops.mul_features`` with the fitted
    coefficients), written in torch so it is differentiable in real widths."""
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    big = float(float(lo.detach()) >= 3)       # the regime switch of mul_features (piecewise)
    c = [float(v) for v in costs.mul_fit.coef]
    feats = [lo * hi, lo * hi * big, lo * hi * torch.log2(torch.clamp(lo, min=1.0)) * big, (lo + hi) * big]
    return sum(ci * fi for ci, fi in zip(c, feats))


def cost_penalty(q: nn.Module, *, costs=None) -> torch.Tensor:
    """Estimated LUTs of the multiply-accumulate datapath of every Linear / Conv (and kept
    BatchNorm: one multiplier by s and one adder of t per channel) of ``q``, as a function of the
    input and weight widths, differentiable through the QFX widths.

    Each layer is priced as fpq's cost model prices ``n = weight.numel()`` general multipliers
    (``OperatorCosts.mul_luts``: the measured LUTs where synthesized, else the clamped fit) plus
    the adder that accumulates each product (``add_luts`` of the exact accumulator width,
    x + w + ceil(log2 fan_in) bits). The value is the cost model's own; the gradient is the one
    of its multiplier fit at the current widths (the measured table is not differentiable), the
    straight-through estimator of a table lookup. Unrolled constant weights cost less than
    general multipliers (``fpq.estimate_cost`` prices each constant), but both fall with the
    widths, which is what the penalty must steer."""
    costs = costs if costs is not None else default_costs()
    modules = dict(q.named_modules())
    total = torch.zeros((), dtype=torch.float64)
    for name, xq in _source_quantizers(q).items():
        m = modules[name]
        if xq is None or m.fpq_weight is None:
            raise ValueError(f"cost_penalty: layer {name!r} has no quantized input or weight to price")
        xw, xs = _width_of(xq)
        ww, ws = _width_of(m.fpq_weight)
        xw, ww = xw.to(torch.float64), ww.to(torch.float64)
        a, b = int(round(float(xw.detach()))), int(round(float(ww.detach())))
        n = m.weight.numel()
        fan_in = n // m.weight.shape[0]
        fit = _mul_fit_torch(costs, xw, ww)
        mul = fit + (costs.mul_luts(a, b, xs, ws)[0] - fit.detach())   # value: the cost model's
        acc = xw + ww + math.ceil(math.log2(max(fan_in, 2)))
        add_c = [float(v) for v in costs.add_fit.coef]
        add = add_c[0] * acc + add_c[1]
        total = total + n * (mul + add)
    return total


__all__ = ["cost_penalty"]
