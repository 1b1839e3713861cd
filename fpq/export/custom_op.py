"""fpq's QONNX custom ops (ONNX domain ``fpq.export.custom_op``: this module, so qonnx's custom-op
registry finds the executor by importing the domain, as it does for ``qonnx.custom_op.general``).

``FpqTable``: an element-wise activation given exactly by a table (``fpq.nn.tables``).

=============  ============================================================================
input          x: a quantized tensor (float32), each value one of ``x_values``
output         y (float32, x's shape): ``y_values[k]`` where ``x == x_values[k]``; with
               ``channels`` C > 1, ``y_values`` holds C rows of len(x_values) entries and
               channel c (axis 1) reads row c (PReLU's per-channel slopes)
``x_values``   floats, strictly ascending: every value the input's quantizer can produce
``y_values``   floats: the activation of each input value, already rounded by the output
               quantizer that follows the node (so that Quant is the identity on them)
``function``   string, what the table computes, e.g. ``"elu(alpha=1.0)"`` (informative)
``channels``   int, 1 (one table) or C (one row per channel)
=============  ============================================================================

An input that is not one of ``x_values`` is an error: the table is exact only on its grid.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from qonnx.custom_op.base import CustomOp

DOMAIN = "fpq.export.custom_op"


def table_of(node) -> tuple[np.ndarray, np.ndarray, str]:
    """(x_values float64 (N,), y_values float64 (N,) or (C, N), function) of an FpqTable node,
    checked: x strictly ascending and finite, y finite, sizes consistent."""
    a = {att.name: helper.get_attribute_value(att) for att in node.attribute}
    xs = np.asarray(a.get("x_values", []), dtype=np.float32).astype(np.float64)
    ys = np.asarray(a.get("y_values", []), dtype=np.float32).astype(np.float64)
    c = int(a.get("channels", 1))
    fn = a.get("function", b"")
    fn = fn.decode() if isinstance(fn, bytes) else str(fn)
    if xs.size == 0 or not np.all(np.isfinite(xs)) or np.any(np.diff(xs) <= 0):
        raise ValueError(f"FpqTable node {node.name!r}: x_values must be finite and strictly ascending")
    if c < 1 or ys.size != c * xs.size or not np.all(np.isfinite(ys)):
        raise ValueError(f"FpqTable node {node.name!r}: y_values must hold channels x len(x_values) = "
                         f"{c} x {xs.size} finite numbers, got {ys.size}")
    return xs, (ys if c == 1 else ys.reshape(c, xs.size)), fn


class FpqTable(CustomOp):
    """qonnx executor of fpq's table activation (see the module docstring)."""

    def get_nodeattr_types(self):
        return {"x_values": ("floats", True, []), "y_values": ("floats", True, []),
                "function": ("s", False, ""), "channels": ("i", False, 1)}

    def make_shape_compatible_op(self, model):
        node = self.onnx_node
        return helper.make_node("Identity", [node.input[0]], [node.output[0]])

    def infer_node_datatype(self, model):
        from qonnx.core.datatype import DataType
        model.set_tensor_datatype(self.onnx_node.output[0], DataType["FLOAT32"])

    def execute_node(self, context, graph):
        from ..numerics.activations import lookup
        node = self.onnx_node
        xs, ys, _ = table_of(node)
        x = np.asarray(context[node.input[0]])
        context[node.output[0]] = lookup(xs, ys, x, f"FpqTable node {node.name!r}").astype(np.float32)

    def verify_node(self):
        try:
            table_of(self.onnx_node)
        except ValueError as e:
            return [str(e)]
        return ["FpqTable node is valid"]


custom_op = {"FpqTable": FpqTable}   # qonnx's registry reads this dict of the domain's module
