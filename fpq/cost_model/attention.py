"""The cost of the transformer ops as fpq.hls builds them (``fpq.hls.attention``): the product of two
activations (``FpqMatMul``), an embedding lookup (hls4ml's Embedding) and a quantized constant added
(a positional embedding).

Calibration: an UNCALIBRATED composition of calibrated operator tables, like the block layers
(``fpq.cost_model.blocks``). The general multipliers, adder trees, adders and the fused requantizer
are priced with the yosys synth_xilinx fits and measurements of ``ops.OperatorCosts``; the DSP rule
of a product of two variables is estimate's shared-multiplier rule (both operands >= 8 bits); the
embedding ROM is analytic (a LUT6 is a 64-entry ROM of one bit). No such layer was synthesized, so no
error figure is claimed for the composition.

* matmul, per output (g x M x N of them, all unrolled: the FpqMatMul C++ pipelines the whole product
  at II = reuse factor): K general x * y multipliers of the operands' carriers (both are variables),
  an adder tree of K products at the product width, and the fused requantizer's rounding (or none: the
  2^alpha is a moved binary point). The reuse factor shares the multipliers ``ceil(K g M N / R)``.
* gather: per output value (T x d) a ROM of ``rows`` entries of the table carrier's bits, indexed by
  its token's id.
* add_const: an adder per element at the exact sum's width.
The heads' reshapes, transposes and FpqPermute wiring cost nothing in io_parallel.
"""
from __future__ import annotations

import math

import numpy as np

from ..formats import Fixed
from ..typeplan import TensorType
from .devices import dsp_tiles

APPROX = "uncalibrated composition of calibrated operator tables (fpq.cost_model.attention)"
SHARED_DSP_BITS = 8   # estimate.SHARED_DSP_BITS: a variable x variable product this wide goes to a DSP


def _carrier(t, what: str) -> Fixed:
    if isinstance(t, Fixed):
        return t
    if isinstance(t, TensorType):
        c = t.carrier() if t.po2 else t.value_carrier()
        if c is not None:
            return c
    raise ValueError(f"{what}: no exact fixed-point type in the TypePlan to price")


def _row(lp, parts: dict, ff: float, cycles: int, **extra) -> dict:
    return dict(layer=lp.name, op=lp.op, lut=float(sum(parts.values())), ff=float(ff), dsp=int(extra.pop("dsp", 0)),
                bram18=0, uram=0, latency_cycles=int(cycles), ii=int(extra.pop("ii", 1)),
                bops=float(extra.pop("bops", 0)),
                ebops=0.0, parts={k: round(v, 1) for k, v in parts.items()}, approximate=APPROX, **extra)


def matmul_row(lp, ops, dev, rf: int, clock: float, dsp_threshold, notes: list, t_add, requant_luts) -> dict:
    shapes = lp.attrs.get("in_shapes") or []
    if len(shapes) != 2 or shapes[0] is None or shapes[1] is None:
        raise ValueError(f"layer {lp.name} (matmul): operand shapes unknown; export with an example input first")
    a, b = tuple(shapes[0][1:]), tuple(shapes[1][1:])
    g, m, k, n = int(np.prod(a[:-2])), a[-2], a[-1], b[-1]
    xc = _carrier(lp.tensors.get("input"), f"layer {lp.name} input")
    yc = _carrier(lp.tensors.get("other"), f"layer {lp.name} other")
    acc = lp.tensors.get("accumulator") or lp.attrs.get("value_accumulator")
    acc = acc if isinstance(acc, Fixed) else Fixed(xc.width + yc.width + math.ceil(math.log2(max(k, 2))), 1)
    outs = g * m * n
    n_mult = math.ceil(outs * k / rf)
    use_dsp = dsp_threshold is not None and min(xc.width, yc.width) >= SHARED_DSP_BITS
    parts = {}
    dsp = 0
    if use_dsp:
        tiles = dsp_tiles(xc.width, yc.width, dev, xc.signed, yc.signed)
        dsp = n_mult * tiles
        parts["multipliers_dsp_fabric"] = n_mult * ops.dsp_fabric_luts(xc.width + yc.width, tiles)
    else:
        parts["multipliers"] = n_mult * ops.mul_luts(xc.width, yc.width, xc.signed, yc.signed)[0]
    if rf == 1:
        parts["adder_trees"] = outs * ops.tree_luts(k, xc.width + yc.width)
    else:   # each shared product added into its output's accumulator, the operands selected per cycle
        parts["accumulate"] = n_mult * ops.add_luts(acc.width)
        parts["operand_mux"] = n_mult * (xc.width + yc.width) * math.ceil(math.log2(rf) / 2)
    out_t = lp.tensors.get("output")
    if lp.attrs.get("requant") is not None and isinstance(out_t, TensorType) and out_t.po2:
        parts["requantizer"] = outs * requant_luts(ops, out_t, acc, _carrier(out_t, lp.name))
    depth = (clock if use_dsp else t_add(dev, xc.width + yc.width)) + \
        t_add(dev, acc.width) * math.ceil(math.log2(max(k, 2)))
    stages = max(1, math.ceil(depth / clock))
    notes.append(f"{lp.name}: matmul of two activations ({g} x {m} x {k} @ {k} x {n}), {APPROX}")
    return _row(lp, parts, outs * acc.width * stages, stages + (rf - 1), dsp=dsp, ii=rf,
                bops=g * m * n * k * xc.width * yc.width, n_mult=int(n_mult), fan_in=int(k), n_out=int(outs),
                x_type=str(xc), w_type=str(yc), acc_bits=int(acc.width), acc_type=acc,
                mapping="dsp" if use_dsp else "lut")


def gather_row(lp, ops, dev, notes: list) -> dict:
    w = lp.values.get("weight")
    shape = lp.attrs.get("out_shape")
    if w is None or shape is None:
        raise ValueError(f"layer {lp.name} (gather): table or output shape unknown")
    wc = _carrier(lp.tensors.get("weight"), f"layer {lp.name} table")
    n = int(np.prod(shape[1:]))
    rows = int(np.shape(w)[0])
    notes.append(f"{lp.name}: embedding of {rows} rows as a LUT ROM per output value, {APPROX}")
    return _row(lp, {"rom": n * wc.width * math.ceil(rows / 64)}, n * wc.width, 1,
                rom_bits=int(rows * int(np.shape(w)[1]) * wc.width))


def add_const_row(lp, ops, notes: list) -> dict:
    shape = lp.attrs.get("out_shape")
    out = lp.tensors.get("output")
    if shape is None or not isinstance(out, TensorType):
        raise ValueError(f"layer {lp.name} (add_const): output type or shape unknown")
    oc = _carrier(out, lp.name)
    n = int(np.prod(shape[1:]))
    return _row(lp, {"adders": n * ops.add_luts(oc.width)}, n * oc.width, 1)


__all__ = ["matmul_row", "gather_row", "add_const_row"]
