"""Functional forms -> the modules fpq.convert quantizes (a torch.fx pass run by ``fpq.convert``).

``F.relu6(x)``, ``F.hardtanh(x, a, b)``, ``torch.clamp(x, a, b)`` / ``x.clamp(...)`` /
``torch.clip`` with constant bounds, ``F.max_pool1d/2d``, ``F.avg_pool1d/2d``,
``F.adaptive_avg_pool1d/2d(x, 1)``, a spatial mean ``x.mean(dims)`` / ``torch.mean(x, dims)``
and the table activations (``torch.sigmoid`` / ``x.sigmoid()`` / ``F.sigmoid``, ``torch.tanh`` /
``x.tanh()``, ``F.silu``, ``F.gelu`` (both forms), ``F.hardswish``, ``F.hardsigmoid``, ``F.elu``,
``F.softplus``, ``F.leaky_relu``, with constant arguments) and nearest-neighbour upsampling by integer
factors (``F.interpolate(x, scale_factor=k, mode="nearest")``, ``F.upsample``, ``F.upsample_nearest``)
become the nn modules of the same computation (nn.Hardtanh, nn.MaxPool2d, nn.AvgPool2d,
nn.AdaptiveAvgPool2d(1), nn.Upsample followed by torch.flatten(·, 1) for a mean without keepdim), each call
its own module named after its fx node, so that the rest of ``fpq.convert`` (quantizers,
overrides by name, export, HLS) treats both forms alike. A call fpq cannot map (a tensor bound, a
mean over other axes, one whose input rank is unknown) is refused here, naming the call and
what to write instead. ``check_cat`` and ``check_upsample`` state what fpq.convert keeps of
``torch.cat`` / ``torch.concat`` (a join along a constant non-batch axis) and of ``nn.Upsample``.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

INF = float("inf")

# functional pooling -> (module class, its parameter names in the functional's positional order)
_POOLS = {
    F.max_pool1d: (nn.MaxPool1d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
    F.max_pool2d: (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
    F.avg_pool1d: (nn.AvgPool1d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")),
    F.avg_pool2d: (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                  "divisor_override")),
    F.adaptive_avg_pool1d: (nn.AdaptiveAvgPool1d, ("output_size",)),
    F.adaptive_avg_pool2d: (nn.AdaptiveAvgPool2d, ("output_size",)),
}
_CLAMPS = (torch.clamp, torch.clip, F.hardtanh, F.relu6)
_CLAMP_METHODS = ("clamp", "clip")
_MEANS = (torch.mean,)
# table activations: call -> (module class, its parameter names in the functional's positional order)
_TABLES = {
    torch.sigmoid: (nn.Sigmoid, ()), torch.tanh: (nn.Tanh, ()), F.silu: (nn.SiLU, ()),
    F.gelu: (nn.GELU, ("approximate",)), F.hardswish: (nn.Hardswish, ()), F.hardsigmoid: (nn.Hardsigmoid, ()),
    F.elu: (nn.ELU, ("alpha",)), F.softplus: (nn.Softplus, ("beta", "threshold")),
    F.leaky_relu: (nn.LeakyReLU, ("negative_slope",)),
}
_TABLE_METHODS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
_PRELU_CALLS = (torch.prelu, F.prelu)
_SOFTMAX_CALLS = (F.softmax, torch.softmax)   # and x.softmax(dim): nn.Softmax(dim), fpq.nn.normalization
_INTERPOLATES = (F.interpolate, F.upsample, F.upsample_nearest)
CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate)
_UPSAMPLE_OK = ("only nearest-neighbour upsampling by integer factors is supported (values are repeated, no "
                "arithmetic): nn.Upsample(scale_factor=2, mode='nearest') or F.interpolate(x, scale_factor=2, "
                "mode='nearest'), on a 1-D or 2-D feature map")

# modules and calls through which the number of spatial axes of a feature map stays the same
_SPATIAL = {nn.Conv1d: 1, nn.MaxPool1d: 1, nn.AvgPool1d: 1, nn.AdaptiveAvgPool1d: 1,
            nn.Conv2d: 2, nn.MaxPool2d: 2, nn.AvgPool2d: 2, nn.AdaptiveAvgPool2d: 2, nn.BatchNorm2d: 2}
_SAME_RANK_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.BatchNorm1d, nn.Identity, nn.Dropout, nn.Sigmoid, nn.Tanh,
                      nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.ELU, nn.Softplus, nn.LeakyReLU, nn.PReLU,
                      nn.Upsample)
_SAME_RANK_CALLS = (F.relu, torch.relu, operator.add, torch.add, operator.iadd) + _CLAMPS + tuple(_TABLES) + \
    CAT_FUNCTIONS


def unique_name(gm: nn.Module, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first name no submodule of ``gm`` has."""
    names = dict(gm.named_modules())
    if base not in names:
        return base
    i = 1
    while f"{base}_{i}" in names:
        i += 1
    return f"{base}_{i}"


def _arg(node: fx.Node, i: int, name: str, default):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _refuse(node: fx.Node, what: str, instead: str) -> ValueError:
    return ValueError(f"fpq.convert: node {node.name!r} ({what}) is not supported: {instead}")


def _replace(gm: fx.GraphModule, node: fx.Node, module: nn.Module, flatten: bool = False) -> None:
    """Call ``module`` (a new submodule named after the node) instead of ``node``; ``flatten``
    appends torch.flatten(·, 1) (a mean that drops the spatial axes)."""
    name = unique_name(gm, node.name)
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node.args[0],))
    out = new
    if flatten:
        with gm.graph.inserting_after(new):
            out = gm.graph.call_function(torch.flatten, (new, 1))
    node.replace_all_uses_with(out)
    gm.graph.erase_node(node)


def _bound(node: fx.Node, value, what: str):
    if value is None:
        return None
    if isinstance(value, fx.Node) or not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _refuse(node, f"a clamp whose {what} bound is {getattr(value, 'name', value)!r}",
                      "only constant number bounds are supported (write torch.clamp(x, -1.0, 1.0) or "
                      "nn.Hardtanh(-1.0, 1.0))")
    return float(value)


def _clamp_module(node: fx.Node) -> nn.Module:
    t = node.target
    if t is F.relu6:
        return nn.ReLU6()
    if t is F.hardtanh:
        lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
    else:   # torch.clamp / torch.clip / x.clamp / x.clip
        lo, hi = _arg(node, 1, "min", None), _arg(node, 2, "max", None)
    lo, hi = _bound(node, lo, "lower"), _bound(node, hi, "upper")
    if lo is None and hi is None:
        raise _refuse(node, "a clamp without bounds", "give torch.clamp a min or a max")
    return nn.Hardtanh(-INF if lo is None else lo, INF if hi is None else hi)


def _pool_module(node: fx.Node) -> nn.Module:
    cls, names = _POOLS[node.target]
    kw = {n: _arg(node, i + 1, n, None) for i, n in enumerate(names)}
    kw = {k: v for k, v in kw.items() if v is not None}
    if any(isinstance(v, fx.Node) for v in kw.values()):
        raise _refuse(node, f"{node.target.__name__} with a computed argument", "pass constant pooling arguments")
    if kw.get("return_indices"):
        raise _refuse(node, f"{node.target.__name__}(return_indices=True)", "max pooling indices are not supported")
    return cls(**kw)


def _table_module(node: fx.Node) -> nn.Module:
    if node.op == "call_method":
        return _TABLE_METHODS[node.target]()
    cls, names = _TABLES[node.target]
    kw = {n: _arg(node, i + 1, n, None) for i, n in enumerate(names)}
    kw = {k: v for k, v in kw.items() if v is not None}
    if any(isinstance(v, fx.Node) for v in kw.values()):
        raise _refuse(node, f"{getattr(node.target, '__name__', node.target)} with a computed argument",
                      "pass constant arguments (the table is computed once)")
    return cls(**kw)


def _softmax_module(node: fx.Node) -> nn.Module:
    dim = _arg(node, 1, "dim", None)
    dtype = node.args[3] if len(node.args) > 3 else node.kwargs.get("dtype")
    if isinstance(dim, fx.Node) or not isinstance(dim, int) or isinstance(dim, bool) or dtype is not None:
        raise _refuse(node, "softmax without a constant int dim, or with a dtype",
                      "call softmax(x, dim=-1) (fpq's exact softmax works over the last axis)")
    return nn.Softmax(dim)


def _spatial_axes(node, modules) -> int | None:
    """Number of spatial axes of ``node``'s output, read back through rank-keeping ops to a
    Conv / pool / BatchNorm2d; None when nothing tells."""
    while isinstance(node, fx.Node):
        if node.op == "call_module":
            m = modules.get(node.target)   # None: a module added after ``modules`` was read (an FpqAdd)
            for cls, nd in _SPATIAL.items():
                if type(m) is cls:
                    return nd
            if not isinstance(m, _SAME_RANK_MODULES):
                return None
        elif not ((node.op == "call_function" and node.target in _SAME_RANK_CALLS) or
                  (node.op == "call_method" and node.target in ("relu",) + _CLAMP_METHODS + tuple(_TABLE_METHODS))):
            return None
        if node.op == "call_function" and node.target in CAT_FUNCTIONS:
            node = next(iter(node.args[0]), None) if node.args and isinstance(node.args[0], (list, tuple)) else None
        else:
            node = next((a for a in node.args if isinstance(a, fx.Node)), None)
    return None


def _mean_module(node: fx.Node, modules):
    """(AdaptiveAvgPool1d/2d(1), whether to flatten) for a mean over every spatial axis."""
    dims = _arg(node, 1, "dim", None)
    keep = bool(_arg(node, 2, "keepdim", False))
    instead = ("only a mean over every spatial axis of a Conv / pool feature map is supported: write "
               "nn.AdaptiveAvgPool2d(1) (or AdaptiveAvgPool1d(1)) then torch.flatten(x, 1)")
    if node.kwargs.get("dtype") is not None or dims is None or isinstance(dims, fx.Node):
        raise _refuse(node, "a mean over all axes or with a dtype", instead)
    dims = [dims] if isinstance(dims, int) else list(dims)
    nd = _spatial_axes(node.args[0], modules)
    if nd is None:
        raise _refuse(node, f"mean over dims {dims} of a tensor whose rank fpq cannot tell", instead)
    rank = nd + 2
    if sorted(d % rank for d in dims) != list(range(2, rank)):
        raise _refuse(node, f"mean over dims {dims} of a {rank}-D feature map", instead)
    pool = nn.AdaptiveAvgPool1d(1) if nd == 1 else nn.AdaptiveAvgPool2d(1)
    return pool, not keep


def _int_factors(scale) -> tuple | None:
    """The integer factors of a scale_factor (a number or a tuple of them), None when any is not one."""
    scale = tuple(scale) if isinstance(scale, (tuple, list)) else (scale,)
    if not scale or any(isinstance(f, (bool, fx.Node)) or not isinstance(f, (int, float)) for f in scale):
        return None
    if any(float(f) != int(f) or int(f) < 1 for f in scale):
        return None
    return tuple(int(f) for f in scale)


def check_upsample(where: str, m: nn.Upsample) -> None:
    """Refuse an nn.Upsample fpq cannot keep exact (naming ``where`` and what is allowed)."""
    what = f"fpq.convert: upsampling {where!r} (mode={m.mode!r}, scale_factor={m.scale_factor!r}, size={m.size!r})"
    if m.mode != "nearest":
        raise ValueError(f"{what} is not supported: mode {m.mode!r} interpolates (new values, rounded); {_UPSAMPLE_OK}")
    if m.size is not None or m.scale_factor is None or _int_factors(m.scale_factor) is None:
        raise ValueError(f"{what} is not supported: the factor must be given as scale_factor, a whole number >= 1 "
                         f"(or one per spatial axis); {_UPSAMPLE_OK}")
    if getattr(m, "recompute_scale_factor", None):
        raise ValueError(f"{what} is not supported with recompute_scale_factor=True; {_UPSAMPLE_OK}")


def _interpolate_module(node: fx.Node) -> nn.Module:
    if node.target is F.upsample_nearest:
        kw = {"size": _arg(node, 1, "size", None), "scale_factor": _arg(node, 2, "scale_factor", None),
              "mode": "nearest"}
    else:
        kw = {n: _arg(node, i + 1, n, d) for i, (n, d) in enumerate(
            (("size", None), ("scale_factor", None), ("mode", "nearest"), ("align_corners", None),
             ("recompute_scale_factor", None)))}
    if node.kwargs.get("antialias"):
        kw["mode"] = f"{kw['mode']} (antialias)"
    if any(isinstance(v, fx.Node) for v in kw.values()):
        raise _refuse(node, f"{node.target.__name__} with a computed argument", _UPSAMPLE_OK)
    m = nn.Upsample(kw["size"], kw["scale_factor"], "nearest", None, kw["recompute_scale_factor"])
    m.mode = kw["mode"]   # checked, not trusted: check_upsample names a bad mode
    check_upsample(node.name, m)
    return m


def check_cat(node: fx.Node, modules) -> None:
    """Refuse a torch.cat / torch.concat fpq cannot keep: its tensors must be a list of graph
    tensors and its dim a constant that is not the batch axis (0, or -rank where the rank is known)."""
    tensors, dim = _arg(node, 0, "tensors", None), _arg(node, 1, "dim", _arg(node, 1, "axis", 0))
    name = getattr(node.target, "__name__", str(node.target))
    ok = (f"fpq keeps torch.{name}(tensors, dim) of two or more quantized tensors along a constant axis other "
          "than the batch (dim=1 joins channels / features)")
    if not isinstance(tensors, (list, tuple)) or not tensors or not all(isinstance(t, fx.Node) for t in tensors):
        raise _refuse(node, f"torch.{name} of {tensors!r}", ok + "; every joined tensor must be computed by the "
                                                               "network (no constants)")
    if isinstance(dim, fx.Node) or isinstance(dim, bool) or not isinstance(dim, int):
        raise _refuse(node, f"torch.{name} along a computed axis {getattr(dim, 'name', dim)!r}", ok)
    nd = _spatial_axes(tensors[0], modules)
    rank = None if nd is None else nd + 2
    if rank is None and _feature_vector(tensors[0], modules):
        rank = 2
    if dim == 0 or (rank is not None and dim == -rank):
        raise _refuse(node, f"torch.{name}(..., dim={dim}) along the batch axis", ok)


def _feature_vector(node, modules) -> bool:
    """Whether ``node`` is a Linear's output (through rank-keeping ops): a (batch, features) tensor."""
    while isinstance(node, fx.Node):
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.Linear):
            return True
        if not ((node.op == "call_module" and isinstance(modules.get(node.target), _SAME_RANK_MODULES)) or
                (node.op == "call_function" and node.target in _SAME_RANK_CALLS)):
            return False
        node = next(iter(node.args[0]), None) if node.target in CAT_FUNCTIONS else \
            next((a for a in node.args if isinstance(a, fx.Node)), None)
    return False


def functional_to_modules(gm: fx.GraphModule) -> None:
    """Rewrite the functional forms listed in the module docstring into modules, in place."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _CLAMPS or \
                node.op == "call_method" and node.target in _CLAMP_METHODS:
            _replace(gm, node, _clamp_module(node))
        elif node.op == "call_function" and node.target in _TABLES or \
                node.op == "call_method" and node.target in _TABLE_METHODS:
            _replace(gm, node, _table_module(node))
        elif node.op == "call_function" and node.target in _SOFTMAX_CALLS or \
                node.op == "call_method" and node.target == "softmax":
            _replace(gm, node, _softmax_module(node))
        elif node.op == "call_function" and node.target in _PRELU_CALLS:
            raise _refuse(node, "F.prelu with a weight tensor", "use nn.PReLU(num_parameters) (its slopes are a "
                                                                 "parameter of the layer, quantized into its table)")
        elif node.op == "call_function" and node.target in _POOLS:
            _replace(gm, node, _pool_module(node))
        elif node.op == "call_function" and node.target in _INTERPOLATES:
            _replace(gm, node, _interpolate_module(node))
        elif node.op == "call_function" and node.target in _MEANS or \
                node.op == "call_method" and node.target == "mean":
            pool, flatten = _mean_module(node, modules)
            _replace(gm, node, pool, flatten)
        else:
            continue
        modules = dict(gm.named_modules())
    gm.graph.lint()
    gm.recompile()
