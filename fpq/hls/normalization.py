"""Softmax and LayerNorm in the HLS project: ``FpqRowNorm``, fpq's hls4ml layer (extension API)
running the integer recipe of ``fpq.numerics.normalization`` on each row of the last axis
(C++: ``hls/fpq_normalization.h``, io_parallel and io_stream).

The config struct carries the recipe: the exp table (softmax) or the pre-shifted gamma / beta
codes (LayerNorm) as static tables, the recipe's constants and the raw-code types of the input
(ap_fixed<KW, KW - in_frac> read bit for bit as ap_int<KW>). The layer's result type is the
recipe's output (ufixed<24,1> / fixed<24, I>) or, when the TypePlan fuses a cast quantizer after
it, that quantizer's ap_fixed type (the final conversion is then the quantizer).
"""
from __future__ import annotations

import numpy as np
from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
from hls4ml.model.layers import Attribute, Layer

from .types import FloatPort, HLSUnsupportedError, _Tensor

HEADER = "nnet_utils/fpq_normalization.h"


class FpqRowNorm(Layer):
    """Softmax / LayerNorm over rows of ``n_row`` contiguous values; ``config_body``: the C++
    members of its config struct (written by ``build``)."""

    _expected_attributes = [
        Attribute("n_in"), Attribute("n_row"),
        Attribute("config_body", value_type=str), Attribute("fpq_kind", value_type=str),
    ]

    def initialize(self):
        inp = self.get_input_variable()
        self.set_attr("n_in", inp.size())
        self.add_output_variable(inp.shape)


_CONFIG = """struct config{index} {{
    static const unsigned n_in = {n_in};
    static const unsigned n_row = {n_row};
    static const unsigned io_type = nnet::{iotype};
    static const unsigned reuse_factor = {reuse};
    // fpq {fpq_kind}: the exact integer pipeline of fpq.numerics.normalization
{body}
    template <class in_T, class out_T> static void row(const in_T x[n_row], out_T y[n_row]) {{
        #pragma HLS INLINE
        fpq::{fpq_kind}_row<in_T, out_T, config{index}>(x, y);
    }}
}};\n"""


class FpqRowNormConfigTemplate(LayerConfigTemplate):
    def __init__(self):
        super().__init__(FpqRowNorm)

    def format(self, node):
        params = self._default_config_params(node)
        params["body"] = node.get_attr("config_body")
        return _CONFIG.format(**params)


class FpqRowNormFunctionTemplate(FunctionCallTemplate):
    def __init__(self):
        super().__init__(FpqRowNorm, include_header=[HEADER])

    def format(self, node):
        params = self._default_function_params(node)
        return "fpq::rownorm_layer<{input_t}, {output_t}, {config}>({input}, {output});".format(**params)


def _table_fn(name: str, ctype: str, values) -> str:
    vals = ", ".join(f"{int(v)}LL" if ctype == "long long" else str(int(v)) for v in values)
    return (f"    static {ctype} {name}(int i) {{\n        #pragma HLS INLINE\n"
            f"        static const {ctype} t[{len(values)}] = {{{vals}}};\n        return t[i];\n    }}")


def _code_types(src: _Tensor, in_frac: int, who: str) -> tuple[str, int]:
    """The raw-code typedefs of the input (ap_fixed of in_frac fractional bits, read as ap_int)."""
    f = src.fixed
    kw = f.int_bits + in_frac + 1
    if f.width - f.int_bits > in_frac or kw > 62 or kw < 2:
        raise HLSUnsupportedError(f"{who}: its input type {f} does not fit the recipe's grid 2^-{in_frac} in 62 bits")
    return (f"    static const int kw = {kw};\n    typedef ap_fixed<{kw}, {kw - in_frac}> kfix_t;\n"
            f"    typedef ap_int<{kw}> k_t;"), kw


def _softmax_body(rec, n_row: int, src: _Tensor, who: str) -> str:
    types, _ = _code_types(src, rec.in_frac, who)
    sum_w = (n_row << rec.exp_frac).bit_length()
    return "\n".join([
        types,
        f"    static const int shift = {rec.shift};\n    static const int offset = {rec.offset};",
        f"    static const int exp_frac = {rec.exp_frac};\n    static const int recip_bits = {rec.recip_bits};",
        f"    static const int out_frac = {rec.out_frac};\n    typedef ap_uint<{sum_w}> sum_t;",
        _table_fn("exp_at", "unsigned", rec.exp_table).replace(f"static unsigned exp_at",
                                                               f"static ap_uint<{rec.exp_frac + 1}> exp_at"),
    ])


def _layernorm_body(rec, src: _Tensor, who: str) -> str:
    types, _ = _code_types(src, rec.in_frac, who)
    fy = rec.y_frac
    g = [v << (fy - rec.z_frac - rec.gamma_frac) for v in rec.gamma]
    b = [v << (fy - rec.beta_frac) for v in rec.beta]
    return "\n".join([
        types,
        f"    static const long long eps_int = {rec.eps_int}LL;\n    static const int norm_bits = {rec.norm_bits};",
        f"    static const int rsqrt_frac = {rec.rsqrt_frac};\n    static const int z_frac = {rec.z_frac};",
        f"    static const int y_shift = {fy - rec.out_frac};\n    static const int y_bits = 24;",
        f"    static const int y_frac = {rec.out_frac};",
        _table_fn("gamma_at", "long long", g), _table_fn("beta_at", "long long", b),
    ])


def build(builder, op) -> None:
    """Add the FpqRowNorm layer of a softmax / layernorm op to ``builder`` (fpq.hls.builder)."""
    src = builder.src(op)
    who = f"{op.kind} {op.name!r}"
    if isinstance(src.fixed, FloatPort):
        raise HLSUnsupportedError(f"{who}: its input is the float32 port; quantize it first")
    n_row = int(src.torch_shape[-1])
    if len(src.torch_shape) > 1 and src.perm is not None and not np.array_equal(src.perm, np.arange(src.perm.size)):
        raise HLSUnsupportedError(f"{who}: its input is stored channels-last in the HLS project, so its last torch "
                                  "axis is not contiguous; normalize a Linear's output (rows of features)")
    rec = op.attrs["recipe"]
    body = _softmax_body(rec, n_row, src, who) if op.kind == "softmax" else _layernorm_body(rec, src, who)
    out = op.types["output"].format
    builder.add_layer({"class_name": "FpqRowNorm", "name": op.name, "inputs": [src.layer], "n_row": n_row,
                       "config_body": body, "fpq_kind": op.kind}, {"result": out})
    builder.set_out(op, _Tensor(op.name, out, src.torch_shape, src.hls_shape, src.perm))


def register(backend) -> None:
    backend.register_template(FpqRowNormConfigTemplate)
    backend.register_template(FpqRowNormFunctionTemplate)
