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
* ``FpqRowNorm`` (``fpq.hls.normalization``): softmax / LayerNorm over the last axis, the exact
  integer pipelines (``hls/fpq_normalization.h``).
* ``FpqBlockQuant`` / ``FpqBlockDense`` / ``FpqBlockConv`` (``fpq.hls.blocks``): block-scaled formats
  (OCP MX, NVFP4), the run-time block quantizer, the exact block dot product and convolution
  (``hls/fpq_block.h``).
* ``FpqPool``: a max or an exact window sum with any stride and padding (``fpq::pool_layer``),
  for the pools hls4ml's pooling cannot build exactly (see ``fpq.ir.plan.pool_build``).
* ``FpqMatMul`` / ``FpqPermute`` (``fpq.hls.attention``): the exact product of two quantized
  activations (attention) and a re-layout of a tensor (``hls/fpq_attention.h``).
"""
from __future__ import annotations

from hls4ml.backends import get_backend
from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
from hls4ml.model.layers import Attribute, Layer, TypeAttribute, register_layer

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


class FpqPool(Layer):
    """Max (``is_max``) or exact sum over a window: attributes as hls4ml's Pooling2D (a 1-D pool
    has in_height = out_height = pool_height = 1), the output shape in ``out_shape``
    (channels-last); ``accum`` is the exact type of the reduction."""

    _expected_attributes = [Attribute(a) for a in (
        "in_height", "in_width", "n_filt", "out_height", "out_width", "pool_height", "pool_width",
        "stride_height", "stride_width", "pad_top", "pad_left")] + [
        Attribute("is_max", value_type=bool), Attribute("out_shape", value_type=list), TypeAttribute("accum")]

    def initialize(self):
        self.add_output_variable(list(self.get_attr("out_shape")))


_POOL_CONFIG = """struct config{index} {{
    static const unsigned in_height = {in_height};
    static const unsigned in_width = {in_width};
    static const unsigned n_filt = {n_filt};
    static const unsigned out_height = {out_height};
    static const unsigned out_width = {out_width};
    static const unsigned pool_height = {pool_height};
    static const unsigned pool_width = {pool_width};
    static const unsigned stride_height = {stride_height};
    static const unsigned stride_width = {stride_width};
    static const unsigned pad_top = {pad_top};
    static const unsigned pad_left = {pad_left};
    static const bool is_max = {is_max_cpp};
    static const unsigned io_type = nnet::{iotype};
    static const unsigned reuse_factor = {reuse};
    typedef {accum_t.name} accum_t;
}};\n"""


class FpqPoolConfigTemplate(LayerConfigTemplate):
    def __init__(self):
        super().__init__(FpqPool)

    def format(self, node):
        params = self._default_config_params(node)
        params["is_max_cpp"] = "true" if node.get_attr("is_max") else "false"
        return _POOL_CONFIG.format(**params)


class FpqPoolFunctionTemplate(FunctionCallTemplate):
    def __init__(self):
        super().__init__(FpqPool, include_header=["nnet_utils/fpq_minifloat.h"])

    def format(self, node):
        params = self._default_function_params(node)
        return "fpq::pool_layer<{input_t}, {output_t}, {config}>({input}, {output});".format(**params)


_registered = False


def register() -> None:
    """Register the layer, its templates and the C++ header with hls4ml (idempotent)."""
    global _registered
    if _registered:
        return
    register_layer("FpqQuantize", FpqQuantize)
    register_layer("FpqPool", FpqPool)
    from . import normalization
    register_layer("FpqRowNorm", normalization.FpqRowNorm)
    from . import blocks
    register_layer("FpqBlockQuant", blocks.FpqBlockQuant)
    register_layer("FpqBlockDense", blocks.FpqBlockDense)
    register_layer("FpqBlockConv", blocks.FpqBlockConv)
    from . import attention
    register_layer("FpqMatMul", attention.FpqMatMul)
    register_layer("FpqPermute", attention.FpqPermute)
    header = cpp.header_path()
    for name in BACKENDS:
        backend = get_backend(name)
        backend.register_template(FpqQuantizeConfigTemplate)
        backend.register_template(FpqQuantizeFunctionTemplate)
        backend.register_template(FpqPoolConfigTemplate)
        backend.register_template(FpqPoolFunctionTemplate)
        normalization.register(backend)
        backend.register_source(header)
        backend.register_source(cpp.header_path(cpp.NORMALIZATION_HEADER))
        blocks.register(backend)
        backend.register_source(cpp.header_path(cpp.BLOCK_HEADER))
        attention.register(backend)
        backend.register_source(cpp.header_path(cpp.ATTENTION_HEADER))
        backend.register_source(cpp.header_path(cpp.STREAM_HEADER))
    _registered = True
