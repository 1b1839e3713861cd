"""Threshold lookups in the estimate: a quantizer the HLS project (and ``fpq.to_rtl``) builds as
``fpq::quantize_by_thresholds`` over the exact values of what feeds it (a float-scaled quantizer,
one after an average pool's window sum) or over the float32 network input (any input quantizer no
ap_fixed cast computes: a minifloat, a narrow int, a float scale), priced per element.
"""
from __future__ import annotations

import math

import numpy as np

from ..formats import Fixed, Int, exact_fixed
from ..typeplan import TensorType, levels_carrier, po2_exponents, values_carrier
from .devices import Device, add_delay_ns
from .ops import OperatorCosts, thr_steps


_t_add = add_delay_ns   # the one adder-delay model (devices.py); the short name the rows use


def is_cast(t: TensorType) -> bool:
    """A quantizer an ap_fixed cast computes (the TypePlan's fusing rule, fpq.hls and fpq.to_rtl
    alike): Fixed, or Int with its full range, at one power-of-two scale."""
    return t.po2 and np.size(t.scale) == 1 and (isinstance(t.format, Fixed) or
                                                (isinstance(t.format, Int) and not t.format.narrow))


def requant_luts(ops: OperatorCosts, t: TensorType, feed: Fixed, out: Fixed) -> float:
    """LUTs of one element of the cast / minifloat requantizer ``t`` (power-of-two scale) of the
    exact value ``feed``, as synthesized (``OperatorCosts.quant_luts``)."""
    e = int(np.ravel(po2_exponents(t.scale))[0])
    return ops.quant_luts(t.format, e, feed, out)


def _elements(lp) -> int | None:
    shape = lp.attrs.get("out_shape")
    if shape is None:
        return None
    return int(np.prod(shape[1:])) if len(shape) > 1 else int(np.prod(shape))


_TABLES: dict = {}


def _table(fmt, scale: float, feed, divisor: int = 1):
    """The lookup table of the HLS project (cached: the same quantizer over the same input type)."""
    from ..numerics.thresholds import quantizer_table

    key = (str(fmt), scale, str(feed), divisor)
    if key not in _TABLES:
        _TABLES[key] = quantizer_table(fmt, np.float32(scale), feed, divisor)
    return _TABLES[key]


def lookup_row(lp, t: TensorType, feed, feed_bits, ops: OperatorCosts, dev: Device, clock: float, io_type: str,
                notes: list, divisor: int = 1) -> dict:
    """The threshold lookup (fpq::quantize_by_thresholds) of quantizer ``t`` on every element:
    n thresholds of the input's exact type (W bits; the float32 port: 32), a binary search of
    ceil(log2(n + 1)) comparator levels and a ROM of n + 1 levels. The table is the HLS
    project's own where the input type is known, else bounded by the format's value count."""
    from ..formats import values as format_values
    from .rtl import threshold_span

    name = lp.name if lp.op.lower() in ("input_quant", "quant") else f"{lp.name}:lookup"
    n_el = _elements(lp)
    shape = lp.attrs.get("out_shape")
    if n_el is None:
        notes.append(f"{name}: output shape unknown (calibrate or export first); lookup priced for one element")
        n_el = 1
    pixels = int(np.prod(shape[2:])) if shape is not None and len(shape) > 2 else 1
    # io_parallel: FpqQuantize unrolls over every element; io_stream: one pixel (its channels) per
    # cycle, as the conv layers are priced
    units = n_el // pixels if io_type == "io_stream" else n_el
    table = None
    if np.size(t.scale) != 1:
        why = "per-channel float scales (the HLS project refuses them)"
    elif isinstance(feed, Fixed) and feed.width > 53:
        why = f"its input {feed} is wider than 53 bits (the HLS project refuses it)"
    elif feed is None:
        why = "the exact type of its input is not known here"
    else:
        try:
            table = _table(t.format, float(np.ravel(t.scale)[0]), feed if feed == "float32" else
                           Fixed(feed.width, feed.int_bits, feed.signed), divisor)
            why = ""
        except ValueError as e:
            why = f"no exact table ({e})"
    if table is not None:
        th, lv = table
        n = len(th)
        w = 32 if feed == "float32" else feed.width
        span = 32 if feed == "float32" else threshold_span(w, feed.frac_bits, th)[0]
        out = (levels_carrier(t, lv) if t.po2 else values_carrier(lv)) if n else Fixed(2, 2, True)
        out_bits = out.width
    else:
        n = max(1, len(format_values(t.format)) - 1)
        w = 32 if feed == "float32" else (feed.width if isinstance(feed, Fixed) else (feed_bits or 32))
        span = w
        out = t.value_carrier() or exact_fixed(t.format)
        out_bits = out.width
        notes.append(f"{name}: {t.describe()} lookup bounded: {n} thresholds (the format's values) over {w} "
                     f"input bits, since {why}")
    luts, carry = ops.thr_luts(w, n, out_bits, span)
    if feed == "float32" and table is not None:   # fpq.to_rtl's input port: the float32 key, then the search
        from ..numerics.thresholds import float32_keys
        from .ops import varying_bits

        luts = ops.float32_lookup_luts(n, varying_bits(float32_keys(th), 32), values_carrier(lv).width)
    steps = thr_steps(n)
    depth_ns = steps * _t_add(dev, span) + dev.lut_delay_ns     # comparator levels, then the level ROM
    stages = max(1, math.ceil(depth_ns / clock)) if n else 0
    return dict(layer=name, op="threshold_lookup", lut=float(units * luts), ff=float(units * out_bits), dsp=0,
                bram18=0, uram=0, latency_cycles=int(stages), ii=int(pixels if io_type == "io_stream" else 1),
                bops=0.0, ebops=0.0, mapping="threshold-lookup", thresholds=int(n), in_bits=int(w),
                in_span=int(span), out_bits=int(out_bits), lookups=int(units), carry=float(units * carry),
                quantizer=t.describe(), _out=out)
