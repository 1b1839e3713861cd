"""fpq's additions to hls4ml, through its extension API (no fork, no patching).

* ``FpqQuantize``: an element-wise layer that applies one fpq quantizer to an exact fixed-point
  tensor and writes the result in the format's exact carrier type. hls4ml has no minifloat
  type and no minifloat rounding; its casts cover fixed point only. The C++ is
  ``hls/fpq_minifloat.h`` (registered as custom source, copied into each project's
  ``firmware/nnet_utils``). A plain ap_fixed cast is one of its modes, for a re-quantization
  that cannot be folded into the producing layer's result type.
* config / function-call templates of that layer for the Vivado and Vitis backends, in both
  io_parallel (arrays) and io_stream (hls::stream of packed arrays): the C++ overloads on the
  argument types, so one function template serves both.
"""
from __future__ import annotations

from hls4ml.backends import get_backend
from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
from hls4ml.model.layers import Attribute, Layer, register_layer

from . import cpp

BACKENDS = ("Vivado", "Vitis")


class FpqQuantize(Layer):
    """y = Q(x) element-wise; Q is the C++ expression in attribute ``quantizer`` (``{x}``, with
    ``in_T`` / ``out_T`` for the element types). The output precision comes from the config."""

    _expected_attributes = [
        Attribute("n_in"),
        Attribute("quantizer", value_type=str),
        Attribute("fpq_format", value_type=str),
        Attribute("quantizer_tables", value_type=str, default=""),  # C++ statements before the call
    ]

    def initialize(self):
        inp = self.get_input_variable()
        self.set_attr("n_in", inp.size())
        self.add_output_variable(inp.shape)


_CONFIG = """struct config{index} {{
    static const unsigned n_in = {n_in};
    static const unsigned io_type = nnet::{iotype};
    static const unsigned reuse_factor = {reuse};
    // fpq quantizer: {fpq_format}
    template <class in_T, class out_T> static out_T quantize(in_T x) {{
        #pragma HLS INLINE
        {tables}return {call};
    }}
}};\n"""


class FpqQuantizeConfigTemplate(LayerConfigTemplate):
    def __init__(self):
        super().__init__(FpqQuantize)

    def format(self, node):
        params = self._default_config_params(node)
        params["call"] = node.get_attr("quantizer").format(x="x")
        tables = node.get_attr("quantizer_tables", "")
        params["tables"] = tables + "\n        " if tables else ""
        return _CONFIG.format(**params)


class FpqQuantizeFunctionTemplate(FunctionCallTemplate):
    def __init__(self):
        super().__init__(FpqQuantize, include_header=["nnet_utils/fpq_minifloat.h"])

    def format(self, node):
        params = self._default_function_params(node)
        return "fpq::quantize_layer<{input_t}, {output_t}, {config}>({input}, {output});".format(**params)


_registered = False


def register() -> None:
    """Register the layer, its templates and the C++ header with hls4ml (idempotent)."""
    global _registered
    if _registered:
        return
    register_layer("FpqQuantize", FpqQuantize)
    header = cpp.header_path()
    for name in BACKENDS:
        backend = get_backend(name)
        backend.register_template(FpqQuantizeConfigTemplate)
        backend.register_template(FpqQuantizeFunctionTemplate)
        backend.register_source(header)
    _registered = True
