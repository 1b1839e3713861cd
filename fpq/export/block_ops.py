"""fpq's QONNX node for block-scaled formats, ``BlockQuant`` in the domain ``fpq.export.block_ops``
(this module: qonnx's custom-op registry imports the domain as a module and finds the op here, so
qonnx's executor runs it). QONNX has no block quantizer, and Brevitas refuses to export groupwise
ones, so fpq writes its own.

Node: one input x, one output. Attributes: ``fpq_format`` (the canonical BlockFormat string: element
format, scale format, block size k, axis, scale rounding) and, for a tensor-scaled format (NVFP4
style), ``tensor_scale`` (the float32 s_t: a weight's from the weight at export, an activation's
calibrated constant). Output: the element values times their block scale, WITHOUT s_t, which a
``Mul`` by the float32 constant s_t right after the node applies. That keeps every value the node
gives a float32 number (element x e4m3 scale: at most 2 + 4 significant bits; x 2**e for E8M0),
as qonnx's executor stores quantizer outputs in float32; an NVFP4 value itself (up to 30 bits) is
exact only after the Mul in float64 (fpq.verification.qonnx_double_model runs it so).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from qonnx.custom_op.base import CustomOp

from ..formats import BlockFormat, parse_format
from ..numerics.blocks import block_quantize, dequantize_block

DOMAIN = "fpq.export.block_ops"
OP_TYPE = "BlockQuant"


def block_format_of(node) -> BlockFormat:
    """The BlockFormat a BlockQuant node carries (its ``fpq_format`` attribute)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    text = attrs.get("fpq_format")
    if text is None:
        raise ValueError(f"BlockQuant node {node.name!r} has no fpq_format attribute")
    fmt = parse_format(text.decode() if isinstance(text, bytes) else text)
    if not isinstance(fmt, BlockFormat):
        raise ValueError(f"BlockQuant node {node.name!r}: {fmt} is not a block format")
    return fmt


def tensor_scale_of_node(node, fmt: BlockFormat):
    """The node's float32 tensor scale (tensor-scaled formats), None for E8M0 ones."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if fmt.po2_scale:
        return None
    if "tensor_scale" not in attrs:
        raise ValueError(f"BlockQuant node {node.name!r} of {fmt} has no tensor_scale attribute")
    return np.float32(attrs["tensor_scale"])


def block_unit_values(x: np.ndarray, fmt: BlockFormat, tensor_scale) -> np.ndarray:
    """What a BlockQuant node outputs: elements x block scales (no tensor scale), float64, exact."""
    q = block_quantize(x, fmt, tensor_scale)
    return dequantize_block(q.elements, q.scales, fmt)


def write_block_quant(model, node, fmt: BlockFormat, tensor_scale=None) -> None:
    """Rewrite the Quant node Brevitas exported for a block quantizer (scale 1) as a BlockQuant node;
    a tensor-scaled format also gets its ``Mul`` by s_t (a weight's s_t is computed from the weight
    here, an activation's is the calibrated ``tensor_scale``)."""
    from ..numerics.blocks import tensor_scale_of
    g = model.graph
    dropped = list(node.input[1:])
    del node.input[1:]
    del node.attribute[:]
    node.op_type, node.domain = OP_TYPE, DOMAIN
    node.attribute.append(helper.make_attribute("fpq_format", str(fmt)))
    if not fmt.po2_scale:
        if tensor_scale is None:
            w = model.get_initializer(node.input[0])
            if w is None:
                raise ValueError(f"BlockQuant {node.name!r}: an activation of {fmt} needs its calibrated tensor scale")
            tensor_scale = tensor_scale_of(w, fmt)
        st = np.float32(tensor_scale)
        node.attribute.append(helper.make_attribute("tensor_scale", float(st)))
        out = node.output[0]
        node.output[0] = f"{out}__blocks"
        const = model.make_new_valueinfo_name()
        model.set_initializer(const, np.asarray(st, dtype=np.float32))
        mul = helper.make_node("Mul", [node.output[0], const], [out], name=f"{node.name}_tensor_scale")
        g.node.insert(list(g.node).index(node) + 1, mul)
    used = {i for n in g.node for i in n.input}
    for name in dropped:   # the Quant node's scale / zero point / bit width, now unused
        if name in used:
            continue
        for seq in (g.initializer, g.input, g.value_info):
            for t in [t for t in seq if t.name == name]:
                seq.remove(t)
    if not any(o.domain == DOMAIN for o in model.model.opset_import):
        model.model.opset_import.append(helper.make_opsetid(DOMAIN, 1))


class BlockQuant(CustomOp):
    """qonnx executor of fpq's block quantizer (see the module docstring)."""

    def get_nodeattr_types(self):
        return {"fpq_format": ("s", True, ""), "tensor_scale": ("f", False, 0.0)}

    def make_shape_compatible_op(self, model):
        return helper.make_node("Cast", [self.onnx_node.input[0]], [self.onnx_node.output[0]], to=int(TensorProto.FLOAT))

    def infer_node_datatype(self, model):
        from qonnx.core.datatype import DataType
        model.set_tensor_datatype(self.onnx_node.output[0], DataType["FLOAT32"])

    def execute_node(self, context, graph):
        node = self.onnx_node
        fmt = block_format_of(node)
        x = np.asarray(context[node.input[0]])
        y = block_unit_values(x, fmt, tensor_scale_of_node(node, fmt))
        context[node.output[0]] = y.astype(np.float32)  # exact: see the module docstring

    def verify_node(self):
        try:
            block_format_of(self.onnx_node)
            return [f"BlockQuant {self.onnx_node.name}: ok"]
        except ValueError as e:
            return [str(e)]


custom_op = {OP_TYPE: BlockQuant}
__all__ = ["BlockQuant", "DOMAIN", "OP_TYPE", "block_format_of", "tensor_scale_of_node", "block_unit_values",
           "write_block_quant"]
