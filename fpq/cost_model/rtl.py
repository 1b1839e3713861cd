"""Parameterized Verilog for the operators an fpq datapath is made of.

Every generator returns an :class:`Operator`: the Verilog text of one module, its ports, and a
``reference`` that computes the expected output codes from fpq's own numerics (``fpq.decode`` of
the input codes, the exact product or sum, placed in the exact fixed type of the TypePlan). The
simulation tests compare the two, so the circuit that is synthesized and priced is the
arithmetic that fpq emulates.

Conventions: a port carries the two's complement code of its fixed-point carrier (or the raw
bit pattern of a minifloat / binary code). Products use ``fpq.typeplan.product_type`` of the
operands' carriers, sums ``sum_type``: the same widths the HLS writer and the emulator use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..formats import Binary, Fixed, Format, Int, Minifloat, decode, exact_fixed, parse_format
from ..numerics.thresholds import quantizer_table  # noqa: F401  (rtl.quantizer_table: the tables it builds)
from ..typeplan import product_type, sum_type, values_carrier


@dataclass
class Operator:
    """One synthesizable module and the oracle for its outputs."""

    name: str
    kind: str                   # mul, cmul, mfmul, khot, add, tree, acc, xnorpop, dense, thr
    verilog: str
    inputs: list                # [(port, width)]
    outputs: list               # [(port, width, signed)]
    params: dict = field(default_factory=dict)
    clocked: bool = False       # has clk (rising edge) and rst ports
    reference: object = None    # f(dict port -> int64 codes) -> dict port -> exact integer values (object or int64)
    codes: dict = field(default_factory=dict)  # port -> allowed input codes (finite values only)
    probes: dict = field(default_factory=dict)  # port -> codes every sampled check includes (edge cases)

    def in_bits(self) -> int:
        return sum(w for _, w in self.inputs)


# ----------------------------------------------------------------------------- formats
def _fmt(f) -> Format:
    return parse_format(f)


def carrier(fmt: Format) -> Fixed:
    return exact_fixed(fmt)


def valid_codes(fmt: Format) -> np.ndarray:
    """Codes of ``fmt`` with a finite value (NaN / inf codes never reach the datapath); None when
    every code is valid (fixed point, binary, full-range int: any width)."""
    if isinstance(fmt, (Fixed, Binary)) or (isinstance(fmt, Int) and not fmt.narrow):
        return None
    codes = np.arange(1 << fmt.width, dtype=np.int64)
    ok = np.isfinite(decode(codes, fmt))
    if isinstance(fmt, Int) and fmt.narrow:
        lo, hi = fmt.int_range
        v = decode(codes, fmt)
        ok &= (v >= lo) & (v <= hi)
    return codes[ok]


def _units(vals: np.ndarray, frac: int) -> np.ndarray:
    """Exact integer multiples of 2**-frac as an object array of Python ints (may exceed 64 bits)."""
    scaled = np.ldexp(np.asarray(vals, dtype=np.float64), frac)
    if not np.all(scaled == np.round(scaled)):
        bad = np.asarray(vals, dtype=np.float64).ravel()[(scaled != np.round(scaled)).ravel()][0]
        raise ValueError(f"{bad!r} is not a multiple of 2**-{frac}: not a value of the format")
    return np.array([int(v) for v in scaled.ravel()], dtype=object).reshape(scaled.shape)


# ----------------------------------------------------------------------------- decoders
@dataclass
class _Dec:
    """Verilog decode of one operand into sign flag, significand and left shift."""

    lines: list
    sig: str
    sig_bits: int
    sig_signed: bool
    shift: str | None
    shift_bits: int
    neg: str | None        # 1-bit wire that negates the product (minifloat / binary sign)


def _decoder(fmt: Format, port: str) -> _Dec:
    """Significand and shift of an operand so that value / 2**-frac(carrier) = sig << shift."""
    if isinstance(fmt, (Fixed, Int)):
        return _Dec([], port, fmt.width, fmt.signed, None, 0, None)
    if isinstance(fmt, Binary):
        # +1 for bit 1, -1 for bit 0: the product is +-x, a conditional negation
        return _Dec([f"wire {port}_n = ~{port}[0];"], "1'b1", 1, False, None, 0, f"{port}_n")
    assert isinstance(fmt, Minifloat)
    M, E = fmt.man_bits, fmt.exp_bits
    ln = []
    ex = f"{port}[{M + E - 1}:{M}]"
    nz = f"(|{ex})"
    man = f"{port}[{M - 1}:0]" if M else None
    # significand: hidden bit for normal codes; subnormal codes (exponent field 0) have none and
    # share the scale of exponent field 1. Without subnormals exponent field 0 is zero.
    if M:
        if fmt.subnormals:
            ln.append(f"wire [{M}:0] {port}_sig = {{{nz}, {man}}};")
        else:
            ln.append(f"wire [{M}:0] {port}_sig = {nz} ? {{1'b1, {man}}} : {M + 1}'d0;")
    else:
        ln.append(f"wire [0:0] {port}_sig = {nz};")
    shb = max(1, (fmt.max_exp_field - 1).bit_length())
    # shift = max(exponent field, 1) - 1: subnormals and exponent 1 share the lowest scale
    ln.append(f"wire [{E - 1}:0] {port}_ef = {ex};")
    ln.append(f"wire [{shb - 1}:0] {port}_sh = {nz} ? {port}_ef - {E}'d1 : {shb}'d0;")
    neg = None
    if fmt.signed:
        ln.append(f"wire {port}_s = {port}[{M + E}];")
        neg = f"{port}_s"
    return _Dec(ln, f"{port}_sig", M + 1, False, f"{port}_sh", shb, neg)


def _product_expr(da: _Dec, db: _Dec, out: str, w_out: int, out_signed: bool, lines: list,
                  pfx: str = "") -> None:
    """out = (+-)(sig_a * sig_b) << (shift_a + shift_b), exact in w_out bits; helper wires are
    named with ``pfx`` so that several products can live in one module."""
    m, ng, ms, sh, mx = (pfx + n for n in ("m", "ng", "ms", "sh", "mx"))
    signed = da.sig_signed or db.sig_signed
    mb = da.sig_bits + db.sig_bits + (1 if signed and not (da.sig_signed and db.sig_signed) else 0)

    def operand(d: _Dec) -> str:
        if not signed:
            return d.sig
        return f"$signed({d.sig})" if d.sig_signed else f"$signed({{1'b0, {d.sig}}})"

    if da.sig == "1'b1" and db.sig == "1'b1":
        lines.append(f"wire [0:0] {m} = 1'b1;")
        mb, signed = 1, False
    elif da.sig == "1'b1" or db.sig == "1'b1":
        d = db if da.sig == "1'b1" else da
        lines.append(f"wire {'signed ' if d.sig_signed else ''}[{d.sig_bits - 1}:0] {m} = {d.sig};")
        mb, signed = d.sig_bits, d.sig_signed
    else:
        lines.append(f"wire {'signed ' if signed else ''}[{mb - 1}:0] {m} = {operand(da)} * {operand(db)};")
    negs = [d.neg for d in (da, db) if d.neg]
    cur = m
    if negs:
        # negate the narrow product before the shift: one short adder instead of a wide one
        lines.append(f"wire {ng} = {' ^ '.join(negs)};")
        ext = f"$signed({m})" if signed else f"$signed({{1'b0, {m}}})"
        lines.append(f"wire signed [{mb}:0] {ms} = {ng} ? -{ext} : {ext};")
        cur, signed, mb = ms, True, mb + 1
    if signed and not out_signed:
        raise AssertionError("signed product into an unsigned output")
    shifts = [d for d in (da, db) if d.shift]
    decl = f"wire {'signed ' if out_signed else ''}[{w_out - 1}:0]"
    src = f"$signed({cur})" if signed else cur
    if shifts:
        sb = max(d.shift_bits for d in shifts) + (1 if len(shifts) == 2 else 0)
        total = " + ".join(f"{{{sb - d.shift_bits}'d0, {d.shift}}}" if sb > d.shift_bits else d.shift
                           for d in shifts)
        lines.append(f"wire [{sb - 1}:0] {sh} = {total};")
        lines.append(f"{decl} {mx} = {src};")
        lines.append(f"assign {out} = {mx} << {sh};")
    else:
        lines.append(f"assign {out} = {src};")


def _module(name: str, ports: list, body: list) -> str:
    head = ",\n  ".join(ports)
    return f"module {name}(\n  {head}\n);\n" + "\n".join("  " + b for b in body) + "\nendmodule\n"


def _port(direction: str, name: str, width: int, signed: bool = False) -> str:
    return f"{direction} wire {'signed ' if signed else ''}[{width - 1}:0] {name}"


# ----------------------------------------------------------------------------- multipliers
def fmt_tag(fmt: Format) -> str:
    if isinstance(fmt, Binary):
        return "bin"
    if isinstance(fmt, Int):
        return f"{'s' if fmt.signed else 'u'}{fmt.width}" + ("n" if fmt.narrow else "")
    if isinstance(fmt, Fixed):
        return f"{'s' if fmt.signed else 'u'}{fmt.width}"
    m = fmt
    tag = f"e{m.exp_bits}m{m.man_bits}"
    if not m.signed:
        tag = "u" + tag
    if m.bias != m.default_bias:
        tag += f"b{m.bias}".replace("-", "n")
    if not m.subnormals:
        tag += "ns"
    return tag


def multiplier(fa, fb, name: str | None = None) -> Operator:
    """General a x b multiplier of two formats (int, fixed, minifloat, binary) with the exact
    product in product_type(carrier(a), carrier(b)). Fixed and int operands are plain integer
    multipliers of their codes; minifloat operands are decoded into a small significand product
    and a shift (the code-level datapath of DESIGN.md); binary ones into a conditional negation."""
    fa, fb = _fmt(fa), _fmt(fb)
    ca, cb = carrier(fa), carrier(fb)
    pt = product_type(ca, cb)
    name = name or f"mul_{fmt_tag(fa)}_{fmt_tag(fb)}"
    lines = []
    da, db = _decoder(fa, "a"), _decoder(fb, "b")
    lines += da.lines + db.lines
    _product_expr(da, db, "p", pt.width, pt.signed, lines)
    ports = [_port("input", "a", fa.width), _port("input", "b", fb.width),
             _port("output", "p", pt.width, pt.signed)]
    kind = "mul" if all(isinstance(f, (Fixed, Int)) for f in (fa, fb)) else "mfmul"
    if all(isinstance(f, Binary) for f in (fa, fb)):
        kind = "xnor"

    def ref(inp):
        va, vb = decode(inp["a"], fa), decode(inp["b"], fb)
        return {"p": _units(va * vb, pt.frac_bits)}

    return Operator(name, kind, _module(name, ports, lines), [("a", fa.width), ("b", fb.width)],
                    [("p", pt.width, pt.signed)],
                    dict(a=str(fa), b=str(fb), a_bits=ca.width, b_bits=cb.width,
                         a_signed=ca.signed, b_signed=cb.signed, out_bits=pt.width),
                    reference=ref, codes={"a": valid_codes(fa), "b": valid_codes(fb)})


def int_multiplier(a_bits: int, b_bits: int, a_signed=True, b_signed=True) -> Operator:
    """Integer / fixed-point multiplier of two codes (the fractional point is only a label)."""
    # Fixed<w,w> rather than Int: the same codes, and a 1-bit signed operand is allowed
    return multiplier(Fixed(a_bits, a_bits, a_signed), Fixed(b_bits, b_bits, b_signed),
                      name=f"mul_{'s' if a_signed else 'u'}{a_bits}_{'s' if b_signed else 'u'}{b_bits}")


def const_multiplier(fx, weight: float, fw, name: str | None = None) -> Operator:
    """x times a constant weight known at synthesis time (as hls4ml unrolls weights).

    ``weight`` must be a value of ``fw``; it enters the circuit as its integer code in the
    carrier of ``fw``. The circuit has only x as input: synthesis folds the constant, so zero
    costs nothing and powers of two cost a shift (wires) or a negation."""
    fx, fw = _fmt(fx), _fmt(fw)
    if not isinstance(fx, (Fixed, Int)):
        raise ValueError(f"constant multiplier input must be fixed or int (a carrier), got {fx}")
    cx, cw = carrier(fx), carrier(fw)
    k = int(_units(np.array([weight]), cw.frac_bits)[0])
    lo, hi = -(1 << (cw.width - 1)) if cw.signed else 0, (1 << (cw.width - (1 if cw.signed else 0))) - 1
    if not lo <= k <= hi:
        raise ValueError(f"weight {weight} is outside the carrier {cw} of {fw}")
    pt = product_type(cx, cw)
    name = name or f"cmul_{fmt_tag(fx)}_{'m' if k < 0 else 'p'}{abs(k)}_w{cw.width}"
    lit = f"-{pt.width}'sd{abs(k)}" if k < 0 else f"{pt.width}'sd{k}"
    xs = "$signed(x)" if fx.signed else "$signed({1'b0, x})"
    lines = [f"wire signed [{pt.width - 1}:0] c = {lit};",
             f"wire signed [{pt.width - 1}:0] xe = {xs};",
             "assign p = xe * c;"]
    ports = [_port("input", "x", fx.width), _port("output", "p", pt.width, True)]

    def ref(inp):
        return {"p": _units(decode(inp["x"], fx) * float(weight), pt.frac_bits)}

    return Operator(name, "cmul", _module(name, ports, lines), [("x", fx.width)], [("p", pt.width, True)],
                    dict(x=str(fx), w=str(fw), x_bits=cx.width, x_signed=cx.signed, w_bits=cw.width,
                         const=k, out_bits=pt.width),
                    reference=ref, codes={"x": valid_codes(fx)})


def khot_multiplier(fx, term_fmt, k: int, name: str | None = None) -> Operator:
    """x times a run-time K-hot weight: the sum of ``k`` signed powers of two, each given as a
    code of ``term_fmt`` (a minifloat with 0 mantissa bits, i.e. a signed power of two or zero).
    The product is a shift-add: k barrel shifts of x and k-1 adders."""
    fx, ft = _fmt(fx), _fmt(term_fmt)
    if not (isinstance(ft, Minifloat) and ft.man_bits == 0):
        raise ValueError(f"K-hot terms must be a minifloat with 0 mantissa bits (ExM0), got {ft}")
    if k < 1:
        raise ValueError("k must be at least 1")
    cx, ct = carrier(fx), carrier(ft)
    term_t = product_type(cx, ct)
    pt = sum_type(term_t, k)
    name = name or f"khot{k}_{fmt_tag(fx)}_{fmt_tag(ft)}"
    lines, terms = [], []
    dx = _decoder(fx, "x")
    lines += dx.lines
    for i in range(k):
        sub = []
        lines.append(f"wire [{ft.width - 1}:0] w{i} = w[{(i + 1) * ft.width - 1}:{i * ft.width}];")
        dw = _decoder(ft, f"w{i}")
        sub += dw.lines
        _product_expr(dx, dw, f"t{i}", term_t.width, term_t.signed, sub, pfx=f"t{i}_")
        lines.append(f"wire signed [{term_t.width - 1}:0] t{i};")
        lines += sub
        terms.append(f"t{i}")
    lines.append(f"assign p = {' + '.join(terms)};")
    ports = [_port("input", "x", fx.width), _port("input", "w", k * ft.width),
             _port("output", "p", pt.width, True)]

    def ref(inp):
        x = decode(inp["x"], fx)
        wsum = np.zeros(x.shape)
        for i in range(k):
            wsum = wsum + decode((inp["w"] >> (i * ft.width)) & ((1 << ft.width) - 1), ft)
        return {"p": _units(x * wsum, pt.frac_bits)}

    tc = valid_codes(ft)
    allw = np.zeros(1, np.int64)
    for i in range(k):  # every combination of valid term codes
        allw = (allw[:, None] | (tc[None, :] << (i * ft.width))).ravel()
    return Operator(name, "khot", _module(name, ports, lines), [("x", fx.width), ("w", k * ft.width)],
                    [("p", pt.width, True)],
                    dict(x=str(fx), term=str(ft), k=k, x_bits=cx.width, out_bits=pt.width),
                    reference=ref, codes={"x": valid_codes(fx), "w": allw})


# ----------------------------------------------------------------------------- adders
def adder(a_bits: int, b_bits: int | None = None, signed: bool = True) -> Operator:
    """a + b with the exact (one bit wider) sum."""
    b_bits = a_bits if b_bits is None else b_bits
    w = max(a_bits, b_bits) + 1
    s = "s" if signed else "u"
    name = f"add_{s}{a_bits}_{s}{b_bits}"
    if signed:
        lines = ["assign y = $signed(a) + $signed(b);"]
    else:
        lines = ["assign y = a + b;"]
    ports = [_port("input", "a", a_bits), _port("input", "b", b_bits), _port("output", "y", w, signed)]
    fa, fb = Fixed(a_bits, a_bits, signed), Fixed(b_bits, b_bits, signed)

    def ref(inp):
        return {"y": decode(inp["a"], fa).astype(np.int64) + decode(inp["b"], fb).astype(np.int64)}

    return Operator(name, "add", _module(name, ports, lines), [("a", a_bits), ("b", b_bits)],
                    [("y", w, signed)], dict(a_bits=a_bits, b_bits=b_bits, signed=signed, out_bits=w),
                    reference=ref, codes={"a": valid_codes(fa), "b": valid_codes(fb)})


def adder_tree(n: int, bits: int, signed: bool = True) -> Operator:
    """Sum of n inputs of ``bits`` bits, exact (sum_type width)."""
    w = sum_type(Fixed(bits, bits, signed), n).width
    name = f"tree{n}_{'s' if signed else 'u'}{bits}"
    cast = "$signed" if signed else ""
    lines = [f"assign y = {' + '.join(f'{cast}(x{i})' for i in range(n))};"]
    ports = [_port("input", f"x{i}", bits) for i in range(n)] + [_port("output", "y", w, signed)]
    f = Fixed(bits, bits, signed)

    def ref(inp):
        return {"y": sum(decode(inp[f"x{i}"], f).astype(np.int64) for i in range(n))}

    return Operator(name, "tree", _module(name, ports, lines), [(f"x{i}", bits) for i in range(n)],
                    [("y", w, signed)], dict(n=n, bits=bits, signed=signed, out_bits=w),
                    reference=ref, codes={f"x{i}": valid_codes(f) for i in range(n)})


def accumulator(in_bits: int, acc_bits: int) -> Operator:
    """Registered accumulator (what a reuse factor > 1 needs): acc <= rst ? 0 : acc + x."""
    if acc_bits < in_bits:
        raise ValueError("accumulator narrower than its input")
    name = f"acc_s{in_bits}_{acc_bits}"
    lines = [f"reg signed [{acc_bits - 1}:0] r;",
             "always @(posedge clk) r <= rst ? " + f"{acc_bits}'sd0 : r + $signed(x);",
             "assign y = r;"]
    ports = ["input wire clk", "input wire rst", _port("input", "x", in_bits),
             _port("output", "y", acc_bits, True)]
    f = Fixed(in_bits, in_bits, True)

    def ref(inp):
        # running sum after each clock edge, reset where rst=1, wrapping at acc_bits (two's complement)
        out, r = [], 0
        for rst, x in zip(inp["rst"], decode(inp["x"], f).astype(np.int64)):
            r = 0 if rst else r + int(x)
            r = ((r + (1 << (acc_bits - 1))) % (1 << acc_bits)) - (1 << (acc_bits - 1))
            out.append(r)
        return {"y": np.array(out, dtype=object)}

    return Operator(name, "acc", _module(name, ports, lines), [("rst", 1), ("x", in_bits)],
                    [("y", acc_bits, True)], dict(in_bits=in_bits, acc_bits=acc_bits, out_bits=acc_bits),
                    clocked=True, reference=ref, codes={"x": valid_codes(f), "rst": np.array([0, 1])})


def xnor_popcount(n: int) -> Operator:
    """Bipolar dot product of n binary pairs: sum(a_i * w_i) = 2 * popcount(xnor(a, w)) - n."""
    w = (n).bit_length() + 1
    name = f"xnorpop{n}"
    cnt_w = n.bit_length()
    lines = [f"wire [{n - 1}:0] e = ~(a ^ b);",
             f"wire [{cnt_w - 1}:0] c = " + " + ".join(f"e[{i}]" for i in range(n)) + ";",
             f"assign y = $signed({{1'b0, c, 1'b0}}) - {w}'sd{n};"]
    ports = [_port("input", "a", n), _port("input", "b", n), _port("output", "y", w, True)]
    b = Binary()

    def ref(inp):
        tot = np.zeros(np.shape(inp["a"]), dtype=np.int64)
        for i in range(n):
            tot += (decode((inp["a"] >> i) & 1, b) * decode((inp["b"] >> i) & 1, b)).astype(np.int64)
        return {"y": tot}

    return Operator(name, "xnorpop", _module(name, ports, lines), [("a", n), ("b", n)], [("y", w, True)],
                    dict(n=n, out_bits=w), reference=ref,
                    codes={"a": None, "b": None})


# ----------------------------------------------------------------------------- dense layer
def dense(fx, weights: np.ndarray, fw, name: str = "dense") -> Operator:
    """Fully unrolled dense layer y_j = sum_i x_i * W[i, j] with constant weights (hls4ml's
    Latency strategy, reuse factor 1). ``weights`` (n_in, n_out) must be values of ``fw``;
    zero weights are omitted, exactly as the constant folding of synthesis would."""
    fx, fw = _fmt(fx), _fmt(fw)
    W = np.asarray(weights, dtype=np.float64)
    n_in, n_out = W.shape
    cx, cw = carrier(fx), carrier(fw)
    pt = product_type(cx, cw)
    acc = sum_type(pt, n_in)
    K = _units(W, cw.frac_bits)
    lines = []
    for i in range(n_in):
        if isinstance(fx, Binary):  # the code bit selects +1 or -1, the value of the 2-bit carrier
            xs = f"x{i}[0] ? {acc.width}'sd1 : -{acc.width}'sd1"
        else:
            xs = f"$signed(x{i})" if fx.signed else f"$signed({{1'b0, x{i}}})"
        lines.append(f"wire signed [{acc.width - 1}:0] xe{i} = {xs};")
    for j in range(n_out):
        terms = []
        for i in range(n_in):
            k = int(K[i, j])
            if k:
                terms.append(f"xe{i} * {'-' if k < 0 else ''}{acc.width}'sd{abs(k)}")
        lines.append(f"assign y{j} = {' + '.join(terms) if terms else f'{acc.width}' + chr(39) + 'sd0'};")
    ports = ([_port("input", f"x{i}", fx.width) for i in range(n_in)]
             + [_port("output", f"y{j}", acc.width, True) for j in range(n_out)])

    def ref(inp):
        xv = np.stack([decode(inp[f"x{i}"], fx) for i in range(n_in)], -1)
        prods = _units(xv, cx.frac_bits)[..., :, None] * K[None, :, :]
        return {f"y{j}": prods[..., j].sum(axis=-1) for j in range(n_out)}

    return Operator(name, "dense", _module(name, ports, lines), [(f"x{i}", fx.width) for i in range(n_in)],
                    [(f"y{j}", acc.width, True) for j in range(n_out)],
                    dict(x=str(fx), w=str(fw), n_in=n_in, n_out=n_out, x_bits=cx.width,
                         x_signed=cx.signed, w_bits=cw.width, out_bits=acc.width,
                         consts=[int(k) for k in K.ravel()]),
                    reference=ref, codes={f"x{i}": valid_codes(fx) for i in range(n_in)})


# ----------------------------------------------------------------------------- threshold lookup
def _case_rom(fn: str, idx_bits: int, out_bits: int, codes, signed: bool) -> list:
    """A Verilog function returning the constant codes[i] for index i (a ROM of constants)."""
    sg = "signed " if signed else ""
    lines = [f"function {sg}[{out_bits - 1}:0] {fn};", f"  input [{idx_bits - 1}:0] i;", "  case (i)"]
    for i, c in enumerate(codes):
        c = int(c)
        lit = f"-{out_bits}'sd{-c}" if c < 0 else f"{out_bits}'{'s' if signed else ''}d{c}"
        lines.append(f"    {idx_bits}'d{i}: {fn} = {lit};")
    lines += [f"    default: {fn} = {out_bits}'d0;", "  endcase", "endfunction"]
    return lines


def threshold_quantizer(in_type: Fixed, thresholds, levels=None, name: str | None = None) -> Operator:
    """y = levels[k], k = number of ``thresholds`` <= x, for x of the signed fixed type ``in_type``:
    the lookup fpq's HLS project builds for a quantizer whose scale is not a power of two
    (``fpq::quantize_by_thresholds`` in hls/fpq_minifloat.h, tables from fpq.numerics.thresholds).

    Same structure as the C++: a fully unrolled binary search, ceil(log2(N + 1)) steps, each
    comparing x with the constant th[mid] selected by the search so far (a ROM of the N
    thresholds), then a ROM of the N + 1 levels indexed by the result. ``thresholds`` and
    ``levels`` are values (ascending; thresholds on the grid of ``in_type``); the output is the
    level's code in ``values_carrier(levels)``. ``levels=None`` outputs k itself (unsigned)."""
    if not isinstance(in_type, Fixed) or not in_type.signed:
        raise ValueError(f"threshold quantizer input must be a signed Fixed (an accumulator grid), got {in_type}")
    th = np.asarray(thresholds, dtype=np.float64).ravel()
    n = th.size
    if n < 1:
        raise ValueError("a threshold quantizer needs at least one threshold (none: the output is a constant)")
    if np.any(np.diff(th) <= 0):
        raise ValueError("thresholds must be strictly ascending")
    w = in_type.width
    th_codes = _units(th, in_type.frac_bits)
    lo_c, hi_c = in_type.int_range
    if min(th_codes) < lo_c or max(th_codes) > hi_c:
        raise ValueError(f"thresholds outside the range of the input type {in_type}")
    idx_bits = max(1, n.bit_length())                  # holds 0..N
    steps = max(1, math.ceil(math.log2(n + 1)))       # after these, lo == hi on every path
    if levels is None:
        out_t, lv_codes, out_bits, out_signed = None, None, idx_bits, False
    else:
        lv = np.asarray(levels, dtype=np.float64).ravel()
        if lv.size != n + 1:
            raise ValueError(f"{n} thresholds need {n + 1} levels, got {lv.size}")
        out_t = values_carrier(lv)
        lv_codes = _units(lv, out_t.frac_bits)
        out_bits, out_signed = out_t.width, True
    name = name or f"thr_s{w}_n{n}"
    lines = _case_rom("th", idx_bits, w, th_codes, True)
    if lv_codes is not None:
        lines += _case_rom("lv", idx_bits, out_bits, lv_codes, True)
    lines += [f"reg [{idx_bits - 1}:0] lo, hi, mid;", f"reg [{idx_bits}:0] sum;", "integer s;",
              "always @* begin",
              f"  lo = {idx_bits}'d0; hi = {idx_bits}'d{n}; mid = {idx_bits}'d0; sum = {idx_bits + 1}'d0;",
              f"  for (s = 0; s < {steps}; s = s + 1) begin",
              "    if (lo < hi) begin",
              "      sum = lo + hi;",
              f"      mid = sum[{idx_bits}:1];",
              "      if (x >= th(mid)) lo = mid + 1'b1; else hi = mid;",
              "    end",
              "  end",
              "end",
              "assign y = " + ("lv(lo);" if lv_codes is not None else "lo;")]
    ports = [_port("input", "x", w, True), _port("output", "y", out_bits, out_signed)]

    def ref(inp):
        half = 1 << (w - 1)     # the signed value of each w-bit pattern (Python ints: any width)
        x = np.array([((int(c) + half) % (2 * half)) - half for c in np.ravel(inp["x"])], dtype=object)
        k = np.searchsorted(np.array(list(th_codes), dtype=object), x, side="right")
        if lv_codes is None:
            return {"y": k.astype(np.int64)}
        return {"y": np.array([lv_codes[int(i)] for i in k], dtype=object)}

    return Operator(name, "thr", _module(name, ports, lines), [("x", w)], [("y", out_bits, out_signed)],
                    dict(in_bits=w, n=int(n), out_bits=int(out_bits), steps=int(steps),
                         in_type=str(in_type), out_type=str(out_t) if out_t is not None else "index"),
                    reference=ref, codes={"x": None},
                    # sampled checks of wide inputs: every threshold, its predecessor and the ends
                    probes={"x": np.array([int(c) + d for c in th_codes for d in (-1, 0)] + [lo_c, hi_c],
                                          dtype=object)})


def threshold_span(in_bits: int, frac_bits: int, thresholds) -> tuple[int, int]:
    """(compared bits, range bits) of a threshold table over a signed ``in_bits``-bit input:
    the comparators see only the bits between the lowest set bit common to every threshold and
    the highest bit in which a threshold differs from its sign extension; the input bits above
    only decide whether x is out of the thresholds' range (a wide AND / OR, no carry chain)."""
    codes = [int(c) for c in _units(np.asarray(thresholds, np.float64), frac_bits)]
    nz = [c for c in codes if c]
    low = min(((abs(c) & -abs(c)).bit_length() - 1 for c in nz), default=0)
    top = max((c if c >= 0 else ~c).bit_length() + 1 for c in codes)
    top = min(max(top, low + 1), in_bits)
    return top - low, in_bits - top
