"""fpq's graph IR of a quantized network, read from a QONNX model, and its TypePlan.

``read_graph(model)`` turns a QONNX file / ``ModelWrapper`` / ``onnx.ModelProto`` into a
:class:`Graph`: a list of :class:`Op` in execution (topological) order. Brevitas' export
idioms are fused on the way, so that every consumer (the emulator, the hls4ml writer, the
cost model) sees one op per hardware layer:

* a weight ``Quant`` / ``FloatQuant`` / ``BipolarQuant`` on an initializer (possibly behind
  ``Transpose`` / ``Reshape`` / ``Identity``) feeding ``MatMul`` / ``Gemm`` / ``Conv`` becomes
  the op's ``weight`` (float32 values already on the grid) and ``types["weight"]``;
* ``MatMul`` + ``Add(constant)`` and ``Gemm`` / ``Conv`` with a bias input become one
  ``linear`` / ``conv`` op with ``bias``;
* ``Div(scale) -> Quant(scale 1) -> Mul(scale)`` (qonnx's ExtractQuantScaleZeroPt form) is one
  ``quant`` op with that scale;
* a half-step ``Quant`` (``fpq_role="half_step"``) and the ``Quant`` it feeds are one quantizer:
  the Fixed RND / RND_MIN_INF they compute exactly (``TWO_NODE_ROUNDING``); a half-step node
  alone, or a pair that does not compute its ``fpq_format``, is an error naming the node;
* ``ReduceSum(spatial axes) -> Div(count)`` is one ``global_avgpool``; ``Unsqueeze`` / ``Squeeze``
  become ``reshape``; ``Identity`` / ``Dropout`` and float ``Cast`` (fpq layers widen to float64)
  are dropped (values unchanged);
* outputs that are constants (Brevitas' QuantTensor metadata: scale, bit width) are ignored.

Op kinds (``Op.kind``) and their attributes:

==================  ==========================================================================
``input_quant``     quantizer on a graph input (the network's first op); ``quant``; the graph
                    input is float32 and this quantizer divides by its scale in float32
``quant``           activation (re)quantizer: ``quant`` (a :class:`Quantizer`); also Trunc
                    (``quant.pre_scale``: the input is first rounded to that grid)
``linear``          y = x @ weight.T + bias; weight (out, in)
``conv1d/conv2d``   weight (out, in/groups, *kernel); kernel, strides, pads (ONNX order:
                    begins then ends), dilations, groups
``batchnorm``       y = x * weight + bias per channel (axis 1): weight (C,) from a Mul by a
                    quantized constant, bias (C,) from the Add of a constant right after it
                    (fpq's element-wise BatchNorm, or any file with that pattern); fan_in 1
``relu``            max(x, 0)
``add``             x0 + x1 (both dynamic)
``mul`` / ``div``   x * c, x / c with a constant ``c`` (attrs["value"])
``maxpool``         kernel, strides, pads, dilations, ceil_mode
``avgpool``         kernel, strides, pads, ceil_mode, count_include_pad
``global_avgpool``  mean over the spatial axes, keepdims
``flatten``         axis
``reshape``         shape (ONNX semantics, 0 copies, -1 infers)
``transpose``       perm
``output``          marks a graph output (identity)
==================  ==========================================================================

Every quantized tensor has a :class:`Quantizer` (its fpq ``TensorType`` plus the scale in its
broadcast layout). ``Op.types`` maps roles (input, weight, bias, output) to TensorTypes where
they are known. Shapes include the batch dimension as exported (usually 1); consumers treat
dimension 0 as the batch.

Semantics are fpq's (``fpq.quantize``), not qonnx's executor: where the two differ (qonnx's
``float_quant`` ignores ``has_subnormal`` and is always signed; formats written in an
``fpq_format`` attribute that QONNX cannot express, e.g. fixed WRAP), ``Quantizer.qonnx_exact``
is False and ``Quantizer.note`` says why.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..formats import QONNX_ROUNDING, ROUNDING_TO_QONNX, Binary, Fixed, Format, Int, Minifloat, parse_format
from ..numerics.wide import WIDE_BITS
from ..typeplan import LayerPlan, TensorType, TypePlan, fixed_union, po2_exponents, sum_type

QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas", "")
QUANT_OPS = ("Quant", "IntQuant", "FloatQuant", "BipolarQuant", "Trunc")
# ops that only move or relabel constant data: evaluated when they sit on a weight / bias path
CONST_OPS = ("Identity", "Transpose", "Reshape", "Flatten", "Unsqueeze", "Squeeze", "Cast", "Constant")
# ONNX op_type -> IR kind for the simple dynamic ops
SIMPLE_KINDS = {"Relu": "relu", "MaxPool": "maxpool", "AveragePool": "avgpool",
                "GlobalAveragePool": "global_avgpool", "Flatten": "flatten", "Reshape": "reshape",
                "Transpose": "transpose"}
SUPPORTED_OPS = ("Quant", "FloatQuant", "BipolarQuant", "Trunc", "MatMul", "Gemm", "Conv", "Add",
                 "Mul", "Div", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
                 "Reshape", "Transpose", "Identity", "Dropout", "Constant", "Cast", "Unsqueeze", "Squeeze",
                 "ReduceSum")
KINDS = ("input_quant", "quant", "linear", "conv1d", "conv2d", "batchnorm", "relu", "add", "mul", "div",
         "maxpool", "avgpool", "global_avgpool", "flatten", "reshape", "transpose", "output")
FPQ_FORMAT_ATTR = "fpq_format"
# ap_fixed's RND (ties to +inf) and RND_MIN_INF (ties to -inf) have no QONNX rounding_mode; the
# export writes them exactly as two Quant nodes (transforms.AnnotateFormats): a "half-step" node
# (attribute fpq_role="half_step") onto the grid of half an LSB, then the format's own node:
#   RND(x)         = Quant_CEIL (Quant_FLOOR(x, scale=s/2, bits=W+1), scale=s, bits=W)
#   RND_MIN_INF(x) = Quant_FLOOR(Quant_CEIL (x, scale=s/2, bits=W+1), scale=s, bits=W)
# Why this is exact (t = x/s; codes before clipping): with n = floor(2t), ceil(n/2) = floor(t+1/2):
# n = 2k means k <= t < k+1/2, both are k; n = 2k+1 means k+1/2 <= t < k+1, both are k+1 (a tie
# t = k+1/2 goes up: RND). Mirrored, with n = ceil(2t), floor(n/2) = ceil(t-1/2) (ties go down:
# RND_MIN_INF). Clipping: qonnx clamps then rounds, and for integer bounds that equals rounding
# then clamping. g(n) = ceil(n/2) or floor(n/2) is non-decreasing, so g(clip(n, lo1, hi1)) =
# clip(g(n), g(lo1), g(hi1)); the (W+1)-bit range maps onto [-2^(W-1), 2^(W-1)] (ceil) or
# [-2^(W-1), 2^(W-1)-1] (floor), signed, and onto [0, 2^W] or [0, 2^W-1] unsigned: each contains
# the W-bit range, so the second node's clamp alone decides, as SAT does on the rounded code.
# SAT_SYM (signed) is the second node with narrow=1 (clamp to +-(2^(W-1)-1)); unsigned SAT_SYM is
# SAT. The half-step values must be exact in float32 (qonnx casts quantizer outputs to it): W+1 <= 24.
FPQ_ROLE_ATTR = "fpq_role"
HALF_STEP_ROLE = "half_step"
# ap_fixed rounding -> (rounding_mode of the half-step node, of the format's node)
TWO_NODE_ROUNDING = {"RND": ("FLOOR", "CEIL"), "RND_MIN_INF": ("CEIL", "FLOOR")}
# kinds whose output values are a subset of their input values (the type passes through)
TYPE_PRESERVING = ("relu", "maxpool", "flatten", "reshape", "transpose", "output")


class UnsupportedGraphError(ValueError):
    """A QONNX graph fpq cannot represent exactly (the message names the node and why)."""


@dataclass(frozen=True)
class Quantizer:
    """One quantizer of the graph: y = Q(x / scale) * scale with fpq's semantics.

    ``scale`` is float32 in the tensor's broadcast layout (e.g. (C, 1) for a linear weight,
    (1, C, 1, 1) for a conv activation); ``ttype.scale`` is the same scale flattened to () or
    (C,). ``pre_scale`` (Trunc only): the input is first rounded to multiples of it.
    """

    ttype: TensorType
    scale: np.ndarray
    node: str
    op_type: str
    qonnx_exact: bool = True
    note: str = ""
    pre_scale: np.ndarray | None = None

    @property
    def format(self) -> Format:
        return self.ttype.format

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Reference application (fpq.quantize), in x's dtype."""
        from ..numerics import quantize
        if self.pre_scale is not None:
            x = np.rint(x / self.pre_scale) * self.pre_scale
        return quantize(x, self.ttype.format, self.scale)


@dataclass
class Op:
    """One IR op. ``inputs`` / ``outputs`` are ONNX tensor names (dynamic tensors only)."""

    name: str
    kind: str
    inputs: list
    outputs: list
    in_shapes: list = field(default_factory=list)
    out_shape: tuple | None = None
    attrs: dict = field(default_factory=dict)
    weight: np.ndarray | None = None     # float32, on the grid
    bias: np.ndarray | None = None       # float32 (on the grid when quantized)
    quant: Quantizer | None = None       # quant / input_quant ops
    weight_quant: Quantizer | None = None
    bias_quant: Quantizer | None = None
    types: dict = field(default_factory=dict)   # role -> TensorType
    onnx_nodes: list = field(default_factory=list)
    module: str = ""     # the torch module path the op was exported from ("block.fc1"), when known

    @property
    def fan_in(self) -> int | None:
        if self.weight is None:
            return None
        return int(np.prod(self.weight.shape[1:]))

    def __repr__(self):
        return f"Op({self.name!r}, {self.kind}, {self.inputs} -> {self.outputs}, out_shape={self.out_shape})"


@dataclass
class Graph:
    """Ops in execution order; ``inputs`` / ``outputs`` are the graph's ONNX tensor names."""

    ops: list
    inputs: list
    outputs: list
    input_shapes: dict
    name: str = "model"

    def __iter__(self):
        return iter(self.ops)

    def __len__(self):
        return len(self.ops)

    def __getitem__(self, name) -> Op:
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(f"no op named {name!r}; ops: {[o.name for o in self.ops]}")

    def producer(self, tensor: str) -> Op | None:
        for op in self.ops:
            if tensor in op.outputs:
                return op
        return None

    def consumers(self, tensor: str) -> list:
        """The ops that read ``tensor``, in execution order."""
        return [op for op in self.ops if tensor in op.inputs]

    def tensor_type(self, tensor: str) -> TensorType | None:
        for op in self.ops:
            if tensor in op.outputs:
                return op.types.get("output")
        return None

    def summary(self) -> str:
        lines = []
        for op in self.ops:
            t = op.types.get("output")
            lines.append(f"{op.name:24s} {op.kind:15s} {str(op.out_shape):18s} "
                         f"{t.describe() if isinstance(t, TensorType) else ''}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- loading

def load_model(model):
    """A qonnx ModelWrapper from a path, ModelWrapper or onnx.ModelProto, shapes inferred."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    if isinstance(model, ModelWrapper):
        mw = ModelWrapper(onnx.ModelProto.FromString(model.model.SerializeToString()))
    elif isinstance(model, onnx.ModelProto):
        mw = ModelWrapper(onnx.ModelProto.FromString(model.SerializeToString()))
    else:
        mw = ModelWrapper(str(model))
    _constants_to_initializers(mw)
    return mw.transform(InferShapes())


def _constants_to_initializers(mw) -> None:
    from onnx import numpy_helper
    for node in list(mw.graph.node):
        if node.op_type == "Constant":
            attr = {a.name: a for a in node.attribute}
            if "value" not in attr:
                raise UnsupportedGraphError(f"Constant node {node.name!r} without a tensor 'value' is not supported")
            mw.set_initializer(node.output[0], numpy_helper.to_array(attr["value"].t))
            mw.graph.node.remove(node)


def _attrs(node) -> dict:
    from onnx import helper
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _c_name(text: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", text).strip("_")
    s = re.sub(r"__+", "_", s)
    return s


_NOISE = {"export_handler", "act_quant", "activation_impl", "weight_quant", "input_quant",
          "output_quant", "bias_quant", "trunc_quant", "act_impl"}


def _op_name(kind: str, mod: str) -> str:
    """IR op name: the kind plus the module path (a dynamo name like 'linear_1' is kept as is)."""
    if not mod:
        return kind
    if mod == kind or mod.startswith(kind + "_"):
        return mod
    return f"{kind}_{mod}"


def _module_path(node_name: str) -> str:
    return _c_name(_torch_path(node_name).replace(".", "_"))


def _torch_path(node_name: str) -> str:
    """The torch module path in an exported node's name ("/block/fc1/Gemm" -> "block.fc1")."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) > 1:
        parts = parts[:-1]  # last part is the ONNX op (e.g. Gemm, Quant_1)
    else:
        parts = [re.sub(r"^node_", "", parts[0])] if parts else []
    return ".".join(p for p in parts if p not in _NOISE)


# ----------------------------------------------------------------------------- quantizers

def _scalar(mw, name, what, node) -> float:
    v = mw.get_initializer(name)
    if v is None:
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: {what} ({name!r}) must be a constant")
    v = np.asarray(v)
    if v.size != 1:
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: {what} must be a scalar, got shape {v.shape}")
    return float(v.ravel()[0])


def _flat_scale(scale: np.ndarray, node) -> np.ndarray:
    """Broadcast-layout scale -> () or (C,) for the TensorType."""
    s = np.asarray(scale, dtype=np.float32)
    if s.size == 1:
        return s.reshape(())
    nontrivial = [d for d in s.shape if d != 1]
    if len(nontrivial) != 1:
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: scale of shape {s.shape} is neither "
                                    "per-tensor nor per-channel")
    return s.reshape(-1)


def _check_scale(scale, node):
    s = np.asarray(scale, dtype=np.float64)
    if np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: scale must be finite and > 0")


def _minifloat_from_floatquant(node, mw) -> tuple[Minifloat, bool, str]:
    """fpq Minifloat of a QONNX FloatQuant node, plus whether qonnx's executor agrees."""
    a = _attrs(node)
    e = _scalar(mw, node.input[2], "exponent_bitwidth", node)
    m = _scalar(mw, node.input[3], "mantissa_bitwidth", node)
    b = _scalar(mw, node.input[4], "exponent_bias", node)
    max_val = _scalar(mw, node.input[5], "max_val", node)
    for v, what in ((e, "exponent_bitwidth"), (m, "mantissa_bitwidth"), (b, "exponent_bias")):
        if v != int(v):
            raise UnsupportedGraphError(f"FloatQuant node {node.name!r}: {what} {v} is not an integer")
    e, m, b = int(e), int(m), int(b)
    rounding = str(a.get("rounding_mode", "ROUND")).upper()
    if rounding not in ("ROUND", "HALF_EVEN"):
        raise UnsupportedGraphError(f"FloatQuant node {node.name!r}: rounding_mode {rounding} is not supported "
                                    "(fpq minifloats round to nearest, ties to even: ROUND)")
    has_inf, has_nan = bool(a.get("has_inf", 0)), bool(a.get("has_nan", 0))
    sub, sat = bool(a.get("has_subnormal", 1)), bool(a.get("saturation", 1))
    if has_inf:
        cands = ["ieee"]
    elif has_nan:
        cands = ["fn", "fnuz"]
    else:
        cands = ["none"]
    tried = []
    for sp in cands:
        try:
            f = Minifloat(e, m, b, True, sub, sp, sat if sp != "none" else True)
        except ValueError as err:
            tried.append(f"{sp}: {err}")
            continue
        if f.max_value == max_val:
            notes = []
            if not sub:
                notes.append("qonnx's float_quant ignores has_subnormal=0 (it always keeps subnormals)")
            if not sat and sp != "none":
                notes.append("qonnx's float_quant maps out-of-range values differently without saturation")
            return f, not notes, "; ".join(notes)
        tried.append(f"{sp}: max {f.max_value}")
    raise UnsupportedGraphError(
        f"FloatQuant node {node.name!r}: e{e}m{m} bias {b} has_inf={int(has_inf)} has_nan={int(has_nan)} with "
        f"max_val={max_val} matches no fpq minifloat ({'; '.join(tried)}). A max_val below the format's "
        "largest value is not supported; put the range in the scale instead.")


def _int_from_quant(node, mw) -> tuple[Format, bool, str]:
    a = _attrs(node)
    zp = mw.get_initializer(node.input[2])
    if zp is None or np.any(np.asarray(zp) != 0):
        raise UnsupportedGraphError(f"Quant node {node.name!r}: zero-point must be a constant 0 "
                                    f"(got {None if zp is None else np.asarray(zp).ravel()[:4]}); "
                                    "fpq supports symmetric quantizers only")
    bits = _scalar(mw, node.input[3], "bitwidth", node)
    if bits != int(bits) or bits < 1:
        raise UnsupportedGraphError(f"Quant node {node.name!r}: bitwidth {bits} is not a positive integer")
    bits = int(bits)
    signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
    rounding = str(a.get("rounding_mode", "ROUND")).upper()
    if bits == 1 and signed:
        return Binary(), True, ""  # qonnx's int_quant maps signed 1-bit to bipolar
    if rounding not in QONNX_ROUNDING:
        raise UnsupportedGraphError(f"Quant node {node.name!r}: rounding_mode {rounding} has no ap_fixed "
                                    f"equivalent; supported: {', '.join(QONNX_ROUNDING)}")
    if narrow and not signed:
        raise UnsupportedGraphError(f"Quant node {node.name!r}: unsigned narrow range (max 2^b-2) is not supported")
    if QONNX_ROUNDING[rounding] == "RND_CONV":
        return Int(bits, signed, narrow), True, ""
    # integer codes with another rounding: a Fixed with step 1 (the scale stays outside); qonnx
    # clips to the integer range before rounding, the same as after for integer bounds, and its
    # narrow range +-(2^(b-1) - 1) is ap_fixed's SAT_SYM
    return Fixed(bits, bits, signed, QONNX_ROUNDING[rounding], "SAT_SYM" if narrow else "SAT"), True, ""


def quantizer_of(node, mw) -> Quantizer:
    """The fpq Quantizer of a QONNX Quant / FloatQuant / BipolarQuant / Trunc node (a Quant node
    after a half-step node: the Fixed RND / RND_MIN_INF the pair computes)."""
    op = node.op_type
    if is_half_step(node):
        raise UnsupportedGraphError(f"{op} node {node.name!r} is a half-step node ({FPQ_ROLE_ATTR}={HALF_STEP_ROLE}): "
                                    "it is read only together with the Quant node it feeds")
    scale = mw.get_initializer(node.input[1])
    if scale is None:
        raise UnsupportedGraphError(f"{op} node {node.name!r}: the scale ({node.input[1]!r}) must be a constant")
    scale = np.asarray(scale, dtype=np.float32)
    _check_scale(scale, node)
    if op in ("Quant", "IntQuant"):
        half = mw.find_producer(node.input[0])
        half = half if half is not None and is_half_step(half) else None
        declared = _attrs(node).get(FPQ_FORMAT_ATTR)
        declared = parse_format(declared) if declared is not None else None
        if half is not None:
            return _fixed_two_node(node, half, mw, declared)
        if has_two_node_form(declared) and \
                str(_attrs(node).get("rounding_mode", "ROUND")).upper() == TWO_NODE_ROUNDING[declared.rounding][1]:
            raise UnsupportedGraphError(
                f"Quant node {node.name!r}: fpq_format {declared} with rounding_mode "
                f"{TWO_NODE_ROUNDING[declared.rounding][1]} is the second node of a two-node form, but no half-step "
                f"node ({FPQ_ROLE_ATTR}={HALF_STEP_ROLE}) feeds it")
    pre = None
    if op in ("Quant", "IntQuant"):
        fmt, exact, note = _int_from_quant(node, mw)
    elif op == "FloatQuant":
        fmt, exact, note = _minifloat_from_floatquant(node, mw)
    elif op == "BipolarQuant":
        fmt, exact, note = Binary(), True, ""
    elif op == "Trunc":
        fmt, pre, scale, exact, note = _trunc(node, mw, scale)
    else:  # pragma: no cover - guarded by callers
        raise UnsupportedGraphError(f"{op} is not a quantizer")
    a = _attrs(node)
    if FPQ_FORMAT_ATTR in a:
        declared = parse_format(a[FPQ_FORMAT_ATTR])
        if isinstance(declared, Fixed) and op in ("Quant", "IntQuant"):
            return _fixed_over_quant(node, declared, fmt, scale)
        if declared != fmt:
            why = _contradiction(declared, fmt)
            if why:
                raise UnsupportedGraphError(
                    f"{op} node {node.name!r}: fpq_format {declared} contradicts the node's QONNX attributes "
                    f"({fmt}): {why}; refusing an ambiguous file")
            exact = False
            note = (note + "; " if note else "") + (f"fpq_format {declared} refines the QONNX attributes ({fmt}): "
                                                   "qonnx's executor computes the latter")
        fmt = declared
    return Quantizer(TensorType(fmt, _flat_scale(scale, node)), scale, node.name, op, exact, note, pre)


def _fixed_over_quant(node, fixed: Fixed, qfmt: Format, scale: np.ndarray) -> Quantizer:
    """A Fixed written as Quant(bitwidth=W, scale=2^-frac): the IR keeps the Fixed at scale 1."""
    want = np.float32(2.0 ** -fixed.frac_bits)
    if scale.size != 1 or scale.reshape(()) != want or qfmt.width != fixed.width or qfmt.signed != fixed.signed:
        raise UnsupportedGraphError(
            f"Quant node {node.name!r}: fpq_format {fixed} needs bitwidth {fixed.width}, signed={fixed.signed} "
            f"and scale 2^-{fixed.frac_bits}; the node has {qfmt} with scale {scale.ravel()[:2]}")
    a = _attrs(node)
    rounding = QONNX_ROUNDING.get(str(a.get("rounding_mode", "ROUND")).upper())
    narrow = bool(a.get("narrow", 0))
    same = rounding == fixed.rounding and ((fixed.overflow == "SAT" and not narrow) or
                                           (fixed.overflow == "SAT_SYM" and narrow and fixed.signed))
    # A format QONNX can write on one node (AnnotateFormats writes exactly that) must be what the node
    # says; one it cannot write keeps Brevitas' ROUND / narrow=0 (or its own rounding). Anything else
    # flips rounding or range between the node (qonnx) and the attribute (emulator, HLS): refused.
    sym = fixed.overflow == "SAT_SYM" and fixed.signed and fixed.width >= 2
    one_node = fixed.rounding in ROUNDING_TO_QONNX and (fixed.overflow == "SAT" or sym)
    bad = []
    if (one_node and rounding != fixed.rounding) or (not one_node and rounding not in ("RND_CONV", fixed.rounding)):
        bad.append(f"rounding_mode {a.get('rounding_mode', 'ROUND')} is not {fixed.rounding}")
    if (one_node and narrow != sym) or (not one_node and narrow and not sym):
        bad.append(f"narrow={int(narrow)} does not match overflow {fixed.overflow}")
    if bad:
        raise UnsupportedGraphError(f"Quant node {node.name!r}: fpq_format {fixed} contradicts the node's QONNX "
                                    f"attributes ({'; '.join(bad)}); refusing an ambiguous file")
    note = "" if same else (f"{fixed} has no exact QONNX Quant form (rounding {fixed.rounding}, overflow "
                            f"{fixed.overflow}): qonnx's executor computes {qfmt} x 2^-{fixed.frac_bits}")
    one = np.ones_like(scale)
    return Quantizer(TensorType(fixed, _flat_scale(one, node)), one, node.name, node.op_type, same, note)


def has_two_node_form(fmt) -> bool:
    """Whether ``fmt`` is a Fixed the export writes exactly as a half-step node + its Quant node
    (RND / RND_MIN_INF with SAT / SAT_SYM; see TWO_NODE_ROUNDING)."""
    return isinstance(fmt, Fixed) and fmt.rounding in TWO_NODE_ROUNDING and fmt.overflow in ("SAT", "SAT_SYM") \
        and (fmt.width >= 2 or not fmt.signed) and fmt.width + 1 <= 24  # signed 1 bit: qonnx makes it bipolar


def is_half_step(node) -> bool:
    return node.op_type in ("Quant", "IntQuant") and _attrs(node).get(FPQ_ROLE_ATTR) == HALF_STEP_ROLE


def two_node_settings(fixed: Fixed) -> tuple[dict, dict]:
    """(half-step node, format's node) settings of a Fixed with ``has_two_node_form``."""
    first, second = TWO_NODE_ROUNDING[fixed.rounding]
    half = {"bitwidth": fixed.width + 1, "signed": int(fixed.signed), "narrow": 0, "rounding_mode": first,
            "scale": 2.0 ** -(fixed.frac_bits + 1)}
    main = {"bitwidth": fixed.width, "signed": int(fixed.signed),
            "narrow": int(fixed.overflow == "SAT_SYM" and fixed.signed), "rounding_mode": second,
            "scale": 2.0 ** -fixed.frac_bits}
    return half, main


def half_step_partner(half, mw):
    """The Quant node a half-step node feeds (its only consumer); an error naming the node otherwise."""
    consumers = mw.find_consumers(half.output[0])
    if len(consumers) != 1 or half.output[0] in [o.name for o in mw.graph.output] or \
            consumers[0].op_type not in ("Quant", "IntQuant") or consumers[0].input[0] != half.output[0] or \
            is_half_step(consumers[0]):
        raise UnsupportedGraphError(
            f"half-step node {half.name!r} ({FPQ_ROLE_ATTR}={HALF_STEP_ROLE}) must feed exactly one Quant node "
            f"(the second node of a Fixed RND / RND_MIN_INF), got consumers {[c.name for c in consumers]}")
    return consumers[0]


def _quant_settings(node, mw) -> dict:
    a = _attrs(node)
    zp = mw.get_initializer(node.input[2])
    if zp is None or np.any(np.asarray(zp) != 0):
        raise UnsupportedGraphError(f"Quant node {node.name!r}: zero-point must be a constant 0")
    return {"bitwidth": _scalar(mw, node.input[3], "bitwidth", node), "signed": int(a.get("signed", 1)),
            "narrow": int(a.get("narrow", 0)), "rounding_mode": str(a.get("rounding_mode", "ROUND")).upper(),
            "scale": _scalar(mw, node.input[1], "scale", node)}


def _fixed_two_node(node, half, mw, fixed) -> Quantizer:
    """The Fixed RND / RND_MIN_INF that a half-step node + Quant node compute (qonnx-exact): the IR
    holds one quantizer, exactly as for any other Fixed written as one Quant node."""
    if not has_two_node_form(fixed):
        raise UnsupportedGraphError(
            f"half-step node {half.name!r} feeds Quant node {node.name!r} whose fpq_format is {fixed}; a half-step "
            "node belongs before a Fixed with RND or RND_MIN_INF rounding, SAT or SAT_SYM overflow, "
            "at most 23 bits (2 or more when signed)")
    half_step_partner(half, mw)
    for n, want, what in zip((half, node), two_node_settings(fixed), ("half-step node", "second node")):
        got = _quant_settings(n, mw)
        bad = [f"{k}={got[k]} (expected {v})" for k, v in want.items() if got[k] != v]
        if bad:
            raise UnsupportedGraphError(f"half-step node {half.name!r} and Quant node {node.name!r} do not compute "
                                        f"{fixed}: the {what} has {', '.join(bad)}")
    one = np.ones((), dtype=np.float32)
    return Quantizer(TensorType(fixed, _flat_scale(one, node)), one, node.name, node.op_type, True, "")


def _contradiction(declared: Format, qonnx_fmt: Format) -> str:
    """Why an ``fpq_format`` attribute contradicts the format its node's QONNX attributes give
    ("" when it only refines them). Widths, signedness, narrowness, rounding and overflow must
    agree: the emulator and HLS follow the attribute, qonnx's executor the node, so a flip would
    make two "exact" paths compute different functions. A refinement is only what QONNX cannot
    write: an unsigned minifloat (FloatQuant is always signed), one without subnormals (qonnx
    ignores has_subnormal), a Fixed's binary point (the scale carries it)."""
    d, q = declared, qonnx_fmt
    if type(d) is not type(q):
        return f"a {d.kind} format over a node computing {q.kind}"
    if isinstance(d, Minifloat):
        diff = [what for what, a, b in (("exponent bits", d.exp_bits, q.exp_bits), ("mantissa bits", d.man_bits, q.man_bits),
                                        ("exponent bias", d.bias, q.bias), ("inf / NaN encoding", d.specials, q.specials),
                                        ("saturation (overflow)", d.saturate, q.saturate)) if a != b]
        if d.subnormals and not q.subnormals:
            diff.append("subnormals (the node has none)")
        if d.signed and not q.signed:  # pragma: no cover - FloatQuant is always signed
            diff.append("signedness")
        return ", ".join(diff) + " differ" if diff else ""
    if isinstance(d, Int):
        diff = [what for what, a, b in (("width", d.bits, q.bits), ("signedness", d.signed, q.signed),
                                        ("narrowness", d.narrow, q.narrow)) if a != b]
        return ", ".join(diff) + " differ" if diff else ""
    if isinstance(d, Fixed):
        diff = [what for what, a, b in (("width", d.width, q.width), ("signedness", d.signed, q.signed),
                                        ("rounding", d.rounding, q.rounding), ("overflow", d.overflow, q.overflow))
                if a != b]
        return ", ".join(diff) + " differ" if diff else ""
    return ""


def _trunc(node, mw, scale):
    a = _attrs(node)
    zp = mw.get_initializer(node.input[2])
    if zp is None or np.any(np.asarray(zp) != 0):
        raise UnsupportedGraphError(f"Trunc node {node.name!r}: zero-point must be a constant 0")
    rounding = str(a.get("rounding_mode", "FLOOR")).upper()
    if rounding not in QONNX_ROUNDING:
        raise UnsupportedGraphError(f"Trunc node {node.name!r}: rounding_mode {rounding} is not supported; "
                                    f"supported: {', '.join(QONNX_ROUNDING)}")
    if len(node.input) >= 6:  # Trunc v2: output_scale, output_bit_width
        out_scale = np.asarray(mw.get_initializer(node.input[4]), dtype=np.float32)
        out_bits = _scalar(mw, node.input[5], "output_bit_width", node)
        signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
        if narrow:
            raise UnsupportedGraphError(f"Trunc node {node.name!r}: narrow range is not supported")
        ratio = out_scale.astype(np.float64) / scale.astype(np.float64)
        if po2_exponents(ratio) is None:
            raise UnsupportedGraphError(f"Trunc node {node.name!r}: output_scale / scale must be a power of two")
    else:  # Trunc v1: drop (input_bw - output_bw) low bits, no clamp (the input width bounds it)
        in_bits = _scalar(mw, node.input[3], "input_bit_width", node)
        out_bits = _scalar(mw, node.input[4], "output_bit_width", node)
        out_scale = (scale.astype(np.float64) * 2.0 ** (in_bits - out_bits)).astype(np.float32)
        signed = True
    fmt = Fixed(int(out_bits), int(out_bits), signed, QONNX_ROUNDING[rounding], "SAT")
    return fmt, scale, out_scale, True, ""


# ----------------------------------------------------------------------------- reader

class _Reader:
    def __init__(self, mw):
        self.mw = mw
        g = mw.graph
        self.inits = {i.name for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.const_cache = {}
        self.names = set()
        self.alias = {}       # tensor -> tensor it is an identity of
        self.fused = set()    # ONNX node names already folded into an op
        self.half_of = {}     # output of a half-step node -> its name

    # -- constants (weights / biases through their quantizers)
    def is_const(self, t: str) -> bool:
        if t in self.inits:
            return True
        n = self.producer.get(t)
        if n is None:
            return False
        if n.op_type in CONST_OPS or n.op_type in QUANT_OPS:
            return all(self.is_const(i) for i in n.input if i)
        return False

    def const(self, t: str):
        """(float32 value, Quantizer or None) of a constant tensor, with its quantizer."""
        if t in self.const_cache:
            return self.const_cache[t]
        if t in self.inits:
            res = (np.asarray(self.mw.get_initializer(t)), None)
        else:
            n = self.producer[t]
            self.fused.add(n.name)
            x, q = self.const(n.input[0])
            a = _attrs(n)
            if is_half_step(n):
                half_step_partner(n, self.mw)  # its partner's quantizer computes both nodes
            elif n.op_type in QUANT_OPS:
                q = quantizer_of(n, self.mw)
                x = q(np.asarray(x, dtype=np.float32))
            elif n.op_type == "Transpose":
                perm = a.get("perm")
                if q is not None and q.scale.size > 1:
                    q = _requant_layout(q, np.transpose(np.broadcast_to(q.scale, np.shape(x)), perm))
                x = np.transpose(x, perm)
            elif n.op_type == "Reshape":
                shape = self.const(n.input[1])[0].astype(np.int64)
                new_shape = _onnx_reshape(np.shape(x), shape)
                if q is not None and q.scale.size > 1:
                    # the scale moves with the values (a BatchNorm's per-channel s viewed as (1, C, 1, 1))
                    q = _requant_layout(q, np.reshape(np.broadcast_to(q.scale, np.shape(x)), new_shape))
                x = np.reshape(x, new_shape)
            elif n.op_type in ("Flatten", "Unsqueeze", "Squeeze") and q is not None and q.scale.size > 1:
                raise UnsupportedGraphError(f"{n.op_type} node {n.name!r} of a per-channel quantized constant "
                                            "is not supported")
            elif n.op_type == "Flatten":
                ax = a.get("axis", 1)
                x = np.reshape(x, (int(np.prod(np.shape(x)[:ax])), -1))
            elif n.op_type == "Unsqueeze":
                axes = a.get("axes") if "axes" in a else self.const(n.input[1])[0].tolist()
                x = np.expand_dims(x, tuple(axes))
            elif n.op_type == "Squeeze":
                axes = a.get("axes") if "axes" in a else (self.const(n.input[1])[0].tolist() if len(n.input) > 1 else None)
                x = np.squeeze(x, tuple(axes) if axes is not None else None)
            elif n.op_type == "Cast":
                x = np.asarray(x).astype(_onnx_np_dtype(a["to"]))
            res = (x, q)
        self.const_cache[t] = res
        return res

    def unique(self, base: str) -> str:
        base = base if base and not base[0].isdigit() else f"op_{base}"
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def shape(self, t):
        s = self.mw.get_tensor_shape(t)
        return tuple(int(d) for d in s) if s is not None else None

    def single_consumer(self, t, op_type=None):
        cs = self.consumers.get(t, [])
        if len(cs) == 1 and (op_type is None or cs[0].op_type == op_type) and \
                t not in [o.name for o in self.mw.graph.output]:
            return cs[0]
        return None

    def resolve(self, t):
        while t in self.alias:
            t = self.alias[t]
        return t


def _requant_layout(q: Quantizer, new_scale) -> Quantizer:
    new = np.asarray(new_scale, dtype=np.float32)
    # keep only the axis that varies (broadcast layout)
    keep = tuple(1 if np.all(new.std(axis=i, keepdims=True) == 0) else d for i, d in enumerate(new.shape))
    idx = tuple(slice(None) if k != 1 else slice(0, 1) for k in keep)
    return Quantizer(q.ttype, np.ascontiguousarray(new[idx]), q.node, q.op_type, q.qonnx_exact, q.note, q.pre_scale)


def _onnx_reshape(in_shape, shape):
    out = [int(in_shape[i]) if int(s) == 0 else int(s) for i, s in enumerate(shape)]
    return tuple(out)


def _onnx_np_dtype(to: int):
    from onnx import helper
    return helper.tensor_dtype_to_np_dtype(to)


def read_graph(model) -> Graph:
    """Read a QONNX model (path, ModelWrapper or ModelProto) into fpq's graph IR."""
    mw = load_model(model)
    r = _Reader(mw)
    g = mw.graph
    graph_inputs = [i.name for i in g.input if i.name not in r.inits]
    ops: list[Op] = []
    types: dict = {}     # tensor -> TensorType

    def tt(t):
        return types.get(r.resolve(t))

    nodes = list(g.node)
    for node in nodes:
        if node.name in r.fused:
            continue
        if all(r.is_const(o) for o in node.output) and node.op_type in CONST_OPS + QUANT_OPS:
            continue  # a weight / bias path, folded where it is used
        op_type = node.op_type
        if node.domain not in QONNX_DOMAINS or (op_type not in SUPPORTED_OPS and op_type != "IntQuant"):
            raise UnsupportedGraphError(
                f"unsupported node {node.name!r} (op_type {op_type}, domain {node.domain or 'ai.onnx'}); "
                f"fpq supports: {', '.join(SUPPORTED_OPS)}")
        a = _attrs(node)
        ins = [r.resolve(i) for i in node.input if i]
        x = ins[0] if ins else None
        mod = _module_path(node.name)
        op = None
        if op_type in ("Identity", "Dropout"):
            r.alias[node.output[0]] = x
            continue
        if op_type == "Cast":
            # fpq layers widen to float64 in eval mode: exact for quantized values; a narrowing
            # cast would round and is refused
            if a.get("to") not in (1, 11) or (a.get("to") == 1 and tt(x) is None):
                raise UnsupportedGraphError(f"Cast node {node.name!r} (to={a.get('to')}) is not supported: only "
                                            "casts between float32 and float64 of quantized tensors are")
            r.alias[node.output[0]] = x
            continue
        if is_half_step(node):
            # the half-step node is part of the Quant node after it (one quantizer in the IR)
            half_step_partner(node, mw)
            r.alias[node.output[0]] = x
            r.half_of[node.output[0]] = node.name
            continue
        if op_type in QUANT_OPS or op_type == "IntQuant":
            q = quantizer_of(node, mw)
            kind = "input_quant" if x in graph_inputs else "quant"
            half = r.half_of.get(node.input[0])
            op = Op(r.unique(_op_name(kind, mod)), kind, [x], [node.output[0]], quant=q,
                    onnx_nodes=([half] if half else []) + [node.name])
            op.types = {"output": q.ttype}
            if tt(x) is not None:
                op.types["input"] = tt(x)
        elif op_type == "Div" and r.is_const(ins[1]):
            op = _fuse_div_quant_mul(r, node, ins, mod, x in graph_inputs) or \
                Op(r.unique(_op_name("div", mod)), "div", [x], [node.output[0]],
                   attrs={"value": np.asarray(r.const(ins[1])[0], dtype=np.float32)}, onnx_nodes=[node.name])
        elif op_type in ("MatMul", "Gemm", "Conv"):
            op = _weighted(r, node, a, ins, mod)
        elif op_type == "Add":
            if len(ins) == 2 and not r.is_const(ins[0]) and not r.is_const(ins[1]):
                op = Op(r.unique(_op_name("add", mod)), "add", ins, [node.output[0]], onnx_nodes=[node.name])
                t0, t1 = tt(ins[0]), tt(ins[1])
                st = _add_type(t0, t1)
                if st is not None:
                    op.types["output"] = st
            else:
                raise UnsupportedGraphError(
                    f"Add node {node.name!r} adds a constant that is not the bias of a MatMul/Gemm/Conv "
                    "directly before it; fpq supports bias adds and adds of two activations")
        elif op_type == "Mul":
            c = next((i for i in ins if r.is_const(i)), None)
            if c is None:
                raise UnsupportedGraphError(f"Mul node {node.name!r} of two activations is not supported")
            xin = ins[1] if c == ins[0] else ins[0]
            if r.const(c)[1] is not None:   # a quantized constant: an element-wise BatchNorm
                op = _batchnorm(r, node, xin, c, mod)
            else:
                op = Op(r.unique(_op_name("mul", mod)), "mul", [xin], [node.output[0]],
                        attrs={"value": np.asarray(r.const(c)[0], dtype=np.float32)}, onnx_nodes=[node.name])
        elif op_type in ("Unsqueeze", "Squeeze"):
            # a pure relabelling of dimensions: a reshape to the inferred output shape
            op = Op(r.unique(_op_name("reshape", mod)), "reshape", [x], [node.output[0]], onnx_nodes=[node.name])
            out_shape = r.shape(node.output[0])
            if out_shape is None:
                raise UnsupportedGraphError(f"{op_type} node {node.name!r}: output shape unknown")
            op.attrs = {"shape": tuple(out_shape)}
        elif op_type == "ReduceSum":
            op = _fuse_global_avgpool(r, node, a, ins, mod)
        elif op_type in SIMPLE_KINDS:
            kind = SIMPLE_KINDS[op_type]
            op = Op(r.unique(_op_name(kind, mod)), kind, [x], [node.output[0]], onnx_nodes=[node.name])
            op.attrs = _simple_attrs(r, node, kind, a, ins)
        else:
            raise UnsupportedGraphError(
                f"unsupported node {node.name!r} (op_type {op_type}) in this position; fpq supports: "
                f"{', '.join(SUPPORTED_OPS)}")
        op.in_shapes = [r.shape(i) for i in op.inputs]
        op.out_shape = r.shape(op.outputs[0])
        if tt(op.inputs[0]) is not None and "input" not in op.types:
            op.types["input"] = tt(op.inputs[0])
        if op.kind in ("linear", "conv1d", "conv2d"):
            _read_wrap(r, op)   # needs the input type
        if op.kind in TYPE_PRESERVING and "input" in op.types:
            op.types["output"] = op.types["input"]
        if "output" in op.types:
            types[op.outputs[0]] = op.types["output"]
        op.module = _torch_path(node.name)
        ops.append(op)

    # Brevitas exports of a QuantTensor also output its scale / zero-point / bit width: constants,
    # not network outputs
    outputs = [o.name for o in g.output if not r.is_const(o.name)
               and (o.name in r.producer or o.name in graph_inputs)]
    if not outputs:
        raise UnsupportedGraphError("the graph has no dynamic output")
    for o in outputs:
        src = r.resolve(o)
        op = Op(r.unique(f"output_{_c_name(o)}" if len(outputs) > 1 else "output"), "output", [src], [o],
                in_shapes=[r.shape(src)], out_shape=r.shape(o))
        if tt(src) is not None:
            op.types = {"input": tt(src), "output": tt(src)}
        ops.append(op)
    if not graph_inputs:
        raise UnsupportedGraphError("the graph has no dynamic input")
    return Graph(ops, graph_inputs, outputs, {i: r.shape(i) for i in graph_inputs}, g.name or "model")


def _fuse_global_avgpool(r: _Reader, node, a, ins, mod) -> Op:
    """ReduceSum over every spatial axis (keepdims) + Div by their size: a global average."""
    shape = r.shape(ins[0])
    axes = a.get("axes")
    if axes is None and len(ins) > 1:
        axes = r.const(ins[1])[0].tolist()
    axes = sorted(int(ax) % len(shape) for ax in (axes or []))
    div = r.single_consumer(node.output[0], "Div")
    n = int(np.prod(shape[2:])) if shape else 0
    if axes == list(range(2, len(shape))) and a.get("keepdims", 1) and div is not None and \
            div.input[0] == node.output[0] and r.is_const(div.input[1]) and \
            float(np.asarray(r.const(div.input[1])[0])) == n:
        r.fused.add(div.name)
        return Op(r.unique(_op_name("global_avgpool", mod)), "global_avgpool", [ins[0]], [div.output[0]],
                  onnx_nodes=[node.name, div.name])
    raise UnsupportedGraphError(f"ReduceSum node {node.name!r}: only a sum over all spatial axes (keepdims) divided "
                                "by their size (a global average pool) is supported")


def _add_type(t0, t1):
    if not (isinstance(t0, TensorType) and isinstance(t1, TensorType) and t0.po2 and t1.po2):
        return None
    try:
        u = fixed_union([t0.carrier(), t1.carrier()])
    except ValueError:
        return None
    s = sum_type(u, 2)
    return TensorType(Fixed(s.width, s.int_bits, s.signed), 1.0)


def _fuse_div_quant_mul(r: _Reader, div, ins, mod, on_input: bool):
    """Div(x, s) -> Quant(scale 1) -> Mul(s): one quant op of scale s (exactly the same function)."""
    q_node = r.single_consumer(div.output[0])
    if q_node is None or q_node.op_type not in QUANT_OPS or q_node.input[0] != div.output[0] or is_half_step(q_node):
        return None
    mul = r.single_consumer(q_node.output[0], "Mul")
    if mul is None:
        return None
    s = np.asarray(r.const(ins[1])[0], dtype=np.float32)
    other = [i for i in mul.input if i != q_node.output[0]]
    if len(other) != 1 or not r.is_const(other[0]) or not np.array_equal(np.asarray(r.const(other[0])[0]), s):
        return None
    inner = quantizer_of(q_node, r.mw)
    if not np.all(inner.scale == 1):
        return None
    q = Quantizer(TensorType(inner.format, _flat_scale(s, div)), s, q_node.name, q_node.op_type,
                  inner.qonnx_exact, inner.note)
    r.fused.update({q_node.name, mul.name})
    x = ins[0]
    kind = "input_quant" if on_input else "quant"
    op = Op(r.unique(_op_name(kind, mod)), kind, [x], [mul.output[0]], quant=q,
            onnx_nodes=[div.name, q_node.name, mul.name])
    op.types = {"output": q.ttype}
    return op


def _unquantized_bias_type(b: np.ndarray) -> TensorType | None:
    """The exact Fixed holding float32 bias values that no quantizer constrains (None: too wide)."""
    b = np.asarray(b, dtype=np.float64)
    nz = b[b != 0]
    if nz.size == 0:
        return TensorType(Fixed(1, 1, True), 1.0)
    _, e = np.frexp(nz)
    frac = 0
    for f in range(-int(e.max()) - 60, 200):
        if np.all(np.ldexp(nz, f) == np.rint(np.ldexp(nz, f))):
            frac = f
            break
    k = np.rint(np.ldexp(b, frac)).astype(np.float64)
    width = int(max(abs(k).max(), 1)).bit_length() + 1
    if width > 64:
        return None
    return TensorType(Fixed(width, width - frac, True), 1.0)


def _weighted(r: _Reader, node, a, ins, mod) -> Op:
    """MatMul / Gemm / Conv with a constant (quantized) weight, and its bias."""
    op_type = node.op_type
    if len(ins) < 2 or not r.is_const(ins[1]):
        raise UnsupportedGraphError(f"{op_type} node {node.name!r}: the weight must be a constant "
                                    "(optionally behind a Quant/FloatQuant/BipolarQuant); two dynamic operands "
                                    "are not supported")
    w, wq = r.const(ins[1])
    w = np.asarray(w, dtype=np.float32)
    bias, bq = None, None
    if op_type == "MatMul":
        if w.ndim != 2:
            raise UnsupportedGraphError(f"MatMul node {node.name!r}: weight of rank {w.ndim}; only 2-D is supported")
        weight, kind, attrs = w.T, "linear", {}
        if wq is not None and wq.scale.size > 1:
            wq = _requant_layout(wq, np.broadcast_to(wq.scale, w.shape).T)
    elif op_type == "Gemm":
        if a.get("transA", 0):
            raise UnsupportedGraphError(f"Gemm node {node.name!r}: transA=1 is not supported")
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise UnsupportedGraphError(f"Gemm node {node.name!r}: alpha/beta other than 1 are not supported")
        weight = w if a.get("transB", 0) else w.T
        if wq is not None and wq.scale.size > 1 and not a.get("transB", 0):
            wq = _requant_layout(wq, np.broadcast_to(wq.scale, w.shape).T)
        kind, attrs = "linear", {}
        if len(ins) > 2:
            if not r.is_const(ins[2]):
                raise UnsupportedGraphError(f"Gemm node {node.name!r}: the bias must be a constant")
            bias, bq = r.const(ins[2])
    else:  # Conv
        nd = w.ndim - 2
        if nd not in (1, 2):
            raise UnsupportedGraphError(f"Conv node {node.name!r}: {nd}-D convolution is not supported (1-D, 2-D)")
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise UnsupportedGraphError(f"Conv node {node.name!r}: auto_pad={a['auto_pad']} is not supported; "
                                        "export with explicit pads")
        weight, kind = w, f"conv{nd}d"
        attrs = {"kernel": tuple(w.shape[2:]), "strides": tuple(a.get("strides", [1] * nd)),
                 "pads": tuple(a.get("pads", [0] * 2 * nd)), "dilations": tuple(a.get("dilations", [1] * nd)),
                 "groups": int(a.get("group", 1))}
        if len(ins) > 2:
            if not r.is_const(ins[2]):
                raise UnsupportedGraphError(f"Conv node {node.name!r}: the bias must be a constant")
            bias, bq = r.const(ins[2])
    out_t = node.output[0]
    fused = [node.name]
    if bias is None:
        add = r.single_consumer(out_t, "Add")
        if add is not None:
            other = [i for i in add.input if i != out_t]
            if len(other) == 1 and r.is_const(other[0]):
                bias, bq = r.const(other[0])
                out_t = add.output[0]
                fused.append(add.name)
                r.fused.add(add.name)
    cout = weight.shape[0]
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float32)
        if bias.size not in (1, cout):
            raise UnsupportedGraphError(f"{op_type} node {node.name!r}: bias of shape {bias.shape} does not "
                                        f"match {cout} output channels")
        bias = np.broadcast_to(bias.reshape(-1), (cout,)).astype(np.float32)
    op = Op(r.unique(_op_name(kind, mod)), kind, [ins[0]], [out_t], attrs=attrs,
            weight=np.ascontiguousarray(weight, dtype=np.float32), bias=bias, weight_quant=wq, bias_quant=bq,
            onnx_nodes=fused)
    if wq is not None:
        op.types["weight"] = wq.ttype
    else:
        raise UnsupportedGraphError(f"{op_type} node {node.name!r}: the weight has no quantizer "
                                    "(Quant/FloatQuant/BipolarQuant); fpq needs quantized weights")
    if bias is not None:
        bt = bq.ttype if bq is not None else _unquantized_bias_type(bias)
        if bt is not None:
            op.types["bias"] = bt
    return op


def _read_wrap(r: _Reader, op: Op) -> None:
    """A narrow wrapping accumulator written after the sum as y - m * Floor((y + h) / m) (fpq's
    export of accumulator_bits): the ops become op.attrs["accumulator_bits"], the width that
    fpq.typeplan.narrow_accumulator gives this m on the exact accumulator's LSB."""
    y = op.outputs[0]
    cs = r.consumers.get(y, [])
    sub = next((n for n in cs if n.op_type == "Sub" and n.input[0] == y), None)
    if sub is None or len(cs) != 2:
        return
    first = next(n for n in cs if n is not sub)
    chain, h = [first], 0.0
    if first.op_type == "Add":
        c = [i for i in first.input if i != y]
        if len(c) != 1 or not r.is_const(c[0]):
            return
        h = float(np.asarray(r.const(c[0])[0]).ravel()[0])
        chain.append(r.single_consumer(first.output[0], "Div"))
    div = chain[-1]
    if div is None or div.op_type != "Div" or not r.is_const(div.input[1]):
        return
    m = float(np.asarray(r.const(div.input[1])[0]).ravel()[0])
    floor = r.single_consumer(div.output[0], "Floor")
    mul = floor and r.single_consumer(floor.output[0], "Mul")
    if mul is None or sub.input[1] != mul.output[0]:
        return
    mc = [i for i in mul.input if i != floor.output[0]]
    if len(mc) != 1 or not r.is_const(mc[0]) or float(np.asarray(r.const(mc[0])[0]).ravel()[0]) != m:
        return
    what = f"layer {op.name}: wrap of its sum (nodes {first.name!r}..{sub.name!r})"
    exact = LayerPlan(op.name, op.kind, dict(op.types), op.fan_in).derive().tensors.get("accumulator")
    m_exp = np.frexp(m)[1] - 1
    if not isinstance(exact, Fixed):
        raise UnsupportedGraphError(f"{what}: the sum has no exact fixed-point type (input and weight need "
                                    "power-of-two scales) to wrap")
    if m <= 0 or np.ldexp(1.0, m_exp) != m:
        raise UnsupportedGraphError(f"{what}: the modulus m={m} is not a power of two")
    bits = exact.width - (exact.int_bits - int(m_exp))
    if not 2 <= bits < exact.width or h != (m / 2 if exact.signed else 0.0):
        raise UnsupportedGraphError(f"{what}: m={m}, h={h} is not a wrap of the exact accumulator {exact} "
                                    "to fewer bits at its LSB")
    op.attrs["accumulator_bits"] = bits
    op.outputs = [sub.output[0]]
    op.onnx_nodes += [n.name for n in chain + [floor, mul, sub]]
    r.fused.update(op.onnx_nodes)


def _per_channel(node, value, q, x_shape, what: str):
    """A constant broadcast against x (N, C, ...) that varies at most along the channel axis 1:
    its (C,) values and its quantizer with the scale flattened to (C,) or ()."""
    v = np.asarray(value, dtype=np.float32)
    if x_shape is None or len(x_shape) < 2:
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: input shape unknown or without a "
                                    "channel axis")
    C = int(x_shape[1])
    if v.ndim > len(x_shape):
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: {what} of shape {v.shape} has more "
                                    f"dimensions than the input {x_shape}")
    full = (1,) * (len(x_shape) - v.ndim) + v.shape
    if full[0] != 1 or any(d != 1 for i, d in enumerate(full) if i != 1) or full[1] not in (1, C):
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: {what} of shape {v.shape} is not one value "
                                    f"per channel of the input {x_shape} (only a per-channel scale and shift, "
                                    "an element-wise BatchNorm, is supported)")
    vals = np.broadcast_to(v.reshape(-1), (C,)).astype(np.float32)
    if q is not None and q.scale.size > 1:
        qs = np.broadcast_to(np.asarray(q.scale, np.float32).reshape((1,) * (len(full) - q.scale.ndim) + q.scale.shape),
                             full)
        q = Quantizer(TensorType(q.format, np.ascontiguousarray(qs.reshape(-1))), np.ascontiguousarray(qs.reshape(-1)),
                      q.node, q.op_type, q.qonnx_exact, q.note, q.pre_scale)
    return np.ascontiguousarray(vals), q


def _batchnorm(r: _Reader, mul, x: str, c: str, mod) -> Op:
    """Mul(x, quantized per-channel constant s) [+ Add(constant t)]: one element-wise BatchNorm
    op y = x * s + t (``weight`` = s, ``bias`` = t, both (C,)), as fpq's FpqBatchNorm exports."""
    x_shape = r.shape(x)
    s, sq = _per_channel(mul, *r.const(c), x_shape, "the scale")
    out_t, fused = mul.output[0], [mul.name]
    t, tq = None, None
    add = r.single_consumer(out_t, "Add")
    if add is not None:
        other = [i for i in add.input if i != out_t]
        if len(other) == 1 and r.is_const(other[0]):
            t, tq = _per_channel(add, *r.const(other[0]), x_shape, "the shift")
            out_t = add.output[0]
            fused.append(add.name)
            r.fused.add(add.name)
    op = Op(r.unique(_op_name("batchnorm", mod)), "batchnorm", [x], [out_t], attrs={"channels": int(x_shape[1])},
            weight=s, bias=t, weight_quant=sq, bias_quant=tq, onnx_nodes=fused)
    op.types["weight"] = sq.ttype
    if t is not None:
        bt = tq.ttype if tq is not None else _unquantized_bias_type(t)
        if bt is not None:
            op.types["bias"] = bt
    return op


def _simple_attrs(r, node, kind, a, ins) -> dict:
    if kind in ("maxpool", "avgpool"):
        k = tuple(a["kernel_shape"])
        nd = len(k)
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: auto_pad={a['auto_pad']} is not supported")
        out = {"kernel": k, "strides": tuple(a.get("strides", [1] * nd)), "pads": tuple(a.get("pads", [0] * 2 * nd)),
               "ceil_mode": int(a.get("ceil_mode", 0)), "dilations": tuple(a.get("dilations", [1] * nd))}
        if kind == "avgpool":
            out["count_include_pad"] = int(a.get("count_include_pad", 0))
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedGraphError(f"MaxPool node {node.name!r}: the Indices output is not supported")
        return out
    if kind == "flatten":
        return {"axis": int(a.get("axis", 1))}
    if kind == "reshape":
        if not r.is_const(ins[1]):
            raise UnsupportedGraphError(f"Reshape node {node.name!r}: the shape must be a constant")
        shape = tuple(int(s) for s in r.const(ins[1])[0])
        if a.get("allowzero", 0) and 0 in shape:
            raise UnsupportedGraphError(f"Reshape node {node.name!r}: allowzero=1 with a 0 in the shape "
                                        "(an empty tensor) is not supported")
        return {"shape": shape}
    if kind == "transpose":
        return {"perm": tuple(a["perm"]) if "perm" in a else None}
    return {}


# ----------------------------------------------------------------------------- TypePlan

# ops whose requantizer the hardware folds into the op itself (fpq.hls casts the exact result into
# the quantizer's ap_fixed type; the cost model prices that rounding with the op)
REQUANT_FUSING = ("linear", "conv1d", "conv2d", "batchnorm")


def _cast_quantizer(q: Quantizer | None) -> bool:
    """A quantizer an ap_fixed cast computes: Fixed or (not narrow) Int at a power-of-two scale."""
    if q is None or q.pre_scale is not None or not q.ttype.po2:
        return False
    f = q.ttype.format
    return isinstance(f, Fixed) or (isinstance(f, Int) and not f.narrow)


def _module_of(op: Op) -> str:
    """The module path an op name was made from (``_op_name``): "conv2d_0" -> "0"."""
    return op.name[len(op.kind) + 1:] if op.name.startswith(op.kind + "_") else op.name


# every float path (torch's eval forward, both emulator backends) sums exactly up to WIDE_BITS bits
NOT_EXACT = f"float64 paths are exact only up to {WIDE_BITS}-bit sums: not guaranteed exact for this layer"


def _derive(lp: LayerPlan) -> None:
    """Product and accumulator of a layer; a note instead where no exact fixed type exists (e.g. a
    product wider than 128 bits) or the accumulator is wider than the float paths sum exactly."""
    try:
        lp.derive()
    except ValueError as e:
        if lp.attrs.get("accumulator_bits") is not None:
            raise    # a narrow accumulator the layer cannot take: the user must hear why
        lp.note = "; ".join(filter(None, [lp.note, f"no exact fixed-point product/accumulator ({e}); {NOT_EXACT}"]))
    acc = lp.tensors.get("accumulator")
    if isinstance(acc, Fixed) and acc.width > WIDE_BITS:
        lp.note = "; ".join(filter(None, [lp.note, f"accumulator needs {acc.width} bits; {NOT_EXACT}"]))


def typeplan_from_graph(graph: Graph) -> TypePlan:
    """One LayerPlan per IR op (weights, biases and every known TensorType), derived.

    A cast quantizer right after a linear / conv / batchnorm that reads nothing else becomes
    that layer's ``output`` (``attrs["requant"]`` names it) and its own layer says
    ``attrs["fused_into"]``: the circuit fpq.hls builds (one cast of the exact accumulator) and
    the one the cost model prices. ``attrs["module"]``: the torch module path of the op, so that
    ``plan["0"]`` finds the layer ``conv2d_0`` of a converted ``nn.Sequential``.
    """
    tp = TypePlan()
    for op in graph.ops:
        attrs = dict(op.attrs)
        attrs["in_shapes"] = op.in_shapes
        attrs["out_shape"] = op.out_shape
        attrs["module"] = op.module or _module_of(op)
        attrs["inputs"] = [src.name for src in map(graph.producer, op.inputs) if src is not None]
        values = {}
        if op.weight is not None:
            values["weight"] = op.weight
        if op.bias is not None:
            values["bias"] = op.bias
        tensors = {k: v for k, v in op.types.items()}
        if op.kind in ("linear", "conv1d", "conv2d", "batchnorm"):
            tensors.pop("output", None)  # the op's output is its accumulator (derived)
        lp = LayerPlan(op.name, op.kind, tensors, op.fan_in, values, attrs,
                       note="; ".join(q.note for q in (op.quant, op.weight_quant, op.bias_quant) if q and q.note))
        _derive(lp)
        tp.add(lp)
        if op.kind == "quant" and _cast_quantizer(op.quant) and len(op.inputs) == 1:
            src = graph.producer(op.inputs[0])
            if (src is not None and src.kind in REQUANT_FUSING and src.name in tp.layers
                    and len(graph.consumers(op.inputs[0])) == 1 and op.inputs[0] not in graph.outputs):
                tp[src.name].tensors["output"] = op.types["output"]
                tp[src.name].attrs["requant"] = op.name
                lp.attrs["fused_into"] = src.name
    return tp


def typeplan_from_qonnx(model) -> TypePlan:
    """The TypePlan of a QONNX file / ModelWrapper / ModelProto (or an already read Graph)."""
    graph = model if isinstance(model, Graph) else read_graph(model)
    return typeplan_from_graph(graph)


def accumulator_bits(op: Op) -> int | None:
    """Significant bits an exact accumulator of ``op`` needs (None when not derivable)."""
    lp = LayerPlan(op.name, op.kind, dict(op.types), op.fan_in).derive()
    acc = lp.tensors.get("accumulator")
    return acc.width if isinstance(acc, Fixed) else None


__all__ = ["Graph", "Op", "Quantizer", "UnsupportedGraphError", "read_graph", "typeplan_from_qonnx",
           "typeplan_from_graph", "load_model", "quantizer_of", "accumulator_bits", "KINDS", "SUPPORTED_OPS"]
