"""The cost of the block-scaled datapath (mxfp4, nvfp4, mxfp8_e4m3, mxint8, ``block<...>``): the
circuit fpq.hls builds (``hls/fpq_block.h``: FpqBlockQuant, FpqBlockDense, FpqBlockConv, fully
unrolled), priced operator by operator from the same widths (``fpq.numerics.block_hw``). A block
convolution is one block dot product of taps x input channels per output pixel and channel, priced
once per output pixel (the unrolled circuit; taps on the padding are priced too).

Calibration: an UNCALIBRATED composition of calibrated operator tables. Every adder, adder tree,
comparator, constant multiplier, general multiplier and threshold search is priced with the yosys
synth_xilinx fits and measurements of ``ops.OperatorCosts``; the barrel shifters and the small
decode ROMs are analytic (a LUT6 is a 4:1 mux: ceil(levels / 2) LUTs per output bit; a ROM of
2^a entries is ceil(2^a / 64) LUT6 per output bit). No block layer was synthesized, so no error
figure is claimed for the composition.

Block dot product, per output and sub-block of g = gcd(k_x, k_w) values:
* ``elem_decode``: the activation element index -> its integer (a ROM per input, shared by all
  outputs);
* ``elem_mult``: element x constant weight element (zero free, a power of two a shift), the
  calibrated constant-multiplier table at the element widths;
* ``block_tree``: the adder tree of the g products;
* ``scale_mult``: the sum times the block scales' significands (E8M0: none; a run-time ue4m3
  significand: a general multiplier; a static one: a constant multiplier);
* ``exp_add`` and ``shifter``: the two scale exponents' sum and the shift of the term into the
  exact (Kulisch) accumulator over the activation scale's exponent range;
* ``accumulate``: the tree of the n_sub shifted terms at the accumulator width; then per output
  ``tensor_scale`` (a constant multiplier by the tensor scales' product, NVFP4), ``bias`` (an
  adder) and ``round_to_odd`` (leading one and a shift to 53 bits + sticky, what the C++ does
  before the next block quantizer).
Block quantizer, per block of k: ``block_max`` (k - 1 magnitude comparators on the 64-bit double
word), ``scale`` (E8M0: the exponent field minus emax_elem with its clamp; a ue4m3 scale: a
threshold search over the scale's midpoints and its significand times the static tensor scale's),
``thresholds`` (per block, the element grid's midpoints x S: exponent adds, plus constant
multipliers for a scale with mantissa bits), and per element ``elem_round`` (a threshold search
over those midpoints). The C++ writes these comparisons on doubles that hold every operand
exactly; priced here as the integer / exponent operators of the same widths. ReLU of block words clears the element bits; the network output decodes words
(ROM + shift).
"""
from __future__ import annotations

import math

import numpy as np

from ..formats import BlockFormat
from ..numerics.block_hw import dense_widths, make_wire, output_widths, scale_sig_exp, sig_exp

DOUBLE_BITS = 64   # the block quantizer compares exact doubles (sign, exponent, 53-bit significand)


def is_block_layer(lp) -> bool:
    return any(isinstance(getattr(t, "format", None), BlockFormat) for t in lp.tensors.values())


def _rom(entries: int, bits: int) -> float:
    return bits * math.ceil(entries / 64)


def _shifter(bits: int, span: int) -> float:
    levels = max(0, span).bit_length()
    return bits * math.ceil(levels / 2)


def _row(lp, parts: dict, ff: float, depth_ns: float, clock: float, **extra) -> dict:
    return dict(layer=lp.name, op=lp.op, lut=float(sum(parts.values())), ff=float(ff), dsp=0, bram18=0, uram=0,
                latency_cycles=max(1, math.ceil(depth_ns / clock)), ii=1, bops=0.0, ebops=0.0,
                mapping="block-datapath", block=True, parts={k: round(v, 1) for k, v in parts.items()},
                approximate="uncalibrated composition of calibrated operator tables (fpq.cost_model.blocks)",
                **extra)


def _dense(lp, ops, dev, clock, t_add, pixels: int = 1) -> dict:
    """A block Linear, or (``pixels`` > 1 or a conv op) a block convolution: fpq::block_conv unrolls
    one dot product of taps x input channels per output pixel and channel, so every part is
    ``pixels`` times one output pixel's (taps that fall on the padding are priced too)."""
    x_t, w_t = lp.tensors["input"], lp.tensors["weight"]
    W = lp.values.get("weight")
    if W is None or not isinstance(x_t.format, BlockFormat) or not isinstance(w_t.format, BlockFormat):
        raise ValueError(f"layer {lp.name}: a block-scaled Linear / convolution is priced (and built) with "
                         "block-scaled input and weights and known weight values")
    xw = make_wire(x_t.format, x_t.scale, f"layer {lp.name} (input)")
    ww = make_wire(w_t.format, w_t.scale, f"layer {lp.name} (weight)")
    W = np.asarray(W, dtype=np.float64)
    taps = int(np.prod(W.shape[2:])) if W.ndim > 2 else 1
    if W.ndim > 2:   # (O, C, *kernel) -> (o, tap) rows of input channels, as fpq.hls.blocks lays them out
        W = np.swapaxes(W.reshape(W.shape[0], W.shape[1], taps), 1, 2).reshape(-1, W.shape[1])
    perm = np.arange(W.shape[1]) if lp.attrs.get("flat_of_map") else None   # one scale pair per product
    d = dense_widths(xw, ww, W, lp.values.get("bias"), f"layer {lp.name}", taps, perm)
    xb, wb = max(d.x_ints).bit_length() + 1, max(d.w_ints).bit_length() + 1
    cm_cache: dict = {}

    def cmul(bits, k):
        if (bits, k) not in cm_cache:
            cm_cache[(bits, k)] = ops.cmul_luts(bits, int(k))[0]
        return cm_cache[(bits, k)]

    k_int = np.asarray(d.w_ints)[d.w_idx]
    pairs = d.n_out * d.n_sub * taps
    xs_bits = max(d.x_sig).bit_length()
    parts = {"elem_decode": d.n_in * taps * _rom(1 << xw.elem.idx_bits, xb),
             "elem_mult": float(sum(cmul(xb, k) for k in k_int[k_int != 0])),
             "block_tree": pairs * ops.tree_luts(d.g, xb + wb),
             "scale_mult": (pairs * ops.mul_luts(d.pw, xs_bits, True, False)[0] if xs_bits > 1 else 0.0) +
                           float(sum(cmul(d.pw, d.w_sig[c]) for c in np.ravel(d.w_codes) if d.w_sig[c] > 1)),
             "exp_add": pairs * ops.add_luts(max(abs(e) for e in d.x_exp).bit_length() + 2),
             "shifter": pairs * _shifter(d.aw, d.x_e_span),
             "accumulate": d.n_out * ops.tree_luts(d.n_sub * taps, d.aw),
             "tensor_scale": d.n_out * cmul(d.aw, d.cm) if d.cm != 1 else 0.0,
             "bias": d.n_out * ops.add_luts(d.yw),
             "round_to_odd": d.n_out * (math.ceil(d.yw / 2) + _shifter(53, d.yw))}
    depth = [t_add(dev, xb + wb)] * 2 + [t_add(dev, d.pw)] * max(1, math.ceil(math.log2(d.g))) + \
        [dev.lut_delay_ns] * ((d.x_e_span.bit_length() + 1) // 2) + \
        [t_add(dev, d.aw)] * max(1, math.ceil(math.log2(max(d.n_sub * taps, 2)))) + [t_add(dev, d.yw)] * 2
    parts = {k: v * pixels for k, v in parts.items()}
    return _row(lp, parts, pixels * d.n_out * d.yw, sum(depth), clock, n_mult=pixels * int((k_int != 0).sum()),
                fan_in=d.n_in * taps, n_out=d.n_out * pixels, acc_bits=d.aw, x_type=str(x_t.format), w_type=str(w_t.format),
                block_sum=f"sub-blocks of {d.g}: products {d.pw} bits, accumulator {d.aw} bits "
                          f"(scale exponents over {d.e_span} binades), result {d.yw} bits")


def _quant(lp, ops, dev, clock, t_add, n: int, shape) -> dict:
    t = lp.tensors["output"]
    wire = make_wire(t.format, t.scale, f"layer {lp.name}")
    k = t.format.k
    # blocks per row along the format's axis (a feature map: per pixel, or per row of its width), padded
    row = int(shape[t.format.axis]) if shape is not None and len(shape) > 2 else n
    nb = (n // row) * -(-row // k)
    in_bits = 32 if lp.op.lower() == "input_quant" else DOUBLE_BITS
    n_mid = len(wire.elem.mids)
    mids = [sig_exp(float(m)) for m in wire.elem.mids]
    parts = {"block_max": nb * (k - 1) * (ops.add_luts(in_bits) + math.ceil(in_bits / 2))}
    if t.format.po2_scale:
        parts["scale"] = nb * 2 * ops.add_luts(11)                # exponent field - emax_elem, clamp
        parts["thresholds"] = nb * n_mid * ops.add_luts(11)       # midpoint x 2^e: exponent adds
    else:
        st_sig, _ = sig_exp(wire.st)
        s_bits = max(sig_exp(float(v))[0] for v in wire.scale_vals).bit_length()
        parts["scale"] = nb * (ops.thr_luts(in_bits, len(wire.scale_vals) - 1, wire.scale_bits)[0] +
                               ops.cmul_luts(s_bits, st_sig, False)[0])
        S_bits = s_bits + st_sig.bit_length()                     # midpoint x (block x tensor scale)
        parts["thresholds"] = nb * sum(ops.cmul_luts(S_bits, m, False)[0] + ops.add_luts(11) for m, _ in mids)
    parts["elem_round"] = n * ops.thr_luts(in_bits, n_mid, wire.elem.idx_bits)[0]
    depth = [t_add(dev, in_bits)] * (max(1, math.ceil(math.log2(k))) + 8 + 2 * math.ceil(math.log2(n_mid + 1)))
    return _row(lp, parts, n * wire.word_bits, sum(depth), clock, word_bits=wire.word_bits,
                quantizer=f"{t.format} (run-time block scales)")


def block_row(lp, ops, dev, clock: float, notes: list, t_add) -> dict:
    """One cost row of a layer that reads or writes block-scaled tensors (io_parallel and io_stream
    build the same unrolled circuit: an MLP's vectors travel as one stream packet)."""
    op = lp.op.lower()
    shape = lp.attrs.get("out_shape")
    n = int(np.prod(shape[1:])) if shape is not None else None
    if op == "linear":
        row = _dense(lp, ops, dev, clock, t_add)
    elif op in ("conv1d", "conv2d") and n is not None:
        row = _dense(lp, ops, dev, clock, t_add, pixels=int(np.prod(shape[2:])))
    elif op in ("input_quant", "quant") and n is not None:
        row = _quant(lp, ops, dev, clock, t_add, n, shape)
    elif op == "relu" and n is not None:
        wire = make_wire(lp.tensors["input"].format, lp.tensors["input"].scale, f"layer {lp.name}")
        row = _row(lp, {"clear": n * math.ceil((wire.elem.idx_bits + 2) / 2)}, 0, dev.lut_delay_ns, clock)
    elif op in ("flatten", "reshape") and n is not None:
        row = _row(lp, {}, 0, 0.0, clock)     # the words relabelled: wiring
    elif op == "output":
        t = lp.tensors["input"]
        wire = make_wire(t.format, t.scale, f"layer {lp.name}")
        ow, _ = output_widths(wire)
        _, exps, _, _, _ = scale_sig_exp(wire)
        n = int(np.prod(shape[1:])) if shape is not None else 1
        row = _row(lp, {"decode": n * (_rom(1 << wire.elem.idx_bits, ow) + _shifter(ow, max(exps) - min(exps)))},
                   0, 2 * dev.lut_delay_ns, clock)
    elif n is None:
        raise ValueError(f"layer {lp.name} ({lp.op}): output shape unknown; calibrate or export first")
    else:
        raise ValueError(f"layer {lp.name} ({lp.op}) reads block-scaled values; fpq builds (and prices) Linear, "
                         "Conv1d / Conv2d, ReLU, flatten and the network output on them")
    notes.append(f"{lp.name}: block-scaled ({row['mapping']}), built fully unrolled whatever the reuse factor; an "
                 "uncalibrated composition of calibrated operator tables, shifters and decode ROMs analytic")
    return row
