"""The one TypePlan, built from the graph IR (``typeplan_from_graph``): every tensor's exact
type, the products and accumulators derived once (``fpq.typeplan.LayerPlan.derive``), and the
requantizers the hardware fuses into the layer before them. ``fpq.plan`` reaches it from a
converted model (through its QONNX export) or a QONNX file alike.
"""
from __future__ import annotations

import math

from ..formats import Fixed, Int
from ..numerics.wide import WIDE_BITS
from ..typeplan import LayerPlan, TensorType, TypePlan, sum_type
from . import WEIGHTED_KINDS, Graph, Op, Quantizer

# ops whose requantizer the hardware folds into the op itself: the ops fpq.hls builds as a layer
# of their own with a result type, which casts the exact result into the quantizer's ap_fixed
# type (the cost model prices that rounding with the op). Not wiring (a Reshape is an alias of
# its input in hls4ml, so its result type would not be applied), not the input port (already a
# quantizer), not mul / div (no HLS layer: their requantizer stays a layer the cost model prices).
# (tests/test_one_typeplan.py checks each kind has a builder)
REQUANT_FUSING = WEIGHTED_KINDS + ("relu", "clip", "table", "softmax", "layernorm", "add", "matmul", "maxpool", "avgpool",
                                   "global_avgpool")


def pool_window(kind: str, attrs: dict, in_shape) -> int | None:
    """Values per window of a pool op (the whole map of a global one; None: shape unknown)."""
    if kind == "global_avgpool":
        return None if in_shape is None else int(math.prod(int(d) for d in in_shape[2:]))
    return int(math.prod(attrs["kernel"]))


def native_pool(kind: str, attrs: dict, in_shape) -> bool:
    """Whether hls4ml's own pooling layer builds this pool op exactly, in io_parallel and io_stream:
    no padding and windows that tile the map (hls4ml streams no other), and for an average a
    power-of-two window (its mean is the exact sum shifted; any other is not a binary fraction)."""
    n = pool_window(kind, attrs, in_shape)
    if kind == "global_avgpool":
        return n is not None and n & (n - 1) == 0
    tiles = not any(attrs.get("pads", ())) and tuple(attrs["strides"]) == tuple(attrs["kernel"])
    return tiles and (kind == "maxpool" or n & (n - 1) == 0)


def sum_divisor(kind: str, attrs: dict, in_shape) -> int | None:
    """N for an average pool fpq.hls builds as its exact window sum (``fpq::pool_layer``, zero
    padding): the 1/N is folded into the quantizer after it, a threshold lookup over the sum
    (the emulator's float64 sum / N, then the quantizer). None: not an average, or hls4ml's own
    pooling computes the exact mean (``native_pool``)."""
    if kind not in ("avgpool", "global_avgpool") or native_pool(kind, attrs, in_shape):
        return None
    return pool_window(kind, attrs, in_shape)


def _cast_quantizer(q: Quantizer | None) -> bool:
    """A quantizer an ap_fixed cast computes: Fixed or (not narrow) Int at a power-of-two scale."""
    if q is None or q.pre_scale is not None or not q.ttype.po2:
        return False
    f = q.ttype.format
    return isinstance(f, Fixed) or (isinstance(f, Int) and not f.narrow)


def module_of(op: Op) -> str:
    """The torch module path of an op: the reader's ``op.module``, else the one its name was
    made from (``_op_name``): "conv2d_0" -> "0"."""
    if op.module:
        return op.module
    return op.name[len(op.kind) + 1:] if op.name.startswith(op.kind + "_") else op.name


def rotation_refusal(layers, what: str, verb: str = "build") -> str | None:
    """The one error of a path that does not build Hadamard rotations (fpq.convert(hadamard=True):
    the reader's ``linear`` ops with ``attrs["hadamard"]``), naming the first; None when there is none.

    Args:
        layers: IR ops or TypePlan layers (each with ``name`` and ``attrs``).
        what (str): the refusing path, e.g. "fpq.to_hls".
        verb (str): what that path does ("build", "price").

    Returns:
        str | None: the message.

    Raises:
        Nothing.

    Example:
        >>> rotation_refusal([], "fpq.to_hls") is None
        True
    """
    for lp in layers:
        k = lp.attrs.get("hadamard")
        if k:
            return (f"{what}: layer {lp.name!r} is a Hadamard rotation (fpq.convert(hadamard=True), blocks of {k}), "
                    f"which {what} does not {verb}; it takes block-scaled Linear / Conv1d / Conv2d, their quantizers, "
                    "ReLU and the output. Convert without hadamard=True for hardware (fpq.export_qonnx, fpq.emulate "
                    "and fpq.verify run the rotated model exactly)")
    return None


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

    A cast quantizer right after an op of ``REQUANT_FUSING`` that reads nothing else becomes
    that op's ``output`` (``attrs["requant"]`` names it; the exact result it rounds is the
    accumulator of a weighted op, ``attrs["exact_output"]`` of any other) and its own layer says
    ``attrs["fused_into"]``: the circuit fpq.hls builds (one cast of the exact result) and the
    one the cost model prices. ``attrs["module"]``: the torch module path of the op, so that
    ``plan["0"]`` finds the layer ``conv2d_0`` of a converted ``nn.Sequential``.
    """
    tp = TypePlan()
    for op in graph.ops:
        attrs = dict(op.attrs)
        attrs["in_shapes"] = op.in_shapes
        attrs["out_shape"] = op.out_shape
        attrs["module"] = module_of(op)
        attrs["inputs"] = [src.name for src in map(graph.producer, op.inputs) if src is not None]
        if op.kind == "linear" and _flat_of_map(graph, op.inputs[0]):
            attrs["flat_of_map"] = True   # its input is a flattened feature map (channels-last in HLS)
        values = {}
        if op.weight is not None:
            values["weight"] = op.weight
        if op.bias is not None:
            values["bias"] = op.bias
        tensors = {k: v for k, v in op.types.items()}
        if op.kind in WEIGHTED_KINDS:
            tensors.pop("output", None)  # the op's output is its accumulator (derived)
        fan_in = op.attrs.get("fan_in") if op.kind == "matmul" else None if op.kind == "gather" else op.fan_in
        lp = LayerPlan(op.name, op.kind, tensors, fan_in, values, attrs,
                       note="; ".join(q.note for q in (op.quant, op.weight_quant, op.bias_quant) if q and q.note))
        _derive(lp)
        _sum_pool(lp, op)
        tp.add(lp)
        if op.kind == "quant" and _cast_quantizer(op.quant) and len(op.inputs) == 1:
            src = graph.producer(op.inputs[0])
            if (src is not None and src.kind in REQUANT_FUSING and src.name in tp.layers
                    and "divisor" not in tp[src.name].attrs
                    and len(graph.consumers(op.inputs[0])) == 1 and op.inputs[0] not in graph.outputs):
                fused = tp[src.name]
                if src.kind not in WEIGHTED_KINDS and "output" in fused.tensors:
                    fused.attrs["exact_output"] = fused.tensors["output"]
                fused.tensors["output"] = op.types["output"]
                fused.attrs["requant"] = op.name
                lp.attrs["fused_into"] = src.name
    return tp


def _flat_of_map(graph: Graph, tensor: str) -> bool:
    """Whether ``tensor`` is a feature map flattened (through flatten / reshape, and element-wise
    ReLU or quantizers after it): the HLS path holds it in channels-last order, not torch's."""
    src = graph.producer(tensor)
    while src is not None and src.kind in ("relu", "quant") and src.inputs:
        src = graph.producer(src.inputs[0])
    return src is not None and src.kind in ("flatten", "reshape") and bool(src.in_shapes) and \
        len(src.in_shapes[0]) > 2


def _sum_pool(lp: LayerPlan, op: Op) -> None:
    """An average pool built as its window sum (``sum_divisor``): ``attrs["divisor"]`` N, and
    ``attrs["exact_output"]`` the exact sum's type (what the HLS layer holds; the quantizer after
    it is a threshold lookup over it, never a cast fused into the pool)."""
    n = sum_divisor(op.kind, op.attrs, op.in_shapes[0] if op.in_shapes else None)
    if n is None:
        return
    lp.attrs["divisor"] = n
    x = op.types.get("input")
    xc = x.carrier() if isinstance(x, TensorType) and x.po2 else (x.value_carrier() if isinstance(x, TensorType)
                                                                   else None)
    if xc is not None:
        lp.attrs["exact_output"] = sum_type(xc, n)


__all__ = ["typeplan_from_graph", "module_of", "REQUANT_FUSING", "native_pool", "pool_window",
           "sum_divisor"]
