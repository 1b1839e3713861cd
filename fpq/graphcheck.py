"""The checks ``fpq.convert`` runs on the traced torch.fx graph before any work: what traces but
fpq cannot quantize, export or build is refused here, naming the node and what is allowed."""
from __future__ import annotations

import operator

import torch
from torch import fx, nn


# modules that become fpq layers with quantizers (each call needs its own quantizers and its own
# export / HLS layer, so such a module may be called only once)
_TABLE_MODULES = (nn.Sigmoid, nn.Tanh, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.ELU, nn.Softplus,
                  nn.LeakyReLU, nn.PReLU)
_QUANTIZED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ReLU6, nn.Hardtanh, nn.AvgPool1d, nn.AvgPool2d,
                      nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Softmax,
                      nn.LayerNorm) + _TABLE_MODULES
_META_ATTRIBUTES = ("shape", "ndim", "dtype", "device")   # tensor attributes that are not tensors
_KEEP_BATCH = ("dimension 0 is the batch and must stay it: use torch.flatten(x, 1), x.flatten(1), "
               "nn.Flatten(), x.view(x.size(0), -1) or x.reshape(x.size(0), -1)")


def _refuse(node: fx.Node, what: str, allowed: str) -> ValueError:
    name = node.target if node.op == "call_module" else node.name   # a module by its path
    return ValueError(f"fpq.convert: node {name!r} ({what}) is not supported; {allowed}")


def _flatten_start(node: fx.Node, default: int = 0):
    """start_dim of a torch.flatten / Tensor.flatten call."""
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", default)


def _check_view(node: fx.Node) -> None:
    """A view / reshape must keep dimension 0 the batch: its first size is the batch size
    (x.size(0), x.shape[0]) or -1 followed by other sizes. A single size (x.reshape(-1)) or a
    fixed first size merges the batch into other dimensions. (view(-1, n) with the wrong n is
    caught on data by fpq.calibrate.)"""
    shape = list(node.args[1:]) or [node.kwargs.get("shape", node.kwargs.get("size"))]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = list(shape[0])
    what = f"x.{node.target}({', '.join(a.name if isinstance(a, fx.Node) else repr(a) for a in shape)})"
    if len(shape) == 1 and not isinstance(shape[0], fx.Node):
        raise _refuse(node, what + ": merges the batch dimension into one", _KEEP_BATCH)
    if isinstance(shape[0], int) and shape[0] != -1:
        raise _refuse(node, what + f": fixes the batch size to {shape[0]}", _KEEP_BATCH)


def _check_modules(model: nn.Module) -> None:
    """Refuse, before tracing, modules fpq cannot build that tracing would inline: a rotary position
    embedding (a submodule whose class name says Rotary / RoPE), named by its path. (A model that is
    itself one is traced and refused by ``_check_graph``, naming the node.)"""
    for path, m in model.named_modules():
        name = type(m).__name__
        if not path:
            continue
        if "rotary" in name.lower() or name.lower().startswith("rope"):
            raise ValueError(f"fpq.convert: module {path!r} ({name}) is a rotary position embedding, which fpq does "
                             "not build; use a learned (added) positional embedding")


def _check_graph(gm: fx.GraphModule) -> None:
    """Refuse, before any work, what traces but fpq cannot quantize, export or build: several
    inputs, a quantized module called more than once, a parameter used outside a layer, indexing
    or slicing a tensor, tensor attributes such as .mT, and reshapes that merge the batch."""
    modules = dict(gm.named_modules())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    # an input with a default that forward never uses (forward(x, mask=None)) is harmless; a
    # required one is still an input the caller must pass
    inputs = [n for n in placeholders if n.users or not n.args]
    if len(inputs) != 1:
        raise ValueError(f"fpq.convert: fpq supports single-input models; forward takes "
                         f"{len(inputs)} inputs {[n.target for n in inputs]}")
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], _QUANTIZED_MODULES):
            calls.setdefault(node.target, []).append(node.name)
    shared = {path: names for path, names in calls.items() if len(names) > 1}
    if shared:
        path, names = next(iter(shared.items()))
        raise ValueError(
            f"fpq.convert: module {path!r} ({type(modules[path]).__name__}) is called {len(names)} times in "
            f"forward (nodes {names}); a Linear / Conv / BatchNorm / ReLU6 / Hardtanh / AvgPool gets its own "
            "quantizers and its own exported layer, so it must be called once (weight sharing is not "
            "supported): give each call its own module. Parameter-free nn.ReLU, nn.MaxPool1d/2d and "
            "nn.Flatten may be reused." + (f" Also called more than once: {sorted(shared)[1:]}" if len(shared) > 1 else ""))
    meta = set()    # nodes holding shapes / sizes / dtypes, not tensors
    for node in gm.graph.nodes:
        src = node.args[0] if node.args else None
        if node.op == "get_attr":
            if node.users:
                raise _refuse(node, f"parameter or buffer {node.target!r} used outside a layer, in "
                                    f"{[u.name for u in node.users]}",
                              "parameters must belong to a Linear, Conv or BatchNorm layer")
        elif node.op == "call_method" and node.target == "size":
            meta.add(node)
        elif node.op == "call_method" and node.target in ("view", "reshape"):
            _check_view(node)
        elif (node.op == "call_method" and node.target == "flatten") or node.target is torch.flatten:
            if _flatten_start(node) == 0:
                raise _refuse(node, "flatten with start_dim=0 merges the batch dimension", _KEEP_BATCH)
        elif node.op == "call_module" and isinstance(modules[node.target], nn.Flatten):
            if modules[node.target].start_dim == 0:
                raise _refuse(node, "nn.Flatten(start_dim=0) merges the batch dimension", _KEEP_BATCH)
        elif node.op == "call_function" and node.target is getattr:
            if node.args[1] not in _META_ATTRIBUTES:
                raise _refuse(node, f"tensor attribute .{node.args[1]}",
                              f"allowed tensor attributes: {', '.join(_META_ATTRIBUTES)} "
                              "(transposes and views such as .T / .mT are not supported)")
            meta.add(node)
        elif node.op == "call_function" and node.target is operator.getitem:
            if src not in meta:
                raise _refuse(node, f"indexing or slicing {getattr(src, 'name', src)!r} (x[...])",
                              "fpq layers take whole tensors; only shapes may be indexed "
                              "(x.shape[0], x.size()[1])")
            meta.add(node)
