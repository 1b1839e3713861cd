"""The cost of softmax / LayerNorm (IR kinds ``softmax`` / ``layernorm``): the circuit fpq.hls
builds (``hls/fpq_normalization.h``, fully unrolled per row), priced operator by operator.

Operator by operator, from the widths of the TypePlan's internal types (``fpq.numerics.normalization``):
* adders, subtractors, comparators and the row sums: the calibrated adder fit (``add_luts`` /
  ``tree_luts``); the row maximum as n - 1 comparators;
* the general multipliers (e x r; n D x rsqrt) and the gamma products (constants): the calibrated
  multiplier fits (``mul_luts``, ``cmul_luts``), in fabric (no DSP is assumed);
* the divider 2^40 / s and the integer square root: a restoring array, one subtractor per
  quotient / root bit (recip_bits + 1 stages of the sum's width; 31 stages of up to 64 bits),
  each priced with the adder fit: APPROXIMATE (no divider or square root was synthesized for the
  fit; a pipelined or iterative divider trades these LUTs for latency);
* the exp table: an indexed ROM in LUTs, ceil(entries / 64) LUT6 per output bit (analytic, not
  fitted: the calibrated threshold-lookup fit prices a binary search, which this ROM is not).
Latency: the critical path (max tree, ROM, sum tree, divider stages, multiplier, rounding) as
adder delays of the device over the clock, one row at a time (io_stream reads the rows first).
"""
from __future__ import annotations

import math

import numpy as np

from ..typeplan import TensorType


def _bits(t) -> int:
    return int(t.width) if t is not None and hasattr(t, "width") else 0


def _in_bits(lp) -> int:
    t = lp.tensors.get("input")
    c = t.value_carrier() if isinstance(t, TensorType) else None
    return int(c.width) if c is not None else 16


def normalization_row(lp, ops, dev, clock: float, notes: list, t_add) -> dict:
    """One cost row (the estimate's layer row keys) of a softmax / layernorm layer ``lp``."""
    shape = lp.attrs.get("out_shape")
    n_el = int(np.prod(shape[1:])) if shape is not None and len(shape) > 1 else None
    row = dict(layer=lp.name, op=lp.op, lut=0.0, ff=0.0, dsp=0, bram18=0, uram=0, latency_cycles=0, ii=1,
               bops=0.0, ebops=0.0, mapping="exact-pipeline")
    rec = lp.attrs.get("recipe")
    if n_el is None or rec is None:
        notes.append(f"{lp.name} ({lp.op}): output shape or recipe unknown; not priced")
        return row
    n = int(shape[-1])
    rows = n_el // n
    kw = _in_bits(lp) + 1
    T = lp.tensors
    out = T.get("output")
    out_bits = _bits(out.value_carrier() if isinstance(out, TensorType) else out)
    parts, path = {}, []
    if lp.op == "softmax":
        sum_w, ef = _bits(T["sum"]), rec.exp_frac + 1
        entries = len(rec.exp_table)
        parts["max"] = (n - 1) * ops.add_luts(kw)
        parts["diff"] = n * ops.add_luts(kw + 1)
        parts["exp_rom"] = n * ef * math.ceil(entries / 64)
        parts["sum"] = ops.tree_luts(n, ef)
        parts["divider"] = (rec.recip_bits + 1) * ops.add_luts(sum_w + 1)
        parts["mul"] = n * ops.mul_luts(ef, _bits(T["reciprocal"]), False, False)[0]
        parts["round"] = n * ops.add_luts(rec.out_frac + 2)
        path = [t_add(dev, kw)] * math.ceil(math.log2(max(n, 2))) + [dev.lut_delay_ns * 2] + \
            [t_add(dev, sum_w)] * (math.ceil(math.log2(max(n, 2))) + rec.recip_bits + 1) + [t_add(dev, 48)]
    else:
        d_w, u_w, z_w = _bits(T["diff"]), _bits(T["variance"]), _bits(T["norm"])
        parts["sum"] = ops.tree_luts(n, kw)
        parts["diff"] = n * (ops.add_luts(d_w) + ops.cmul_luts(kw, n)[0])
        parts["square"] = n * ops.mul_luts(d_w, d_w)[0]
        parts["variance"] = ops.tree_luts(n, 2 * d_w) + ops.cmul_luts(u_w, n, False)[0] + ops.add_luts(u_w)
        parts["normalize"] = (62 - rec.norm_bits) // 2 * ops.add_luts(u_w)
        parts["divider"] = (2 * rec.rsqrt_frac + 1) * ops.add_luts(rec.norm_bits + 1)
        parts["isqrt"] = rec.rsqrt_frac * ops.add_luts(2 * rec.rsqrt_frac + 2)
        parts["scale"] = n * ops.mul_luts(d_w + n.bit_length(), rec.rsqrt_frac + 1)[0]
        parts["gamma"] = sum(ops.cmul_luts(z_w, g)[0] for g in rec.gamma) + n * ops.add_luts(_bits(T["affine"]))
        parts["round"] = n * 2 * ops.add_luts(24)
        depth = math.ceil(math.log2(max(n, 2)))
        path = [t_add(dev, kw)] * depth + [t_add(dev, 2 * d_w)] * (depth + 2) + \
            [t_add(dev, rec.norm_bits + 1)] * (2 * rec.rsqrt_frac + 1) + [t_add(dev, 64)] * rec.rsqrt_frac + \
            [t_add(dev, 64)] * 3
    per_row = float(sum(parts.values()))
    row.update(lut=rows * per_row, ff=float(n_el * out_bits), latency_cycles=max(1, math.ceil(sum(path) / clock)),
               rows=int(rows), row_length=n, parts={k: round(rows * v, 1) for k, v in parts.items()},
               approximate="divider / square-root arrays and the exp ROM are analytic (adder fit per stage, "
                           "64 entries per LUT6), not synthesized")
    notes.append(f"{lp.name} ({lp.op}): {rows} row(s) of {n}; divider / square root priced as restoring arrays "
                 "(approximate), no DSP assumed")
    return row
