"""fpq's one graph IR: :class:`Graph` of :class:`Op` (kinds from the one table ``OPS``) and
:class:`Quantizer`. A converted torch model (through its QONNX export) and any QONNX file are read
into it by ``fpq.export.read_graph``; the TypePlan is built from it (``fpq.ir.plan``), and the
emulator, the HLS builder, the cost model and verify read it.

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
``clip``            min(max(x, min), max) (ONNX Clip: ReLU6, Hardtanh, clamp); attrs "min" / "max" are
                    float32 numbers or None (no bound); the bounds may lie off x's grid, so the
                    output's type is x's widened to hold them (a quantizer after it rounds them)
``table``           an activation as an exact table (Sigmoid, Tanh, SiLU, GELU, ELU, PReLU, ...; QONNX
                    ``FpqTable``, ``fpq.export.custom_op``): attrs "x" (float64, ascending: every value
                    the input's quantizer produces), "y" (float64 (N,), or (C, N) per channel on axis
                    1: the output already rounded by the quantizer after it), "function" (its name)
``softmax``         softmax over the last axis, ``layernorm`` LayerNorm over the last axis: exact integer
``layernorm``       pipelines (QONNX ``FpqSoftmax`` / ``FpqLayerNorm``); attrs "recipe" (a
                    ``fpq.numerics.normalization`` SoftmaxRecipe / LayerNormRecipe); types hold the
                    internal fixed types (exp, sum, reciprocal / sum, diff, variance, rsqrt, norm,
                    affine) and the output (ufixed<24,1> / fixed<24, I>, rounded by the quantizer after)
``gather``          y = weight[ids] (an embedding): weight (rows, d) a quantized table, ids the graph input
                    quantized to ufixed<b,b> (2**b <= rows); types input (ids), weight, output (= weight's)
``add``             x0 + x1 (both dynamic)
``matmul``          y = 2**alpha_exp * (x0 @ x1), both dynamic and quantized (attention's Q K^T, A V;
                    ``fpq.export.matmul``): attrs "alpha_exp", "fan_in" (K); types "input" (x0), "other"
                    (x1); the TypePlan derives "product" and the exact "accumulator" as for a linear
``mul`` / ``div``   x * c, x / c with a constant ``c`` (attrs["value"])
``add_const``       x + c with a constant ``c`` (attrs["value"]) that is not a layer's bias (an
                    input normalization); ONNX ``Sub(x, c)`` is ``add_const`` of -c (IEEE
                    x - c == x + (-c)). mul / div / add_const run once in float64; an add_const of a
                    quantized constant (a learned positional embedding) has types "other" and "output"
                    (the exact sum's) and is exact
``maxpool``         kernel, strides, pads, dilations, ceil_mode
``avgpool``         kernel, strides, pads, ceil_mode, count_include_pad
``global_avgpool``  mean over the spatial axes, keepdims
``concat``          the inputs (two or more, all dynamic) joined along ``axis`` (>= 1: never the batch);
                    no arithmetic: its type is the inputs' common one, or the exact Fixed union of
                    theirs (``fpq.typeplan.fixed_union`` of their value carriers)
``upsample``        nearest-neighbour upsampling by integer ``scales`` (one per axis, 1 on batch and
                    channels: each value repeated); its output keeps the input's type
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

from dataclasses import dataclass, field

import numpy as np

from ..formats import BlockFormat, Format
from ..typeplan import TensorType


@dataclass(frozen=True)
class OpKind:
    """What every consumer needs to know of an op kind, said once.

    Args:
        name: the kind's name (an ``Op.kind``).
        mac: sums of products of a dynamic input and constant weights over a fan-in (linear, conv).
        weighted: has weight / bias constants (mac kinds and batchnorm); the TypePlan derives their
            product and accumulator, and a cast requantizer after them is their output.
        type_preserving: the output values are a subset of the input's (its type passes through).
        free: wiring only, no circuit (the cost model prices nothing).
        computes: forms a new, unquantized value (a sum, product or mean) that a quantizer after it rounds.
        moves: every output value is one of its inputs' values, moved without arithmetic (concat; its
            type is the union of its inputs', so it is not type-preserving, but it keeps a
            rounded-to-odd sum's meaning).

    Example:
        >>> from fpq.ir import OPS
        >>> OPS["linear"].mac, OPS["relu"].type_preserving, OPS["flatten"].free
        (True, True, True)
    """

    name: str
    mac: bool = False
    weighted: bool = False
    type_preserving: bool = False
    free: bool = False
    computes: bool = False
    moves: bool = False


OPS = {k.name: k for k in (
    OpKind("input_quant"), OpKind("quant"),
    OpKind("linear", mac=True, weighted=True, computes=True), OpKind("conv1d", mac=True, weighted=True, computes=True),
    OpKind("conv2d", mac=True, weighted=True, computes=True), OpKind("batchnorm", weighted=True, computes=True),
    OpKind("relu", type_preserving=True),
    # a bound off the input's grid is a new value: not type-preserving, and (conservatively) not
    # ORDER_KEEPING for a sum rounded to odd; its result is a fresh array a requantizer may reuse
    OpKind("clip", computes=True), OpKind("table", computes=True), OpKind("softmax", computes=True),
    OpKind("layernorm", computes=True), OpKind("add", computes=True), OpKind("mul", computes=True),
    OpKind("matmul", computes=True),   # two activations: no constant operand (not a mac kind)
    OpKind("gather"),   # rows of a quantized table by token ids: no arithmetic, the output typed as the table
    OpKind("div", computes=True), OpKind("add_const", computes=True), OpKind("maxpool", type_preserving=True), OpKind("avgpool", computes=True),
    OpKind("global_avgpool", computes=True),
    OpKind("concat", moves=True), OpKind("upsample", type_preserving=True, moves=True),
    OpKind("flatten", type_preserving=True, free=True), OpKind("reshape", type_preserving=True, free=True),
    OpKind("transpose", type_preserving=True, free=True), OpKind("output", type_preserving=True, free=True),
)}
KINDS = tuple(OPS)
MAC_KINDS = tuple(k for k, o in OPS.items() if o.mac)                 # linear, conv1d, conv2d
WEIGHTED_KINDS = tuple(k for k, o in OPS.items() if o.weighted)       # ... and batchnorm
TYPE_PRESERVING = tuple(k for k, o in OPS.items() if o.type_preserving)
FREE_KINDS = tuple(k for k, o in OPS.items() if o.free)
COMPUTING_KINDS = tuple(k for k, o in OPS.items() if o.computes)
CONV_KINDS = ("conv1d", "conv2d")
# kinds a quantizer sees through: monotone (ReLU, max pool) or value-preserving (reshapes), so a
# sum rounded to odd keeps its meaning behind them
ORDER_KEEPING = tuple(k for k, o in OPS.items() if (o.type_preserving or o.moves) and k != "output")
MOVING_KINDS = tuple(k for k, o in OPS.items() if o.moves)           # concat, upsample
POOL_KINDS = ("maxpool", "avgpool", "global_avgpool")

class UnsupportedGraphError(ValueError):
    """A QONNX graph fpq cannot represent exactly (the message names the node and why).

    Example:
        >>> from fpq.ir import UnsupportedGraphError
        >>> issubclass(UnsupportedGraphError, ValueError)
        True
    """


@dataclass(frozen=True)
class Quantizer:
    """One quantizer of the graph: y = Q(x / scale) * scale with fpq's semantics.

    ``scale`` is float32 in the tensor's broadcast layout (e.g. (C, 1) for a linear weight,
    (1, C, 1, 1) for a conv activation); ``ttype.scale`` is the same scale flattened to () or
    (C,). ``pre_scale`` (Trunc only): the input is first rounded to multiples of it.

    Args:
        ttype: the output's TensorType (format and flattened scale).
        scale: the float32 scale in the tensor's broadcast layout.
        node: the QONNX node's name.
        op_type: the QONNX op type of the node (e.g. Quant, Trunc).
        qonnx_exact: QONNX's own semantics give the same values as fpq's.
        note: why not, when not.
        pre_scale: Trunc only: the input grid.

    Example:
        >>> import numpy as np
        >>> from fpq.formats import parse_format
        >>> from fpq.ir import Quantizer
        >>> from fpq.typeplan import TensorType
        >>> q = Quantizer(TensorType(parse_format("int8"), np.float32(0.5)), np.float32(0.5), "q0", "Quant")
        >>> q(np.array([0.3, 100.0])).tolist()
        [0.5, 63.5]
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
        """The Format this quantizer rounds to (its TensorType's)."""
        return self.ttype.format

    @property
    def is_block(self) -> bool:
        """A block-scaled format (fpq's BlockQuant): ``scale`` is its float32 tensor scale (1 for
        E8M0 formats), the block scales come from each block of the data."""
        return isinstance(self.ttype.format, BlockFormat)

    @property
    def tensor_scale(self):
        """The float32 tensor scale of a tensor-scaled block format (NVFP4 style), else None."""
        return None if not self.is_block or self.format.po2_scale else float(self.scale)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Reference application (fpq.quantize, with its checks), in x's dtype; a Trunc first rounds x
        to its input grid as ``fpq.numerics.scaled.apply_scaled`` (the emulator's) does."""
        from ..numerics import quantize
        from ..numerics.reference import _as_float_array
        if self.is_block:   # fpq's BlockQuant (and its tensor-scale Mul): float64 values
            from ..numerics.blocks import quantize_block
            return quantize_block(np.asarray(x), self.format, self.tensor_scale)
        from ..numerics.scaled import round_to_grid
        if self.pre_scale is not None:
            x = round_to_grid(_as_float_array(x), self.pre_scale)
        return quantize(x, self.ttype.format, self.scale)


@dataclass
class Op:
    """One IR op. ``inputs`` / ``outputs`` are ONNX tensor names (dynamic tensors only).

    Args:
        name: the op's name.
        kind: its kind (a key of ``OPS``).
        inputs: the names of its dynamic input tensors.
        outputs: the names of its output tensors.
        in_shapes: the input shapes.
        out_shape: the output shape, when known.
        attrs: kind-specific attributes (strides, axes, ...).
        weight: float32 weight, on its grid.
        bias: float32 bias (on its grid when quantized).
        quant: the quantizer of a quant / input_quant op.
        weight_quant: the weight's quantizer.
        bias_quant: the bias' quantizer.
        types: role ("output", "weight", "bias", "input", ...) -> TensorType.
        onnx_nodes: the ONNX nodes the op was read from.
        module: the torch module path the op was exported from, when known.

    Example:
        >>> import numpy as np
        >>> from fpq.ir import Op
        >>> Op("fc", "linear", ["x"], ["y"], weight=np.zeros((4, 3), np.float32)).fan_in
        3
    """

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
        """Inputs per output of a weight layer (the weight's size past its first axis), else None."""
        if self.weight is None:
            return None
        return int(np.prod(self.weight.shape[1:]))

    def __repr__(self):
        return f"Op({self.name!r}, {self.kind}, {self.inputs} -> {self.outputs}, out_shape={self.out_shape})"


@dataclass
class Graph:
    """Ops in execution order; ``inputs`` / ``outputs`` are the graph's ONNX tensor names.

    Args:
        ops: the Ops, in execution order.
        inputs: the graph's input tensor names.
        outputs: its output tensor names.
        input_shapes: input name -> shape.
        name: the model's name.

    Example:
        >>> from fpq.ir import Graph, Op
        >>> g = Graph([Op("r", "relu", ["x"], ["y"])], ["x"], ["y"], {"x": (1, 4)})
        >>> g.producer("y").name, [op.name for op in g.consumers("x")], len(g)
        ('r', ['r'], 1)
    """

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
        """The op that writes ``tensor``, or None for a graph input or an unknown name.

        Args:
            tensor: a tensor name of the graph.

        Returns:
            Op | None: its producer.
        """
        for op in self.ops:
            if tensor in op.outputs:
                return op
        return None

    def consumers(self, tensor: str) -> list:
        """The ops that read ``tensor``, in execution order.

        Args:
            tensor: a tensor name of the graph.

        Returns:
            list[Op]: its consumers (empty for a graph output).
        """
        return [op for op in self.ops if tensor in op.inputs]

    def tensor_type(self, tensor: str) -> TensorType | None:
        """The TensorType of ``tensor`` as its producer outputs it, or None (a graph input).

        Args:
            tensor: a tensor name of the graph.

        Returns:
            TensorType | None: its type.
        """
        for op in self.ops:
            if tensor in op.outputs:
                return op.types.get("output")
        return None

    def summary(self) -> str:
        """One line per op: name, kind, output shape and output type.

        Returns:
            str: the table, one line per op.
        """
        lines = []
        for op in self.ops:
            t = op.types.get("output")
            lines.append(f"{op.name:24s} {op.kind:15s} {str(op.out_shape):18s} "
                         f"{t.describe() if isinstance(t, TensorType) else ''}")
        return "\n".join(lines)


__all__ = ["Graph", "Op", "Quantizer", "OpKind", "OPS", "KINDS", "MAC_KINDS", "WEIGHTED_KINDS", "TYPE_PRESERVING",
           "FREE_KINDS", "POOL_KINDS", "COMPUTING_KINDS", "CONV_KINDS", "ORDER_KEEPING", "MOVING_KINDS",
           "UnsupportedGraphError"]
