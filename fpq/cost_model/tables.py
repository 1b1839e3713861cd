"""The cost of an activation table (IR kind ``table``): what fpq.hls builds for it, priced.

fpq.hls writes each element as ``fpq::quantize_by_thresholds`` over the input's values (its
quantizer's grid, N values: N - 1 thresholds of the input's carrier) and the N table outputs as
its levels. That is the circuit the threshold lookups of float-scaled quantizers are (the same
calibrated fit, ``OperatorCosts.thr_luts``): ceil(log2 N) comparator levels on the bits in which
the thresholds differ, the threshold ROMs, and an N-entry level ROM of the output width. A
quantizer fused after the table (a cast, fpq.ir.plan) costs nothing more: the levels are its
values already.
"""
from __future__ import annotations

import math

import numpy as np

from ..typeplan import TensorType, values_carrier
from .ops import thr_steps


def table_row(lp, ops, dev, clock: float, notes: list, t_add) -> dict:
    """One cost row (the estimate's layer row keys) of a table layer ``lp`` on every element."""
    from ..numerics.activations import input_values
    from .rtl import threshold_span

    shape = lp.attrs.get("out_shape")
    n_el = int(np.prod(shape[1:])) if shape is not None and len(shape) > 1 else None
    row = dict(layer=lp.name, op=lp.op, lut=0.0, ff=0.0, dsp=0, bram18=0, uram=0, latency_cycles=0, ii=1,
               bops=0.0, ebops=0.0, mapping="table-lookup")
    t_in, t_out = lp.tensors.get("input"), lp.tensors.get("output")
    if n_el is None or not isinstance(t_in, TensorType):
        notes.append(f"{lp.name} (table): output shape or input type unknown; not priced")
        return row
    xs, ys = lp.attrs["x"], lp.attrs["y"]
    keep = np.isin(xs, input_values(t_in.format, t_in.scale, f"table {lp.name!r}"))
    th, lv = xs[keep][1:], ys[keep] if ys.ndim == 1 else ys[:, keep]
    feed = t_in.value_carrier()
    out = t_out.value_carrier() if isinstance(t_out, TensorType) else (t_out or values_carrier(lv))
    n = len(th)
    span = threshold_span(feed.width, feed.frac_bits, th)[0] if n else 0
    luts, carry = ops.thr_luts(feed.width, n, out.width, span)
    depth_ns = thr_steps(n) * t_add(dev, span) + dev.lut_delay_ns if n else 0.0
    row.update(lut=float(n_el * luts), ff=float(n_el * out.width), latency_cycles=max(1, math.ceil(depth_ns / clock)),
               thresholds=int(n), in_bits=int(feed.width), in_span=int(span), out_bits=int(out.width),
               lookups=int(n_el), carry=float(n_el * carry), function=str(lp.attrs.get("function", "")))
    if ys.ndim != 1:
        notes.append(f"{lp.name}: {ys.shape[0]} per-channel tables priced as one each element reads; the HLS "
                     "path refuses per-channel tables")
    return row
