"""Per-layer FPGA cost of a TypePlan under hls4ml's strategies (the model behind estimate_cost).

What is measured and what is modelled:

* LUTs of the arithmetic come from the yosys synth_xilinx table (``ops.OperatorCosts``):
  unrolled layers price every constant weight by its value (zero free, power of two a shift,
  otherwise by the constant multiplier fit / lookup) plus the adder trees, with a layer-level
  fit on synthesized dense layers.
* hls4ml's structure is modelled explicitly: reuse factor R shares ``ceil(n_in*n_out/R)``
  multipliers (hls4ml's block factor), which then multiply by weights read from a ROM / BRAM,
  so they are general multipliers. Where multipliers go to DSPs (tiled on the device's DSP port
  widths), the rule ``dsp_threshold`` sets:
  - a multiplier whose weight carrier has >= ``dsp_threshold`` bits (default 9: hls4ml's own
    DSP estimator, "Vivado doesn't use DSP when precision < 9"), at any reuse factor;
  - unrolled (reuse 1) narrower weights are constants: shift-and-add logic in LUTs;
  - a shared multiplier (reuse > 1; both operands are variables, the weight read from a ROM /
    BRAM each cycle) whose two operands both have >= SHARED_DSP_BITS (8) bits: a DSP slice.
    A variable 8 x 8 product takes ~60 LUTs of partial-product adders in fabric and fills the
    DSP48's 25 x 18 multiplier, which is what the HLS binding uses it for (int8 x int8 and
    wider); narrower variable products stay in LUTs. This rule is not calibrated against
    Vivado (yosys gives no DSP binding); ``dsp_threshold=None`` keeps every multiplier in fabric.
* block-scaled layers (mxfp4, nvfp4, ...): ``fpq.cost_model.blocks`` (an uncalibrated composition of the tables).
* transformer ops (matmul of two activations, an embedding, a positional embedding): ``fpq.cost_model.attention``
  (an uncalibrated composition of the tables); a Linear over tokens (..., d) is priced as the kernel-1 Conv1D
  fpq.hls builds, one token per cycle.
* an element-wise BatchNorm (x * s_c + t_c) is priced per element: a constant multiplication by
  its channel's s_c from the same tables and an adder (``_batchnorm_layer``).
* FFs, BRAM mapping and latency are a structural model (pipeline registers, BRAM18 aspect ratios, LUT/carry delays
  per family), not measurements: yosys reports neither timing nor Vivado's register retiming (see ``notes``).
"""
from __future__ import annotations

import math
import numpy as np

from ..formats import Binary, Fixed, Int, Minifloat, exact_fixed
from ..ir import FREE_KINDS, MAC_KINDS, MOVING_KINDS
from ..typeplan import TensorType, TypePlan, is_block, levels_carrier, po2_exponents, values_carrier
from .costreport import CostReport
from .devices import Device, dsp_tiles, get_device
from .lookups import _elements, _t_add, is_cast, lookup_row, requant_luts
from .pipeline import apply_registers, check_rtl_settings
from .ops import OperatorCosts, csd_digits, default_costs, significant_bits, significant_bits_array, thr_steps
from .stream import (LUTRAM_MAX_DEPTH, SRL_MAX_BITS, _add_stream_buffers, _bram18, _in_shape, add_clone_fifos,
                     moving_stream, per_pixel, stream_pixels, stream_readers)

STRATEGIES = ("latency", "resource", "distributed_arithmetic")
DA_NAMES = ("distributed_arithmetic", "da")   # the spellings hls4ml accepts
SHARED_DSP_BITS = 8   # a shared (variable x variable) multiplier with both operands this wide: a DSP
IO_TYPES = ("io_parallel", "io_stream")
DATAPATHS = ("carrier", "code")


# ----------------------------------------------------------------------------- helpers
def _carrier(t, notes: list, what: str, weight: bool = False) -> Fixed:
    if isinstance(t, Fixed):
        return t
    if not isinstance(t, TensorType):
        raise ValueError(f"{what}: no type in the TypePlan")
    if t.po2:
        return t.carrier()
    if not weight:
        # an activation with a float scale: the HLS project carries its exact float32 values
        # q * s (values_carrier of the lookup's levels), which value_carrier() is
        vc = t.value_carrier()
        if vc is not None:
            return vc
        notes.append(f"{what}: scale is not a power of two and {t.format} has too many values to enumerate; "
                     f"priced on the format's own carrier {exact_fixed(t.format)} (the HLS project's values are wider)")
        return exact_fixed(t.format)
    notes.append(f"{what}: scale is not a power of two; constants priced as codes of the format's own carrier "
                 f"{exact_fixed(t.format)} (the HLS project multiplies by their float32 values, up to 24 "
                 "significant bits: this underestimates)")
    return exact_fixed(t.format)


def _weight_ints(lp, wt: TensorType, wc: Fixed, notes: list) -> np.ndarray | None:
    """Weights as integer codes of their carrier, shaped (fan_in, n_out)."""
    W = lp.values.get("weight")
    if W is None:
        return None
    W = np.asarray(W, dtype=np.float64)
    n_out = W.shape[0]
    if po2_exponents(wt.scale) is None:
        # a float scale: the stored weights are float32 products q * s, so W / s is q only to
        # within float32 rounding (126.99999 for 127). Snap W / s to the format's nearest value q
        # and accept it exactly when q * s rounds to the stored float32 again (float64 holds the
        # product exactly: q has few significant bits, s has 24), i.e. W is on the float32 grid
        # of the type's values
        from ..numerics.reference import quantize_unscaled

        s = np.asarray(wt.scale, np.float64)
        s = s.reshape((-1,) + (1,) * (W.ndim - 1)) if s.size > 1 else s
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            q = quantize_unscaled(W / s, wt.format)
            back = (q * s).astype(np.float32).astype(np.float64)
        if not np.array_equal(back, W):
            bad = np.flatnonzero(back.ravel() != W.ravel())[0]
            raise ValueError(f"layer {lp.name}: weights are not values of their type {wt.describe()} (weight "
                             f"{W.ravel()[bad]!r} is no float32 product of a {wt.format} value and the scale): "
                             "quantize them first")
        W = q
        wc = exact_fixed(wt.format)
    K = np.ldexp(W, wc.frac_bits)
    lo, hi = wc.int_range
    if not np.all(K == np.round(K)) or K.min(initial=0) < lo or K.max(initial=0) > hi:
        raise ValueError(f"layer {lp.name}: weights are not values of their type {wt.describe()} "
                         f"(carrier {wc}): quantize them first")
    return K.reshape(n_out, -1).T.astype(np.int64)


def _dense_from_groups(K: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv's (fan_in / group, n_out) codes as the dense (fan_in, n_out) matrix the HLS
    project builds (fpq.hls builds grouped convs dense with zero cross-group weights): free at
    reuse 1 and in the Latency strategy at any reuse, where zeros are constants, but real
    multiplier slots of the Resource strategy (its weights are read from memory)."""
    fan_g, n_out = K.shape
    out_g = n_out // groups
    dense = np.zeros((fan_g * groups, n_out), dtype=K.dtype)
    for j in range(n_out):
        g = j // out_g
        dense[g * fan_g:(g + 1) * fan_g, j] = K[:, j]
    return dense


def _pixels(lp) -> tuple[int, str]:
    shape = lp.attrs.get("out_shape")
    if lp.op == "linear" and shape is not None and len(shape) > 2:
        # a Linear over the last axis of tokens (..., d): fpq.hls builds hls4ml's Conv1D (kernel 1) over the rows
        return int(np.prod(shape[1:-1])), ""
    if not lp.op.startswith("conv"):
        return 1, ""
    if shape is None:
        return 1, f"{lp.name}: output shape unknown (calibrate or export first); priced for one output pixel"
    return int(np.prod(shape[2:])) if len(shape) > 2 else 1, ""


def _reuse(lp, rfs: dict, default) -> int:
    """The layer's reuse factor: ``{plan name: rf}`` (a layer it does not name: 1), else ``default``."""
    if not rfs:
        return int(default)
    return rfs.get(lp.name, 1)


def _use_dsp(x_bits: int, w_bits: int, rf: int, dsp_threshold) -> bool:
    """The DSP rule of the module docstring: a weight carrier of >= dsp_threshold bits, or a shared
    (reuse > 1) variable x variable multiplier with both operands >= SHARED_DSP_BITS."""
    if dsp_threshold is None:
        return False
    return (w_bits >= dsp_threshold and x_bits >= 2) or (rf > 1 and min(x_bits, w_bits) >= SHARED_DSP_BITS)


# ----------------------------------------------------------------------------- MAC layers
def _mac_layer(lp, ops: OperatorCosts, dev: Device, rf: int, strategy: str, clock: float,
               dsp_threshold, datapath: str, notes: list) -> dict:
    x_t, w_t = lp.tensors.get("input"), lp.tensors.get("weight")
    xc = _carrier(x_t, notes, f"{lp.name} input")
    wc = _carrier(w_t, notes, f"{lp.name} weight", weight=True)
    K = _weight_ints(lp, w_t, wc, notes)
    fan_in = lp.fan_in
    groups = int(lp.attrs.get("groups", 1) or 1)
    if groups > 1 and K is not None:
        K = _dense_from_groups(K, groups)
        fan_in = K.shape[0]
    if K is not None:
        fan_in = K.shape[0] if fan_in is None else fan_in
        n_out = K.shape[1]
    else:
        n_out = lp.attrs.get("out_features") or lp.attrs.get("out_channels")
        if fan_in is None or n_out is None:
            raise ValueError(f"layer {lp.name}: no weight values and no fan_in / out size to price")
        notes.append(f"{lp.name}: no weight values; each weight priced as the mean constant of {w_t.format}")
    pixels, note = _pixels(lp)
    if note:
        notes.append(note)
    # with a float scale somewhere, the plan's value accumulator: the exact sum the HLS builder
    # forms from the input's values, the weights' and the bias' own values
    acc = lp.exact_sum()
    acc_bits = acc.width if acc is not None else xc.width + wc.width + math.ceil(math.log2(max(fan_in, 2)))
    x_bits, w_bits = xc.width, wc.width
    if rf == 1 and isinstance(w_t, TensorType) and w_t.po2 and np.size(w_t.scale) > 1:
        # unrolled per-output-channel constants: each column is codes of one single-scale carrier
        # times its channel's shift, so its multipliers and adder tree need that width, not the
        # common carrier's (which grows with the spread of the channel scales)
        w_bits = min(w_bits, exact_fixed(w_t.format).width)
    binary = isinstance(x_t.format, Binary) and isinstance(w_t.format, Binary)
    n_mac = fan_in * n_out
    n_mult = math.ceil(n_mac / rf)                 # hls4ml's block factor
    use_dsp = not binary and _use_dsp(x_bits, w_bits, rf, dsp_threshold)
    lut = ff = dsp = bram = 0.0
    if K is None:  # unknown weights: every value of the format in turn stands in for them
        from ..formats import values
        codes = np.ldexp(values(w_t.format), exact_fixed(w_t.format).frac_bits).astype(np.int64)
        K = np.resize(codes, (fan_in, n_out))
    nz = K != 0
    nontrivial = nz & (np.abs(K) & (np.abs(K) - 1) != 0)    # not zero and not a power of two
    if rf == 1:
        # unrolled: every weight is a constant (hls4ml Latency, and Resource at reuse 1)
        if binary:
            lut = ops.binary_dense_luts(fan_in, n_out)
            depth_ns = _t_add(dev, acc_bits) * math.ceil(math.log2(max(fan_in, 2)))
        elif use_dsp:
            dsp = int(nontrivial.sum()) * dsp_tiles(x_bits, w_bits, dev, xc.signed, wc.signed)
            lut = sum(ops.tree_luts(int(nz[:, j].sum()), x_bits + w_bits) for j in range(n_out))
            lut += int(nontrivial.sum()) * ops.dsp_fabric_luts(x_bits + w_bits, 1)
            lut += sum(ops.cmul_luts(x_bits, int(k), xc.signed)[0] for k in K[nz & ~nontrivial])
            depth_ns = clock + _t_add(dev, acc_bits) * math.ceil(math.log2(max(fan_in, 2)))
        else:
            wrap = acc.width if isinstance(acc, Fixed) and acc.overflow.startswith("WRAP") else None
            lut = ops.dense_luts(x_bits, K, xc.signed, wrap)
            digits = max([csd_digits(int(k)) for k in K[nz]] or [1])
            depth_ns = (_t_add(dev, x_bits + w_bits) * math.ceil(math.log2(max(digits, 1)))
                        + _t_add(dev, acc_bits) * math.ceil(math.log2(max(int(nz.sum(0).max(initial=1)), 2))))
        stages = max(1, math.ceil(depth_ns / clock))
        cycles_pixel = 1
        latency = stages + 1 if lp.op.startswith("conv") else stages
        ff = stages * n_out * acc_bits + (n_out * acc_bits if pixels > 1 else 0)
    else:
        # shared multipliers: general x * w with w read from a ROM (Latency) or BRAM (Resource).
        # hls4ml's Latency template keeps the weights compile-time constants (function_instantiate)
        # and limits the multipliers to ceil(n_in * n_out / R) - n_zeros / R: products by zero fold
        # away before sharing, which for a grouped conv (built dense with zero cross-group weights)
        # leaves the true MACs / R. The Resource template reads every slot, zeros included, from
        # its weight memory: its block factor ceil(n_in * n_out / R) stays.
        if strategy == "latency":
            n_mult = max(0, n_mult - int((~nz).sum()) // rf)
        if use_dsp:
            dsp = n_mult * dsp_tiles(x_bits, w_bits, dev, xc.signed, wc.signed)
            lut = n_mult * ops.dsp_fabric_luts(x_bits + w_bits, dsp // max(n_mult, 1))
        elif datapath == "code" and isinstance(w_t.format, Minifloat):
            x_fmt = x_t.format if isinstance(x_t.format, (Int, Minifloat, Binary)) else xc
            lut = n_mult * ops.mfmul_luts(x_fmt, w_t.format)[0]
            w_bits = w_t.format.width  # weights stored as codes
        else:
            lut = n_mult * ops.mul_luts(x_bits, w_bits, xc.signed, wc.signed)[0]
        lut += n_mult * ops.add_luts(acc_bits)        # accumulate each product into its output
        store_bits = n_mult * w_bits
        if strategy == "resource" and store_bits * rf > 18432 // 2:
            bram = _bram18(store_bits, rf)
        else:  # constants indexed by the reuse counter: LUT ROM, 64 entries per LUT6
            lut += store_bits * math.ceil(rf / 64)
        ff = n_out * acc_bits + n_mult * (x_bits + w_bits) + 2 * math.ceil(math.log2(rf + 1))
        depth_ns = (clock if use_dsp else _t_add(dev, x_bits + w_bits) * max(1, math.ceil(math.log2(max(w_bits, 2)))))
        stages = max(1, math.ceil(depth_ns / clock)) + 1
        cycles_pixel = rf
        latency = rf + stages
    out_t = lp.tensors.get("output")
    if isinstance(out_t, TensorType) and out_t.po2:
        # the layer requantizes its accumulator itself (fpq.convert models; in QONNX graphs the
        # quantizer is its own op): a rounding adder and a saturation mux per output channel.
        # A float-scaled output is a threshold lookup instead: its own row (lookups.lookup_row)
        oc = _carrier(out_t, notes, f"{lp.name} output")
        lut += n_out * (requant_luts(ops, out_t, acc, oc) if isinstance(acc, Fixed) else
                        ops.add_luts(acc_bits) + math.ceil(oc.width / 2))
    ii = cycles_pixel * pixels
    latency = latency + (pixels - 1) * cycles_pixel
    # integer proxies (per output pixel, times pixels)
    b_w, b_a = w_t.format.width, x_t.format.width
    zf = 1.0 - float(nz.mean())
    bops = pixels * n_mac * ((1 - zf) * b_w * b_a + b_w + b_a + math.log2(max(fan_in, 1)))
    eff = significant_bits_array(K[nz]) + (K[nz] < 0) if nz.any() else np.zeros(0)
    ebops = pixels * float(np.sum(eff)) * x_bits
    return dict(layer=lp.name, op=lp.op, lut=float(lut), ff=float(ff), dsp=int(dsp), bram18=int(bram), uram=0,
                latency_cycles=int(latency), ii=int(ii), bops=float(bops), ebops=float(ebops),
                n_mult=int(n_mult if rf > 1 else nz.sum()), fan_in=int(fan_in), n_out=int(n_out), pixels=pixels,
                x_type=str(xc), w_type=str(wc), acc_bits=int(acc_bits),
                acc_type=acc if isinstance(acc, Fixed) else None,
                zero_weights=int((~nz).sum()), po2_weights=int((nz & ~nontrivial).sum()),
                mapping="adder-tree" if binary else ("dsp" if use_dsp else "lut"),
                # binary x binary: fpq's HLS project sums +-2^k terms in an adder tree, which is what
                # is priced; an XNOR-popcount design (not what fpq emits) would take this many LUTs
                **({"xnorpop_lut": float(n_out * ops.xnorpop_luts(fan_in))} if binary else {}))


# ----------------------------------------------------------------------------- element-wise BatchNorm
def _batchnorm_layer(lp, ops: OperatorCosts, dev: Device, rf: int, clock: float, dsp_threshold, notes: list) -> dict:
    """x * s_c + t_c on every element (hls4ml's BatchNormalization): per element one
    multiplication by its channel's constant s_c (priced by value like an unrolled weight: zero
    free, a power of two a shift, otherwise the constant-multiplier table) and one add of t_c at
    the exact sum width; then, in an fpq.convert plan, the output requantization. With reuse
    factor R, ceil(n / R) general multipliers read s from a ROM instead. The adders, the DSP
    mapping rule (as for weights) and FF / latency are the same structural model as the MAC layers."""
    x_t, w_t = lp.tensors.get("input"), lp.tensors.get("weight")
    xc = _carrier(x_t, notes, f"{lp.name} input")
    wc = _carrier(w_t, notes, f"{lp.name} scale", weight=True)
    K = _weight_ints(lp, w_t, wc, notes)
    if K is None:
        raise ValueError(f"layer {lp.name}: no scale values to price")
    K = K.reshape(-1)
    C = K.size
    n = _elements(lp)
    if n is None:
        notes.append(f"{lp.name}: output shape unknown (calibrate or export first); priced for one element per channel")
        n = C
    per_ch = max(1, n // C)
    acc = lp.exact_sum()
    x_bits, w_bits = xc.width, wc.width
    acc_bits = acc.width if acc is not None else x_bits + w_bits + 1
    nz = K != 0
    nontrivial = nz & (np.abs(K) & (np.abs(K) - 1) != 0)
    use_dsp = _use_dsp(x_bits, w_bits, rf, dsp_threshold)
    lut = 0.0
    dsp = 0
    if rf == 1:
        # each channel's constant on its own: per-channel scales make the common carrier wide, but
        # a constant's multiplier needs only its significant bits (the rest is a shift)
        for k in K[nontrivial]:
            k_bits = significant_bits(int(k)) + 1
            if dsp_threshold is not None and k_bits >= dsp_threshold and x_bits >= 2:
                dsp += per_ch * dsp_tiles(x_bits, k_bits, dev, xc.signed, True)
            else:
                lut += per_ch * ops.cmul_luts(x_bits, int(k), xc.signed)[0]
        lut += per_ch * sum(ops.cmul_luts(x_bits, int(k), xc.signed)[0] for k in K[nz & ~nontrivial])
        use_dsp = dsp > 0
        n_mult = int(nz.sum()) * per_ch
        digits = max([csd_digits(int(k)) for k in K[nz]] or [1])
        depth_ns = _t_add(dev, x_bits + w_bits) * math.ceil(math.log2(max(digits, 1))) + _t_add(dev, acc_bits)
    else:
        n_mult = math.ceil(n / rf)
        if use_dsp:
            dsp = n_mult * dsp_tiles(x_bits, w_bits, dev, xc.signed, wc.signed)
        else:
            lut += n_mult * ops.mul_luts(x_bits, w_bits, xc.signed, wc.signed)[0]
        lut += C * w_bits * math.ceil(rf / 64)           # the constants in a LUT ROM
        depth_ns = clock if use_dsp else _t_add(dev, x_bits + w_bits) * max(1, math.ceil(math.log2(max(w_bits, 2))))
    n_add = n if rf == 1 else math.ceil(n / rf)
    lut += n_add * ops.add_luts(acc_bits)                 # + t_c
    out_t = lp.tensors.get("output")
    if isinstance(out_t, TensorType) and out_t.po2:       # output requantization (fpq.convert plans)
        ob = _carrier(out_t, notes, f"{lp.name} output").width
        lut += n_add * (ops.add_luts(acc_bits) + math.ceil(ob / 2))
    stages = max(1, math.ceil(depth_ns / clock))
    latency = stages if rf == 1 else rf + stages
    b_w, b_a = w_t.format.width, x_t.format.width
    eff = np.array([significant_bits(int(k)) + (1 if k < 0 else 0) for k in K[nz]], dtype=np.float64)
    return dict(layer=lp.name, op=lp.op, lut=float(lut), ff=float(n * acc_bits), dsp=int(dsp), bram18=0, uram=0,
                latency_cycles=int(latency), ii=int(rf), bops=float(n * (b_w * b_a + acc_bits)),
                ebops=float(per_ch * eff.sum() * x_bits), n_mult=int(n_mult), fan_in=1, n_out=int(n), pixels=per_ch,
                x_type=str(xc), w_type=str(wc), acc_bits=int(acc_bits), zero_weights=int((~nz).sum()),
                po2_weights=int((nz & ~nontrivial).sum()), mapping="dsp" if use_dsp else "lut")


# ----------------------------------------------------------------------------- other layers
def _other_layer(lp, ops: OperatorCosts, notes: list) -> dict:
    n = _elements(lp)
    out_t, in_t = lp.tensors.get("output"), lp.tensors.get("input")
    row = dict(layer=lp.name, op=lp.op, lut=0.0, ff=0.0, dsp=0, bram18=0, uram=0, latency_cycles=0, ii=1,
               bops=0.0, ebops=0.0)
    op = lp.op.lower()
    if op in FREE_KINDS or op == "input_quant" or op in MOVING_KINDS:
        # wiring (io_parallel: a concat / nearest upsample fans wires out, no logic; io_stream adds
        # their FIFOs and row buffer: stream.moving_stream); the input quantizer IS the input type
        return row
    if n is None:
        notes.append(f"{lp.name} ({lp.op}): output shape unknown; not priced")
        return row

    def bits(t):
        try:
            return _carrier(t, notes, f"{lp.name}").width
        except ValueError:
            return None

    # a requantizer fused into this op (fpq.ir.plan): the op computes its exact result, then one
    # rounding cast into ``output`` -- no register or cycle of its own, unlike a quant layer
    exact_t = lp.attrs.get("exact_output", out_t if lp.attrs.get("requant") is None else in_t)
    qb = bits(out_t) if lp.attrs.get("requant") is not None else None
    ob = bits(exact_t) if exact_t is not None else None
    ib = bits(in_t) if in_t is not None else None
    ob = ob or ib or 16
    ib = ib or ob
    k = int(np.prod(lp.attrs.get("kernel", (2, 2)))) if "pool" in op else 1
    if op == "relu":
        lut = n * math.ceil(ob / 2)                       # zero on the sign: two bits per LUT6
    elif op == "clip":
        # fpq.hls builds out_T(x < lo ? lo : x > hi ? hi : x) with the bounds cast at compile
        # time: a comparator per bound on x's bits (carry chains), a fused requantizer's rounding
        # adder on x's bits too (not on the wider type that holds the bounds), and a select of
        # x / lo / hi per result bit (one bit of x and the two compares: two bits per LUT6)
        nb = sum(lp.attrs.get(b) is not None for b in ("min", "max"))
        out_bits = qb if qb is not None else ob
        lut = n * ((nb + (qb is not None)) * ops.add_luts(ib) + math.ceil(out_bits / 2))
        row.update(lut=float(lut), ff=float(n * out_bits), latency_cycles=1)
        return row
    elif op == "quant":
        lut = n * (ops.add_luts(ib) + math.ceil(ob / 2))  # rounding adder + saturation mux
    elif op == "add":
        lut = n * ops.add_luts(max(ib, ob) + 1)
    elif op == "maxpool":
        lut = n * (k - 1) * (ops.add_luts(ib) + math.ceil(ib / 2))   # compare + select
    elif op in ("avgpool", "global_avgpool"):
        if lp.attrs.get("global") or op == "global_avgpool":
            ins = _in_shape(lp)
            k = int(np.prod(ins[2:])) if ins is not None and len(ins) > 2 else k
        lut = n * ops.tree_luts(k, ib)
    else:
        notes.append(f"{lp.name}: op {lp.op!r} has no cost model; not priced")
        return row
    if qb is not None:
        lut += n * (ops.add_luts(ob) + math.ceil(qb / 2))    # the quant layer's rounding adder + saturation
        ob = qb
    row.update(lut=float(lut), ff=float(n * ob), latency_cycles=1)
    return row


# ----------------------------------------------------------------------------- entry point
def _strategies(tp: TypePlan, strategy):
    """"latency" / "resource" for every layer, or {plan name: that} from a {layer name or torch
    module path: strategy} dict (hls4ml's per-layer Strategy; a layer it does not name: Latency)."""
    def one(st, what, allowed=("latency", "resource")):
        s = str(st).lower()
        s = "distributed_arithmetic" if s in DA_NAMES else s
        if s not in allowed:
            raise ValueError(f"unknown strategy {st!r}{what}; allowed: "
                             + ", ".join({"latency": "Latency", "resource": "Resource"}.get(a, a) for a in allowed)
                             + (" (distributed_arithmetic is for the whole model only)" if what else ""))
        return s
    if not isinstance(strategy, dict):
        return one(strategy, "", STRATEGIES)
    out = {}
    for key, st in strategy.items():
        try:
            name = tp[key].name
        except KeyError as e:
            raise ValueError(f"strategy names {key!r}: {e.args[0]}") from None
        out[name] = one(st, f" for layer {key!r}")
    return out


def estimate(tp: TypePlan, device="xcvu9p", reuse_factor=1, strategy="Latency", io_type="io_parallel",
             clock_period=5.0, datapath="carrier", dsp_threshold=9, costs: OperatorCosts | None = None,
             row_cache: dict | None = None, pipeline_every=None) -> CostReport:
    """``row_cache``: a dict the caller keeps between calls on the same TypePlan (fpq.fit prices
    one plan at many reuse factors): each layer's own row is computed once per reuse factor and
    setting, the rest of the report (stream buffers, lookups, totals) every time. ``pipeline_every``:
    FF and latency of fpq.to_rtl's registers (``fpq.cost_model.pipeline``) instead of hls4ml's."""
    every = (None if pipeline_every is None else
             check_rtl_settings(tp, pipeline_every, reuse_factor, strategy, io_type))
    dev = get_device(device)
    strats = _strategies(tp, strategy)
    if io_type not in IO_TYPES:
        raise ValueError(f"unknown io_type {io_type!r}; allowed: {', '.join(IO_TYPES)}")
    if datapath not in DATAPATHS:
        raise ValueError(f"unknown datapath {datapath!r}; allowed: {', '.join(DATAPATHS)}")
    if not float(clock_period) > 0:
        raise ValueError(f"clock_period must be positive (ns), got {clock_period}")
    if isinstance(reuse_factor, dict):
        rfs = {}
        for key, rf in reuse_factor.items():   # plan names or torch module paths, read once
            try:
                name = tp[key].name
            except KeyError as e:
                raise ValueError(f"reuse_factor names {key!r}: {e.args[0]}") from None
            if isinstance(rf, bool) or int(rf) != rf or rf < 1:
                raise ValueError(f"reuse_factor of {key!r} must be an integer >= 1, got {rf!r}")
            rfs[name] = int(rf)
    else:
        rfs = {}
        if int(reuse_factor) != reuse_factor or reuse_factor < 1:
            raise ValueError(f"reuse_factor must be an integer >= 1, got {reuse_factor!r}")
    ops = costs or default_costs()
    notes: list = []
    report = CostReport(dev, dict(reuse_factor=reuse_factor, strategy=strategy, io_type=io_type,
                                  clock_period=float(clock_period), datapath=datapath,
                                  dsp_threshold=dsp_threshold), notes=notes)
    dp = []
    readers = stream_readers(tp) if io_type == "io_stream" else {}
    produced, prev = {}, None    # layer -> exact Fixed of the value the HLS project holds after it
    divided = {}                 # layer -> N: it holds an average pool's window sums (fpq.ir.plan.sum_divisor)
    for lp in tp:
        if lp.attrs.get("fused_into"):
            # a cast requantizer the layer before computes (and is priced with): no circuit of its own
            produced[lp.name] = produced.get(lp.attrs["fused_into"])
            prev = lp.name
            continue
        strat = strats.get(lp.name, "latency") if isinstance(strats, dict) else strats
        rf_l = _reuse(lp, rfs, reuse_factor)   # unrolled (reuse 1), both strategies build the same layer
        key = (lp.name, rf_l, strat if rf_l > 1 else "-", float(clock_period), datapath, dsp_threshold,
               dev.name, id(ops))
        if row_cache is not None and key in row_cache:
            row, new_notes, new_dp = row_cache[key]
            row = dict(row)
            notes.extend(new_notes)
            dp.extend(new_dp)
        else:
            n0, d0 = len(notes), len(dp)
            row = _layer_row(lp, ops, dev, rfs, reuse_factor, strat, clock_period, dsp_threshold, datapath, notes, dp)
            if row_cache is not None:
                row_cache[key] = (dict(row), notes[n0:], dp[d0:])
        acc = row.pop("acc_type", None)
        if io_type == "io_stream":
            per_pixel(row, lp)
            moving_stream(row, lp)
            _add_stream_buffers(row, lp)
            add_clone_fifos(row, lp, readers)
        srcs = lp.attrs.get("inputs")
        src = srcs[0] if srcs else prev
        in_t, out_t = (None, None) if row.get("block") else (lp.tensors.get("input"), lp.tensors.get("output"))
        op = lp.op.lower()
        n_avg = divided.get(src) if op == "quant" else None
        # a float-scaled quantizer, one after an average pool's sum, or an input quantizer no cast
        # computes (to_rtl: a lookup over the float32 port): threshold lookups
        lookup = isinstance(out_t, TensorType) and (not out_t.po2 or n_avg or (op == "input_quant" and not
                                                                              is_cast(out_t)))
        if lookup and out_t is not in_t and op != "output":
            # a float-scaled quantizer: the HLS project builds it as a threshold lookup over the
            # exact values of what feeds it
            if op == "input_quant":
                feed = "float32"
            elif acc is not None:
                feed = acc
            elif op == "quant":
                feed = produced.get(src)
            else:
                feed = None
            lk = lookup_row(lp, out_t, feed, row.get("acc_bits"), ops, dev, float(clock_period), io_type, notes,
                             divisor=n_avg or 1)
            if op in ("input_quant", "quant"):
                lk.update(layer=row["layer"], op=row["op"])
                row = lk          # the layer is the quantizer
            else:
                report.layers.append(row)
                row = lk
            produced[lp.name] = lk.pop("_out")
        elif isinstance(out_t, TensorType) and out_t is not in_t:
            produced[lp.name] = out_t.value_carrier()
            if op == "quant" and isinstance(produced.get(src), Fixed) and _elements(lp):
                # a cast or minifloat requantizer of its own: as fpq.to_rtl builds and yosys synthesized it
                # (io_stream: one pixel's channels per cycle, the units per_pixel left in the row)
                n = _elements(lp) // (stream_pixels(lp) if io_type == "io_stream" else 1)
                row["lut"] = float(n * requant_luts(ops, out_t, produced[src], produced[lp.name]))
        elif acc is not None and out_t is None:
            produced[lp.name] = acc
        elif op == "matmul" and isinstance(out_t, Fixed):
            produced[lp.name] = out_t   # the exact sum x 2^alpha (no requantizer fused)
        elif lp.attrs.get("divisor"):
            # the HLS layer holds the exact window sums; the quantizer after it divides (a lookup)
            produced[lp.name] = lp.attrs.get("exact_output")
            divided[lp.name] = int(lp.attrs["divisor"])
        else:
            produced[lp.name] = produced.get(src)
            if op in FREE_KINDS and src in divided:
                divided[lp.name] = divided[src]
        prev = lp.name
        report.layers.append(row)
    report.datapath = ("; ".join(dp) if dp else "fixed point: products of the layers' exact fixed carriers") + \
        (" (products of carrier widths, the datapath the HLS writer emits)" if datapath == "carrier" else "")
    tot = {c: sum(l[c] for l in report.layers) for c in ("lut", "ff", "dsp", "bram18", "uram", "bops", "ebops")}
    tot["latency_cycles"] = int(sum(l["latency_cycles"] for l in report.layers))
    tot["ii"] = int(max([l["ii"] for l in report.layers] or [1]))
    tot["latency_ns"] = tot["latency_cycles"] * float(clock_period)
    report.total = tot
    if io_type == "io_stream":
        notes.append(f"io_stream: each layer's output FIFO (depth = its pixels, as hls4ml sizes them; a map read "
                     "by n layers n more, hls4ml's Clone) as SRL "
                     f"LUTs up to {SRL_MAX_BITS} bits, LUTRAM up to {LUTRAM_MAX_DEPTH} words, else BRAM18; conv2d line buffers as SRL LUTs, the "
                     "kernel window as FFs (structural, not calibrated)")
    notes.append("LUTs from yosys synth_xilinx measurements (not Vivado); FF, BRAM mapping and latency "
                 "from a structural model of hls4ml")
    if every is not None:
        apply_registers(tp, report, every)
    return report


def _layer_row(lp, ops, dev, rfs, reuse_factor, strat, clock_period, dsp_threshold, datapath, notes, dp) -> dict:
    if any(is_block(t) for t in lp.tensors.values()):   # block-scaled: fpq.cost_model.blocks
        from .blocks import block_row
        return block_row(lp, ops, dev, float(clock_period), notes, _t_add)
    if lp.op.lower() == "batchnorm" and "weight" in lp.tensors:
        rf = _reuse(lp, rfs, reuse_factor)
        return _batchnorm_layer(lp, ops, dev, rf, float(clock_period), dsp_threshold, notes)
    if lp.op.lower() == "table":   # an activation table: a binary search over the input's values
        from .tables import table_row
        return table_row(lp, ops, dev, float(clock_period), notes, _t_add)
    if lp.op.lower() in ("softmax", "layernorm"):   # the exact integer pipelines
        from .normalization import normalization_row
        return normalization_row(lp, ops, dev, float(clock_period), notes, _t_add)
    if lp.op.lower() in ("matmul", "gather") or (lp.op.lower() == "add_const" and "other" in lp.tensors):
        from . import attention   # the transformer ops (an uncalibrated composition of the tables)
        if lp.op.lower() == "matmul":
            return attention.matmul_row(lp, ops, dev, _reuse(lp, rfs, reuse_factor), float(clock_period),
                                        dsp_threshold, notes, _t_add, requant_luts)
        if lp.op.lower() == "gather":
            return attention.gather_row(lp, ops, dev, notes)
        return attention.add_const_row(lp, ops, notes)
    if not (lp.op.lower() in MAC_KINDS and "weight" in lp.tensors):
        return _other_layer(lp, ops, notes)
    rf = _reuse(lp, rfs, reuse_factor)
    if strat == "distributed_arithmetic":   # da4ml's adder graph of the kernel, priced as synthesized
        from .da import da_row
        return da_row(lp, ops, dev, rf, float(clock_period), notes)
    row = _mac_layer(lp, ops, dev, rf, strat, float(clock_period), dsp_threshold, datapath, notes)
    wf = lp.tensors["weight"].format
    if isinstance(wf, Minifloat) or isinstance(lp.tensors["input"].format, Minifloat):
        mode = "codes decoded at shared multipliers" if datapath == "code" and rf > 1 else "carrier"
        dp.append(f"{lp.name}: {lp.tensors['input'].format} x {wf} as {mode} {row['x_type']} x {row['w_type']}")
    return row
