"""The transformer ops in the HLS project (issue 22): fpq's hls4ml layers ``FpqMatMul`` (the product
of two quantized activations, IR ``matmul``) and ``FpqPermute`` (a re-layout), built through hls4ml's
extension API (C++: ``hls/fpq_attention.h``, io_parallel and io_stream), and the builders of the
encoder's other ops on hls4ml's own layers:

* layout: a token tensor (T, d) is stored in torch order, which is hls4ml's channels-last layout of
  a 1-D map of width T with d channels. A reshape never moves a value (torch's flat order is kept)
  and a transpose only changes which torch element each stored value is, so both are free: the
  builder tracks the permutation (``_Tensor.perm``) and ``contiguous`` inserts an ``FpqPermute``
  (wires) only where a layer needs its input in torch order (a matmul operand, a per-token Linear).
* linear over the last axis of a (..., d) tensor: hls4ml's Conv1D with a kernel of 1 over the
  rows (its pointwise convolution), the weights, bias, exact accumulator and fused requantizer
  exactly as for a Dense (``_Builder._weighted_types``).
* matmul: ``FpqMatMul``; result the exact sum times 2^alpha (``shift_t``), or the cast of the
  quantizer the TypePlan fuses into it (``fpq.ir.plan.REQUANT_FUSING``).
* gather (an embedding): hls4ml's Embedding, the table a ROM of its quantized values in their exact
  carrier, read at the token ids (the input quantizer's integer codes).
* add_const of a quantized constant (a learned positional embedding): hls4ml's BatchNormalization
  with scale 1 and one bias per element, the exact sum as its result.
"""
from __future__ import annotations

import numpy as np
from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
from hls4ml.model.layers import Attribute, Layer

from ..formats import Fixed
from ..typeplan import product_type, sum_type
from . import cpp
from .types import FloatPort, HLSUnsupportedError, _carrier, _Tensor

HEADER = "nnet_utils/fpq_attention.h"


class FpqMatMul(Layer):
    """res = 2^alpha * (a @ b) over ``n_batch`` groups of (n_m, n_k) @ (n_k, n_n); both inputs in torch
    order. ``accum_t``: the exact sum; ``shift_t``: its bits read with the binary point moved by alpha."""

    _expected_attributes = [Attribute(a) for a in ("n_batch", "n_m", "n_k", "n_n")] + [
        Attribute("accum_cpp", value_type=str), Attribute("shift_cpp", value_type=str),
        Attribute("out_shape", value_type=list)]

    def initialize(self):
        self.add_output_variable(list(self.get_attr("out_shape")))


_MM_CONFIG = """struct config{index} {{
    static const unsigned n_batch = {n_batch};
    static const unsigned n_m = {n_m};
    static const unsigned n_k = {n_k};
    static const unsigned n_n = {n_n};
    static const unsigned io_type = nnet::{iotype};
    static const unsigned reuse_factor = {reuse};
    typedef {accum_cpp} accum_t;   // the exact sum (fpq.typeplan)
    typedef {shift_cpp} shift_t;   // its bits times 2^alpha
}};\n"""


class FpqMatMulConfigTemplate(LayerConfigTemplate):
    def __init__(self):
        super().__init__(FpqMatMul)

    def format(self, node):
        return _MM_CONFIG.format(**self._default_config_params(node))


class FpqMatMulFunctionTemplate(FunctionCallTemplate):
    def __init__(self):
        super().__init__(FpqMatMul, include_header=[HEADER])

    def format(self, node):
        a, b = (node.get_input_variable(node.inputs[k]) for k in (0, 1))
        out = node.get_output_variable()
        return (f"fpq::matmul<{a.type.name}, {b.type.name}, {out.type.name}, config{node.index}>"
                f"({a.name}, {b.name}, {out.name});")


class FpqPermute(Layer):
    """res[j] = data[index[j]]: the values re-laid out (no arithmetic); the output shape in ``out_shape``."""

    _expected_attributes = [Attribute("n_in"), Attribute("index_table", value_type=str),
                            Attribute("out_shape", value_type=list)]

    def initialize(self):
        self.set_attr("n_in", self.get_input_variable().size())
        self.add_output_variable(list(self.get_attr("out_shape")))


_PERM_CONFIG = """struct config{index} {{
    static const unsigned n_in = {n_in};
    static const unsigned io_type = nnet::{iotype};
    static const unsigned reuse_factor = {reuse};
    static unsigned index(unsigned j) {{
        #pragma HLS INLINE
        static const unsigned t[{n_in}] = {index_table};
        return t[j];
    }}
}};\n"""


class FpqPermuteConfigTemplate(LayerConfigTemplate):
    def __init__(self):
        super().__init__(FpqPermute)

    def format(self, node):
        return _PERM_CONFIG.format(**self._default_config_params(node))


class FpqPermuteFunctionTemplate(FunctionCallTemplate):
    def __init__(self):
        super().__init__(FpqPermute, include_header=[HEADER])

    def format(self, node):
        return "fpq::permute<{input_t}, {output_t}, {config}>({input}, {output});".format(
            **self._default_function_params(node))


def register(backend) -> None:
    for t in (FpqMatMulConfigTemplate, FpqMatMulFunctionTemplate, FpqPermuteConfigTemplate, FpqPermuteFunctionTemplate):
        backend.register_template(t)


# -- layouts

def relabel(src: _Tensor, torch_shape: tuple, perm) -> _Tensor:
    """The same stored values seen with another torch shape / order (no layer)."""
    perm = None if perm is None or np.array_equal(perm, np.arange(len(perm))) else np.asarray(perm)
    return _Tensor(src.layer, src.fixed, tuple(torch_shape), src.hls_shape, perm, src.sum_of)


def transposed(src: _Tensor, axes: tuple) -> _Tensor:
    """``src`` transposed by ``axes`` (per sample): stored value i is torch element perm[i] of the old
    order, which is element new_of_old[perm[i]] of the new one."""
    shape = tuple(src.torch_shape)
    n = int(np.prod(shape))
    order = np.arange(n).reshape(shape).transpose(axes).ravel()   # new flat j holds old flat order[j]
    new_of_old = np.empty(n, dtype=np.int64)
    new_of_old[order] = np.arange(n)
    old = np.arange(n) if src.perm is None else np.asarray(src.perm)
    return relabel(src, tuple(shape[a] for a in axes), new_of_old[old])


def rows_shape(torch_shape: tuple) -> tuple:
    """The hls4ml shape of a tensor stored in torch order: (rows, last axis) (a 1-D map of rows)."""
    if len(torch_shape) == 1:
        return tuple(torch_shape)
    return (int(np.prod(torch_shape[:-1])), int(torch_shape[-1]))


def contiguous(b, op, src: _Tensor, k: int = 0) -> _Tensor:
    """``src`` stored in torch order with hls4ml shape ``rows_shape``: as is, or through an FpqPermute."""
    want = rows_shape(src.torch_shape)
    if src.perm is None and tuple(src.hls_shape) == want:
        return src
    if src.sum_of is not None:
        raise HLSUnsupportedError(f"{op.kind} {op.name!r} reads the window sums of average pool {src.sum_of[0]!r} "
                                  "without a quantizer in between")
    if isinstance(src.fixed, FloatPort):
        raise HLSUnsupportedError(f"{op.kind} {op.name!r} reads the float32 input port; quantize the input first")
    n = int(np.prod(src.torch_shape))
    perm = np.arange(n) if src.perm is None else np.asarray(src.perm)
    index = np.empty(n, dtype=np.int64)
    index[perm] = np.arange(n)        # torch element j is stored at index[j]
    name = f"{op.name}_layout{k}"
    b.add_layer({"class_name": "FpqPermute", "name": name, "inputs": [src.layer], "out_shape": list(want),
                 "index_table": "{" + ", ".join(map(str, index.tolist())) + "}"}, {"result": src.fixed})
    return _Tensor(name, src.fixed, tuple(src.torch_shape), want, None)


def _fixed(t: _Tensor, who: str) -> Fixed:
    if isinstance(t.fixed, FloatPort):
        raise HLSUnsupportedError(f"{who} reads the float32 input port; quantize the input first")
    return Fixed(t.fixed.width, t.fixed.int_bits, t.fixed.signed)


# -- ops

def build_token_linear(b, op, src: _Tensor) -> None:
    """A Linear over the last axis of a (..., d) tensor: hls4ml's Conv1D, kernel 1, over the rows."""
    src = contiguous(b, op, src)
    rows, d = rows_shape(src.torch_shape)
    w = np.asarray(op.weight, dtype=np.float64)   # (out, in)
    if w.shape[1] != d:
        raise HLSUnsupportedError(f"linear {op.name!r}: weight {w.shape} on an input of shape {src.torch_shape}")
    bias = np.zeros(w.shape[0]) if op.bias is None else np.asarray(op.bias, dtype=np.float64)
    prec = b._weighted_types(op, src, w, bias)
    b.add_layer({"class_name": "Conv1D", "name": op.name, "inputs": [src.layer], "data_format": "channels_last",
                 "n_chan": d, "n_filt": w.shape[0], "in_width": rows, "out_width": rows, "filt_width": 1,
                 "stride_width": 1, "pad_left": 0, "pad_right": 0, "dilation": 1, "use_bias": True,
                 "bias_data": bias, "weight_data": np.ascontiguousarray(w.T[None])}, prec)
    out = tuple(src.torch_shape[:-1]) + (w.shape[0],)
    b.set_out(op, _Tensor(op.name, prec["result"], out, (rows, w.shape[0]), None))


def build_matmul(b, op) -> None:
    who = f"matmul {op.name!r}"
    x, y = b.src(op, 0), b.src(op, 1)
    sx, sy = tuple(x.torch_shape), tuple(y.torch_shape)
    if len(sx) < 2 or len(sx) != len(sy) or sx[:-2] != sy[:-2] or sx[-1] != sy[-2]:
        raise HLSUnsupportedError(f"{who}: operands of shapes {sx} @ {sy}; the HLS layer multiplies (..., M, K) @ "
                                  "(..., K, N) with the same leading axes (no broadcasting)")
    x, y = contiguous(b, op, x, 0), contiguous(b, op, y, 1)
    g, m, k, n = int(np.prod(sx[:-2])), sx[-2], sx[-1], sy[-1]
    acc = sum_type(product_type(_fixed(x, who), _fixed(y, who)), k)
    lp = b.tp.layers[op.name]
    planned = lp.tensors.get("accumulator")
    if isinstance(planned, Fixed) and planned != acc:
        if planned.frac_bits < acc.frac_bits or planned.int_bits < acc.int_bits or (acc.signed and not planned.signed):
            raise HLSUnsupportedError(f"{who}: the TypePlan's accumulator {planned} does not hold the exact sum "
                                      f"{acc} of its HLS operands")
        acc = Fixed(planned.width, planned.int_bits, planned.signed)
    e = int(op.attrs.get("alpha_exp", 0))
    shifted = Fixed(acc.width, acc.int_bits + e, acc.signed)
    fused = lp.attrs.get("requant") is not None
    out = shifted   # op_quant of a fused quantizer sets the result to its cast
    shape = sx[:-1] + (n,)
    b.add_layer({"class_name": "FpqMatMul", "name": op.name, "inputs": [x.layer, y.layer], "n_batch": g, "n_m": m,
                 "n_k": k, "n_n": n, "accum_cpp": cpp.ap_type(acc), "shift_cpp": cpp.ap_type(shifted),
                 "out_shape": list(rows_shape(shape))}, {"result": out})
    if fused:
        b.plan.notes.append(f"{op.name}: the quantizer {lp.attrs['requant']} is the cast of the exact sum x 2^{e}")
    b.set_out(op, _Tensor(op.name, out, shape, rows_shape(shape), None))


def build_gather(b, op) -> None:
    """hls4ml's Embedding: ids (T,) -> rows (T, d) of the table in its exact carrier."""
    ids = b.src(op)
    t_in = op.types.get("input")
    f = ids.fixed
    if (isinstance(f, FloatPort) or f.signed or f.width != f.int_bits or len(ids.torch_shape) != 1
            or t_in is None or not t_in.po2):
        raise HLSUnsupportedError(f"gather {op.name!r}: its token ids must be a 1-D tensor of unsigned integer codes "
                                  f"(an input quantizer ufixed<b,b>), got {f} of shape {ids.torch_shape}")
    w = np.asarray(op.weight, dtype=np.float64)   # (rows, d)
    if w.shape[0] < 2 ** f.width:
        raise HLSUnsupportedError(f"gather {op.name!r}: a table of {w.shape[0]} rows read by ids of {f.width} bits "
                                  f"(up to {2 ** f.width - 1})")
    w_c = _carrier(op.types.get("weight"), op.weight, f"table of {op.name!r}")
    t = ids.torch_shape[0]
    b.add_layer({"class_name": "Embedding", "name": op.name, "inputs": [ids.layer], "n_in": t, "n_out": w.shape[1],
                 "vocab_size": w.shape[0], "embeddings_data": w}, {"embeddings": w_c, "result": w_c})
    shape = (t, w.shape[1])
    b.set_out(op, _Tensor(op.name, w_c, shape, shape, None))


def build_add_const(b, op, why: str) -> None:
    """x + c with c a quantized constant (types "other"): an exact sum, as hls4ml's BatchNormalization
    res = x * 1 + c with one c per element (n_filt = -1), in the stored order."""
    if op.types.get("other") is None:   # a float constant (an input normalization), not a quantized one
        raise HLSUnsupportedError(f"add_const {op.name!r} (ONNX {', '.join(op.onnx_nodes)}): {why}")
    src = b.src(op)
    who = f"add_const {op.name!r}"
    c = np.broadcast_to(np.asarray(op.attrs["value"], dtype=np.float64), (1,) + tuple(src.torch_shape))[0]
    if np.asarray(op.attrs["value"]).size != c.size:
        raise HLSUnsupportedError(f"{who}: a constant of shape {np.shape(op.attrs['value'])} broadcast over the "
                                  f"input {src.torch_shape}; the HLS layer adds one constant per element")
    flat = c.ravel()
    if src.perm is not None:
        flat = flat[np.asarray(src.perm)]   # stored value i is torch element perm[i]
    c_c = _carrier(op.types["other"], flat, f"constant of {op.name!r}")
    one = Fixed(2, 2, True)
    acc = sum_type(product_type(_fixed(src, who), one), 1, c_c)
    n = int(np.prod(src.torch_shape))
    b.add_layer({"class_name": "BatchNormalization", "name": op.name, "inputs": [src.layer], "n_in": n, "n_filt": -1,
                 "scale_data": np.ones(n), "bias_data": flat}, {"scale": one, "bias": c_c, "result": acc})
    b.set_out(op, _Tensor(op.name, acc, src.torch_shape, src.hls_shape, src.perm))


__all__ = ["FpqMatMul", "FpqPermute", "register", "relabel", "transposed", "contiguous", "rows_shape",
           "build_token_linear", "build_matmul", "build_gather", "build_add_const"]
