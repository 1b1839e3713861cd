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

``ComputeInDouble`` (verification only: exact float64 sums for qonnx's executor) lives with
``fpq.verification``.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from qonnx.transformation.base import Transformation

from .qonnx_codec import write_formats

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


class AnnotateFormats(Transformation):
    """``formats``: {quantizer node name: Format}; writes them as fpq's codec says
    (``qonnx_codec.write_formats``: the writer lives with the reader of the same conventions)."""

    def __init__(self, formats: dict):
        super().__init__()
        self.formats = formats

    def apply(self, model):
        write_formats(model, self.formats)
        return model, False


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
