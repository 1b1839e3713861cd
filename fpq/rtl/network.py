"""Verilog of a whole quantized network, written from the one Graph and TypePlan.

Every tensor of the datapath is carried as the integer code of its exact fixed-point carrier (the
``Fixed`` the TypePlan derives; a minifloat activation travels as ``fpq.formats.exact_fixed`` of
its format and scale, the carrier fpq's HLS project uses), so ReLU is a sign test and a Linear
layer is a sum of constant-coefficient products. The circuits per op:

* ``input_quant``: an ap_fixed cast format (Fixed, or Int with full range, at a power-of-two
  scale) has no circuit: the port carries its codes, as the HLS project's input port does. Any
  other (minifloat, narrow int, a float scale) reads the float32 bit pattern and quantizes it with
  the exact threshold lookup over float32 values (``fpq.numerics.thresholds``, the HLS project's
  table), through the order-preserving integer key of a float32.
* ``linear``: y_j = sum_i x_i * K_ij + b_j with the weights and bias as constants in the
  TypePlan's exact accumulator (a narrow ``accumulator_bits`` one wraps, as everywhere else), a
  balanced adder tree of ceil(log2(fan_in + 1)) levels per output (zero weights are omitted),
  registered every ``pipeline_every`` levels and at the tree's root.
* ``quant``: a cast quantizer (the formats above) is a shift with the format's rounding and
  overflow mode; a minifloat at a power-of-two scale the HLS project's ``fpq::quantize_minifloat``
  unrolled (round to nearest even in the binade of the leading one, saturating); any other (a
  float scale, a narrow int) the threshold lookup (``fpq.cost_model.rtl.threshold_quantizer``) over
  the exact values of its input, the HLS project's table.
* ``conv1d`` / ``conv2d``: fully unrolled over the output map (every output element its own dot
  product, the ``linear`` circuit above, over the window's taps inside the map: padding zeros are
  omitted; strides, dilations, groups), so the LUTs grow with the pixels. This is not hls4ml's
  io_parallel conv, which the cost model prices as one kernel reused over the pixels.
* ``relu``: max(x, 0) on the code. ``flatten`` (to (N, M): the elements are in C order already),
  ``reshape`` of a vector, ``output``: wiring.

Other ops are refused with :class:`RTLUnsupportedError` naming the op.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from ..cost_model import pipeline as pipe
from ..cost_model import rtl as oprtl
from ..formats import Fixed, Int, Minifloat
from ..numerics.reference import po2_exponents
from ..ir.plan import typeplan_from_graph
from ..typeplan import constant_carrier, levels_carrier, values_carrier

SUPPORTED = pipe.RTL_KINDS   # the ops it builds (fpq.cost_model.pipeline prices their registers)


class RTLUnsupportedError(ValueError):
    """An op (or a type of an op) ``to_rtl`` does not build; the message names it.

    Example:
        >>> from fpq.rtl import RTLUnsupportedError
        >>> issubclass(RTLUnsupportedError, ValueError)
        True
    """


@dataclass
class Sig:
    """One element of a tensor: a Verilog expression of the code and its fixed carrier."""

    name: str
    t: Fixed


@dataclass
class LayerInfo:
    """What ``to_rtl`` built for one op (read by the tests and the cost comparison).

    Args:
        name: the op's name.
        kind: its IR kind.
        circuit: "mac", "cast", "lookup", "relu", "wire" or "port".
        params: the circuit's sizes (bits, fan-in, multipliers, ...).
        cycles: the register stages it adds.

    Example:
        >>> from fpq.rtl import LayerInfo
        >>> LayerInfo("quant_0", "quant", "cast", {"n": 3, "in_bits": 24, "out_bits": 4}).circuit
        'cast'
    """

    name: str
    kind: str
    circuit: str                      # "mac", "cast", "lookup", "relu", "wire", "port"
    params: dict = field(default_factory=dict)
    cycles: int = 0


def _ident(s: str) -> str:
    return re.sub(r"\W", "_", s)


def _decl(t: Fixed | int, signed: bool = True) -> str:
    w = t.width if isinstance(t, Fixed) else t
    return f"{'signed ' if signed else ''}[{w - 1}:0]"


def _as_signed(sig: Sig) -> str:
    return f"$signed({sig.name})" if sig.t.signed else f"$signed({{1'b0, {sig.name}}})"


def _lit(width: int, k: int) -> str:
    return f"-{width}'sd{-k}" if k < 0 else f"{width}'sd{k}"


_bits_signed = pipe.bits_signed


class Writer:
    """One pass over the graph: Verilog lines of the top module, extra modules, tensor signals."""

    def __init__(self, graph, plan, pipeline_every: int, top: str):
        self.g, self.tp, self.every, self.top = graph, plan, pipe.check_every(pipeline_every), top
        self.lines: list[str] = []
        self.modules: list[str] = []
        self.t: dict[str, list[Sig]] = {}
        self.stage: dict[str, int] = {}
        self.inputs: list = []          # [(port, width)]
        self.outputs: list = []         # [(port, width, signed)]
        self.layers: list[LayerInfo] = []
        self.input_kind = None
        self.input_type = None
        self.output_type = None
        self.latency = 0

    # ------------------------------------------------------------------ driver
    def build(self):
        if len(self.g.inputs) != 1:
            raise RTLUnsupportedError(f"to_rtl takes networks with one input, got {len(self.g.inputs)}")
        for op in self.g.ops:
            fn = getattr(self, f"op_{op.kind}", None)
            if fn is None:
                raise RTLUnsupportedError(
                    f"op {op.name!r} of kind {op.kind!r} is not built by fpq.to_rtl yet; supported: "
                    f"{', '.join(SUPPORTED)} (Linear / Conv networks with ReLU and quantizers)")
            fn(op)
        if not self.outputs:
            raise RTLUnsupportedError("the graph has no output op")
        return self

    def src(self, op, k: int = 0) -> list[Sig]:
        name = op.inputs[k]
        if name not in self.t:
            raise RTLUnsupportedError(f"op {op.name!r} ({op.kind}) reads {name!r}, which no built op produces "
                                      "(the network input needs an input quantizer)")
        return self.t[name]

    def set_out(self, op, sigs: list[Sig], stage: int) -> None:
        self.t[op.outputs[0]] = sigs
        self.stage[op.outputs[0]] = stage

    def wire(self, name: str, t: Fixed, expr: str) -> Sig:
        self.lines.append(f"wire {_decl(t, t.signed)} {name} = {expr};")
        return Sig(name, t)

    # ------------------------------------------------------------------ ops
    def op_input_quant(self, op):
        if op.inputs[0] not in self.g.inputs:
            raise RTLUnsupportedError(f"op {op.name!r}: an input quantizer must read the graph input")
        q = op.quant
        n = int(np.prod([int(d) for d in self.g.input_shapes[op.inputs[0]][1:]]))
        tt = q.ttype
        if q.pre_scale is not None:
            raise RTLUnsupportedError(f"input quantizer {op.name!r} is a Trunc (pre-scaled); not built by to_rtl")
        sigs = []
        if _cast_format(q):
            c = tt.carrier()
            self.input_kind, self.input_type = "codes", c
            for i in range(n):
                self.inputs.append((f"x{i}", c.width))
                sigs.append(Sig(f"x{i}", c))
            self.layers.append(LayerInfo(op.name, op.kind, "port", dict(n=n, bits=c.width)))
        else:
            self.input_kind, self.input_type = "float32", None
            from ..numerics.thresholds import quantizer_table
            if np.size(tt.scale) != 1:
                raise RTLUnsupportedError(f"input quantizer {op.name!r}: per-channel scales are not built")
            th, lv = quantizer_table(tt.format, np.ravel(tt.scale)[0], "float32")
            keys = _float32_keys(th)
            key_t = Fixed(32, 32, True)
            out = levels_carrier(tt, lv)
            mod = self._lookup_module(op, key_t, keys.astype(np.float64), lv)
            for i in range(n):
                self.inputs.append((f"x{i}", 32))
                k = self.wire(f"{_ident(op.name)}_k{i}", key_t,
                              f"x{i}[31] ? -$signed({{1'b0, x{i}[30:0]}}) : $signed({{1'b0, x{i}[30:0]}})")
                sigs.append(self._lookup(op, mod, k, out, i))
            self.layers.append(LayerInfo(op.name, op.kind, "lookup", dict(n=n, thresholds=len(th), in_bits=32,
                                                                         out_bits=out.width)))
        self.set_out(op, sigs, 0)

    def op_linear(self, op):
        xs = self.src(op)
        n_out, n_in = np.shape(op.weight)                # (out, in)
        if len(xs) != n_in:
            raise RTLUnsupportedError(f"linear {op.name!r} reads {len(xs)} values but has {n_in} inputs")
        self._mac(op, xs, *pipe.linear_taps(n_out, n_in), n_in)

    def _conv(self, op):
        """An N-d convolution fully unrolled: every output element (channel, position) is its own
        constant-coefficient dot product over the window's inputs that lie inside the map (ONNX
        pads: the padding's zeros contribute nothing, so those taps are omitted)."""
        xs = self.src(op)
        ins, outs = op.in_shapes[0] if op.in_shapes else None, op.out_shape
        if ins is None or outs is None:
            raise RTLUnsupportedError(f"{op.kind} {op.name!r}: input / output shape unknown (export with an "
                                      "example input)")
        W = np.shape(op.weight)                          # (out, in / groups, *kernel)
        C, sp = int(ins[1]), [int(d) for d in ins[2:]]
        if len(xs) != C * int(np.prod(sp)):
            raise RTLUnsupportedError(f"{op.kind} {op.name!r} reads {len(xs)} values, expected {C}x{sp}")
        taps, chans, fan_in, pixels = pipe.conv_taps(ins, outs, W, op.attrs)
        self._mac(op, xs, taps, chans, fan_in, pixels=pixels)

    op_conv1d = op_conv2d = _conv

    def _mac(self, op, xs, taps, chans, fan_in: int, pixels: int = 1):
        """Constant-coefficient dot products in the TypePlan's exact accumulator: output j sums
        x[i] * weight[w] over its ``taps[j]`` [(input index i, weight index w)] and the bias of
        channel ``chans[j]``, a balanced adder tree of ceil(log2(fan_in + 1)) levels (zero weights
        omitted) registered every ``pipeline_every`` levels and at its root."""
        lp = self.tp[op.name]
        stage = self.stage[op.inputs[0]]
        W = np.asarray(op.weight, dtype=np.float64)
        acc = lp.exact_sum()
        wc = constant_carrier(lp.tensors.get("weight"), op.weight)
        if acc is None or wc is None:
            raise RTLUnsupportedError(f"{op.kind} {op.name!r}: no exact fixed-point accumulator in its TypePlan "
                                      f"({lp.note or 'input or weight type unknown'})")
        xt = xs[0].t
        pf = xt.frac_bits + wc.frac_bits
        if acc.frac_bits < pf:
            raise RTLUnsupportedError(f"{op.kind} {op.name!r}: accumulator {acc} is coarser than its products "
                                      f"(2^-{pf})")
        codes = oprtl._units(W.ravel(), wc.frac_bits).reshape(W.shape)   # the weights' codes in their carrier
        K = np.vectorize(lambda k: int(k) << (acc.frac_bits - pf), otypes=[object])(codes)
        bias = None
        if op.bias is not None:
            bias = oprtl._units(np.asarray(op.bias, np.float64), acc.frac_bits)
        nm = _ident(op.name)
        xe = [_as_signed(s) for s in xs]
        n_terms = fan_in + (1 if bias is not None else 0)
        depth = pipe.tree_depth(n_terms)
        xw = xt.width + (0 if xt.signed else 1)
        outs, n_mul, regs = [], 0, 0
        for j, tj in enumerate(taps):
            terms = []
            for i, widx in tj:
                k = int(K[widx])
                if k:
                    w = pipe.product_width(xw, k, acc.width)
                    terms.append(self.wire(f"{nm}_p{j}_{i}", Fixed(w, w), f"{xe[i]} * {_lit(w, k)}"))
                    n_mul += 1
            if bias is not None and int(bias[chans[j]]):
                b = int(bias[chans[j]])
                w = min(acc.width, _bits_signed(b))
                terms.append(Sig(_lit(w, b), Fixed(w, w)))
            if not terms:
                terms = [Sig(f"{acc.width}'sd0", Fixed(acc.width, acc.width))]
            root, r = self._tree(f"{nm}_s{j}", terms, depth, acc.width)
            regs += r
            outs.append(self.wire(f"{nm}_y{j}", acc, f"$signed({root.name})"))
        cycles = pipe.cycles(depth, self.every)
        self.layers.append(LayerInfo(op.name, op.kind, "mac", dict(
            n_in=fan_in, n_out=W.shape[0], pixels=pixels, x_bits=xt.width, x_signed=xt.signed, w_bits=wc.width,
            acc_bits=acc.width, consts=[int(k) for k in K.ravel()], weight_codes=[int(k) for k in codes.ravel()],
            multipliers=n_mul, adder_levels=depth, register_bits=regs), cycles=cycles))
        self.set_out(op, outs, stage + cycles)

    def _tree(self, prefix: str, nodes: list[Sig], depth: int, cap: int) -> tuple[Sig, int]:
        """A balanced adder tree of exactly ``depth`` levels (a lone node passes through), each
        node as wide as its exact sum (capped at the accumulator: a narrow one wraps); registers
        after every ``pipeline_every`` levels and after the last. Returns (root, register bits)."""
        regs = 0
        for level in pipe.adder_tree([n.t.width for n in nodes], depth, self.every, cap):
            nxt = []
            for k, w in enumerate(level.widths):
                pair = nodes[2 * k:2 * k + 2]
                expr = (f"$signed({pair[0].name}) + $signed({pair[1].name})" if len(pair) == 2
                        else f"$signed({pair[0].name})")
                name = f"{prefix}_l{level.level}_{k}"
                if level.registered:
                    self.lines.append(f"reg signed [{w - 1}:0] {name};")
                    self.lines.append(f"always @(posedge clk) {name} <= {expr};")
                    regs += w
                    nxt.append(Sig(name, Fixed(w, w)))
                else:
                    nxt.append(self.wire(name, Fixed(w, w), expr))
            nodes = nxt
        assert len(nodes) == 1
        return nodes[0], regs

    def op_quant(self, op):
        q = op.quant
        xs = self.src(op)
        stage = self.stage[op.inputs[0]]
        if q.pre_scale is not None:
            raise RTLUnsupportedError(f"quantizer {op.name!r} is a Trunc (pre-scaled input); not built by to_rtl")
        if np.size(q.ttype.scale) != 1:
            raise RTLUnsupportedError(f"quantizer {op.name!r}: per-channel activation scales are not built")
        nm = _ident(op.name)
        if _cast_format(q):
            out = q.ttype.carrier()
            sigs = [self._cast(f"{nm}_{i}", s, out, q.format) for i, s in enumerate(xs)]
            self.layers.append(LayerInfo(op.name, op.kind, "cast", dict(n=len(xs), in_bits=xs[0].t.width,
                                                                        out_bits=out.width)))
        elif _minifloat_format(q):
            out = q.ttype.carrier()
            e = int(po2_exponents(q.ttype.scale).ravel()[0])
            sigs = [self._minifloat(f"{nm}_{i}", s, out, q.format, e) for i, s in enumerate(xs)]
            self.layers.append(LayerInfo(op.name, op.kind, "minifloat", dict(n=len(xs), in_bits=xs[0].t.width,
                                                                             out_bits=out.width, fmt=str(q.format))))
        else:
            from ..numerics.thresholds import quantizer_table
            t = xs[0].t
            if not t.signed:   # the lookup compares signed codes: zero-extend
                t = Fixed(t.width + 1, t.int_bits + 1, True)
                xs = [self.wire(f"{nm}_se{i}", t, f"$signed({{1'b0, {s.name}}})") for i, s in enumerate(xs)]
            if t.width > 53:
                raise RTLUnsupportedError(f"quantizer {op.name!r}: its input {t} is wider than 53 bits; fpq defines "
                                          "the quantizer on its float64 value, which this sum is not")
            th, lv = quantizer_table(q.format, np.ravel(q.ttype.scale)[0], Fixed(t.width, t.int_bits, True))
            out = levels_carrier(q.ttype, lv)
            if len(th) == 0:
                c = int(oprtl._units(lv[:1], out.frac_bits)[0])
                sigs = [Sig(_lit(out.width, c), out) for _ in xs]
            else:
                mod = self._lookup_module(op, t, th, lv)
                sigs = [self._lookup(op, mod, s, out, i) for i, s in enumerate(xs)]
            self.layers.append(LayerInfo(op.name, op.kind, "lookup", dict(n=len(xs), thresholds=len(th),
                                                                          in_bits=t.width, out_bits=out.width)))
        self.set_out(op, sigs, stage)

    def _cast(self, name: str, x: Sig, out: Fixed, fmt) -> Sig:
        """x rounded to ``out``'s grid and fitted to its range by the format's rounding and overflow
        mode (ap_fixed's cast; Int: ties to even, saturate)."""
        rnd, ovf = (fmt.rounding, fmt.overflow) if isinstance(fmt, Fixed) else ("RND_CONV", "SAT")
        t = x.t
        d = t.frac_bits - out.frac_bits
        xw = t.width + (0 if t.signed else 1)
        xs = _as_signed(x)
        if d <= 0:      # exact: a left shift
            w = xw - d
            v = self.wire(f"{name}_v", Fixed(w, w), f"{xs} <<< {-d}" if d else xs)
        else:
            fl = self.wire(f"{name}_f", Fixed(xw, xw), f"{xs} >>> {d}")
            half = f"{x.name}[{d - 1}]"
            sticky = f"(|{x.name}[{d - 2}:0])" if d >= 2 else "1'b0"
            sign = f"{x.name}[{t.width - 1}]" if t.signed else "1'b0"
            lsb = f"{fl.name}[0]"
            inc = {"RND_CONV": f"{half} & ({sticky} | {lsb})", "RND": half, "RND_MIN_INF": f"{half} & {sticky}",
                   "RND_INF": f"{half} & ({sticky} | ~{sign})", "RND_ZERO": f"{half} & ({sticky} | {sign})",
                   "TRN": "1'b0", "TRN_ZERO": f"{sign} & ({half} | {sticky})"}[rnd]
            w = xw + 1
            v = self.wire(f"{name}_v", Fixed(w, w), f"$signed({fl.name}) + $signed({{1'b0, {inc}}})")
        lo, hi = out.int_range
        w = v.t.width
        if ovf == "WRAP":
            return self.wire(f"{name}_q", out, f"{v.name}[{out.width - 1}:0]")
        if ovf == "SAT_SYM" and out.signed:
            lo = -hi
        big = max(w, _bits_signed(lo), _bits_signed(hi))
        over, under = f"($signed({v.name}) > {_lit(big, hi)})", f"($signed({v.name}) < {_lit(big, lo)})"
        if ovf == "SAT_ZERO":
            expr = f"({over} | {under}) ? {out.width}'d0 : {v.name}[{out.width - 1}:0]"
        else:
            expr = (f"{over} ? {out.width}'d{hi & ((1 << out.width) - 1)} : {under} ? "
                    f"{out.width}'d{lo & ((1 << out.width) - 1)} : {v.name}[{out.width - 1}:0]")
        return self.wire(f"{name}_q", out, expr)

    def _minifloat(self, name: str, x: Sig, out: Fixed, fmt: Minifloat, scale_exp: int) -> Sig:
        """x rounded to the minifloat ``fmt`` x 2^scale_exp (nearest, ties to even, in the binade of
        |x|; saturating), the circuit of the HLS project's ``fpq::quantize_minifloat`` (hls/include/
        fpq_minifloat.h) with its loops unrolled: one constant-shift rounding per binade the input
        can reach, selected by the leading one of |x| (a priority chain of OR-reduced bit ranges)."""
        M, emin, emaxb, maxm = _minifloat_params(fmt, scale_exp)
        t = x.t
        F, W = t.frac_bits, t.width
        FO = M - emin                           # fractional bits of the format's grid
        if out.frac_bits < FO:
            raise AssertionError(f"carrier {out} does not hold {fmt} x 2^{scale_exp}")
        # |x| as an unsigned integer (|x| * 2^F), one bit wider: the most negative code's magnitude
        mw = W + 1
        neg = f"{x.name}[{W - 1}]" if t.signed else "1'b0"
        self.lines.append(f"wire [{mw - 1}:0] {name}_m = {neg} ? -{_as_signed(x)} : {_as_signed(x)};")
        cw = emaxb + FO + 2                     # bits of the largest |code| on the grid, plus a sign
        qw = M + 3
        cands = []                               # (condition "e >= lo", code expression), highest first

        def bit_range_or(lo_bit: int) -> str:   # |x| >= 2^(lo_bit - F)
            if lo_bit >= mw:
                return "1'b0"
            return f"(|{name}_m[{mw - 1}:{max(lo_bit, 0)}])" if lo_bit > 0 else f"(|{name}_m)"

        sat = maxm << (emaxb - M + FO)
        cands.append((bit_range_or(emaxb + 1 + F), f"{cw}'d{sat}"))
        lowest = emin - 1 if (not fmt.subnormals) else emin
        for e in range(emaxb, lowest - 1, -1):
            ulp = max(e, emin) - M
            if not fmt.subnormals and e < emin:
                ulp = emin
            s = ulp + F
            q = f"{name}_q{e - lowest}"
            if s <= 0:
                self.lines.append(f"wire [{qw - 1}:0] {q} = {name}_m << {-s};")
            else:
                src = f"{name}_m"
                kept = f"({src} >> {s})"
                half = f"{src}[{s - 1}]" if s - 1 < mw else "1'b0"
                sticky = (f"(|{src}[{min(s - 2, mw - 1)}:0])" if s >= 2 else "1'b0")
                self.lines.append(f"wire [{qw - 1}:0] {q}_k = {kept};")
                self.lines.append(f"wire [{qw - 1}:0] {q} = {q}_k + ({half} & ({sticky} | {q}_k[0]));")
            if e == emaxb:
                self.lines.append(f"wire [{qw - 1}:0] {q}_c = ({q} > {qw}'d{maxm}) ? {qw}'d{maxm} : {q};")
                q = f"{q}_c"
            cond = bit_range_or(e + F) if e > lowest else "1'b1"
            cands.append((cond, f"({{{cw}'d0, {q}}} << {ulp + FO})"))
        expr = cands[-1][1]
        for cond, val in reversed(cands[:-1]):
            expr = f"{cond} ? {val} : ({expr})"
        self.lines.append(f"wire [{cw - 1}:0] {name}_c = {expr};")
        sh = out.frac_bits - FO
        mag = self.wire(f"{name}_a", Fixed(cw + sh + 1, cw + sh + 1), f"$signed({{1'b0, {name}_c}}) <<< {sh}")
        if fmt.signed:
            return self.wire(f"{name}_y", out, f"{neg} ? -{mag.name} : {mag.name}")
        return self.wire(f"{name}_y", out, f"{neg} ? {out.width}'d0 : {mag.name}")

    def _lookup_module(self, op, in_t: Fixed, th, lv) -> tuple:
        """The lookup module of one quantizer (shared by its elements) and its levels' carrier."""
        m = oprtl.threshold_quantizer(in_t, th, lv, name=f"{_ident(self.top)}_{_ident(op.name)}_thr")
        self.modules.append(m.verilog)
        return m, values_carrier(lv)

    def _lookup(self, op, mod: tuple, x: Sig, out: Fixed, i: int) -> Sig:
        """One instance of the lookup ``mod``; its level code (the levels' own carrier) aligned to ``out``."""
        nm = _ident(op.name)
        mod, lvc = mod
        ow, lv_frac = lvc.width, lvc.frac_bits
        self.lines.append(f"wire signed [{ow - 1}:0] {nm}_lv{i};")
        self.lines.append(f"{mod.name} {nm}_u{i}(.x({x.name}), .y({nm}_lv{i}));")
        shift = out.frac_bits - lv_frac
        if shift < 0:
            raise AssertionError(f"levels of {op.name} are finer than their carrier {out}")
        w = max(out.width, ow + shift)
        src = f"($signed({nm}_lv{i}) <<< {shift})" if shift else f"$signed({nm}_lv{i})"
        full = self.wire(f"{nm}_al{i}", Fixed(w, w), src)
        return self.wire(f"{nm}_o{i}", out, f"{full.name}[{out.width - 1}:0]")

    def op_relu(self, op):
        xs = self.src(op)
        nm = _ident(op.name)
        out = []
        for i, s in enumerate(xs):
            if s.t.signed:
                out.append(self.wire(f"{nm}_{i}", s.t, f"{s.name}[{s.t.width - 1}] ? {s.t.width}'d0 : {s.name}"))
            else:
                out.append(s)
        self.layers.append(LayerInfo(op.name, op.kind, "relu", dict(n=len(xs), bits=xs[0].t.width)))
        self.set_out(op, out, self.stage[op.inputs[0]])

    def op_flatten(self, op):
        """Flatten to (N, M): the elements are carried in C order already (wiring)."""
        if op.out_shape is None or len(op.out_shape) != 2:
            raise RTLUnsupportedError(f"flatten {op.name!r} to {op.out_shape}: to_rtl flattens to (N, M) only")
        self.layers.append(LayerInfo(op.name, op.kind, "wire"))
        self.set_out(op, self.src(op), self.stage[op.inputs[0]])

    def _vector(self, op):
        shapes = list(op.in_shapes or []) + [op.out_shape]
        if any(s is None or len([d for d in s[1:] if int(d) != 1]) > 1 for s in shapes):
            raise RTLUnsupportedError(f"op {op.name!r} ({op.kind}) reshapes a tensor of more than one axis "
                                      f"({shapes}); to_rtl builds MLPs (vectors) only")
        self.layers.append(LayerInfo(op.name, op.kind, "wire"))
        self.set_out(op, self.src(op), self.stage[op.inputs[0]])

    op_reshape = _vector

    def op_output(self, op):
        xs = self.src(op)
        t = xs[0].t
        self.output_type = t
        self.latency = self.stage[op.inputs[0]]
        for j, s in enumerate(xs):
            self.outputs.append((f"y{j}", t.width, t.signed))
            self.lines.append(f"assign y{j} = {s.name};")
        self.layers.append(LayerInfo(op.name, op.kind, "wire"))

    # ------------------------------------------------------------------ text
    def verilog(self) -> str:
        ports = (["input wire clk"] if self.latency else []) + \
            [oprtl._port("input", p, w) for p, w in self.inputs] + \
            [oprtl._port("output", p, w, s) for p, w, s in self.outputs]
        return "\n".join(self.modules) + "\n" + oprtl._module(self.top, ports, self.lines)


def _cast_format(q) -> bool:
    """A quantizer an ap_fixed cast computes (the same rule as the TypePlan's fusing and the HLS
    writer): Fixed, or Int with its full range, at a per-tensor power-of-two scale."""
    f = q.format
    return (q.pre_scale is None and q.ttype.po2 and np.size(q.ttype.scale) == 1
            and (isinstance(f, Fixed) or (isinstance(f, Int) and not f.narrow)))


def _minifloat_params(fmt: Minifloat, scale_exp: int) -> tuple[int, int, int, int]:
    """(M, EMIN, EMAXB, MAXM) of ``fmt`` x 2^scale_exp, as ``fpq::quantize_minifloat`` takes them:
    mantissa bits, exponent of the smallest normal, of the top binade, and the largest finite
    significand (hidden bit included)."""
    if not fmt.saturate:
        raise RTLUnsupportedError(f"{fmt}: a non-saturating minifloat produces inf / NaN, which no fixed-point "
                                  "carrier holds; use saturate=True")
    _, ex = math.frexp(fmt.max_value)
    emaxb = ex - 1
    maxm = int(math.ldexp(fmt.max_value, fmt.man_bits - emaxb))
    if emaxb < fmt.emin:
        raise RTLUnsupportedError(f"{fmt}: a format of subnormal values only is not built")
    return fmt.man_bits, fmt.emin + scale_exp, emaxb + scale_exp, maxm


def _minifloat_format(q) -> bool:
    """A minifloat quantizer at a per-tensor power-of-two scale (``fpq::quantize_minifloat``)."""
    return (q.pre_scale is None and isinstance(q.format, Minifloat) and q.ttype.po2
            and np.size(q.ttype.scale) == 1)


def _float32_keys(values) -> np.ndarray:
    """Order-preserving integer keys of float32 values (the threshold search's own)."""
    from ..numerics.thresholds import float32_keys
    return float32_keys(values)


def build(graph, pipeline_every: int = 1, top: str = "fpq_net") -> Writer:
    """Write a graph's Verilog (``Writer.verilog()``) with its TypePlan."""
    plan = typeplan_from_graph(graph)
    return Writer(graph, plan, pipeline_every, _ident(top)).build()
