"""Block-scaled layers (mxfp4, nvfp4, mxfp8_e4m3, mxint8, ``block<ELEM,SCALE,K>``) in the HLS
project, through hls4ml's extension API: ``FpqBlockQuant`` (a block quantizer with run-time block
scales) and ``FpqBlockDense`` (the exact block dot product). The C++ is ``hls/fpq_block.h``; its
header comment says what travels on the wire (one word per value: element sign, element index,
block scale code) and how every step stays exact. hls4ml has no block-scaled type or layer, and
qonnx none either, so both layers and their C++ are fpq's own.

The builder (fpq.hls.builder) hands every op that reads or writes a block-scaled tensor here
(``handles``): the input quantizer and a layer's output quantizer become ``FpqBlockQuant`` (a flat
vector in blocks along it; a channels-last feature map in blocks along each pixel's channels), a
Linear whose input and weight are block-scaled ``FpqBlockDense`` (weights as static element codes
and per-block scale codes), a Conv1d / Conv2d ``FpqBlockConv`` (the same dot product per output
pixel and kernel tap, blocks along the input channels as fpq.numerics.block_conv defines them), a
ReLU of block words an ``FpqQuantize`` (``fpq::block_relu``), and the network's block output an
``FpqQuantize`` decoding the words into their exact values (``fpq::block_decode``). Every width is
computed here, exactly, from the formats (and the static weights' scale codes); io_parallel, and
io_stream (the vector or map read whole, then the same circuit). A flatten relabels the words; a
Linear after a flattened map reads it in channels-last order, where its blocks no longer line up
with the weights' (torch order), so each product there has its own pair of scales (g = 1).

Block sizes that do not divide the reduction axis are zero-padded, as fpq.numerics.blocks pads
(OCP MX pads a vector): the padding changes no block scale and adds nothing to a sum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
from hls4ml.model.layers import Attribute, Layer

from ..formats import BlockFormat
from ..formats.block import element_precision
from ..numerics import block_hw
from ..numerics.block_hw import Wire, dyadic_ints, exact_product, scale_sig_exp, value_grid
from .types import FloatPort, HLSUnsupportedError, _is_channels_last, _Tensor, channels_last_perm, hls_shape_of

HEADER = "nnet_utils/fpq_block.h"


@dataclass(frozen=True)
class WideFixed:
    """An ap_fixed precision wider than fpq's Fixed allows (MAX_FIXED_WIDTH): the exact sums and
    decoded values of E8M0 blocks span ~2^-140 .. 2^140. Spelled and compared as a Fixed."""

    width: int
    int_bits: int
    signed: bool = True
    rounding: str = "TRN"
    overflow: str = "WRAP"

    def __str__(self):
        return f"{'fixed' if self.signed else 'ufixed'}<{self.width},{self.int_bits}>"


def _word(bits: int) -> WideFixed:
    return WideFixed(bits, bits, False)


def _ctable(name: str, ctype: str, vals, ret: str | None = None) -> str:
    lit = {"double": lambda v: repr(float(v)), "bool": lambda v: "true" if v else "false",
           "int": lambda v: str(int(v)), "long long": lambda v: f"{int(v)}LL",
           "unsigned": lambda v: f"{int(v)}u"}[ctype]
    return (f"    static {ret or ctype} {name}(int i) {{\n        #pragma HLS INLINE\n"
            f"        static const {ctype} t[{len(vals)}] = {{{', '.join(lit(v) for v in vals)}}};\n"
            f"        return t[i];\n    }}")


def _hls(fn, *args):
    """A block_hw fact, its refusal as the HLS path's error."""
    try:
        return fn(*args)
    except ValueError as e:
        raise HLSUnsupportedError(str(e)) from None


def make_wire(fmt: BlockFormat, scale, who: str) -> Wire:
    return _hls(block_hw.make_wire, fmt, scale, who)


def dense_widths(xw: Wire, ww: Wire, w, bias, who: str, taps: int = 1, perm=None):
    return _hls(block_hw.dense_widths, xw, ww, w, bias, who, taps, perm)


SCALE_MODES = {"floor": 0, "ceil": 1, "even": 2, "rceil": 3}   # hls/fpq_block.h, block_scale


def _scale_mode(fmt: BlockFormat) -> list[str]:
    """The E8M0 scale rounding's constants (exact doubles: frexp's significands)."""
    me, ee = math.frexp(float(fmt.elem_max))
    even_th = 1.0 - 2.0 ** -(element_precision(fmt.elem) + 1)
    return [f"    static const int scale_mode = {SCALE_MODES[fmt.scale_rounding]};",
            f"    static constexpr double even_th = {even_th!r};", f"    static constexpr double max_me = {me!r};",
            f"    static const int max_ee = {ee};"]


def _quant_body(w: Wire, n_in: int, rows: tuple | None = None) -> str:
    """The FpqBlockQuant config of n_in values in rows ``(n_chan, row_inner, row_outer, row_stride)``
    (``_rows``; default: one row)."""
    k = w.fmt.k
    n_chan, inner, outer, stride = (n_in, 1, n_in, 1) if rows is None else rows
    if n_in % n_chan:
        raise AssertionError(f"{n_in} values are not rows of {n_chan}")
    lines = [f"    static const unsigned n_in = {n_in};", f"    static const unsigned n_chan = {n_chan};",
             f"    static const unsigned row_inner = {inner};", f"    static const unsigned row_outer = {outer};",
             f"    static const unsigned row_stride = {stride};",
             f"    static const unsigned k = {k};", f"    static const unsigned n_blocks = {-(-n_chan // k)};",
             f"    static const bool po2 = {'true' if w.fmt.po2_scale else 'false'};",
             f"    static const int emax_elem = {w.fmt.emax_elem};", *_scale_mode(w.fmt),
             f"    static const int idx_bits = {w.elem.idx_bits};", f"    static const int word_bits = {w.word_bits};",
             f"    static const int n_elem_mid = {len(w.elem.mids)};",
             _ctable("elem_mid_sig", "long long", [block_hw.sig_exp(float(m))[0] for m in w.elem.mids]),
             _ctable("elem_mid_exp", "int", [block_hw.sig_exp(float(m))[1] for m in w.elem.mids]),
             _ctable("elem_up", "bool", w.elem.up)]
    if not w.fmt.po2_scale:
        sg = value_grid(w.fmt.scale, w.fmt.scale.min_normal)
        c = float(w.fmt.elem_max) * w.st
        th = [exact_product(float(m) * c, m, w.fmt.elem_max, w.st) for m in sg.mids]
        ss = [block_hw.sig_exp(float(v)) for v in sg.pos]
        st_sig, st_exp = block_hw.sig_exp(w.st)
        top = max(block_hw.sig_exp(float(m))[0] for m in w.elem.mids) * max(s for s, _ in ss) * st_sig
        if top >= 1 << 53:
            raise AssertionError(f"{w.fmt}: a threshold has {top.bit_length()} significant bits")  # formats fit
        lines += [f"    static const int n_scale_mid = {len(th)};", _ctable("scale_th", "double", th),
                  _ctable("scale_up", "bool", sg.up), _ctable("scale_sig", "long long", [s for s, _ in ss]),
                  _ctable("scale_exp", "int", [e for _, e in ss]),
                  f"    static const long long st_sig = {st_sig}LL;", f"    static const int st_exp = {st_exp};"]
    return "\n".join(lines)


class FpqBlockQuant(Layer):
    """A block quantizer: n_in values (float port or an exact sum) -> one block word each."""

    _expected_attributes = [Attribute("n_in"), Attribute("config_body", value_type=str)]

    def initialize(self):
        inp = self.get_input_variable()
        self.set_attr("n_in", inp.size())
        self.add_output_variable(inp.shape)


class FpqBlockDense(Layer):
    """The exact dot product of block words with static block-coded weights, plus the bias."""

    _expected_attributes = [Attribute("n_in"), Attribute("n_out"), Attribute("config_body", value_type=str)]

    def initialize(self):
        self.add_output_variable([self.get_attr("n_out")])


_CONFIG = """struct config{index} {{
    static const unsigned io_type = nnet::{iotype};
    static const unsigned reuse_factor = {reuse};
    // fpq {what} (hls/fpq_block.h)
{body}
}};\n"""


def _templates(cls, what: str, fn: str):
    class Config(LayerConfigTemplate):
        def __init__(self):
            super().__init__(cls)

        def format(self, node):
            params = self._default_config_params(node)
            return _CONFIG.format(what=what, body=node.get_attr("config_body"), **params)

    class Call(FunctionCallTemplate):
        def __init__(self):
            super().__init__(cls, include_header=[HEADER])

        def format(self, node):
            params = self._default_function_params(node)
            return f"fpq::{fn}<{{input_t}}, {{output_t}}, {{config}}>({{input}}, {{output}});".format(**params)

    return Config, Call


class FpqBlockConv(Layer):
    """An exact Conv1D / Conv2D of a channels-last map of block words with static block-coded
    weights (fpq::block_conv); its output shape (channels-last) in ``out_shape``."""

    _expected_attributes = [Attribute("out_shape", value_type=list), Attribute("config_body", value_type=str)]

    def initialize(self):
        self.add_output_variable(list(self.get_attr("out_shape")))


TEMPLATES = _templates(FpqBlockQuant, "block quantizer", "block_quant_layer") + \
    _templates(FpqBlockDense, "block dot product", "block_dense") + \
    _templates(FpqBlockConv, "block convolution", "block_conv")


def register(backend) -> None:
    for t in TEMPLATES:
        backend.register_template(t)


# ---------------------------------------------------------------------------------- dot product
def _dense_body(xw: Wire, ww: Wire, w: np.ndarray, bias, who: str, taps: int = 1,
                perm=None) -> tuple[str, WideFixed]:
    """The FpqBlockDense config of y = x @ w.T + bias (FpqBlockConv's: ``taps`` rows of w per output;
    ``perm``: the input in channels-last order; block_hw.dense_widths) and its exact result type."""
    d = dense_widths(xw, ww, w, bias, who, taps, perm)
    words = (np.asarray(d.w_idx, dtype=np.int64) << 1) | np.asarray(d.w_neg, dtype=np.int64)
    body = "\n".join([
        f"    static const unsigned n_in = {d.n_in};", f"    static const unsigned n_out = {d.n_out};",
        f"    static const unsigned g = {d.g};", f"    static const unsigned n_sub = {d.n_sub};",
        f"    static const unsigned kw = {d.kw};", f"    static const unsigned nbw = {d.nbw};",
        f"    static const int x_idx_bits = {xw.elem.idx_bits};", f"    static const int x_word_bits = {xw.word_bits};",
        f"    static const int w_idx_bits = {ww.elem.idx_bits};",
        f"    static const int e_min = {d.e_min};", f"    static const long long cm = {d.cm}LL;",
        f"    static const int acc_shift = {d.acc_shift};", f"    static const int bias_shift = {d.bias_shift};",
        f"    typedef ap_int<{d.pw}> psum_t;", f"    typedef ap_int<{d.tw}> term_t;",
        f"    typedef ap_int<{d.aw}> acc_t;", f"    typedef ap_int<{d.yw}> y_t;",
        _ctable("x_elem", "long long", d.x_ints), _ctable("w_elem", "long long", d.w_ints),
        _ctable("x_sig", "long long", d.x_sig), _ctable("x_exp", "int", d.x_exp),
        _ctable("w_sig", "long long", d.w_sig), _ctable("w_exp", "int", d.w_exp),
        _ctable("w_word", "unsigned", words.ravel()), _ctable("w_scale", "int", np.ravel(d.w_codes)),
        _ctable("bias_int", "long long", d.b_int),
    ])
    return body, WideFixed(d.yw, d.yw + d.lsb_y)


# ------------------------------------------------------------------------------------- building
def _wires(builder) -> dict:
    return builder.block_wires


def _is_block(t) -> bool:
    return t is not None and isinstance(t.format, BlockFormat)


def handles(builder, op) -> bool:
    """Whether ``op`` writes or reads a block-scaled tensor (then ``build`` builds or refuses it)."""
    if op.kind in ("input_quant", "quant") and _is_block(op.quant.ttype):
        return True
    if op.kind in ("linear", "conv1d", "conv2d") and (_is_block(op.types.get("input")) or
                                                      _is_block(op.types.get("weight"))):
        return True
    wires = _wires(builder)
    return any(name in builder.t and builder.t[name].layer in wires for name in op.inputs)


def _out(builder, op, tensor: _Tensor, wire: Wire | None) -> None:
    """The op's value is ``tensor``. No trace of a block layer is compared with the emulator's
    op (its words are codes; its exact sum is not the emulator's rounded one): verify compares
    the network output."""
    builder.t[op.outputs[0]] = tensor
    builder.plan.op_layer[op.name] = tensor.layer
    if wire is not None:
        _wires(builder)[tensor.layer] = wire


def _flat(builder, op, src: _Tensor, who: str) -> None:
    if len(src.hls_shape) != 1:
        raise HLSUnsupportedError(f"{who}: a block-scaled Linear takes a flat vector; its input has shape "
                                  f"{src.torch_shape} (flatten it first)")


def _rows(src: _Tensor, fmt: BlockFormat, who: str) -> tuple:
    """The rows of a block quantizer's input in the HLS order, (row length, row_inner, row_outer,
    row_stride) of fpq::block_index: a flat vector is one row (blocks on its last axis); a
    channels-last feature map (C, [H,] W) a row of channels per pixel (torch axis 1: what a
    convolution reads) or a row along its width per (height, channel) (torch's last axis: the output
    of the network's last convolution, as fpq.convert blocks it)."""
    shape = tuple(int(d) for d in src.torch_shape)
    if len(shape) == 1 and src.perm is None and fmt.axis in (1, -1):
        return shape[0], 1, shape[0], 1
    if len(shape) in (2, 3) and _is_channels_last(src) and fmt.axis in (1, -1, len(shape)):
        c, w = shape[0], shape[-1]
        return (c, 1, c, 1) if fmt.axis == 1 else (w, c, w * c, c)
    raise HLSUnsupportedError(f"{who}: HLS block-quantizes a flat vector or the channels of a 1-D / 2-D feature map; "
                              f"its input has shape {src.torch_shape} and {fmt} blocks axis {fmt.axis}")


def build(builder, op) -> None:
    who = f"{op.kind} {op.name!r}"
    wires = _wires(builder)
    p = builder.plan
    if op.kind == "input_quant":
        name = op.inputs[0]
        if name not in builder.g.inputs or builder.uses.get(name, 0) != 1:
            raise HLSUnsupportedError(f"{who}: an input quantizer must read the graph input, and be its only reader")
        shape = tuple(int(d) for d in builder.g.input_shapes[name][1:])
        if len(shape) not in (1, 2, 3):
            raise HLSUnsupportedError(f"{who}: block-scaled HLS layers take a flat vector or a 1-D / 2-D feature map; "
                                      f"the input has shape {shape}")
        perm = channels_last_perm(shape)
        p.input_shape, p.input_perm, p.input_float32 = shape, perm, True
        builder.add_layer({"class_name": "InputLayer", "name": p.input_name,
                           "input_shape": list(hls_shape_of(shape))}, {"result": FloatPort()})
        src = _Tensor(p.input_name, FloatPort(), shape, hls_shape_of(shape), perm)
    elif op.kind not in ("linear", "conv1d", "conv2d"):
        src = builder.src(op)
    if op.kind in ("input_quant", "quant"):
        if src.layer in wires:
            raise HLSUnsupportedError(f"{who}: re-quantizing block-scaled values is not built in HLS")
        tt = op.quant.ttype
        rows = _rows(src, tt.format, who)
        wire = make_wire(tt.format, tt.scale, who)
        out = _word(wire.word_bits)
        builder.add_layer({"class_name": "FpqBlockQuant", "name": op.name, "inputs": [src.layer],
                           "config_body": _quant_body(wire, int(np.prod(src.hls_shape)), rows)}, {"result": out})
        _out(builder, op, _Tensor(op.name, out, src.torch_shape, src.hls_shape, src.perm), wire)
    elif op.kind in ("conv1d", "conv2d"):
        _build_conv(builder, op, who)
    elif op.kind == "linear":
        src = builder.src(op)
        x_t, w_t = op.types.get("input"), op.types.get("weight")
        if src.layer not in wires or not _is_block(w_t):
            raise HLSUnsupportedError(
                f"{who}: HLS builds a block-scaled Linear whose input and weights are both block-scaled; it has "
                f"input {getattr(x_t, 'format', None)} and weights {getattr(w_t, 'format', None)}")
        _flat(builder, op, src, who)
        w = np.asarray(op.weight, dtype=np.float64)
        ww = make_wire(w_t.format, w_t.scale, f"{who} (weight)")
        body, res = _dense_body(wires[src.layer], ww, w, op.bias, who, perm=src.perm)
        p.notes.append(f"{op.name}: block-scaled ({w_t.format} weights, {x_t.format} input), built fully unrolled "
                       "(fpq::block_dense): the reuse factor does not apply" +
                       ("; its input is a flattened feature map (channels-last), whose blocks do not line up with "
                        "the weights': one scale pair per product" if src.perm is not None else ""))
        builder.add_layer({"class_name": "FpqBlockDense", "name": op.name, "inputs": [src.layer],
                           "n_in": w.shape[1], "n_out": w.shape[0], "config_body": body}, {"result": res})
        _out(builder, op, _Tensor(op.name, res, (w.shape[0],), (w.shape[0],), None), None)
    elif op.kind == "relu":
        wire = wires[src.layer]
        builder.add_layer({"class_name": "FpqQuantize", "name": op.name, "inputs": [src.layer],
                           "quantizer": f"fpq::block_relu<in_T, out_T, {wire.elem.idx_bits}>({{x}})",
                           "fpq_format": f"relu of {wire.fmt} words"}, {"result": src.fixed})
        _out(builder, op, _Tensor(op.name, src.fixed, src.torch_shape, src.hls_shape, src.perm), wire)
    elif op.kind == "output":
        _build_output(builder, op, src, wires[src.layer])
    elif op.kind in ("flatten", "reshape") and len(builder.torch_shape(op)) == 1:
        builder.op_flatten(op) if op.kind == "flatten" else builder.op_reshape(op)   # the words, relabelled
        layer = builder.t[op.outputs[0]].layer
        wires[layer] = wires[src.layer]
        if layer != src.layer:
            p.layer_op.pop(layer, None)   # words, not the emulator's values: no trace compares them (_out)
    else:
        raise HLSUnsupportedError(f"{who} reads block-scaled values; HLS builds Linear, Conv1d / Conv2d, ReLU, "
                                  "flatten and the network output on them (quantize to a scalar format first for other "
                                  "ops)")


def _build_conv(builder, op, who: str) -> None:
    """A block-scaled Conv1d / Conv2d: ``FpqBlockConv`` (fpq::block_conv), the weights as element
    codes per (output channel, kernel tap) row of input channels, blocked as the emulator blocks them
    (fpq.numerics.block_conv)."""
    src = builder.src(op)
    wires = _wires(builder)
    x_t, w_t = op.types.get("input"), op.types.get("weight")
    if src.layer not in wires or not _is_block(w_t):
        raise HLSUnsupportedError(
            f"{who}: HLS builds a block-scaled convolution whose input and weights are both block-scaled; it has "
            f"input {getattr(x_t, 'format', None)} and weights {getattr(w_t, 'format', None)}")
    nd = 1 if op.kind == "conv1d" else 2
    if len(src.torch_shape) != nd + 1 or not _is_channels_last(src):
        raise HLSUnsupportedError(f"{who}: input of shape {src.torch_shape} is not a {nd}-D feature map")
    if w_t.format.axis != 1:
        raise HLSUnsupportedError(f"{who}: its weights {w_t.format} block axis {w_t.format.axis}; HLS builds "
                                  "convolution weights blocked along the input channels (axis 1)")
    a = op.attrs
    if int(a.get("groups", 1)) != 1:
        raise HLSUnsupportedError(f"{who}: groups={a['groups']}; block-scaled convolutions are built for groups=1")
    w = np.asarray(op.weight, dtype=np.float64)               # (O, C, *kernel)
    cout, cin = int(w.shape[0]), int(w.shape[1])
    taps = int(np.prod(w.shape[2:]))
    rows = np.swapaxes(w.reshape(cout, cin, taps), 1, 2).reshape(cout * taps, cin)   # (o, tap) rows of channels
    ww = make_wire(w_t.format, w_t.scale, f"{who} (weight)")
    body, res = _dense_body(wires[src.layer], ww, rows, op.bias, who, taps)
    one = (1,) * (2 - nd)                                     # a Conv1D is a Conv2D of height 1
    k = one + tuple(int(v) for v in a["kernel"])
    st = one + tuple(int(v) for v in a["strides"])
    dil = one + tuple(int(v) for v in a.get("dilations", (1,) * nd))
    pads = tuple(int(v) for v in a["pads"])
    pad_begin = (0,) * len(one) + pads[:nd]
    out_t = builder.torch_shape(op)
    in_hw, out_hw = one + tuple(src.torch_shape[1:]), one + tuple(out_t[1:])
    geo = {"in_height": in_hw[0], "in_width": in_hw[1], "n_chan": cin, "out_height": out_hw[0],
           "out_width": out_hw[1], "n_filt": cout, "filt_height": k[0], "filt_width": k[1], "stride_height": st[0],
           "stride_width": st[1], "dilation_height": dil[0], "dilation_width": dil[1], "pad_top": pad_begin[0],
           "pad_left": pad_begin[1]}
    body = "\n".join(f"    static const unsigned {n} = {v};" for n, v in geo.items()) + "\n" + body
    builder.plan.notes.append(f"{op.name}: block-scaled convolution ({w_t.format} weights, {x_t.format} input), "
                              "built fully unrolled (fpq::block_conv): the reuse factor does not apply")
    hshape = hls_shape_of(out_t)
    builder.add_layer({"class_name": "FpqBlockConv", "name": op.name, "inputs": [src.layer],
                       "out_shape": list(hshape), "config_body": body}, {"result": res})
    _out(builder, op, _Tensor(op.name, res, out_t, hshape, channels_last_perm(out_t)), None)


def _build_output(builder, op, src: _Tensor, wire: Wire) -> None:
    """The network output: block words decoded into their exact values (fpq::block_decode)."""
    p = builder.plan
    if p.output_layer:
        raise HLSUnsupportedError("the HLS path takes networks with one output")
    if src.layer != p.layers[-1]["name"]:
        raise HLSUnsupportedError(f"the network output {op.inputs[0]!r} must be computed by the last layer")
    el, _ = dyadic_ints(wire.elem.pos)
    sig, exp, e_lo, _, _ = scale_sig_exp(wire)
    stm, _ = block_hw.sig_exp(wire.st)
    ow, lsb = block_hw.output_widths(wire)
    if ow > block_hw.MAX_WIDTH:
        raise HLSUnsupportedError(f"output {op.name!r}: its values need {ow} bits")
    out = WideFixed(ow, ow + lsb)
    name = f"{src.layer}_decode"
    tables = (f"static const long long el[{len(el)}] = {{{', '.join(f'{v}LL' for v in el)}}}; "
              f"static const long long sg[{len(sig)}] = {{{', '.join(f'{v}LL' for v in sig)}}}; "
              f"static const int ex[{len(exp)}] = {{{', '.join(str(v) for v in exp)}}};")
    call = (f"fpq::block_decode<in_T, out_T, {wire.elem.idx_bits}, {wire.scale_bits}>({{x}}, el, sg, ex, {stm}LL, "
            f"{e_lo})")
    builder.add_layer({"class_name": "FpqQuantize", "name": name, "inputs": [src.layer], "quantizer": call,
                       "quantizer_tables": tables, "fpq_format": f"decode {wire.fmt} words"}, {"result": out})
    p.output_layer, p.output_shape, p.output_perm = name, src.torch_shape, src.perm
    p.op_layer[op.name] = name
