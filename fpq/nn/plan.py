"""TypePlan of a converted model, and the way back to a float model (for re-conversion)."""
from __future__ import annotations

import copy
import operator

import numpy as np
import torch
from torch import fx, nn

from ..numerics.wide import WIDE_BITS
from ..typeplan import LayerPlan, TypePlan
from .batchnorm import FpqBatchNorm, to_batchnorm
from .layers import (FpqAct, FpqAdd, FpqAvgPool, FpqClamp, FpqConv1d, FpqConv2d, FpqInput, FpqLinear,
                     tensor_type_of)

_WEIGHT_LAYERS = (FpqLinear, FpqConv1d, FpqConv2d)
# the eval-mode torch forward sums up to WIDE_BITS exactly (fpq.numerics.wide); wider sums round
FLOAT64_NOT_EXACT = f"the eval forward is exact only up to {WIDE_BITS}-bit sums: not guaranteed exact for this layer"


@torch.no_grad()
def _quantized_values(tq, p: torch.Tensor) -> np.ndarray:
    y, _ = tq.quantize(p.detach())
    return y.cpu().numpy().astype(np.float32)


def _derive(layer: LayerPlan) -> None:
    """Product and accumulator types of a weighted layer (linear, conv, batchnorm)."""
    try:
        layer.derive()
    except ValueError as e:  # e.g. a product wider than 128 bits
        layer.note = f"no exact fixed-point product/accumulator ({e}); {FLOAT64_NOT_EXACT}"
    acc = layer.tensors.get("accumulator")
    if acc is not None and acc.width > WIDE_BITS:
        layer.note = f"accumulator needs {acc.width} bits; {FLOAT64_NOT_EXACT}"


def typeplan_from_module(q) -> TypePlan:
    """The TypePlan of an ``fpq.convert`` model, layers in execution order.

    Ops: input, linear, conv1d, conv2d, batchnorm (element-wise x * s + t per channel, weight =
    s, bias = t, fan_in 1), relu (ReLU; ReLU6 / Hardtanh with attrs min/max),
    add, maxpool, avgpool, flatten, output. Roles: input / weight / bias / output TensorTypes
    read from the quantizers (an op without its own quantizer passes its input's type through);
    ``attrs["inputs"]`` names the producing layers; shapes appear once ``fpq_record_shapes``
    (called by ``fpq.calibrate``) has seen data.
    """
    tp = TypePlan()
    modules = dict(q.named_modules())
    shapes = q.meta.get("fpq_shapes", {})
    ttype, lname = {}, {}   # fx node -> TensorType of its value / name of the layer producing it

    def add(node, name, op, out_type, ins, **attrs):
        # a module called more than once (one shared nn.MaxPool2d / nn.ReLU) is one layer per call
        base, k = name, 2
        while name in tp.layers:
            name, k = f"{base}:{k}", k + 1
        layer = LayerPlan(name, op)
        if ins and ins[0] in ttype:
            layer.tensors["input"] = ttype[ins[0]]
        if out_type is not None:
            layer.tensors["output"] = out_type
        layer.attrs["inputs"] = [lname[i] for i in ins if i in lname]
        if len(ins) > 1:
            layer.attrs["input_types"] = [ttype.get(i) for i in ins]
        if node.name in shapes:
            layer.attrs["out_shape"] = shapes[node.name]
        if ins and ins[0].name in shapes:
            layer.attrs["in_shape"] = shapes[ins[0].name]
        layer.attrs.update(attrs)
        tp.add(layer)
        ttype[node], lname[node] = out_type, name
        return layer

    for node in q.graph.nodes:
        ins = [a for a in node.args if isinstance(a, fx.Node)]
        if node.op == "placeholder":
            continue
        if node.op == "output":
            add(node, "output", "output", ttype.get(ins[0]) if ins else None, ins)
            continue
        if node.op == "call_module":
            m, name = modules[node.target], node.target
            if isinstance(m, FpqInput):
                add(node, name, "input", tensor_type_of(m.fpq_output), ins)
            elif isinstance(m, _WEIGHT_LAYERS):
                attrs = {"out_features" if isinstance(m, FpqLinear) else "out_channels":
                         m.out_features if isinstance(m, FpqLinear) else m.out_channels}
                if isinstance(m, FpqLinear):
                    attrs["in_features"] = m.in_features
                    fan_in = m.in_features
                else:
                    attrs.update(in_channels=m.in_channels, kernel=tuple(m.kernel_size),
                                 stride=tuple(m.stride), padding=tuple(m.padding),
                                 dilation=tuple(m.dilation), groups=m.groups)
                    fan_in = int(np.prod(m.kernel_size)) * (m.in_channels // m.groups)
                if m.fpq_accumulator_bits is not None:
                    attrs["accumulator_bits"] = m.fpq_accumulator_bits
                layer = add(node, name, m.fpq_op, tensor_type_of(m.fpq_output), ins, **attrs)
                layer.fan_in = fan_in
                layer.tensors["weight"] = tensor_type_of(m.fpq_weight)
                layer.values["weight"] = _quantized_values(m.fpq_weight, m.weight)
                if m.fpq_bias is not None:
                    layer.tensors["bias"] = tensor_type_of(m.fpq_bias)
                    layer.values["bias"] = _quantized_values(m.fpq_bias, m.bias)
                _derive(layer)
            elif isinstance(m, FpqBatchNorm):
                # y = Q_out(x * s + t) per channel (dim 1): one product and one add per element
                layer = add(node, name, "batchnorm", tensor_type_of(m.fpq_output), ins, channels=m.num_features)
                layer.fan_in = 1
                layer.tensors["weight"] = tensor_type_of(m.fpq_weight)
                layer.values["weight"] = _quantized_values(m.fpq_weight, m.weight)
                layer.tensors["bias"] = tensor_type_of(m.fpq_bias)
                layer.values["bias"] = _quantized_values(m.fpq_bias, m.bias)
                _derive(layer)
            elif isinstance(m, FpqAdd):
                add(node, name, "add", tensor_type_of(m.fpq_output), ins)
            elif isinstance(m, FpqAvgPool):
                p = m.pool
                if isinstance(p, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
                    attrs = {"global": True}
                else:
                    attrs = {"kernel": p.kernel_size, "stride": p.stride, "padding": p.padding,
                             "ceil_mode": p.ceil_mode, "count_include_pad": p.count_include_pad}
                attrs["dims"] = 1 if isinstance(p, (nn.AvgPool1d, nn.AdaptiveAvgPool1d)) else 2
                # the mean is exact_sum / divisor, one correctly rounded float64 division
                attrs["divisor"] = m.window()  # None: the whole spatial extent (global)
                add(node, name, "avgpool", tensor_type_of(m.fpq_output), ins, **attrs)
            elif isinstance(m, FpqClamp):
                add(node, name, "relu", tensor_type_of(m.fpq_output), ins, min=m.min_val, max=m.max_val)
            elif isinstance(m, FpqAct):
                add(node, name, "quant", tensor_type_of(m.fpq_output), ins)
            elif isinstance(m, nn.ReLU):
                add(node, name, "relu", ttype.get(ins[0]), ins, min=0.0, max=float("inf"))
            elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
                add(node, name, "maxpool", ttype.get(ins[0]), ins, kernel=m.kernel_size, stride=m.stride,
                    padding=m.padding, dilation=m.dilation, ceil_mode=m.ceil_mode,
                    dims=1 if isinstance(m, nn.MaxPool1d) else 2)
            elif isinstance(m, nn.Flatten):
                add(node, name, "flatten", ttype.get(ins[0]), ins, start_dim=m.start_dim, end_dim=m.end_dim)
            else:
                raise ValueError(f"typeplan: unexpected module {name!r} ({type(m).__name__})")
            continue
        # functions and methods that pass values through
        target = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if target in ("relu",):
            add(node, node.name, "relu", ttype.get(ins[0]), ins[:1], min=0.0, max=float("inf"))
        elif target in ("flatten", "view", "reshape"):
            add(node, node.name, "flatten", ttype.get(ins[0]), ins[:1])
        elif target == "contiguous":
            ttype[node], lname[node] = ttype.get(ins[0]), lname.get(ins[0])
        # size / getattr / getitem: shape arithmetic, no tensor value
    return tp


def float_twin(m) -> nn.Module:
    """The plain torch Linear / Conv with the float (latent) weights of an fpq weight layer."""
    if isinstance(m, FpqLinear):
        f = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    else:
        cls = nn.Conv1d if isinstance(m, FpqConv1d) else nn.Conv2d
        f = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                m.groups, bias=m.bias is not None)
    with torch.no_grad():
        f.weight.copy_(m.weight)
        if m.bias is not None:
            f.bias.copy_(m.bias)
    return f


def dequantize_model(q) -> tuple[nn.Module, dict]:
    """A float GraphModule equal to ``q`` without quantizers, and q's scales keyed by (name, role).

    Lets ``fpq.convert`` take an already calibrated or trained fpq model: its float weights are
    kept and the scales of unchanged quantizers carried over.
    """
    carried = {(n, r): (tq.fmt, tq.scale_kind, tq.log2_scale.detach().clone())
               for n, r, tq in q.fpq_quantizers()}
    g = copy.deepcopy(q)
    modules = dict(g.named_modules())
    for node in list(g.graph.nodes):
        if node.op != "call_module":
            continue
        m = modules[node.target]
        parent, _, leaf = node.target.rpartition(".")
        owner = g.get_submodule(parent) if parent else g
        if isinstance(m, FpqInput):
            node.replace_all_uses_with(node.args[0])
            g.graph.erase_node(node)
            delattr(owner, leaf)
        elif isinstance(m, FpqAdd):
            with g.graph.inserting_after(node):
                new = g.graph.call_function(operator.add, tuple(node.args))
            node.replace_all_uses_with(new)
            g.graph.erase_node(node)
            new.name = node.target
            delattr(owner, leaf)
        elif isinstance(m, _WEIGHT_LAYERS):
            setattr(owner, leaf, float_twin(m))
        elif isinstance(m, FpqBatchNorm):
            setattr(owner, leaf, to_batchnorm(m))
        elif isinstance(m, FpqAvgPool):
            setattr(owner, leaf, m.pool)
        elif isinstance(m, FpqClamp):
            setattr(owner, leaf, nn.Hardtanh(m.min_val, m.max_val))
    g.graph.lint()
    return fx.GraphModule(g, g.graph), carried
