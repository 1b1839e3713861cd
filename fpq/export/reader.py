"""The one reader: a QONNX model -> fpq's graph IR (``fpq.ir``), Brevitas' idioms fused.

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
* ``Concat`` and nearest ``Resize`` / ``Upsample`` become ``concat`` / ``upsample`` (``fpq.export.moves``);
  a ``MatMul`` of two quantized tensors (and a Mul by a power of two after it) one ``matmul`` (``fpq.export.matmul``);
* a ``MatMul`` by an unquantized block-diagonal Hadamard constant (fpq.nn.hadamard's rotation) is a
  ``linear`` op with ``attrs["hadamard"] = k`` and an exact two-bit weight type; any other
  unquantized weight is an error;
* outputs that are constants (Brevitas' QuantTensor metadata: scale, bit width) are ignored.

Op kinds and their attributes, Quantizer and shape conventions: ``fpq.ir``. Where fpq's semantics
and qonnx's executor differ, ``Quantizer.qonnx_exact`` is False and ``Quantizer.note`` says why.

Over 600 lines because it is one fusing reader whose patterns (weights through their quantizers,
MatMul + Add, Div -> Quant -> Mul, the two-node rounding pair, the accumulator wrap) share the
``_Reader`` state and the order of one pass; splitting it would split one algorithm.
"""
from __future__ import annotations

import re

import numpy as np

from ..formats import Fixed, Int
from ..ir import MAC_KINDS, TYPE_PRESERVING, Graph, Op, Quantizer, UnsupportedGraphError
from ..ir.plan import typeplan_from_graph
from ..typeplan import LayerPlan, TensorType, fixed_union, sum_type, values_carrier
from .matmul import matmul_op
from .moves import concat_op, gather_op, upsample_op
from .qonnx_codec import (QONNX_DOMAINS, QUANT_OPS, _attrs, _flat_scale, half_step_partner, is_half_step, load_model, quantizer_of)

# ops that only move or relabel constant data: evaluated when they sit on a weight / bias path
CONST_OPS = ("Identity", "Transpose", "Reshape", "Flatten", "Unsqueeze", "Squeeze", "Cast", "Constant")
# ONNX op_type -> IR kind for the simple dynamic ops
SIMPLE_KINDS = {"Relu": "relu", "MaxPool": "maxpool", "AveragePool": "avgpool",
                "GlobalAveragePool": "global_avgpool", "Flatten": "flatten", "Reshape": "reshape",
                "Transpose": "transpose"}
SUPPORTED_OPS = ("Quant", "FloatQuant", "BipolarQuant", "Trunc", "MatMul", "Gemm", "Conv", "Add", "Sub",
                 "Mul", "Div", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
                 "Reshape", "Transpose", "Identity", "Dropout", "Constant", "Cast", "Unsqueeze", "Squeeze",
                 "ReduceSum", "Clip", "FpqTable", "LeakyRelu", "FpqSoftmax", "FpqLayerNorm", "Concat", "Resize",
                 "Upsample", "Gather")


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
        if n.op_type in CONST_OPS or n.op_type in QUANT_OPS or _is_block_quant(n) or self.tensor_scale_mul(n):
            return all(self.is_const(i) for i in n.input if i)
        return False

    def tensor_scale_mul(self, n):
        """The BlockQuant node whose tensor-scale Mul ``n`` is (fpq.export.block_ops), else None.
        A Mul after a BlockQuant by anything but the node's own float32 tensor scale is refused."""
        if n.op_type != "Mul" or not n.input:
            return None
        src = self.producer.get(n.input[0])
        if src is None or not _is_block_quant(src):
            return None
        from .block_ops import block_format_of, tensor_scale_of_node
        st = tensor_scale_of_node(src, block_format_of(src))
        c = n.input[1] if len(n.input) > 1 else None
        if st is None or c not in self.inits or \
                np.asarray(self.mw.get_initializer(c)).astype(np.float64).tolist() != float(st):
            raise UnsupportedGraphError(f"Mul node {n.name!r} after BlockQuant {src.name!r} is not its tensor-scale "
                                        f"Mul (by the node's float32 tensor_scale {st}); fpq reads only that")
        return src

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
            elif _is_block_quant(n):   # a block-quantized weight: its values, exact float64
                q = block_quantizer_of(n)
                x = q(np.asarray(x, dtype=np.float32))
            elif self.tensor_scale_mul(n) is not None:
                pass                   # the block quantizer above already applied the tensor scale
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


def _is_block_quant(n) -> bool:
    from .block_ops import DOMAIN, OP_TYPE
    return n.domain == DOMAIN and n.op_type == OP_TYPE


def block_quantizer_of(n) -> Quantizer:
    """The IR quantizer of fpq's BlockQuant node together with its tensor-scale Mul (if any):
    TensorType(block format, scale = the float32 tensor scale, 1 for E8M0 formats)."""
    from .block_ops import block_format_of, tensor_scale_of_node
    try:
        fmt = block_format_of(n)
        st = tensor_scale_of_node(n, fmt)
    except ValueError as e:
        raise UnsupportedGraphError(str(e)) from None
    scale = np.float32(1.0 if st is None else st)
    return Quantizer(TensorType(fmt, scale), np.asarray(scale), n.name, "BlockQuant")


def read_graph(model) -> Graph:
    """Read a QONNX model (path, ModelWrapper or ModelProto) into fpq's graph IR.

    Args:
        model: a QONNX path, ModelWrapper or ModelProto.

    Returns:
        Graph: the graph IR (fused layers, quantizers, shapes).

    Raises:
        UnsupportedGraphError: nodes fpq cannot read, all named in one message.

    Example:
        >>> import os, tempfile
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> from fpq.export import read_graph
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = fpq.export_qonnx(q, os.path.join(d, "m.onnx"), torch.randn(1, 4))
        ...     g = read_graph(os.path.join(d, "m.onnx"))
        >>> [op.kind for op in g.ops]
        ['input_quant', 'linear', 'quant', 'relu', 'output']
    """
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
        if all(r.is_const(o) for o in node.output) and (node.op_type in CONST_OPS + QUANT_OPS or _is_block_quant(node)
                                                        or r.tensor_scale_mul(node) is not None):
            continue  # a weight / bias path, folded where it is used
        op_type = node.op_type
        if _is_block_quant(node):   # fpq's block quantizer of an activation (+ its tensor-scale Mul)
            x = r.resolve(node.input[0])
            q = block_quantizer_of(node)
            out = node.output[0]
            mul = r.single_consumer(out, "Mul")
            onnx_nodes = [node.name]
            if mul is not None and r.tensor_scale_mul(mul) is not None:
                r.fused.add(mul.name)
                onnx_nodes.append(mul.name)
                out = mul.output[0]
            elif q.tensor_scale is not None:
                raise UnsupportedGraphError(f"BlockQuant node {node.name!r} of {q.format} is not followed by its "
                                            "tensor-scale Mul")
            kind = "input_quant" if x in graph_inputs else "quant"
            op = Op(r.unique(_op_name(kind, _module_path(node.name))), kind, [x], [out], quant=q,
                    onnx_nodes=onnx_nodes)
            op.types = {"output": q.ttype}
            if tt(x) is not None:
                op.types["input"] = tt(x)
            op.in_shapes = [r.shape(x)]
            op.out_shape = r.shape(out)
            op.module = _torch_path(node.name)
            ops.append(op)
            types[out] = q.ttype
            continue
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
        if op_type == "Cast" and a.get("to") == 7 and tt(x) is not None and str(tt(x).format).startswith("ufixed") \
                and all(c.op_type == "Gather" for c in r.consumers.get(node.output[0], [])):
            r.alias[node.output[0]] = x   # token ids (integers at scale 1) to int64 for a Gather: exact
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
        elif op_type == "MatMul" and len(ins) == 2 and not r.is_const(ins[0]) and not r.is_const(ins[1]):
            op = matmul_op(r, node, ins, _op_name("matmul", mod), [tt(i) for i in ins])   # fpq.export.matmul
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
                op = _add_const(r, node, ins, mod, tt)
        elif op_type == "Sub":
            op = _add_const(r, node, ins, mod, tt)
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
        elif op_type == "Clip":
            op = _clip(r, node, a, list(node.input), mod, tt(x))
        elif op_type == "FpqTable":
            op = _table(r, node, x, mod, tt(x))
        elif op_type == "LeakyRelu":
            op = _leaky_relu(r, node, a, x, mod, tt(x))
        elif op_type in ("FpqSoftmax", "FpqLayerNorm"):
            op = _pipeline(r, node, x, mod, tt(x))
        elif op_type == "Concat":   # values moved, no arithmetic (fpq.export.moves)
            op = concat_op(r, node, a, ins, _op_name("concat", mod), [tt(i) for i in ins])
        elif op_type == "Gather":   # an embedding: rows of a quantized table (fpq.export.moves)
            op = gather_op(r, node, a, ins, _op_name("gather", mod), tt(ins[1]) if len(ins) > 1 else None)
        elif op_type in ("Resize", "Upsample"):
            op = upsample_op(r, node, a, x, _op_name("upsample", mod))
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
        if op.kind in MAC_KINDS:
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


def _clip(r: _Reader, node, a, ins, mod, t_in) -> Op:
    """Clip(x, min, max) with constant scalar bounds (inputs since opset 11, attributes before;
    either may be absent). The bounds are float32 numbers, so the output holds x's values and
    them: its type is the union of x's carrier and the bounds' own (when x has a po2 type)."""
    bounds = {}
    for k, name in ((1, "min"), (2, "max")):
        if len(ins) > k and ins[k]:
            if not r.is_const(ins[k]):
                raise UnsupportedGraphError(f"Clip node {node.name!r}: its {name} bound must be a constant")
            v = np.asarray(r.const(ins[k])[0])
        elif name in a:
            v = np.asarray(a[name])
        else:
            bounds[name] = None
            continue
        if v.size != 1 or not np.isfinite(v).all():
            raise UnsupportedGraphError(f"Clip node {node.name!r}: {name} bound {v.ravel()[:4]} is not one finite "
                                        "number (only scalar clips are supported)")
        f = np.float32(v.ravel()[0])
        if float(f) != float(v.ravel()[0]):
            raise UnsupportedGraphError(f"Clip node {node.name!r}: {name} bound {float(v.ravel()[0])!r} is not a "
                                        "float32 number")
        bounds[name] = f
    if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
        raise UnsupportedGraphError(f"Clip node {node.name!r}: min {bounds['min']} > max {bounds['max']}")
    op = Op(r.unique(_op_name("clip", mod)), "clip", [r.resolve(ins[0])], [node.output[0]], attrs=bounds,
            onnx_nodes=[node.name])
    if isinstance(t_in, TensorType) and t_in.po2:
        b = [v for v in bounds.values() if v is not None]
        from ..numerics import quantize
        # bounds that are values of x's type keep it; else the exact Fixed of both
        s = np.ravel(t_in.scale).astype(np.float64)
        on_grid = all(np.all(quantize(np.full(s.shape, float(v)), t_in.format, s) == float(v)) for v in b)
        op.types["output"] = t_in if on_grid else TensorType(
            fixed_union([t_in.carrier()] + ([values_carrier(np.array(b, np.float64))] if b else [])), 1.0)
    return op


def _table(r: _Reader, node, x, mod, t_in) -> Op:
    """An ``FpqTable`` node (fpq.export.custom_op): its table must list every value of its input's
    quantizer, so that the lookup is defined on whatever the input holds; the output's type holds
    every table output (the quantizer after it names their format)."""
    from ..numerics.activations import MAX_TABLE_ENTRIES, input_values
    from .custom_op import table_of
    try:
        xs, ys, fn = table_of(node)
    except ValueError as e:
        raise UnsupportedGraphError(str(e)) from None
    if ys.size > MAX_TABLE_ENTRIES:
        raise UnsupportedGraphError(f"FpqTable node {node.name!r}: {ys.size} entries, more than {MAX_TABLE_ENTRIES}")
    if not isinstance(t_in, TensorType):
        raise UnsupportedGraphError(f"FpqTable node {node.name!r}: its input has no quantizer, so the values it "
                                    "holds (and the table's exactness) are unknown")
    try:
        need = input_values(t_in.format, t_in.scale, f"FpqTable node {node.name!r}")
    except ValueError as e:
        raise UnsupportedGraphError(str(e)) from None
    missing = need[~np.isin(need, xs)]
    if missing.size:
        raise UnsupportedGraphError(f"FpqTable node {node.name!r}: its input {t_in.describe()} takes {missing.size} "
                                    f"value(s) its table does not list (e.g. {missing[0]!r})")
    op = Op(r.unique(_op_name("table", mod)), "table", [x], [node.output[0]],
            attrs={"x": xs, "y": ys, "function": fn}, onnx_nodes=[node.name])
    op.types["output"] = TensorType(values_carrier(ys), 1.0)
    return op


def _leaky_relu(r: _Reader, node, a, x, mod, t_in) -> Op:
    """A standard ONNX LeakyRelu (QKeras / hls4ml exports) after a quantizer: a ``table`` op over
    every value of its input, exact when the file's float32 alpha * x is (checked on every value)."""
    from ..numerics.activations import exact_leaky_relu_table
    if not isinstance(t_in, TensorType):
        raise UnsupportedGraphError(f"LeakyRelu node {node.name!r}: its input has no quantizer, so the values it "
                                    "holds are unknown (put a Quant before it)")
    try:
        xs, ys = exact_leaky_relu_table(t_in.format, t_in.scale, float(a.get("alpha", 0.01)),
                                        f"LeakyRelu node {node.name!r}")
    except ValueError as e:
        raise UnsupportedGraphError(str(e)) from None
    op = Op(r.unique(_op_name("table", mod)), "table", [x], [node.output[0]],
            attrs={"x": xs, "y": ys, "function": "leaky_relu"}, onnx_nodes=[node.name])
    op.types["output"] = TensorType(values_carrier(ys), 1.0)
    return op


def _pipeline(r: _Reader, node, x, mod, t_in) -> Op:
    """An ``FpqSoftmax`` / ``FpqLayerNorm`` node (fpq.export.custom_op): op kind softmax / layernorm
    with ``attrs["recipe"]`` (checked against its input's quantizer); ``types`` records the
    pipeline's internal fixed-point types and its output (exact: the quantizer after it rounds it)."""
    from ..numerics.activations import input_values
    from .custom_op import pipeline_of
    if not isinstance(t_in, TensorType):
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: its input has no quantizer, so the values it "
                                    "holds (and the pipeline's integer grid) are unknown")
    try:
        kind, rec = pipeline_of(node, input_values(t_in.format, t_in.scale, f"{node.op_type} node {node.name!r}"))
    except ValueError as e:
        raise UnsupportedGraphError(str(e)) from None
    op = Op(r.unique(_op_name(kind, mod)), kind, [x], [node.output[0]], attrs={"recipe": rec},
            onnx_nodes=[node.name])
    shape = r.shape(x)
    n = rec.n if kind == "layernorm" else (int(shape[-1]) if shape is not None else 1)
    inner = rec.formats(n) if kind == "softmax" else rec.formats(t_in.value_carrier().width)
    op.types.update({k: v for k, v in inner.items() if k != "output"})
    op.types["output"] = TensorType(inner["output"], 1.0)
    return op


def _add_const(r: _Reader, node, ins, mod, tt) -> Op:
    """Add(x, c) / Sub(x, c) with a constant c that is no layer's bias (an input normalization):
    one ``add_const`` op of c / -c (x - c == x + (-c) exactly in IEEE arithmetic). An Add of a quantized
    constant (a learned positional embedding, fpq.nn.attention.FpqPositional) is typed: ``other`` its
    quantizer's type, ``output`` the exact sum's (``_add_type``, power-of-two scales)."""
    consts = [i for i in ins if r.is_const(i)]
    if len(ins) != 2 or len(consts) != 1:
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: fpq supports the {node.op_type} of two "
                                    "activations (Add only) or of an activation and one constant")
    if node.op_type == "Sub" and consts[0] == ins[0]:
        raise UnsupportedGraphError(f"Sub node {node.name!r} computes a constant minus an activation; fpq reads "
                                    "x - c only (write it as Mul(x, -1) then Add(c))")
    c, cq = r.const(consts[0])
    x = ins[1] if consts[0] == ins[0] else ins[0]
    v = np.asarray(c, dtype=np.float32)
    if node.op_type == "Sub":
        v = -v
    op = Op(r.unique(_op_name("add_const", mod)), "add_const", [x], [node.output[0]], attrs={"value": v},
            onnx_nodes=[node.name])
    st = _add_type(tt(x), cq.ttype) if cq is not None and node.op_type == "Add" else None
    if st is not None:
        op.types.update(other=cq.ttype, output=st)
    return op


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
    # a block-quantized weight keeps its exact float64 values (an NVFP4 value has up to 30 bits)
    wdt = np.float64 if wq is not None and wq.is_block else np.float32
    w = np.asarray(w, dtype=wdt)
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
        weight, kind = w, f"conv{nd}d"
        attrs = {"kernel": tuple(w.shape[2:]), "strides": tuple(a.get("strides", [1] * nd)),
                 "dilations": tuple(a.get("dilations", [1] * nd)), "groups": int(a.get("group", 1))}
        attrs["pads"] = _pads(r, node, a, ins[0], attrs["kernel"], attrs["strides"], attrs["dilations"])
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
            weight=np.ascontiguousarray(weight, dtype=wdt), bias=bias, weight_quant=wq, bias_quant=bq,
            onnx_nodes=fused)
    if wq is not None:
        op.types["weight"] = wq.ttype
    elif op_type == "MatMul" and _rotation_size(weight):
        # fpq.nn.hadamard's activation-side rotation x R (R = blockdiag(H_k), entries +-1 and 0): a
        # weight no quantizer needs (every entry is exact in two bits); kept visible as ``hadamard``
        op.attrs["hadamard"] = _rotation_size(weight)
        op.types["weight"] = TensorType(Fixed(2, 2, True), 1.0)
    else:
        raise UnsupportedGraphError(f"{op_type} node {node.name!r}: the weight has no quantizer "
                                    "(Quant/FloatQuant/BipolarQuant); fpq needs quantized weights")
    if bias is not None:
        bt = bq.ttype if bq is not None else _unquantized_bias_type(bias)
        if bt is not None:
            op.types["bias"] = bt
    return op


def _rotation_size(w: np.ndarray) -> int:
    """k when ``w`` is a block-diagonal Hadamard rotation blockdiag(H_k, ...) (fpq.nn.hadamard: +-1
    entries in k x k diagonal blocks, R R^T = k I, k a power of two), else 0."""
    if w.ndim != 2 or w.shape[0] != w.shape[1] or not np.isin(w, (-1.0, 0.0, 1.0)).all():
        return 0
    k = int(np.count_nonzero(w[0]))
    n = w.shape[0]
    if k < 1 or k & (k - 1) or n % k:
        return 0
    blocks = np.kron(np.eye(n // k), np.ones((k, k)))
    wd = np.asarray(w, dtype=np.float64)
    return k if np.array_equal(wd != 0, blocks != 0) and np.array_equal(wd @ wd.T, k * np.eye(n)) else 0


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


def _pads(r: _Reader, node, a, x: str, kernel, strides, dilations) -> tuple:
    """Explicit pads of a Conv / pool: its ``pads``, or those its ``auto_pad`` means (``auto_pads``)."""
    auto = a.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "NOTSET":
        return tuple(int(p) for p in a.get("pads", [0] * 2 * len(kernel)))
    shape = r.shape(x)
    if auto in ("SAME_UPPER", "SAME_LOWER") and (shape is None or len(shape) != len(kernel) + 2):
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: auto_pad={auto} needs the input's shape, "
                                    "which is unknown")
    try:
        return auto_pads(auto, shape[2:] if shape else None, kernel, strides, dilations)
    except ValueError as e:
        raise UnsupportedGraphError(f"{node.op_type} node {node.name!r}: {e}") from None


def auto_pads(auto: str, sizes, kernel, strides, dilations) -> tuple:
    """ONNX ``auto_pad`` as explicit pads (begins, then ends): VALID pads nothing; SAME_UPPER /
    SAME_LOWER pad so that out = ceil(in / stride), the odd pixel at the end (UPPER, what torch's
    padding="same" exports) or at the begin (LOWER)."""
    nd = len(kernel)
    if auto == "VALID":
        return (0,) * (2 * nd)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad={auto!r} is not an ONNX value (NOTSET, VALID, SAME_UPPER, SAME_LOWER)")
    begins, ends = [], []
    for n, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((-(-int(n) // int(s)) - 1) * int(s) + (int(k) - 1) * int(d) + 1 - int(n), 0)
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return tuple(begins + ends)


def _simple_attrs(r, node, kind, a, ins) -> dict:
    if kind in ("maxpool", "avgpool"):
        k = tuple(a["kernel_shape"])
        nd = len(k)
        out = {"kernel": k, "strides": tuple(a.get("strides", [1] * nd)),
               "ceil_mode": int(a.get("ceil_mode", 0)), "dilations": tuple(a.get("dilations", [1] * nd))}
        out["pads"] = _pads(r, node, a, ins[0], k, out["strides"], out["dilations"])
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


def typeplan_from_qonnx(model):
    """The TypePlan of a QONNX file / ModelWrapper / ModelProto (or an already read Graph).

    Args:
        model: a QONNX path, ModelWrapper, ModelProto or Graph.

    Returns:
        TypePlan: the exact type of every tensor.

    Example:
        >>> import os, tempfile
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> from fpq.export import typeplan_from_qonnx
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = fpq.export_qonnx(q, os.path.join(d, "m.onnx"), torch.randn(1, 4))
        ...     tp = typeplan_from_qonnx(os.path.join(d, "m.onnx"))
        >>> [layer.name for layer in tp]
        ['input_quant', 'linear_0', 'quant_0', 'relu_1', 'output']
    """
    return typeplan_from_graph(model if isinstance(model, Graph) else read_graph(model))
