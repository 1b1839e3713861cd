"""The activation quantizers ``fpq.to_rtl`` writes, one element each, as synthesizable operators
(``fpq.cost_model.rtl.Operator``) with fpq's quantizer as their oracle: what
``python -m fpq.rtl.calibration`` synthesizes to price them.

The Verilog is the network writer's own (``network.Writer._cast`` / ``_minifloat`` and the float32
input lookup of ``op_input_quant``), written for one element into a module of its own, so the
circuit measured is the circuit the networks contain. Three kinds:

* ``castq``: an ap_fixed cast (Fixed, or a full-range Int at a power-of-two scale) of a signed
  accumulator: a rounding increment and a saturation mux;
* ``mfq``: a minifloat at a power-of-two scale (``fpq::quantize_minifloat`` unrolled: |x|, one
  constant-shift rounding per binade the input reaches, a priority select, the sign back);
* ``f32q``: a network-input quantizer that no cast computes (a minifloat, a narrow int, a float
  scale): the order-preserving integer key of the float32 port and a threshold lookup over it.
"""
from __future__ import annotations

import numpy as np

from ..cost_model import rtl as oprtl
from ..cost_model.ops import varying_bits
from ..formats import Fixed, Minifloat, parse_format
from ..typeplan import TensorType, levels_carrier
from .network import Sig, Writer, _float32_keys, _ident


def _out_carrier(fmt, scale_exp: int) -> Fixed:
    return TensorType(fmt, np.float32(2.0 ** scale_exp)).carrier()


def _quantize_codes(codes, in_t: Fixed, fmt, scale_exp: int, out: Fixed) -> np.ndarray:
    """fpq's numpy reference on the values of ``codes`` (in ``in_t``), as codes of ``out``."""
    from ..numerics.scaled import apply_scaled   # the emulator's quantizer of an exact (float64) sum

    half = 1 << (in_t.width - 1)
    c = np.array([((int(v) + half) % (2 * half)) - half for v in np.ravel(codes)], dtype=np.float64)
    y = apply_scaled(np.ldexp(c, -in_t.frac_bits), fmt, np.float32(2.0 ** scale_exp))
    k = np.ldexp(np.asarray(y, np.float64), out.frac_bits)
    if not np.all(k == np.round(k)):
        raise AssertionError(f"{fmt} x 2^{scale_exp} output off the grid of {out}")
    return k.astype(np.int64)


def quantizer_op(fmt, in_t: Fixed, scale_exp: int = 0, name: str | None = None) -> oprtl.Operator:
    """One element of the requantizer ``to_rtl`` writes for ``fmt`` x 2^scale_exp after a tensor of
    the signed fixed type ``in_t``: a ``castq`` or ``mfq`` operator (combinational)."""
    fmt = parse_format(fmt)
    if not isinstance(in_t, Fixed) or not in_t.signed:
        raise ValueError(f"quantizer input must be a signed Fixed (an accumulator), got {in_t!r}")
    out = _out_carrier(fmt, scale_exp)
    name = _ident(name or f"q_{oprtl.fmt_tag(fmt)}_x{scale_exp}_s{in_t.width}f{in_t.frac_bits}".replace("-", "n"))
    w = Writer(None, None, 0, name)
    x = Sig("x", in_t)
    if isinstance(fmt, Minifloat):
        y, kind = w._minifloat("q", x, out, fmt, scale_exp), "mfq"
    else:
        y, kind = w._cast("q", x, out, fmt), "castq"
    w.lines.append(f"assign y = {y.name};")
    ports = [oprtl._port("input", "x", in_t.width, True), oprtl._port("output", "y", out.width, out.signed)]

    def ref(inp):
        return {"y": _quantize_codes(inp["x"], in_t, fmt, scale_exp, out)}

    return oprtl.Operator(name, kind, oprtl._module(name, ports, w.lines), [("x", in_t.width)],
                          [("y", out.width, out.signed)],
                          dict(fmt=str(fmt), scale_exp=int(scale_exp), in_bits=in_t.width, in_frac=in_t.frac_bits,
                               out_bits=out.width, out_frac=out.frac_bits),
                          reference=ref, codes={"x": None})


def input_lookup_op(fmt, scale: float, name: str | None = None) -> oprtl.Operator:
    """One element of the network-input quantizer ``to_rtl`` writes for a format no cast computes:
    the float32 bit pattern's order-preserving key and the threshold lookup over it (the HLS
    project's float32 table, ``fpq.numerics.thresholds``)."""
    from ..numerics.thresholds import quantizer_table

    fmt = parse_format(fmt)
    tt = TensorType(fmt, np.float32(scale))
    th, lv = quantizer_table(fmt, np.float32(scale), "float32")
    keys = _float32_keys(th).astype(np.float64)
    key_t = Fixed(32, 32, True)
    out = levels_carrier(tt, lv)
    name = _ident(name or f"f32q_{oprtl.fmt_tag(fmt)}")
    thr = oprtl.threshold_quantizer(key_t, keys, lv, name=f"{name}_thr")
    lvc = oprtl.values_carrier(lv)
    shift = out.frac_bits - lvc.frac_bits
    body = ["wire signed [31:0] k = x[31] ? -$signed({1'b0, x[30:0]}) : $signed({1'b0, x[30:0]});",
            f"wire signed [{lvc.width - 1}:0] lv;",
            f"{thr.name} u(.x(k), .y(lv));",
            f"wire signed [{max(out.width, lvc.width + shift) - 1}:0] al = $signed(lv) <<< {shift};",
            f"assign y = al[{out.width - 1}:0];"]
    ports = [oprtl._port("input", "x", 32), oprtl._port("output", "y", out.width, out.signed)]

    def ref(inp):
        from ..numerics.scaled import apply_scaled   # the graph input's quantizer (float32 division)

        bits = np.asarray([int(v) & 0xFFFFFFFF for v in np.ravel(inp["x"])], dtype=np.uint32)
        with np.errstate(invalid="ignore", over="ignore"):
            y = apply_scaled(bits.view(np.float32), fmt, np.float32(scale))
        return {"y": np.ldexp(np.asarray(y, np.float64), out.frac_bits).astype(np.int64)}

    # finite float32 patterns only (the port carries numbers): every threshold's neighbours
    probes = np.array([int(v) for t in np.asarray(th, np.float32) for v in
                       np.array([t, np.nextafter(t, np.float32(-np.inf)), np.nextafter(t, np.float32(np.inf))],
                                np.float32).view(np.uint32)], dtype=object)
    return oprtl.Operator(
        # the wrapper first: the synthesis batch keeps the hierarchy of an operator's first module
        name, "f32q", oprtl._module(name, ports, body) + "\n" + thr.verilog, [("x", 32)],
                          [("y", out.width, out.signed)],
                          dict(fmt=str(fmt), scale=float(np.float32(scale)), in_bits=32, n=int(len(th)),
                               out_bits=out.width, lv_bits=lvc.width, cols=varying_bits(keys, 32)),
                          reference=ref, codes={"x": None}, probes={"x": probes})
