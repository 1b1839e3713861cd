"""ONNX ``Concat`` and nearest-neighbour ``Resize`` / ``Upsample`` read into fpq's graph IR as the op
kinds ``concat`` and ``upsample`` (``fpq.ir``): both move values without arithmetic, so every path
computes them exactly; what matters is that the reader takes only what they are.

* ``Concat`` of dynamic tensors (a torch.cat, a U-Net's skip join) along a non-batch axis. A
  Concat of constants or shapes is a run-time shape computation (refused before, by
  ``fpq.export.foreign``, or here naming the node). The output's type is the inputs' common type,
  else the exact Fixed union of their value carriers (``concat_type``).
* ``Resize`` (any opset) and the deprecated ``Upsample`` with ``mode="nearest"``, constant scales or
  sizes: accepted when the node repeats each value a whole number of times along each axis. That
  is decided by running the node itself in onnx's reference implementation on an index map of the
  input's shape (``onnx.reference``), not by re-deriving ONNX's coordinate-transformation and
  nearest-rounding rules here: every attribute combination that does repeat is read, every other
  one (a fractional factor, an ``align_corners`` grid that is not a repeat) is refused with the
  index map's verdict.
"""
from __future__ import annotations

import numpy as np

from ..formats import Fixed
from ..ir import Op, UnsupportedGraphError
from ..typeplan import TensorType, fixed_union

UPSAMPLE_OK = ("fpq reads nearest-neighbour upsampling by whole-number factors (each value repeated; "
               "torch: nn.Upsample(scale_factor=2, mode='nearest'))")


def concat_type(ts):
    """The type of a concatenation of tensors of types ``ts``: their common type when all are the
    same (format and per-tensor scale), else the smallest Fixed holding every value of each (their
    value carriers' union, scale 1); None when one is unknown or has no enumerable carrier."""
    if not ts or not all(isinstance(t, TensorType) for t in ts):
        return None
    first = ts[0]
    if all(t.format == first.format and t.scale.shape == () and np.array_equal(t.scale, first.scale) for t in ts):
        return first
    carriers = [t.value_carrier() for t in ts]
    if any(c is None for c in carriers):
        return None
    u = fixed_union([Fixed(c.width, c.int_bits, c.signed) for c in carriers])
    return TensorType(Fixed(u.width, u.int_bits, u.signed), 1.0)


def concat_op(r, node, a, ins, name: str, types: list) -> Op:
    """A ``concat`` op (``r``: the reader, ``types``: the inputs' TensorTypes or None)."""
    consts = [i for i in ins if r.is_const(i)]
    if consts or not ins:
        raise UnsupportedGraphError(
            f"Concat node {node.name!r} joins constant tensors {consts}: a run-time shape computation or a constant "
            "feature; fpq reads a Concat of computed (quantized) tensors only (fold shape computations first: "
            "qonnx's FoldConstants)")
    shape = r.shape(ins[0])
    axis = int(a.get("axis", 1))
    if shape is not None:
        axis %= len(shape)
    if axis == 0:
        raise UnsupportedGraphError(f"Concat node {node.name!r} joins along axis 0, the batch; fpq reads joins along "
                                    "another axis (1: channels / features)")
    op = Op(r.unique(name), "concat", list(ins), [node.output[0]], attrs={"axis": axis}, onnx_nodes=[node.name])
    t = concat_type(types)
    if t is not None:
        op.types["output"] = t
    return op


def _const_inputs(r, node):
    """(model inputs, initializers) to run the node alone: its constant inputs as initializers."""
    from onnx import numpy_helper as nh
    feeds, inits = [], []
    for k, t in enumerate(node.input):
        if k == 0 or not t:
            feeds.append(t)
            continue
        if not r.is_const(t):
            raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: its input {t!r} (scales / sizes / roi) "
                                        f"is computed at run time; {UPSAMPLE_OK} with constant scales")
        v = np.asarray(r.const(t)[0])
        inits.append(nh.from_array(v, f"c{k}"))
        feeds.append(f"c{k}")
    return feeds, inits


def upsample_op(r, node, a, x, name: str) -> Op:
    """An ``upsample`` op of a nearest ``Resize`` / ``Upsample`` node that repeats each value by whole
    factors (checked with onnx's reference implementation on an index map of the input)."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator
    mode = a.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "nearest":
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: mode {mode!r} interpolates (new values); "
                                    f"{UPSAMPLE_OK}")
    in_shape = r.shape(x)
    if in_shape is None:
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: input shape unknown")
    in_shape = tuple(in_shape)
    feeds, inits = _const_inputs(r, node)
    one = helper.make_node(node.op_type, ["X"] + feeds[1:], ["Y"], **dict(a))
    opset = max([o.version for o in r.mw.model.opset_import if o.domain in ("", "ai.onnx")] or [13])
    g = helper.make_graph([one], "probe", [helper.make_tensor_value_info("X", TensorProto.DOUBLE, in_shape)],
                          [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, None)], inits)
    index = np.arange(int(np.prod(in_shape)), dtype=np.float64).reshape(in_shape)
    try:
        y = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])).run(
            None, {"X": index})[0]
    except Exception as e:   # an attribute set onnx itself rejects
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: onnx's reference implementation cannot run "
                                    f"it ({type(e).__name__}: {e})") from None
    ratios = [o / i for o, i in zip(y.shape, in_shape)]
    scales = tuple(int(f) for f in ratios)
    repeat = index
    if len(y.shape) == len(in_shape) and all(f == s and s >= 1 for f, s in zip(ratios, scales)):
        for ax, s in enumerate(scales):
            repeat = np.repeat(repeat, s, axis=ax)
    if repeat.shape != y.shape or not np.array_equal(repeat, y):
        raise UnsupportedGraphError(
            f"{node.op_type} node {node.name!r} ({', '.join(f'{k}={v!r}' for k, v in sorted(a.items()))}) maps "
            f"shape {in_shape} to {tuple(y.shape)} but does not repeat each value a whole number of times along each "
            f"axis (its factors: {[round(f, 4) for f in ratios]}); {UPSAMPLE_OK}")
    if scales[0] != 1:
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r} repeats the batch axis {scales[0]} times; "
                                    f"{UPSAMPLE_OK} along the spatial axes")
    return Op(r.unique(name), "upsample", [x], [node.output[0]], attrs={"scales": scales}, onnx_nodes=[node.name])


__all__ = ["concat_op", "concat_type", "upsample_op", "UPSAMPLE_OK"]


def gather_op(r, node, a, ins, name: str, t_ids) -> Op:
    """``Gather(table, ids)`` of a quantized constant table (rows, d) by token ids (an nn.Embedding,
    fpq.nn.embedding): a ``gather`` op whose ``weight`` is the table, along axis 0, the ids an input
    quantized to integers at scale 1 (``ufixed<b,b>``) with 2**b <= rows. Any other Gather (a shape
    computation, another axis, ids of unknown range) is refused naming the node."""
    from ..ir import Quantizer  # noqa: F401  (the table's quantizer comes from the reader)
    if len(ins) != 2 or not r.is_const(ins[0]) or r.is_const(ins[1]) or int(a.get("axis", 0)) != 0:
        raise UnsupportedGraphError(f"Gather node {node.name!r}: fpq reads a Gather of rows (axis 0) of a quantized "
                                    "constant table by dynamic token ids (an embedding) only; a shape computation "
                                    "must be folded into constants first (qonnx FoldConstants)")
    table, tq = r.const(ins[0])
    table = np.asarray(table, dtype=np.float32)
    if tq is None or table.ndim != 2:
        raise UnsupportedGraphError(f"Gather node {node.name!r}: its table must be a 2-D quantized constant (Quant of "
                                    "an initializer)")
    f = getattr(t_ids, "format", None)
    if not (isinstance(t_ids, TensorType) and isinstance(f, Fixed) and not f.signed and f.int_bits == f.width
            and np.all(t_ids.scale == 1) and 2 ** f.width <= table.shape[0]):
        raise UnsupportedGraphError(f"Gather node {node.name!r}: its ids must come from an input quantizer ufixed<b,b> "
                                    f"(integers 0 .. 2**b - 1) with 2**b <= {table.shape[0]} table rows; got "
                                    f"{t_ids.describe() if isinstance(t_ids, TensorType) else 'no quantizer'}")
    op = Op(r.unique(name), "gather", [ins[1]], [node.output[0]], weight=table, weight_quant=tq,
            onnx_nodes=[node.name])
    op.types = {"input": t_ids, "weight": tq.ttype, "output": tq.ttype}
    return op
