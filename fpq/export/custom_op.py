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

``FpqSoftmax`` / ``FpqLayerNorm``: softmax / LayerNorm over the last axis (``axis`` = -1) as the
exact integer pipelines of ``fpq.numerics.normalization`` (its docstring defines every step).
The output (float32) is the pipeline's own fixed-point result (ufixed<24,1> / fixed<24,
out_int_bits>); the Quant node after it is the layer's output quantizer.

=================  ========================================================================
``in_frac``        int F: the input is k * 2^-F with integer k (an input off that grid is an error)
``shift``          softmax: the exp table's input is (x - max) * 2^F >> shift, rounded half up
``exp_table``      softmax: ints, ufixed<exp_frac+1, 1> codes of exp at t = -(len-1) .. 0
``exp_frac``,      softmax: 17, 40, 23 (the recipe's constants, recorded)
``recip_bits``,
``out_frac``
``eps``            LayerNorm: float (float32) eps; ``eps_int`` its integer on the variance grid
``gamma``,         LayerNorm: floats, the quantized affine parameters (n each; 1 and 0 without
``beta``           elementwise affine)
``out_int_bits``,  LayerNorm: the recipe's y type and constants (16, 32, 31), recorded
``z_frac``, ...
=================  ========================================================================
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


def _attrs_of(node) -> dict:
    out = {}
    for att in node.attribute:
        v = helper.get_attribute_value(att)
        out[att.name] = v.decode() if isinstance(v, bytes) else (list(v) if isinstance(v, (list, tuple)) else v)
    return out


def recipe_of(node, who: str | None = None):
    """The SoftmaxRecipe / LayerNormRecipe an FpqSoftmax / FpqLayerNorm node holds (its own numbers,
    not checked against an input type: the reader does that)."""
    from ..numerics import normalization as N
    who = who or f"{node.op_type} node {node.name!r}"
    a = _attrs_of(node)
    if a.get("axis", -1) != -1:
        raise ValueError(f"{who}: axis={a['axis']}; fpq's pipelines work over the last axis (-1) only")
    try:
        if node.op_type == "FpqSoftmax":
            r = N.SoftmaxRecipe(int(a["in_frac"]), int(a["shift"]), tuple(int(v) for v in a["exp_table"]),
                                int(a["exp_frac"]), int(a["recip_bits"]), int(a["out_frac"]))
            if not r.exp_table or r.exp_table[-1] != 1 << r.exp_frac or r.recip_bits < r.out_frac:
                raise ValueError("its exp table must end with exp(0) = 2^exp_frac")
            return r
        gamma = np.asarray(a["gamma"], dtype=np.float32)
        beta = np.asarray(a["beta"], dtype=np.float32)
        fg, fb = N.grid_exponent(gamma), N.grid_exponent(beta)
        g = tuple(int(v) for v in N.to_codes(gamma, fg, who + " gamma"))
        b = tuple(int(v) for v in N.to_codes(beta, fb, who + " beta"))
        return N.LayerNormRecipe(int(a["in_frac"]), gamma.size, int(a["eps_int"]), g, fg, b, fb,
                                 int(a["out_int_bits"]), 0, int(a["z_frac"]), int(a["norm_bits"]), int(a["rsqrt_frac"]))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{who}: missing or malformed attribute ({e})") from None


def pipeline_of(node, in_values) -> tuple:
    """(IR kind, recipe) of an FpqSoftmax / FpqLayerNorm node whose input takes ``in_values``. The
    node's own numbers are the recipe every path runs; they must be the ones fpq builds for that
    input (grid, shift, constants, gamma / beta exactly; the exp table within one code per entry, so
    that a file written where libm's exp rounds one last bit differently still reads). ValueError
    names the node otherwise."""
    from dataclasses import replace
    from ..numerics import normalization as N
    who = f"{node.op_type} node {node.name!r}"
    mine = recipe_of(node, who)
    if node.op_type == "FpqSoftmax":
        kind, built = "softmax", N.softmax_recipe(in_values, who)
        mine_t, built_t = np.asarray(mine.exp_table), np.asarray(built.exp_table)
        if mine_t.shape == built_t.shape and np.all(np.abs(mine_t - built_t) <= 1):
            built = replace(built, exp_table=mine.exp_table)
    else:
        a = _attrs_of(node)
        gamma = np.ldexp(np.asarray(mine.gamma, dtype=np.float64), -mine.gamma_frac)
        beta = np.ldexp(np.asarray(mine.beta, dtype=np.float64), -mine.beta_frac)
        kind = "layernorm"
        built = N.layernorm_recipe(in_values, mine.n, float(a.get("eps", 1e-5)), gamma, beta, who)
        mine = replace(mine, z_max=built.z_max)
    if mine != built:
        diff = [k for k in mine.__dataclass_fields__ if getattr(mine, k) != getattr(built, k)]
        raise ValueError(f"{who}: its {', '.join(diff)} differ from what fpq's recipe gives for its input's quantizer "
                         "(fpq.numerics.normalization): the node was not made for this input")
    return kind, mine


class _Pipeline(CustomOp):
    def make_shape_compatible_op(self, model):
        node = self.onnx_node
        return helper.make_node("Identity", [node.input[0]], [node.output[0]])

    def infer_node_datatype(self, model):
        from qonnx.core.datatype import DataType
        model.set_tensor_datatype(self.onnx_node.output[0], DataType["FLOAT32"])

    def verify_node(self):
        try:
            recipe_of(self.onnx_node)
        except ValueError as e:
            return [str(e)]
        return [f"{self.onnx_node.op_type} node is valid"]


class FpqSoftmax(_Pipeline):
    """qonnx executor of fpq's exact softmax (see the module docstring)."""

    def get_nodeattr_types(self):
        return {"in_frac": ("i", True, 0), "shift": ("i", True, 0), "exp_table": ("ints", True, []),
                "exp_frac": ("i", True, 17), "recip_bits": ("i", True, 40), "out_frac": ("i", True, 23),
                "axis": ("i", False, -1)}

    def execute_node(self, context, graph):
        from ..numerics.normalization import softmax
        node = self.onnx_node
        who = f"FpqSoftmax node {node.name!r}"
        context[node.output[0]] = softmax(np.asarray(context[node.input[0]]), recipe_of(node, who), who)


class FpqLayerNorm(_Pipeline):
    """qonnx executor of fpq's exact LayerNorm (see the module docstring)."""

    def get_nodeattr_types(self):
        return {"in_frac": ("i", True, 0), "eps": ("f", False, 1e-5), "eps_int": ("i", True, 0),
                "gamma": ("floats", True, []), "beta": ("floats", True, []), "out_int_bits": ("i", True, 1),
                "z_frac": ("i", True, 16), "norm_bits": ("i", True, 32), "rsqrt_frac": ("i", True, 31),
                "axis": ("i", False, -1)}

    def execute_node(self, context, graph):
        from ..numerics.normalization import layernorm
        node = self.onnx_node
        who = f"FpqLayerNorm node {node.name!r}"
        context[node.output[0]] = layernorm(np.asarray(context[node.input[0]]), recipe_of(node, who), who)


custom_op = {"FpqTable": FpqTable, "FpqSoftmax": FpqSoftmax, "FpqLayerNorm": FpqLayerNorm}   # qonnx's registry reads this dict of the domain's module
