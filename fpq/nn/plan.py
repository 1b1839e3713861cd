"""The way back from a converted model to a float model (for re-conversion).

The TypePlan of a converted model is read from its QONNX export (``fpq.export.typeplan_of``), so
that a model and its file have one plan."""
from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn

from .batchnorm import FpqBatchNorm, to_batchnorm
from .layers import FpqAdd, FpqAvgPool, FpqClamp, FpqConv1d, FpqConv2d, FpqInput, FpqLinear
from .tables import FpqTable, float_module
from .normalization import FpqLayerNorm, FpqSoftmax, float_module as float_normalization
from .attention import FpqMatMul, FpqPositional, PositionalEmbedding
from .embedding import FpqEmbedding

_WEIGHT_LAYERS = (FpqLinear, FpqConv1d, FpqConv2d)


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
        elif isinstance(m, FpqMatMul):   # back to a @ b (* alpha), named as the module (overrides keep matching)
            with g.graph.inserting_after(node):
                new = g.graph.call_function(operator.matmul, tuple(node.args))
            with g.graph.inserting_after(new):
                out = new if m.alpha == 1.0 else g.graph.call_function(operator.mul, (new, m.alpha))
            node.replace_all_uses_with(out)
            g.graph.erase_node(node)
            new.name = node.target
            delattr(owner, leaf)
        elif isinstance(m, FpqPositional):
            setattr(owner, leaf, PositionalEmbedding(m.weight))
        elif isinstance(m, FpqEmbedding):   # its float table without the padding rows
            setattr(owner, leaf, nn.Embedding.from_pretrained(m.weight.detach()[:m.vocabulary].clone(), freeze=False))
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
        elif isinstance(m, FpqTable):
            setattr(owner, leaf, float_module(m))
        elif isinstance(m, (FpqSoftmax, FpqLayerNorm)):
            setattr(owner, leaf, float_normalization(m))
        elif isinstance(m, FpqClamp):
            inf = float("inf")
            setattr(owner, leaf, nn.Hardtanh(-inf if m.min_val is None else m.min_val,
                                             inf if m.max_val is None else m.max_val))
    g.graph.lint()
    return fx.GraphModule(g, g.graph), carried
