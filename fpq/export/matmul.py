"""ONNX ``MatMul`` of two dynamic (quantized) tensors read into fpq's graph IR as the op kind
``matmul`` (``fpq.ir``): attention's Q K^T and A V, fpq's ``FpqMatMul`` (``fpq.nn.attention``).

The file holds a standard ONNX MatMul (any QONNX tool reads it; qonnx's executor runs it exactly
in float64 under ``fpq.verify``'s ``ComputeInDouble``), optionally followed by a ``Mul`` by a
scalar power-of-two constant (attention's scale): that Mul is fused into the op as
``attrs["alpha_exp"]`` (y = 2**alpha_exp * (a @ b), exact: a shift). Both operands must carry a
quantizer's type, else the exact accumulator is unknown and the node is refused by name. The
TypePlan derives the product and the exact accumulator as for a Linear (``LayerPlan.derive``,
roles ``input`` and ``other``, fan-in K = the shared axis).
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import Op, UnsupportedGraphError
from ..typeplan import TensorType


def matmul_op(r, node, ins, name: str, types: list) -> Op:
    """A ``matmul`` op of two dynamic tensors (``r``: the reader, ``types``: the operands' TensorTypes)."""
    a, b = ins[0], ins[1]
    for i, t in enumerate(types):
        if not isinstance(t, TensorType):
            raise UnsupportedGraphError(f"MatMul node {node.name!r}: operand {i} ({ins[i]}) has no quantizer, so its "
                                        "values (and the product's exact accumulator) are unknown; fpq reads a MatMul "
                                        "of two quantized tensors (or of a tensor and a quantized constant weight)")
    sa, sb = r.shape(a), r.shape(b)
    if sa is None or sb is None or len(sa) < 2 or len(sb) < 2 or sa[-1] != sb[-2]:
        raise UnsupportedGraphError(f"MatMul node {node.name!r}: operand shapes {sa} and {sb} are unknown or not "
                                    "(..., M, K) @ (..., K, N)")
    if len(sa) != len(sb) or any(x != y and 1 not in (x, y) for x, y in zip(sa[:-2], sb[:-2])):
        raise UnsupportedGraphError(f"MatMul node {node.name!r}: operands {sa} and {sb} must have the same rank and "
                                    "broadcastable batch axes")
    out, fused, alpha_exp = node.output[0], [node.name], 0
    mul = r.single_consumer(out, "Mul")
    if mul is not None:
        other = [i for i in mul.input if i != out]
        if len(other) == 1 and r.is_const(other[0]) and r.const(other[0])[1] is None:
            c = np.asarray(r.const(other[0])[0], dtype=np.float64)
            if c.size == 1 and c.ravel()[0] > 0:
                m, e = math.frexp(float(c.ravel()[0]))
                if m == 0.5:   # a power of two: an exact shift, part of the op
                    alpha_exp = e - 1
                    out = mul.output[0]
                    fused.append(mul.name)
                    r.fused.add(mul.name)
    op = Op(r.unique(name), "matmul", [a, b], [out], attrs={"alpha_exp": alpha_exp, "fan_in": int(sa[-1])},
            onnx_nodes=fused)
    op.types = {"input": types[0], "other": types[1]}
    return op
