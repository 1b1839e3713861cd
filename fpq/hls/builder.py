"""fpq's hls4ml frontend: the graph IR (``fpq.ir``) -> an hls4ml layer list + config.

Why fpq builds the hls4ml model itself instead of running hls4ml's QONNX frontend with extra
handlers: that frontend rejects FloatQuant, turns scales into ``ApplyAlpha`` nodes at default
precisions and infers ``auto`` types; fighting each of those passes would still leave precision
decisions to hls4ml. Here every precision (input, weight, bias, accumulator, result) is an
exact fpq Fixed, chosen from the TypePlan, and hls4ml's own layers (Dense, Conv1D/2D,
Activation, pooling, Merge, Reshape), optimizer passes, templates and writers do the rest. The
layers are built channels-last, as hls4ml's HLS code expects; the torch (NCHW) order of each
tensor is tracked as a permutation so that weights after a flatten are re-ordered and the
project's predict() takes and returns torch layouts.

Over 600 lines because ``_Builder`` is one pass over the graph whose state (the hls4ml layer list,
the config, each tensor's torch permutation) every layer kind reads and extends; the kinds with
C++ of their own (attention, normalization, block formats, data moves) already live in their own
modules and take that state as an argument.

Exactness, layer by layer:
* network input: the input port type IS the first quantizer when an ap_fixed cast expresses it
  (fixed / int with a power-of-two scale: the float -> ap_fixed conversion rounds from all the
  float's bits with the quantizer's rounding and overflow modes); otherwise (minifloat, binary,
  narrow int) the port is a wide fixed type that holds every float32 value that can matter
  exactly, followed by an ``FpqQuantize`` layer.
* linear / conv: weights and biases in their exact carriers, the accumulator from the TypePlan
  (exact: no sum can overflow), the result the accumulator itself or, when a cast quantizer
  follows, that quantizer's type (the final cast from the exact accumulator is the quantizer).
* relu, max pooling, flatten: their result keeps the input type (or the following cast). A max
  pool hls4ml cannot build (padding, overlapping windows) is ``FpqPool``: padding is ignored.
* average pooling: hls4ml's mean for a power-of-two window that tiles the map; otherwise
  (a window such as 3x3 or 25x5, padding, overlap) ``FpqPool`` computes the exact window sum S
  and the quantizer after it is a threshold lookup of Q(S / N) (fpq.ir.plan.sum_divisor).
* clip (ReLU6, Hardtanh, clamp): an ``FpqQuantize`` layer out_T(x < lo ? lo : x > hi ? hi : x)
  with the float32 bounds as constants of their exact Fixed; out_T holds x and both bounds, or
  is the cast of the quantizer that follows (Q(clip(x)) in one layer).
* table (Sigmoid, GELU, ...: fpq.numerics.activations): an ``FpqQuantize`` layer that finds the
  input among its quantizer's values by binary search and returns that entry of the table.
* softmax / layernorm (last axis): ``FpqRowNorm`` (fpq.hls.normalization), the integer recipe of
  fpq.numerics.normalization in ap_int arithmetic; result its exact output or the fused cast.
* add: the exact sum type of both inputs.
* concat / upsample: hls4ml's Concatenate (the exact union type) and nearest Resize (fpq.hls.moves).
* transformer ops (fpq.hls.attention): a Linear over the last axis of a token tensor (hls4ml's Conv1D,
  kernel 1), matmul of two activations (``FpqMatMul``: the exact sum, times 2^alpha, cast by the fused
  quantizer), gather (hls4ml's Embedding), a quantized constant added (positional embedding), and
  reshape / transpose as free relabellings of the stored values (``FpqPermute`` where a layer needs
  torch order). A network whose input feeds Linears (tokens) keeps its input in torch order.
* batchnorm (element-wise): hls4ml's BatchNormalization, scale / bias in their exact carriers,
  the result the exact x * s + t (or the cast of the quantizer that follows).
* a quantizer that no cast expresses: ``FpqQuantize`` (hls/fpq_minifloat.h).
* block-scaled tensors (mxfp4, nvfp4, block<...>): ``fpq.hls.blocks`` (FpqBlockQuant, FpqBlockDense).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..formats import Binary, Fixed, exact_fixed
from ..ir.plan import native_pool, sum_divisor, typeplan_from_graph
from ..typeplan import fixed_union, levels_carrier, product_type, sum_type
from . import cpp
from . import attention
from .moves import build_concat, build_upsample, pad_shared_conv1d_input
from .types import (FloatPort, HLSPlan, HLSUnsupportedError, _carrier, _check_format, _is_channels_last,  # noqa: F401
                    _same_perm, _scale_exp, _Tensor, _ungroup, c_array, channels_last_perm, hls_shape_of,
                    input_capture_type, values_carrier)


# IR kinds the HLS path refuses, and what the user can do (a foreign QONNX file's ops)
NO_HLS_WHY = {
    "transpose": "a layout change in front of a convolution or pooling (a channels-last file's NHWC <-> NCHW around "
                 "each op) has no HLS layer here; fpq.emulate and fpq.verify run the file, the HLS path needs it "
                 "exported channels-first",
    **{k: "an element-wise constant op (e.g. an input normalization) is rounded in float, not exact in fixed "
          "point; apply it to the data in software and strip it from the file, so that the input quantizer "
          "reads the graph input" for k in ("mul", "div", "add_const")},
}
# ops that read their input as rows of its last axis: a network input they read is kept in torch order
_ROW_KINDS = ("linear", "layernorm", "softmax")

class _Builder:
    def __init__(self, graph, typeplan):
        self.g = graph
        self.tp = typeplan
        self.plan = HLSPlan()
        self.t: dict[str, _Tensor] = {}
        self.block_wires: dict = {}   # layer -> the block words it outputs (fpq.hls.blocks)
        self.uses: dict[str, int] = {}
        for op in graph.ops:
            for i in op.inputs:
                self.uses[i] = self.uses.get(i, 0) + 1

    # -- helpers
    def add_layer(self, layer: dict, precision: dict) -> None:
        self.plan.layers.append(layer)
        self.plan.precisions[layer["name"]] = precision

    def src(self, op, k=0) -> _Tensor:
        name = op.inputs[k]
        if name not in self.t:
            if name in self.g.inputs:
                raise HLSUnsupportedError(
                    f"op {op.name!r} ({op.kind}) reads the graph input {name!r} with no input quantizer: the "
                    "hardware needs the input's format. Add a quantizer on the input (re-export with one, or "
                    "fpq.export.foreign.add_input_quant(model, fmt, scale) with the format your data has)")
            raise HLSUnsupportedError(f"op {op.name!r}: input {name!r} is not produced by an op fpq can map to HLS")
        t = self.t[name]
        if t.sum_of is not None and op.kind not in ("quant", "flatten", "reshape"):
            pool, n = t.sum_of
            raise HLSUnsupportedError(
                f"average pool {pool!r} averages windows of {n} values, which is not a power of two (or its windows "
                f"are padded or overlap), and {op.kind} {op.name!r} reads it without a quantizer in between. fpq "
                f"builds that mean exactly only as the window sum with the 1/{n} folded into the quantizer after "
                "it; quantize the pool's output (fpq.convert does) or use a power-of-two window that tiles the map")
        return t

    def set_out(self, op, tensor: _Tensor) -> None:
        self.t[op.outputs[0]] = tensor
        self.plan.op_layer[op.name] = tensor.layer
        if tensor.sum_of is not None:
            return  # window sums, not the op's mean: no trace of the layer compares with the op
        self.plan.layer_op[tensor.layer] = op.name
        self.plan.layer_shape[tensor.layer] = (tensor.torch_shape, tensor.perm)

    def torch_shape(self, op) -> tuple:
        if op.out_shape is None:
            raise HLSUnsupportedError(f"op {op.name!r}: output shape unknown (run shape inference)")
        return tuple(int(d) for d in op.out_shape[1:])

    # -- ops
    def build(self):
        g = self.g
        if len(g.inputs) != 1:
            raise HLSUnsupportedError(f"the HLS path takes networks with one input, got {len(g.inputs)}: {g.inputs}")
        from . import blocks  # block-scaled tensors (mxfp4, nvfp4, ...): fpq's own layers
        for op in g.ops:
            if blocks.handles(self, op):
                blocks.build(self, op)
                continue
            handler = getattr(self, f"op_{op.kind}", None)
            if handler is None:
                why = f" (ONNX {', '.join(op.onnx_nodes)}): {NO_HLS_WHY[op.kind]}" if op.kind in NO_HLS_WHY else ""
                raise HLSUnsupportedError(
                    f"op {op.name!r} of kind {op.kind!r} is not supported by fpq's HLS path{why}; supported: "
                    f"{', '.join(k[3:] for k in dir(self) if k.startswith('op_'))}")
            handler(op)
        if not self.plan.output_layer:
            raise HLSUnsupportedError("the graph has no output op")
        return self.plan

    def op_input_quant(self, op):
        if op.inputs[0] not in self.g.inputs:
            raise HLSUnsupportedError(f"op {op.name!r}: an input quantizer must read the graph input")
        shape = tuple(int(d) for d in self.g.input_shapes[op.inputs[0]][1:])
        if self.uses.get(op.inputs[0], 0) != 1:
            raise HLSUnsupportedError("the graph input must feed the input quantizer only")
        tt = op.quant.ttype
        p = self.plan
        readers = self.g.consumers(op.outputs[0])
        if len(shape) > 1 and readers and all(c.kind in _ROW_KINDS for c in readers):
            p.input_shape, p.input_perm = shape, None   # tokens (T, d): rows of features, torch order
            hshape = attention.rows_shape(shape)
        else:
            p.input_shape, p.input_perm = shape, channels_last_perm(shape)
            hshape = hls_shape_of(shape)
        if not tt.po2:  # a float scale: a float32 port and the quantizer as a lookup on float32 values
            port = FloatPort()
            p.input_float32 = True
            self.add_layer({"class_name": "InputLayer", "name": p.input_name, "input_shape": list(hshape)},
                           {"result": port})
            self.set_out(op, self._lookup_quantize_layer(op, _Tensor(p.input_name, port, shape, hshape, p.input_perm)))
            return
        s = _scale_exp(tt, f"input quantizer {op.name!r}")
        _check_format(tt.format, f"input quantizer {op.name!r}")
        cast = cpp.cast_format(tt.format, s)
        port = cast if cast is not None else input_capture_type(tt.format, s)
        p.input_float32 = cast is None
        self.add_layer({"class_name": "InputLayer", "name": p.input_name, "input_shape": list(hshape)},
                       {"result": port})
        tensor = _Tensor(p.input_name, port, shape, hshape, p.input_perm)
        if cast is None:
            tensor = self._quantize_layer(op, tensor, tt.format, s, network_input=True)
        self.set_out(op, tensor)

    def _quantize_layer(self, op, src: _Tensor, fmt, s: int, network_input: bool = False) -> _Tensor:
        cast = cpp.cast_format(fmt, s)
        if cast is not None:
            out, call, fstr = cast, "out_T({x})", f"{fmt} (ap_fixed cast)"
        elif isinstance(fmt, Binary) and network_input and s >= 1:
            out = exact_fixed(fmt, s)
            call, fstr = f"fpq::quantize_binary_float<in_T, out_T, {s}>({{x}})", str(fmt)
        else:
            out = exact_fixed(fmt, s)
            out = Fixed(out.width, out.int_bits, out.signed)
            call, fstr = cpp.quantizer_call(fmt, s, "in_T", "out_T"), str(fmt)
        self.add_layer({"class_name": "FpqQuantize", "name": op.name, "inputs": [src.layer], "quantizer": call,
                        "fpq_format": f"{fstr} x 2^{s}"}, {"result": out})
        return _Tensor(op.name, out, src.torch_shape, src.hls_shape, src.perm)

    def _lookup_quantize_layer(self, op, src: _Tensor) -> _Tensor:
        """A quantizer with a scale that is not a power of two, or after an average pool's exact
        window sums S (``src.sum_of``: Q(S / N), the emulator's float64 division), as an exact
        lookup table over the values its input can take (fpq.numerics.thresholds):
        y = levels[#thresholds <= x]."""
        from ..numerics.thresholds import quantizer_table
        tt = op.quant.ttype
        what = (f"quantizer {op.name!r} after average pool {src.sum_of[0]!r} (1/{src.sum_of[1]} folded in)"
                if src.sum_of else f"quantizer {op.name!r} (scale {float(np.ravel(tt.scale)[0])!r}, not a power of two)")
        if np.size(tt.scale) != 1:
            raise HLSUnsupportedError(f"{what}: per-channel scales are not supported in a lookup table; use a "
                                      "per-tensor activation scale")
        in_type = "float32" if isinstance(src.fixed, FloatPort) else Fixed(src.fixed.width, src.fixed.int_bits,
                                                                           src.fixed.signed)
        if in_type != "float32" and in_type.width > 53:
            raise HLSUnsupportedError(
                f"{what}: its input (layer {src.layer!r}) is the exact {in_type}, wider than 53 bits. fpq defines "
                "this quantizer on the float64 value of its input, which such a sum is not; the sum grows this wide "
                "when both the layer's inputs and weights have float scales. Use power-of-two (or Fixed) weight "
                "scales, or scale='po2'")
        # the table the cost model prices too (op_quant refuses a Trunc's pre-scale before this)
        try:
            th, lv = quantizer_table(tt.format, np.ravel(tt.scale)[0], in_type, src.sum_of[1] if src.sum_of else 1)
        except ValueError as e:
            raise HLSUnsupportedError(f"{what}: no exact lookup table: {e}") from None
        out = levels_carrier(tt, lv) if tt.po2 else values_carrier(lv)
        n = len(th)
        if n == 0:
            tables, call = "", f"out_T({float(lv[0])!r})"
        else:
            tables = (f"static const in_T th[{n}] = {c_array(th)}; "
                      f"static const out_T lv[{n + 1}] = {c_array(lv)};")
            call = f"fpq::quantize_by_thresholds<in_T, out_T, {n}>({{x}}, th, lv)"
        self.add_layer({"class_name": "FpqQuantize", "name": op.name, "inputs": [src.layer], "quantizer": call,
                        "quantizer_tables": tables,
                        "fpq_format": f"{tt.format} x {float(np.ravel(tt.scale)[0])!r}"
                                      f"{f' of the window sum / {src.sum_of[1]}' if src.sum_of else ''} ({n} thresholds)"},
                       {"result": out})
        return _Tensor(op.name, out, src.torch_shape, src.hls_shape, src.perm)

    def op_quant(self, op):
        src = self.src(op)
        tt = op.quant.ttype
        if op.quant.pre_scale is not None:
            raise HLSUnsupportedError(f"op {op.name!r}: Trunc with a pre-scale is not supported in HLS")
        if not tt.po2 or src.sum_of is not None:
            self.set_out(op, self._lookup_quantize_layer(op, src))
            return
        s = _scale_exp(tt, f"quantizer {op.name!r}")
        _check_format(tt.format, f"quantizer {op.name!r}")
        cast = cpp.cast_format(tt.format, s)
        # the TypePlan decides which requantizers the layer before computes (fpq.ir.plan,
        # REQUANT_FUSING): the same circuit the cost model prices
        into = self.tp.layers[op.name].attrs.get("fused_into")
        if into is not None:
            if cast is None or src.layer != into:
                raise AssertionError(f"quantizer {op.name!r}: the TypePlan fuses it into {into!r}, the HLS layer "
                                     f"before it is {src.layer!r} (cast {cast})")
            # the producer's result cast from its exact value IS this quantizer
            self.plan.precisions[src.layer]["result"] = cast
            self.set_out(op, _Tensor(src.layer, cast, src.torch_shape, src.hls_shape, src.perm))
        else:
            self.set_out(op, self._quantize_layer(op, src, tt.format, s))

    def _weighted_types(self, op, src: _Tensor, w_hls: np.ndarray, b: np.ndarray | None):
        wt, bt = op.types.get("weight"), op.types.get("bias")
        w_c = _carrier(wt, op.weight, f"weight of {op.name!r}")
        b_c = _carrier(bt, op.bias, f"bias of {op.name!r}") if op.bias is not None else Fixed(2, 2, True)
        x_c = Fixed(src.fixed.width, src.fixed.int_bits, src.fixed.signed)
        prod = product_type(x_c, w_c)
        acc = sum_type(prod, op.fan_in, b_c if op.bias is not None else None)
        planned = self.tp.layers[op.name].exact_sum()
        if planned is not None and planned != acc:
            # the TypePlan is the source of truth (a user may narrow an accumulator); it must
            # still hold the input grid, or the sum could not even be formed
            if planned.frac_bits < acc.frac_bits:
                raise HLSUnsupportedError(
                    f"layer {op.name!r}: TypePlan accumulator {planned} has fewer fractional bits than the "
                    f"products ({prod}); it cannot hold the exact sum")
            if planned.int_bits < acc.int_bits:
                self.plan.notes.append(f"{op.name}: accumulator {planned} from the TypePlan is narrower than the "
                                       f"exact {acc}; sums beyond its range {planned.overflow.lower()} as the "
                                       "TypePlan says")
            acc = planned
        return {"weight": w_c, "bias": b_c, "accum": acc, "result": acc}

    def op_linear(self, op):
        src = self.src(op)
        if len(src.torch_shape) > 1:   # over the last axis of each row (tokens)
            attention.build_token_linear(self, op, src)
            return
        if len(src.hls_shape) != 1:
            raise HLSUnsupportedError(f"linear {op.name!r}: input of shape {src.torch_shape} (flatten it first)")
        w = np.asarray(op.weight, dtype=np.float64)  # (out, in)
        if src.perm is not None:
            w = w[:, src.perm]  # hls_x[i] = torch_x[perm[i]]
        b = np.zeros(w.shape[0]) if op.bias is None else np.asarray(op.bias, dtype=np.float64)
        prec = self._weighted_types(op, src, w, b)
        layer = {"class_name": "Dense", "name": op.name, "inputs": [src.layer], "n_in": w.shape[1],
                 "n_out": w.shape[0], "weight_data": np.ascontiguousarray(w.T), "bias_data": b, "use_bias": True}
        self.add_layer(layer, prec)
        shape = (w.shape[0],)
        self.set_out(op, _Tensor(op.name, prec["result"], shape, shape, None))

    def _conv(self, op, nd: int):
        src = self.src(op)
        a = op.attrs
        if any(d != 1 for d in a.get("dilations", (1,) * nd)):
            raise HLSUnsupportedError(f"conv {op.name!r}: dilation {a['dilations']} is not supported in HLS")
        if len(src.torch_shape) != nd + 1 or not _is_channels_last(src):
            raise HLSUnsupportedError(f"conv {op.name!r}: input of shape {src.torch_shape} is not a {nd}-D feature map")
        w = np.asarray(op.weight, dtype=np.float64)  # (cout, cin / groups, *k)
        groups = int(a.get("groups", 1))
        if groups != 1:
            # hls4ml has no grouped convolution: a dense conv whose weight is zero across groups
            # computes the same sums exactly (the accumulator stays sized for the true fan-in)
            w = _ungroup(w, groups)
            self.plan.notes.append(f"{op.name}: groups={groups} built as a dense convolution with zero weights "
                                   "between groups (hls4ml has no grouped convolution)")
        cout, cin = w.shape[:2]
        b = np.zeros(cout) if op.bias is None else np.asarray(op.bias, dtype=np.float64)
        prec = self._weighted_types(op, src, w, b)
        out_t = self.torch_shape(op)
        pads, strides, k = a["pads"], a["strides"], a["kernel"]
        if nd == 1 and any(pads) and self.uses.get(op.inputs[0], 0) > 1:
            src, pads = pad_shared_conv1d_input(self, op, src, pads, cin)
        layer = {"name": op.name, "inputs": [src.layer], "data_format": "channels_last", "n_chan": cin,
                 "n_filt": cout, "bias_data": b, "use_bias": True, "dilation": 1}
        if nd == 1:
            layer.update(class_name="Conv1D", in_width=src.torch_shape[1], out_width=out_t[1], filt_width=k[0],
                         stride_width=strides[0], pad_left=pads[0], pad_right=pads[1],
                         weight_data=np.ascontiguousarray(w.transpose(2, 1, 0)))
        else:
            layer.update(class_name="Conv2D", in_height=src.torch_shape[1], in_width=src.torch_shape[2],
                         out_height=out_t[1], out_width=out_t[2], filt_height=k[0], filt_width=k[1],
                         stride_height=strides[0], stride_width=strides[1], pad_top=pads[0], pad_left=pads[1],
                         pad_bottom=pads[2], pad_right=pads[3],
                         weight_data=np.ascontiguousarray(w.transpose(2, 3, 1, 0)))
        self.add_layer(layer, prec)
        self.set_out(op, _Tensor(op.name, prec["result"], out_t, hls_shape_of(out_t), channels_last_perm(out_t)))

    def op_conv1d(self, op):
        self._conv(op, 1)

    def op_conv2d(self, op):
        self._conv(op, 2)

    def op_batchnorm(self, op):
        """Element-wise BatchNorm as hls4ml's own BatchNormalization layer: res = data * scale + bias
        with hls4ml's exact product (``nnet::product::mult`` returns decltype(a * w)) and ap_fixed's
        exact add; the result type is the exact sum (or the cast of the quantizer that follows)."""
        src = self.src(op)
        C = int(op.attrs.get("channels", op.weight.shape[0]))
        s = np.asarray(op.weight, dtype=np.float64)
        b = np.zeros(C) if op.bias is None else np.asarray(op.bias, dtype=np.float64)
        n = int(np.prod(src.hls_shape))
        if len(src.torch_shape) == 1:
            # one value per channel: per-element constants in the hls order (n_filt = -1)
            idx = np.arange(C) if src.perm is None else np.asarray(src.perm)
            s_hls, b_hls, n_filt = s[idx], b[idx], -1
        elif _is_channels_last(src) and src.torch_shape[0] == C:
            s_hls, b_hls, n_filt = s, b, C   # channels-last: element i belongs to channel i % C
        else:
            raise HLSUnsupportedError(f"batchnorm {op.name!r}: input of shape {src.torch_shape} is not a "
                                      "channels-first feature map with its channels on axis 1")
        s_c = _carrier(op.types.get("weight"), op.weight, f"scale of {op.name!r}")
        b_c = (_carrier(op.types.get("bias"), op.bias, f"shift of {op.name!r}") if op.bias is not None
               else Fixed(2, 2, True))
        x_c = Fixed(src.fixed.width, src.fixed.int_bits, src.fixed.signed)
        acc = sum_type(product_type(x_c, s_c), 1, b_c)
        planned = self.tp.layers[op.name].exact_sum()
        if planned is not None and planned != acc:
            raise HLSUnsupportedError(f"batchnorm {op.name!r}: the TypePlan's exact sum {planned} differs from "
                                      f"the one of its HLS operands {acc}")
        self.add_layer({"class_name": "BatchNormalization", "name": op.name, "inputs": [src.layer], "n_in": n,
                        "n_filt": n_filt, "scale_data": s_hls, "bias_data": b_hls},
                       {"scale": s_c, "bias": b_c, "result": acc})
        self.set_out(op, _Tensor(op.name, acc, src.torch_shape, src.hls_shape, src.perm))

    def op_relu(self, op):
        src = self.src(op)
        n = int(np.prod(src.hls_shape))
        self.add_layer({"class_name": "Activation", "activation": "relu", "name": op.name, "inputs": [src.layer],
                        "n_in": n}, {"result": src.fixed})
        self.set_out(op, _Tensor(op.name, src.fixed, src.torch_shape, src.hls_shape, src.perm))

    def op_clip(self, op):
        """out_T(x < lo ? lo : x > hi ? hi : x) (module docstring), bounds in their exact Fixed."""
        src = self.src(op)
        if isinstance(src.fixed, FloatPort):
            raise HLSUnsupportedError(f"clip {op.name!r}: its input is the float32 port")
        bounds = {v: op.attrs.get(k) for k, v in (("min", "lo"), ("max", "hi")) if op.attrs.get(k) is not None}
        b_c = values_carrier(np.array([float(v) for v in bounds.values()]))
        out = fixed_union([Fixed(src.fixed.width, src.fixed.int_bits, src.fixed.signed), b_c])
        call = "out_T({x})"
        for k, cmp in (("hi", ">"), ("lo", "<")):
            call = f"({{x}} {cmp} {k} ? out_T({k}) : {call})" if k in bounds else call
        self.add_layer({"class_name": "FpqQuantize", "name": op.name, "inputs": [src.layer], "quantizer": call,
                        "quantizer_tables": " ".join(f"static const {cpp.ap_type(b_c)} {k} = {float(v)!r};"
                                                     for k, v in bounds.items()),
                        "fpq_format": f"clip [{op.attrs.get('min')}, {op.attrs.get('max')}]"}, {"result": out})
        self.set_out(op, _Tensor(op.name, out, src.torch_shape, src.hls_shape, src.perm))

    def op_table(self, op):
        """An activation table (fpq.numerics.activations) as an FpqQuantize layer: a binary search over
        the input's values (``fpq::quantize_by_thresholds``, thresholds = the values but the first,
        levels = the table's outputs): exact for every input on its quantizer's grid, whatever the
        function's shape. out_T holds every output exactly, or is the cast of the fused quantizer
        after it (the outputs are its values already)."""
        from ..numerics.activations import input_values
        src, t_in = self.src(op), op.types.get("input")
        if isinstance(src.fixed, FloatPort) or t_in is None:
            raise HLSUnsupportedError(f"table {op.name!r}: its input must come from a quantizer")
        xs, ys = op.attrs["x"], op.attrs["y"]
        if ys.ndim != 1:
            raise HLSUnsupportedError(f"table {op.name!r} ({op.attrs.get('function')}): one table per channel (PReLU "
                                      f"with {ys.shape[0]} slopes) has no HLS layer yet; use nn.PReLU() (one slope) "
                                      "or nn.LeakyReLU in a model built for HLS")
        keep = np.isin(xs, input_values(t_in.format, t_in.scale, f"table {op.name!r}"))  # the values in_T holds
        th, lv = xs[keep][1:], ys[keep]
        n = len(th)
        tables = f"static const in_T th[{n}] = {c_array(th)}; static const out_T lv[{n + 1}] = {c_array(lv)};"
        call = f"fpq::quantize_by_thresholds<in_T, out_T, {n}>({{x}}, th, lv)" if n else f"out_T({float(lv[0])!r})"
        out = values_carrier(lv)
        self.add_layer({"class_name": "FpqQuantize", "name": op.name, "inputs": [src.layer], "quantizer": call,
                        "quantizer_tables": tables if n else "",
                        "fpq_format": f"table {op.attrs.get('function', '')} ({n + 1} entries)"}, {"result": out})
        self.set_out(op, _Tensor(op.name, out, src.torch_shape, src.hls_shape, src.perm))

    def op_softmax(self, op):
        from .normalization import build
        build(self, op)

    def op_layernorm(self, op):
        from .normalization import build
        build(self, op)

    def _pool(self, op, cls: str) -> None:
        """A max / average pooling window (``cls`` MaxPooling / AveragePooling). hls4ml's pooling
        layer where it is exact (fpq.ir.plan.native_pool: no padding, windows that tile the map,
        an average over a power-of-two window: its result keeps the input type (max) or is the
        exact mean); otherwise ``FpqPool``: a max that ignores padding, or the exact window sum
        that the quantizer after it divides (``sum_of``)."""
        src = self.src(op)
        a = op.attrs
        k = tuple(a["kernel"])
        nd = len(k)
        if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", (1,) * nd)):
            raise HLSUnsupportedError(f"{op.kind} {op.name!r}: ceil_mode and dilation are not supported in HLS")
        if len(src.torch_shape) != nd + 1 or not _is_channels_last(src):
            raise HLSUnsupportedError(f"{op.kind} {op.name!r}: input of shape {src.torch_shape}")
        in_shape = (1,) + tuple(src.torch_shape)
        if native_pool(op.kind, a, in_shape):
            prec = ({"result": src.fixed, "accum": src.fixed} if cls == "MaxPooling"
                    else self._mean_types(op, src, int(np.prod(k))))
            out_t = self.torch_shape(op)
            s = a["strides"]
            layer = {"name": op.name, "inputs": [src.layer], "data_format": "channels_last",
                     "n_filt": src.torch_shape[0], "count_pad": False}
            if nd == 1:
                layer.update(class_name=f"{cls}1D", n_in=src.torch_shape[1], n_out=out_t[1], pool_width=k[0],
                             stride_width=s[0], pad_left=0, pad_right=0)
            else:
                layer.update(class_name=f"{cls}2D", in_height=src.torch_shape[1], in_width=src.torch_shape[2],
                             out_height=out_t[1], out_width=out_t[2], pool_height=k[0], pool_width=k[1],
                             stride_height=s[0], stride_width=s[1], pad_top=0, pad_bottom=0, pad_left=0,
                             pad_right=0)
            self.add_layer(layer, prec)
            self.set_out(op, _Tensor(op.name, prec["result"], out_t, hls_shape_of(out_t), channels_last_perm(out_t)))
            return
        pads = tuple(a.get("pads", (0,) * 2 * nd))
        if any(p >= kk for p, kk in zip(pads[:nd] + pads[nd:], k + k)):
            raise HLSUnsupportedError(f"{op.kind} {op.name!r}: padding {pads} as wide as the window {k}: a window "
                                      "could hold no value at all")
        if op.kind == "avgpool" and any(pads) and not a.get("count_include_pad", 0):
            raise HLSUnsupportedError(f"avgpool {op.name!r}: padding with count_include_pad=0 divides each border "
                                      "window by a different count; only count_include_pad=1 (torch's default) is "
                                      "supported in HLS")
        self._fpq_pool(op, src, k, tuple(a["strides"]), pads[:nd], self.torch_shape(op))

    def _fpq_pool(self, op, src: _Tensor, k: tuple, strides: tuple, pad_begin: tuple, out_t: tuple,
                  global_pool: bool = False) -> None:
        """``FpqPool`` (fpq::pool_layer): the max (padding ignored) or the exact window sum."""
        is_max = op.kind == "maxpool"
        f = src.fixed
        n = int(np.prod(k))
        acc = f if is_max else sum_type(Fixed(f.width, f.int_bits, f.signed), n)
        if not is_max:
            lp = self.tp.layers.get(op.name)
            planned = lp.attrs.get("exact_output") if lp is not None else None
            if planned is not None and planned != acc:
                # the TypePlan's sum (of the input's full carrier) is the project's, when it holds this one
                if planned.frac_bits < acc.frac_bits or planned.int_bits < acc.int_bits or \
                        (acc.signed and not planned.signed):
                    raise AssertionError(f"{op.kind} {op.name!r}: the TypePlan's exact window sum {planned} does not "
                                         f"hold the one of its HLS input {acc}")
                acc = Fixed(planned.width, planned.int_bits, planned.signed)
        one = (1,) * (2 - len(k))   # a 1-D pool is a 2-D one of height 1
        k2, s2, p2 = one + tuple(k), one + tuple(strides), (0,) * len(one) + tuple(pad_begin)
        in_hw = one + tuple(src.torch_shape[1:])
        out_hw = (1, 1) if global_pool else one + tuple(out_t[1:])
        c = src.torch_shape[0]
        hls_out = [c] if global_pool else list(hls_shape_of(out_t))
        self.add_layer({"class_name": "FpqPool", "name": op.name, "inputs": [src.layer], "in_height": in_hw[0],
                        "in_width": in_hw[1], "n_filt": c, "out_height": out_hw[0], "out_width": out_hw[1],
                        "pool_height": k2[0], "pool_width": k2[1], "stride_height": s2[0], "stride_width": s2[1],
                        "pad_top": p2[0], "pad_left": p2[1], "is_max": is_max, "out_shape": hls_out},
                       {"result": acc, "accum": acc})
        if global_pool:
            t = _Tensor(op.name, acc, out_t, (c,), None)
        else:
            t = _Tensor(op.name, acc, out_t, hls_shape_of(out_t), channels_last_perm(out_t))
        if not is_max:
            t = replace(t, sum_of=(op.name, n))
        self.set_out(op, t)

    def op_maxpool(self, op):
        self._pool(op, "MaxPooling")

    def op_avgpool(self, op):
        self._pool(op, "AveragePooling")

    def _mean_types(self, op, src: _Tensor, n: int):
        """Exact types of a mean over ``n`` values (n a power of two: the mean is src / 2^k)."""
        k = n.bit_length() - 1
        assert n == 1 << k, "fpq.ir.plan.native_pool builds power-of-two windows only"
        f = src.fixed
        mean = Fixed(f.width + k, f.int_bits, f.signed)                # same range, k more fraction bits
        accum = Fixed(f.width + 2 * k, f.int_bits + k, f.signed)      # holds the sum and, after /n, the mean
        return {"result": mean, "accum": accum}

    def op_global_avgpool(self, op):
        src = self.src(op)
        nd = len(src.torch_shape) - 1
        if nd not in (1, 2) or not _is_channels_last(src):
            raise HLSUnsupportedError(f"global_avgpool {op.name!r}: input of shape {src.torch_shape}")
        out_t = self.torch_shape(op)  # (C, 1[, 1]) with keepdims, (C,) without: the same flat order
        if sum_divisor(op.kind, op.attrs, (1,) + tuple(src.torch_shape)) is not None:
            spatial = tuple(src.torch_shape[1:])
            self._fpq_pool(op, src, spatial, spatial, (0,) * nd, out_t, global_pool=True)
            return
        prec = self._mean_types(op, src, int(np.prod(src.torch_shape[1:])))
        c = src.torch_shape[0]
        layer = {"name": op.name, "inputs": [src.layer], "data_format": "channels_last", "n_filt": c}
        if nd == 1:
            layer.update(class_name="GlobalAveragePooling1D", n_in=src.torch_shape[1])
        else:
            layer.update(class_name="GlobalAveragePooling2D", in_height=src.torch_shape[1], in_width=src.torch_shape[2])
        self.add_layer(layer, prec)
        self.set_out(op, _Tensor(op.name, prec["result"], out_t, (c,), None))

    def op_add(self, op):
        a, b = self.src(op, 0), self.src(op, 1)
        if a.torch_shape == b.torch_shape and (a.hls_shape != b.hls_shape or not _same_perm(a.perm, b.perm)):
            a, b = attention.contiguous(self, op, a, 0), attention.contiguous(self, op, b, 1)
        if a.hls_shape != b.hls_shape or not _same_perm(a.perm, b.perm):
            raise HLSUnsupportedError(f"add {op.name!r}: inputs of shapes {a.torch_shape} and {b.torch_shape} "
                                      "(broadcasting adds are not supported in HLS)")
        u = fixed_union([Fixed(a.fixed.width, a.fixed.int_bits, a.fixed.signed),
                         Fixed(b.fixed.width, b.fixed.int_bits, b.fixed.signed)])
        out = sum_type(u, 2)
        self.add_layer({"class_name": "Merge", "op": "add", "name": op.name, "inputs": [a.layer, b.layer]},
                       {"result": out})
        self.set_out(op, _Tensor(op.name, out, a.torch_shape, a.hls_shape, a.perm))

    def op_concat(self, op):
        build_concat(self, op)

    def op_upsample(self, op):
        build_upsample(self, op)

    def _flatten_to(self, op, n: int):
        src = self.src(op)
        if int(np.prod(src.torch_shape)) != n:
            raise HLSUnsupportedError(f"op {op.name!r}: reshape {src.torch_shape} -> ({n},) changes the size")
        if len(src.hls_shape) == 1:
            self.set_out(op, _Tensor(src.layer, src.fixed, (n,), (n,), src.perm, src.sum_of))
            return
        # torch's flat order is unchanged by a flatten; the hls4ml order keeps its permutation
        self.add_layer({"class_name": "Reshape", "name": op.name, "inputs": [src.layer], "target_shape": [n]},
                       {"result": src.fixed})
        self.set_out(op, _Tensor(op.name, src.fixed, (n,), (n,), src.perm, src.sum_of))

    def op_flatten(self, op):
        if op.attrs.get("axis", 1) != 1:
            raise HLSUnsupportedError(f"flatten {op.name!r}: axis {op.attrs['axis']} (only axis=1 is supported)")
        self._flatten_to(op, int(np.prod(self.torch_shape(op))))

    def op_reshape(self, op):
        out = self.torch_shape(op)
        if len(out) != 1:   # torch's flat order is kept: the same stored values, seen with another shape
            src = self.src(op)
            if int(np.prod(out)) != int(np.prod(src.torch_shape)):
                raise HLSUnsupportedError(f"reshape {op.name!r}: {src.torch_shape} -> {out} changes the size")
            self.set_out(op, attention.relabel(src, out, src.perm))
            return
        self._flatten_to(op, out[0])

    def op_transpose(self, op):
        """No layer: the stored values stay, their torch order changes (``attention.transposed``)."""
        grid = [c.name for c in self.g.consumers(op.outputs[0])
                if c.kind in ("conv1d", "conv2d", "maxpool", "avgpool")]
        if grid:
            raise HLSUnsupportedError(f"op {op.name!r} of kind 'transpose' (ONNX {', '.join(op.onnx_nodes)}) feeds "
                                      f"{grid}: {NO_HLS_WHY['transpose']}")
        perm = tuple(int(a) for a in op.attrs["perm"])
        if perm[0] != 0:
            raise HLSUnsupportedError(f"transpose {op.name!r}: perm {perm} moves the batch axis")
        self.set_out(op, attention.transposed(self.src(op), tuple(a - 1 for a in perm[1:])))

    def op_matmul(self, op):
        attention.build_matmul(self, op)

    def op_gather(self, op):
        attention.build_gather(self, op)

    def op_add_const(self, op):
        attention.build_add_const(self, op, NO_HLS_WHY["add_const"])

    def op_output(self, op):
        src = self.src(op)  # a pool's window sums are refused here: no quantizer folds in its 1/N
        if self.plan.output_layer:
            raise HLSUnsupportedError("the HLS path takes networks with one output")
        if src.layer == self.plan.input_name:
            raise HLSUnsupportedError("the network output is its input: nothing to build")
        if src.layer != self.plan.layers[-1]["name"]:
            raise HLSUnsupportedError(f"the network output {op.inputs[0]!r} must be computed by the last layer")
        self.plan.output_layer = src.layer
        self.plan.output_shape = src.torch_shape
        self.plan.output_perm = src.perm
        self.plan.op_layer[op.name] = src.layer


def plan_hls(graph, typeplan=None) -> HLSPlan:
    """Map the IR to hls4ml layers and exact precisions; raises HLSUnsupportedError naming the
    op and the reason for anything that cannot be made exact. ``typeplan``: the graph's TypePlan
    (built from it when not given): its accumulators and fused requantizers are the project's."""
    return _Builder(graph, typeplan if typeplan is not None else typeplan_from_graph(graph)).build()
