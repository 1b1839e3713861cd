"""QONNX files fpq did not write: refuse what the reader cannot represent before any slow work,
and rewrite qonnx's channels-last ops into the standard ops the reader knows.

``check_foreign(model)`` scans the raw ``onnx.ModelProto`` (no shape inference: qonnx's
``InferShapes`` materializes a random constant of every channels-last Conv's output, 30-60 s
on a 512x512 feature map) and raises one :class:`UnsupportedGraphError` that names every node
fpq cannot read, with what to do about each, and says so when the file has no quantizer at all.

``channels_last_to_first(model)`` replaces each ``qonnx.custom_op.channels_last`` Conv / MaxPool /
BatchNormalization by the standard ONNX op between two Transposes (NHWC -> NCHW, and back; for a
Conv also its OHWI weight -> OIHW), which is exactly what qonnx's executor for those ops
computes (``ChannelsLastWrappedOp.execute_node``).
"""
from __future__ import annotations

from ..ir import UnsupportedGraphError

CHANNELS_LAST_DOMAIN = "qonnx.custom_op.channels_last"
CHANNELS_LAST_OPS = ("Conv", "MaxPool", "BatchNormalization")

# op types the reader consumes only as part of a pattern it fuses (the narrow-accumulator wrap)
PATTERN_OPS = ("Floor",)

SHAPE_OPS = ("Shape", "Gather", "Concat", "ConstantOfShape", "Slice", "Range")
ACTIVATIONS = ("Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softplus", "Erf",
               "PRelu", "Gelu", "Exp", "Log", "Sqrt", "Pow", "Reciprocal")
_QUANT_FREE = ("a float model (no Quant / IntQuant / FloatQuant / BipolarQuant / Trunc node): fpq reads quantized "
               "QONNX, where every weight and activation has a quantizer; quantize it first (QKeras / Brevitas "
               "with quantizers, or fpq.convert on a torch model) and export that")


def _advice(node, is_output: bool) -> str:
    """Why fpq cannot read ``node`` and what the user can do."""
    t = node.op_type
    if t == "Softmax":
        where = "the network's last op" if is_output else "not the last op"
        return (f"Softmax ({where}): fpq has no exact Softmax in the QONNX reader; "
                + ("strip the final Softmax (fpq.export.strip_final_softmax(model); argmax and ranking are "
                   "unchanged) and apply it in software" if is_output else "only a final Softmax can be stripped"))
    if t == "BatchNormalization":
        return ("float BatchNormalization (unquantized scale and shift: no exact fixed-point form); fold it into "
                "the Conv / MatMul before it before quantizing (Brevitas merge_bn, qonnx BatchNormToAffine then "
                "quantize), or export it quantized (Mul by a quantized per-channel constant, then Add: fpq's "
                "element-wise BatchNorm)")
    if t in SHAPE_OPS:
        return ("a run-time shape computation (Shape / Gather / Concat ...); fold it into constants first (qonnx: "
                "model.transform(InferShapes()).transform(FoldConstants()), or qonnx.util.cleanup)")
    if t in ACTIVATIONS:
        return f"{t}: this activation has no exact form in fpq's QONNX reader"
    return f"{t}: not an op fpq reads"


def check_foreign(model, supported) -> None:
    """Refuse, in one error, every node of ``model`` (an onnx.ModelProto) whose (domain, op_type)
    fpq's reader does not handle; ``supported``: the reader's op types. Fast: no shape inference."""
    from .qonnx_codec import QONNX_DOMAINS, QUANT_OPS
    g = model.graph
    outputs = {o.name for o in g.output}
    has_quant = any(n.op_type in QUANT_OPS for n in g.node)
    bad = {}   # reason -> node names (one line per reason, however many nodes share it)
    from .block_ops import DOMAIN as BLOCK_DOMAIN, OP_TYPE as BLOCK_OP
    for n in g.node:
        if n.domain == BLOCK_DOMAIN and n.op_type == BLOCK_OP:
            continue   # fpq's block quantizer: the reader names it (read_graph)
        ok_domain = n.domain in QONNX_DOMAINS or (n.domain == CHANNELS_LAST_DOMAIN and n.op_type in CHANNELS_LAST_OPS)
        if ok_domain and (n.op_type in supported or n.op_type in PATTERN_OPS or n.op_type in QUANT_OPS):
            continue
        if n.domain not in QONNX_DOMAINS and n.domain != CHANNELS_LAST_DOMAIN:
            why = f"{n.op_type} (domain {n.domain}): a custom op fpq does not know"
        else:
            why = _advice(n, any(o in outputs for o in n.output))
        bad.setdefault(why, []).append(n.name)
    lines = []
    if not has_quant:
        lines.append(f"the file is {_QUANT_FREE}")
    if bad:
        lines.append(f"{sum(map(len, bad.values()))} node(s) fpq cannot read: " + "; ".join(
            f"{', '.join(repr(x) for x in names)}: {why}" for why, names in bad.items())
            + f". fpq supports: {', '.join(supported)}")
    if lines:
        raise UnsupportedGraphError("; ".join(lines))


def _to_first(ndim):
    return [0, ndim - 1] + list(range(1, ndim - 1))


def _to_last(ndim):
    return [0] + list(range(2, ndim)) + [1]


def channels_last_to_first(model) -> bool:
    """Rewrite ``model`` (onnx.ModelProto, in place) so that no channels-last op remains; returns
    whether anything changed. Needs the rank of each channels-last op's input: from the value
    info or graph input where given, else that of the op's weight (a Conv) or 4."""
    from onnx import helper
    g = model.graph
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in list(g.input) + list(g.value_info)
             + list(g.output) if vi.type.tensor_type.HasField("shape")}
    inits = {i.name: len(i.dims) for i in g.initializer}
    nodes = list(g.node)
    changed = False
    new = []
    for n in nodes:
        if n.domain != CHANNELS_LAST_DOMAIN:
            new.append(n)
            continue
        if n.op_type not in CHANNELS_LAST_OPS:
            raise UnsupportedGraphError(f"node {n.name!r}: {n.op_type} in domain {CHANNELS_LAST_DOMAIN} is not a "
                                        f"channels-last op qonnx defines ({', '.join(CHANNELS_LAST_OPS)})")
        changed = True
        w_rank = inits.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        if w_rank is None and n.op_type == "Conv":
            w_rank = _weight_rank(g, n.input[1])
        ndim = ranks.get(n.input[0]) or w_rank or 4
        if ndim not in (3, 4):
            raise UnsupportedGraphError(f"channels-last {n.op_type} node {n.name!r}: rank {ndim} input (3 or 4)")
        ins = list(n.input)
        pre = []
        for i, t in enumerate(ins):
            # qonnx's executor transposes the data input, and a Conv's weight (OHWI -> OIHW)
            if i == 0 or (n.op_type == "Conv" and i == 1):
                tt = f"{t}__{n.name}_cf"
                pre.append(helper.make_node("Transpose", [t], [tt], name=f"{n.name}_to_cf{i}", perm=_to_first(ndim)))
                ins[i] = tt
        out = n.output[0]
        mid = f"{out}__{n.name}_cf"
        std = helper.make_node(n.op_type, ins, [mid], name=n.name)
        std.attribute.extend(n.attribute)
        post = helper.make_node("Transpose", [mid], [out], name=f"{n.name}_to_cl", perm=_to_last(ndim))
        new += pre + [std, post]
    if changed:
        del g.node[:]
        g.node.extend(new)
    return changed


def _weight_rank(g, t):
    """Rank of a Conv weight behind its quantizer (Quant(initializer) -> weight)."""
    prod = {o: n for n in g.node for o in n.output}
    inits = {i.name: len(i.dims) for i in g.initializer}
    while t not in inits and t in prod and prod[t].input:
        t = prod[t].input[0]
    return inits.get(t)


def strip_final_softmax(model):
    """A copy of ``model`` (path, onnx.ModelProto or qonnx ModelWrapper) without its final Softmax:
    the Softmax's input becomes the graph output (the logits; their argmax is the Softmax's)."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    if isinstance(model, ModelWrapper):
        model = model.model
    m = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else onnx.ModelProto.FromString(
        model.SerializeToString())
    g = m.graph
    outs = {o.name: o for o in g.output}
    sm = [n for n in g.node if n.op_type == "Softmax" and n.output[0] in outs]
    if len(sm) != 1:
        raise ValueError(f"strip_final_softmax: the graph has {len(sm)} Softmax node(s) writing a graph output "
                         "(needs exactly one)")
    sm = sm[0]
    logits = sm.input[0]
    # the graph output keeps its name: the node before the Softmax now writes it
    for n in g.node:
        for i, o in enumerate(n.output):
            if o == logits:
                n.output[i] = sm.output[0]
        for i, x in enumerate(n.input):
            if x == logits and n is not sm:
                n.input[i] = sm.output[0]
    g.node.remove(sm)
    for vi in list(g.value_info):
        if vi.name == logits:
            g.value_info.remove(vi)
    return m


def add_input_quant(model, fmt, scale=1.0, input_name=None):
    """A copy of ``model`` (path / ModelProto / ModelWrapper) with a ``Quant`` node on its graph input:
    ``fmt`` an Int format (``"int8"``, ``"uint4"``, ...) with ``scale``, or a Fixed with RND_CONV
    rounding and SAT overflow (``"fixed<8,3>"``: its 2^-frac grid; ``scale`` must be 1), i.e. formats
    QONNX's ``Quant`` computes exactly. Every reader of the input then reads the quantized value."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from qonnx.core.modelwrapper import ModelWrapper
    from ..formats import Fixed, Int, parse_format
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    if isinstance(f, Fixed):
        if (f.rounding, f.overflow) != ("RND_CONV", "SAT") or scale != 1.0:
            raise ValueError(f"add_input_quant: {f} (scale {scale}): only Fixed with RND_CONV / SAT and scale 1 "
                             "(QONNX's Quant ROUND on the 2^-frac grid, saturating)")
        bits, signed, narrow, s = f.width, f.signed, False, 2.0 ** -(f.width - f.int_bits)
    elif isinstance(f, Int):
        bits, signed, narrow, s = f.bits, f.signed, f.narrow, float(scale)
    else:
        raise ValueError(f"add_input_quant: {f} is not an Int or Fixed format (QONNX's Quant computes those)")
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"add_input_quant: scale must be a positive finite number, got {scale!r}")
    if isinstance(model, ModelWrapper):
        model = model.model
    m = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else onnx.ModelProto.FromString(
        model.SerializeToString())
    g = m.graph
    inits = {i.name for i in g.initializer}
    names = [i.name for i in g.input if i.name not in inits]
    name = input_name if input_name is not None else (names[0] if len(names) == 1 else None)
    if name not in names:
        raise ValueError(f"add_input_quant: choose input_name among the graph inputs {names}")
    q = f"{name}__input_quant"
    for n in g.node:
        for i, x in enumerate(n.input):
            if x == name:
                n.input[i] = q
    g.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), f"{q}_{k}")
                          for k, v in (("scale", s), ("zeropt", 0.0), ("bitwidth", float(bits)))])
    g.node.insert(0, helper.make_node("Quant", [name, f"{q}_scale", f"{q}_zeropt", f"{q}_bitwidth"], [q],
                                      name="Quant_input", domain="qonnx.custom_op.general", signed=int(signed),
                                      narrow=int(narrow), rounding_mode="ROUND"))
    return m
