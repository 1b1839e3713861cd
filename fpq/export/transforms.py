"""fpq's QONNX transformations (qonnx ``Transformation`` subclasses, run with ``model.transform``).

Export side (``export_qonnx``):
  * ``RemoveInitializersFromInputs``: TorchScript export lists every weight as a graph input.
  * ``RemoveFloatCasts``: fpq layers compute in float64 in eval mode, so the export carries
    ``Cast(to=DOUBLE)`` around Conv/Gemm; ONNX Runtime has no double Conv and hls4ml has no
    Cast. Dropping them gives a plain float32 QONNX graph (the casts only widened exact values).
  * ``AnnotateFormats``: writes the ``fpq_format`` attribute on every quantizer node, and makes
    sure a Fixed format is written as Quant(bitwidth=W, scale=2^-frac) (a quantizer that exports
    scale 1 gets that scale). A Fixed with RND / RND_MIN_INF rounding (no QONNX rounding_mode)
    and SAT / SAT_SYM overflow is written exactly as two Quant nodes: a half-step node
    (``fpq_role="half_step"``) to the grid of half an LSB, then the format's node whose CEIL /
    FLOOR decides the ties (the proof is at ``qonnx_codec.TWO_NODE_ROUNDING``); the reader fuses them.
  * ``RenameIO``: stable graph input / output names.

Verification side (``fpq.verify``):
  * ``ComputeInDouble``: qonnx's executor runs standard nodes in ONNX Runtime, in the graph's
    float32; a sum of wide products is not exact there (e4m3 x e4m3 products need 38 bits). This
    rewrites the graph so that every MatMul / Gemm / Add / Mul / Div / pooling runs in float64,
    and lowers Conv (ONNX Runtime has no double Conv) to an exact float32 patch extraction (a Conv
    with one-hot kernels: each output is one input times 1.0) followed by a double MatMul.
    Quantizer nodes keep their float32 outputs (qonnx casts them), so what the next quantizer
    reads is the exact sum, as the contract says.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from qonnx.transformation.base import Transformation

from .qonnx_codec import AnnotateFormats  # noqa: F401  (the writer of fpq's conventions lives with their reader)

QONNX_DOMAIN = "qonnx.custom_op.general"


class RemoveInitializersFromInputs(Transformation):
    def apply(self, model):
        inits = {i.name for i in model.graph.initializer}
        drop = [i for i in model.graph.input if i.name in inits]
        for i in drop:
            model.graph.input.remove(i)
        return model, False


class RemoveFloatCasts(Transformation):
    """Remove Cast nodes between float types (exact widenings of quantized values)."""

    def apply(self, model):
        g = model.graph
        for node in list(g.node):
            if node.op_type != "Cast":
                continue
            to = helper.get_attribute_value(node.attribute[0]) if node.attribute else None
            if to not in (TensorProto.FLOAT, TensorProto.DOUBLE):
                continue
            src, dst = node.input[0], node.output[0]
            if dst in [o.name for o in g.output]:
                continue
            for other in g.node:
                for i, name in enumerate(other.input):
                    if name == dst:
                        other.input[i] = src
            g.node.remove(node)
            return model, True  # one at a time: the graph lists changed
        # every remaining float tensor is float32 again: double constants (a pooling divisor)
        # become float32 when that is exact, else the file cannot be written without rounding
        from onnx import numpy_helper
        for init in g.initializer:
            if init.data_type == TensorProto.DOUBLE:
                init.CopyFrom(numpy_helper.from_array(_exact_f32(numpy_helper.to_array(init), init.name), init.name))
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and a.t.data_type == TensorProto.DOUBLE:
                        a.t.CopyFrom(numpy_helper.from_array(_exact_f32(numpy_helper.to_array(a.t), node.name),
                                                             a.t.name))
        for vi in list(g.value_info) + list(g.output) + list(g.input):
            if vi.type.tensor_type.elem_type == TensorProto.DOUBLE:
                vi.type.tensor_type.elem_type = TensorProto.FLOAT
        return model, False


def _exact_f32(a, name):
    f = np.asarray(a).astype(np.float32)
    if not np.array_equal(f.astype(np.float64), np.asarray(a, dtype=np.float64)):
        raise ValueError(f"constant {name!r} is not exactly representable in float32")
    return f


class RemoveDoubleDivision(Transformation):
    """Undo a torch exporter bug: ``F.avg_pool2d(..., divisor_override=1)`` (a window sum) is
    exported as an AveragePool (a mean) and the divisor is dropped silently, so fpq's exact
    average (window sum / window size) arrives as AveragePool followed by Div(window): the mean
    divided twice. ``scopes``: module paths (ONNX scope '/a/b') of the layers known to do this."""

    def __init__(self, scopes):
        super().__init__()
        self.scopes = ["/" + s.replace(".", "/") + "/" for s in scopes]

    def apply(self, model):
        g = model.graph
        producer = {o: n for n in g.node for o in n.output}
        for node in list(g.node):
            if node.op_type != "Div" or not any(node.name.startswith(s) for s in self.scopes):
                continue
            src = producer.get(node.input[0])
            while src is not None and src.op_type in ("Squeeze", "Unsqueeze", "Reshape"):  # AvgPool1d as 2-D
                src = producer.get(src.input[0])
            if src is None or src.op_type != "AveragePool":
                continue
            k = int(np.prod(helper.get_attribute_value(next(a for a in src.attribute if a.name == "kernel_shape"))))
            c = model.get_initializer(node.input[1])
            if c is None:
                cn = producer.get(node.input[1])
                c = None if cn is None or cn.op_type != "Constant" else \
                    __import__("onnx").numpy_helper.to_array(cn.attribute[0].t)
            if c is None or float(np.asarray(c)) != k:
                continue
            for other in g.node:
                for i, t in enumerate(other.input):
                    if t == node.output[0]:
                        other.input[i] = node.input[0]
            for o in g.output:
                if o.name == node.output[0]:
                    raise ValueError("an average pool cannot be the graph output here")
            g.node.remove(node)
        return model, False


def _window_counts(size, kernel, strides, pads) -> np.ndarray:
    """How many real (not padded) inputs each pooling window covers (ceil_mode 0, no dilation):
    per axis, window i spans [i * stride - pad_begin, + kernel) clipped to [0, n); the product
    over the axes."""
    nd = len(size)
    per_axis = []
    for d in range(nd):
        n, kk, st, lo, hi = size[d], kernel[d], strides[d], pads[d], pads[d + nd]
        starts = np.arange((n + lo + hi - kk) // st + 1) * st - lo
        per_axis.append((np.minimum(starts + kk, n) - np.maximum(starts, 0)).astype(np.float64))
    out = per_axis[0]
    for c in per_axis[1:]:
        out = np.multiply.outer(out, c)
    return out


class RenameIO(Transformation):
    """Rename the graph inputs / outputs (e.g. Brevitas' 'x.103' or '48') to stable names."""

    def __init__(self, inputs=("input",), outputs=("output",)):
        super().__init__()
        self.inputs, self.outputs = list(inputs), list(outputs)

    def apply(self, model):
        g = model.graph
        inits = {i.name for i in g.initializer}
        ins = [i for i in g.input if i.name not in inits]
        pairs = []
        for vi, new in zip(ins, self.inputs if len(ins) == 1 else [f"{self.inputs[0]}_{k}" for k in range(len(ins))]):
            pairs.append((vi.name, new))
        for vi, new in zip(g.output, self.outputs if len(g.output) == 1 else
                           [f"{self.outputs[0]}_{k}" for k in range(len(g.output))]):
            pairs.append((vi.name, new))
        for old, new in pairs:
            if old == new:
                continue
            for vi in list(g.input) + list(g.output) + list(g.value_info):
                if vi.name == old:
                    vi.name = new
            for n in g.node:
                for i, t in enumerate(n.input):
                    if t == old:
                        n.input[i] = new
                for i, t in enumerate(n.output):
                    if t == old:
                        n.output[i] = new
        return model, False


# ----------------------------------------------------------------------------- float64 check

_DOUBLE_OPS = ("MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "ReduceSum", "Floor")  # Floor: the wrap of accumulator_bits
# value-preserving ops: exact in float32 and float64 alike
_PASS_OPS = ("Relu", "MaxPool", "Flatten", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze")


def _is_custom(node):
    return node.domain not in ("", "ai.onnx")


class ComputeInDouble(Transformation):
    """Run every standard compute node in float64 (see the module docstring for why)."""

    def apply(self, model):
        from qonnx.transformation.infer_shapes import InferShapes

        model = model.transform(InferShapes())
        g = model.graph
        self._lower(model)
        dtype = {}  # tensor -> TensorProto elem type as executed
        for vi in g.input:
            dtype[vi.name] = vi.type.tensor_type.elem_type
        for init in g.initializer:
            dtype[init.name] = init.data_type
        new_nodes = []
        cast_cache = {}
        for node in list(g.node):
            if _is_custom(node):
                new_nodes.append(node)
                for o in node.output:
                    dtype[o] = TensorProto.FLOAT  # qonnx casts quantizer outputs to float32
                if node.op_type == "BipolarQuant" and dtype.get(node.input[0]) == TensorProto.DOUBLE:
                    # except BipolarQuant, which keeps its input's dtype: cast its +-scale values
                    # (exact in float32) back to float32, as the other quantizers give
                    out = node.output[0]
                    node.output[0] = f"{out}__f64"
                    dtype[node.output[0]] = TensorProto.DOUBLE
                    new_nodes.append(helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT,
                                                      name=f"fpq_bipolar_cast_{len(new_nodes)}"))
                continue
            if node.op_type == "Cast":
                dtype[node.output[0]] = helper.get_attribute_value(node.attribute[0])
                new_nodes.append(node)
                continue
            if node.op_type == "Conv" and node.name.startswith("fpq_patches"):
                if dtype.get(node.input[0]) == TensorProto.DOUBLE:
                    raise ValueError(f"ComputeInDouble: the input of Conv {node.name!r} is not a quantized tensor")
                for o in node.output:
                    dtype[o] = TensorProto.FLOAT
                new_nodes.append(node)
                continue
            if node.op_type not in _DOUBLE_OPS + _PASS_OPS:
                raise ValueError(f"ComputeInDouble: node {node.name!r} ({node.op_type}) has no exact float64 "
                                 f"form in ONNX Runtime; supported: {', '.join(_DOUBLE_OPS + _PASS_OPS)}, Conv "
                                 "and GlobalAveragePool (lowered)")
            if node.op_type in _PASS_OPS:  # exact in any float type: keep the input's
                for o in node.output:
                    dtype[o] = dtype.get(node.input[0], TensorProto.FLOAT)
                new_nodes.append(node)
                continue
            for k, t in enumerate(node.input):
                if not t or dtype.get(t) != TensorProto.FLOAT:
                    continue
                init = model.get_initializer(t)
                if init is not None:
                    name = f"{t}__f64"
                    if model.get_initializer(name) is None:
                        model.set_initializer(name, np.asarray(init, dtype=np.float64))
                    dtype[name] = TensorProto.DOUBLE
                    node.input[k] = name
                else:
                    if t not in cast_cache:
                        out = f"{t}__f64"
                        new_nodes.append(helper.make_node("Cast", [t], [out], to=TensorProto.DOUBLE,
                                                          name=f"fpq_cast_{len(cast_cache)}"))
                        cast_cache[t] = out
                        dtype[out] = TensorProto.DOUBLE
                    node.input[k] = cast_cache[t]
            floats = [dtype.get(t) for t in node.input if t and dtype.get(t) in (TensorProto.FLOAT, TensorProto.DOUBLE)]
            for o in node.output:
                dtype[o] = TensorProto.DOUBLE if floats else dtype.get(node.input[0], TensorProto.FLOAT)
            new_nodes.append(node)
        del g.node[:]
        g.node.extend(new_nodes)
        del g.value_info[:]  # stale float32 types; shapes are inferred again
        model = model.transform(InferShapes())
        g = model.graph
        # qonnx's executor builds single-node ONNX Runtime models from value_info: make the types
        # what is actually computed
        for vi in list(g.value_info) + list(g.output):
            if vi.name in dtype and dtype[vi.name] in (TensorProto.FLOAT, TensorProto.DOUBLE):
                vi.type.tensor_type.elem_type = dtype[vi.name]
        known = {vi.name for vi in g.value_info} | {vi.name for vi in g.output} | {vi.name for vi in g.input}
        for t, dt in dtype.items():
            if t not in known and model.get_initializer(t) is None:
                shape = model.get_tensor_shape(t)
                if shape is not None:
                    g.value_info.append(helper.make_tensor_value_info(t, dt, shape))
        return model, False

    def _lower(self, model):
        """Conv -> one-hot patch Conv (float32, exact) + double MatMul; GlobalAveragePool ->
        ReduceSum + Div; AveragePool is refused (no exact double form here)."""
        g = model.graph
        out_nodes = []
        for node in list(g.node):
            if node.op_type == "Conv":
                out_nodes.extend(self._lower_conv(model, node))
            elif node.op_type == "GlobalAveragePool":
                shape = model.get_tensor_shape(node.input[0])
                axes = list(range(2, len(shape)))
                n = int(np.prod(shape[2:]))
                axes_name = f"{node.name}__axes"
                model.set_initializer(axes_name, np.asarray(axes, dtype=np.int64))
                cnt = f"{node.name}__count"
                model.set_initializer(cnt, np.asarray(float(n), dtype=np.float64))
                s = f"{node.output[0]}__sum"
                out_nodes.append(helper.make_node("ReduceSum", [node.input[0], axes_name], [s], keepdims=1,
                                                  name=f"{node.name}_sum"))
                out_nodes.append(helper.make_node("Div", [s, cnt], [node.output[0]], name=f"{node.name}_div"))
            elif node.op_type == "AveragePool":
                out_nodes.extend(self._lower_avgpool(model, node))
            else:
                out_nodes.append(node)
        del g.node[:]
        g.node.extend(out_nodes)

    @staticmethod
    def _lower_avgpool(model, node):
        """AveragePool -> one-hot patch Conv (exact) + double ReduceSum + Div by the window count
        (the count per output position when padding is not counted), as the emulator computes."""
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or a.get("ceil_mode", 0):
            raise ValueError(f"ComputeInDouble: AveragePool {node.name!r} with auto_pad / ceil_mode is not supported")
        k = list(a["kernel_shape"])
        nd = len(k)
        xshape = model.get_tensor_shape(node.input[0])
        yshape = model.get_tensor_shape(node.output[0])
        c, kk = xshape[1], int(np.prod(k))
        base = node.name.replace("/", "_")
        eye = np.zeros((c * kk, 1, *k), dtype=np.float32)
        for ch in range(c):
            for j in range(kk):
                eye[(ch * kk + j, 0) + np.unravel_index(j, k)] = 1.0
        model.set_initializer(f"{base}__onehot", eye)
        strides, pads = a.get("strides", [1] * nd), a.get("pads", [0] * 2 * nd)
        patches = f"{node.output[0]}__patches"
        nodes = [helper.make_node("Conv", [node.input[0], f"{base}__onehot"], [patches], name=f"fpq_patches_{base}",
                                  kernel_shape=k, strides=strides, pads=pads, group=c)]
        shp = f"{base}__shape"
        model.set_initializer(shp, np.asarray([yshape[0], c, kk] + list(yshape[2:]), dtype=np.int64))
        nodes.append(helper.make_node("Reshape", [patches, shp], [f"{patches}__r"], name=f"{base}_reshape"))
        axes = f"{base}__axes"
        model.set_initializer(axes, np.asarray([2], dtype=np.int64))
        nodes.append(helper.make_node("ReduceSum", [f"{patches}__r", axes], [f"{patches}__sum"], keepdims=0,
                                      name=f"{base}_sum"))
        if a.get("count_include_pad", 0) or not any(pads):
            count = np.asarray(float(kk))
        else:  # windows at the border see fewer real inputs
            count = _window_counts(tuple(xshape[2:]), tuple(k), tuple(strides), tuple(pads))[None, None]
        cnt = f"{base}__count"
        model.set_initializer(cnt, np.asarray(count, dtype=np.float64))
        nodes.append(helper.make_node("Div", [f"{patches}__sum", cnt], [node.output[0]], name=f"{base}_div"))
        return nodes

    @staticmethod
    def _lower_conv(model, node):
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        wshape = model.get_tensor_shape(node.input[1])
        xshape = model.get_tensor_shape(node.input[0])
        yshape = model.get_tensor_shape(node.output[0])
        cout, cin_g, *k = wshape
        nd = len(k)
        groups = int(a.get("group", 1))
        cin = xshape[1]
        kk = int(np.prod(k))
        # one-hot kernels: output channel c*kk + j copies input channel c at kernel offset j
        eye = np.zeros((cin * kk, 1, *k), dtype=np.float32)
        for c in range(cin):
            for j in range(kk):
                eye[(c * kk + j, 0) + np.unravel_index(j, k)] = 1.0
        base = node.name.replace("/", "_")
        eye_name = f"{base}__onehot"
        model.set_initializer(eye_name, eye)
        attrs = {"kernel_shape": list(k), "strides": a.get("strides", [1] * nd), "pads": a.get("pads", [0] * 2 * nd),
                 "dilations": a.get("dilations", [1] * nd), "group": cin}
        patches = f"{node.output[0]}__patches"
        nodes = [helper.make_node("Conv", [node.input[0], eye_name], [patches], name=f"fpq_patches_{base}", **attrs)]
        out_sp = list(yshape[2:])
        L = int(np.prod(out_sp))
        # patches (1, cin*kk, *out) -> (1, groups, cin_g*kk, L)
        shp = f"{base}__shape1"
        model.set_initializer(shp, np.asarray([xshape[0], groups, cin_g * kk, L], dtype=np.int64))
        p2 = f"{patches}__r"
        nodes.append(helper.make_node("Reshape", [patches, shp], [p2], name=f"{base}_reshape1"))
        # weights (cout, cin_g, *k) -> (groups, cout_g, cin_g*kk); a dynamic (quantizer) weight is reshaped too
        wshp = f"{base}__wshape"
        model.set_initializer(wshp, np.asarray([groups, cout // groups, cin_g * kk], dtype=np.int64))
        w2 = f"{node.input[1]}__{base}_r"
        nodes.append(helper.make_node("Reshape", [node.input[1], wshp], [w2], name=f"{base}_wreshape"))
        mm = f"{node.output[0]}__mm"
        nodes.append(helper.make_node("MatMul", [w2, p2], [mm], name=f"{base}_matmul"))   # (1, g, cout_g, L)
        oshp = f"{base}__shape2"
        model.set_initializer(oshp, np.asarray([yshape[0], cout] + out_sp, dtype=np.int64))
        if len(node.input) > 2 and node.input[2]:
            r = f"{node.output[0]}__nobias"
            nodes.append(helper.make_node("Reshape", [mm, oshp], [r], name=f"{base}_reshape2"))
            bshp = f"{base}__bshape"
            model.set_initializer(bshp, np.asarray([cout] + [1] * nd, dtype=np.int64))
            b2 = f"{node.input[2]}__{base}_r"
            nodes.append(helper.make_node("Reshape", [node.input[2], bshp], [b2], name=f"{base}_breshape"))
            nodes.append(helper.make_node("Add", [r, b2], [node.output[0]], name=f"{base}_bias"))
        else:
            nodes.append(helper.make_node("Reshape", [mm, oshp], [node.output[0]], name=f"{base}_reshape2"))
        return nodes
