"""Cross-layer weight equalization (Nagel et al. 2019) and SmoothQuant-style activation
equalization (Xiao et al. 2022), on the float weights of an fpq model before calibration.

Both rescale channel j of a region: the producers' output channel j (weight row and bias) is
divided by s_j and the consumers' input channel j (weight column) multiplied by s_j. The float
network computes the same function when everything between them is positively homogeneous per
channel (ReLU, max / average pooling, flatten), and the 1/s_j folds into the producers'
weights: no extra per-channel multiply appears in the exported graph, so the TypePlan keeps only
fpq Formats. A region is a producer P and the Linear / Conv layers its output reaches, its
consumers; where the output reaches a residual add, the add's other operand must carry the same
scaling, so the layer producing it (traced back through ReLU / pooling) joins the producers and
the add's output is followed to its own consumers. A layer can be both (a residual block's conv
reads the scaled tensor and writes the add's other operand): its columns are multiplied and its
rows divided by the same s. Weight equalization takes s_j = sqrt(r_P,j / r_C,j) (max |weight|
over the producers' rows and the consumers' columns); activation equalization
s_j = a_j**alpha / r_C,j**(1 - alpha) with a_j the float activation range of channel j at the
consumers' inputs on the calibration batches.

Written here rather than with ``brevitas.graph.equalize``: Brevitas' region search works on
float graphs and treats modules it does not know (fpq's FpqAdd / FpqAct quantizers) as region
boundaries, i.e. it skips them silently; fpq must instead name a layer it cannot equalize. An
output that reaches anything else (ReLU6 / Hardtanh, the graph output, an add whose other
operand comes from no Linear / Conv) raises an error naming the layer; pass
``equalize_layers=[...]`` to choose the producers explicitly.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..nn.layers import FpqAdd, FpqAvgPool, FpqLinear
from . import _common as C

_HOMOGENEOUS_MODULES = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, FpqAvgPool)
_HOMOGENEOUS_FUNCTIONS = (F.relu, torch.relu, torch.flatten)
_HOMOGENEOUS_METHODS = ("relu", "flatten", "view", "reshape", "contiguous")


def _kind(modules, u):
    return type(modules[u.target]).__name__ if u.op == "call_module" else str(u.target)


def _homogeneous(modules, u):
    return ((u.op == "call_module" and isinstance(modules[u.target], _HOMOGENEOUS_MODULES))
            or (u.op == "call_function" and u.target in _HOMOGENEOUS_FUNCTIONS)
            or (u.op == "call_method" and u.target in _HOMOGENEOUS_METHODS))


def _is(modules, u, cls):
    return u.op == "call_module" and isinstance(modules[u.target], cls)


def _cannot(name, why):
    return ValueError(f"equalization: layer {name!r} cannot be equalized: {why}; pass "
                      "equalize_layers=[...] naming only equalizable producers")


def _sources(modules, node, name):
    """The Linear / Conv layers (and adds) that produce ``node``, an add's operand, through
    homogeneous ops and further adds: all of them must take the same channel scaling."""
    if _is(modules, node, C.WEIGHT_LAYERS):
        return [node]
    if _is(modules, node, FpqAdd):
        return [node] + [s for a in node.args if hasattr(a, "op") for s in _sources(modules, a, name)]
    if node.op != "placeholder" and _homogeneous(modules, node):
        return _sources(modules, next(a for a in node.args if hasattr(a, "op")), name)
    what = "the network input" if node.op == "placeholder" else f"{node.name!r} ({_kind(modules, node)})"
    raise _cannot(name, f"its output reaches a residual add whose other operand comes from {what}, "
                        "not from Linear/Conv layers through ReLU / pooling / adds, so that operand "
                        "cannot take the same channel scaling")


def region(q, name):
    """(producers, consumers): layer names whose rows / columns take the scaling of ``name``'s
    output channels, or raise naming ``name`` and why it cannot be equalized."""
    modules = dict(q.named_modules())
    nodes = {n.target: n for n in q.graph.nodes if n.op == "call_module"}
    producers, consumers = [name], []
    todo, seen = [nodes[name]], set()
    while todo:
        cur = todo.pop()
        if cur in seen:
            continue
        seen.add(cur)
        for u in cur.users:
            if u.op == "output":
                raise _cannot(name, "its output reaches the graph output, which cannot take a channel scaling")
            if _is(modules, u, C.WEIGHT_LAYERS):
                if u.target not in consumers:
                    consumers.append(u.target)
            elif _is(modules, u, FpqAdd):
                other = [a for a in u.args if hasattr(a, "op") and a is not cur]
                for o in other:         # x + x has no other operand: both are already scaled
                    for src in _sources(modules, o, name):
                        if _is(modules, src, C.WEIGHT_LAYERS) and src.target not in producers:
                            producers.append(src.target)
                        todo.append(src)      # follow every other use of the rescaled tensor
                todo.append(u)
            elif _homogeneous(modules, u):
                todo.append(u)
            else:
                raise _cannot(name, f"its output goes through {u.name!r} ({_kind(modules, u)}), which is "
                                    "not positively homogeneous per channel (supported between the "
                                    "layers: ReLU, MaxPool, AvgPool, flatten, residual add)")
    n = {modules[p].weight.shape[0] for p in producers}
    if len(n) != 1:
        raise _cannot(name, f"the producers {producers} of the residual add have different channel counts")
    return producers, consumers


def pairs(q, names=None):
    """[(producers, consumers)] regions of the named producers (default: every layer but the
    last; a region reached from several names is listed once)."""
    layers = C.weight_layers(q)
    modules = dict(q.named_modules())
    if names is None:
        names = [n for n, _ in layers[:-1]]
    known = {n for n, _ in layers}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"equalize_layers: {bad} are not Linear/Conv layers; layers: {sorted(known)}")
    out = []
    for n in names:
        C.check_groups(n, modules[n])
        if any(n in ps for ps, _ in out):
            continue
        ps, cs = region(q, n)
        for m in ps + cs:
            C.check_groups(m, modules[m])
        out.append((ps, cs))
    return out


def _column_view(c, s):
    """s (producer channels) expanded to C's input features (flatten: s repeated per position)."""
    cin = c.weight.shape[1]
    if cin == s.numel():
        return s
    if isinstance(c, FpqLinear) and cin % s.numel() == 0:   # flatten of (N, ch, *spatial), ch-major
        return s.repeat_interleave(cin // s.numel())
    raise ValueError(f"equalization: cannot map {s.numel()} channels onto {cin} inputs of the consumer")


def scale_region(q, ps, cs, s):
    """Producers' rows (and biases) divided by s, consumers' columns multiplied by s."""
    modules = dict(q.named_modules())
    s = s.to(torch.float64)
    with torch.no_grad():
        for pn in ps:
            p = modules[pn]
            view = (-1,) + (1,) * (p.weight.dim() - 1)
            p.weight.copy_((p.weight.to(torch.float64) / s.view(view)).to(p.weight.dtype))
            if p.bias is not None:
                p.bias.copy_((p.bias.to(torch.float64) / s).to(p.bias.dtype))
        for cn in cs:
            c = modules[cn]
            sc = _column_view(c, s)
            cview = (1, -1) + (1,) * (c.weight.dim() - 2)
            c.weight.copy_((c.weight.to(torch.float64) * sc.view(cview)).to(c.weight.dtype))


def _channel_max(t, n):
    """max |t| per index of dimension 1 (a weight's input features, an activation's features),
    then over the flattened positions of each of the producers' ``n`` channels (channel-major)."""
    r = t.abs().to(torch.float64).transpose(0, 1).reshape(t.shape[1], -1).amax(1)
    return r.reshape(n, -1).amax(1) if r.numel() != n else r


def _col_range(q, ps, cs):
    """max |W_C| per input channel (in the producers' numbering), over the consumers."""
    modules = dict(q.named_modules())
    n = modules[ps[0]].weight.shape[0]
    out = None
    for cn in cs:
        r = _channel_max(modules[cn].weight.detach(), n)              # per input channel
        out = r if out is None else torch.maximum(out, r)
    return out


def _row_range(q, ps):
    modules = dict(q.named_modules())
    return torch.stack([C.w2d(modules[p].weight.detach().abs().to(torch.float64)).amax(1) for p in ps]).amax(0)


def _safe(s):
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    return torch.clamp(s, 1e-4, 1e4)


def weight_equalization(q, batches, *, progress=True, equalize_layers=None, equalize_iters=3,
                        report=None, **_):
    from tqdm.auto import tqdm

    regions = pairs(q, equalize_layers)
    for it in tqdm(range(equalize_iters), desc="fpq.ptq weight_equalization", disable=not progress):
        for ps, cs in regions:
            scale_region(q, ps, cs, _safe(torch.sqrt(_row_range(q, ps) / _col_range(q, ps, cs))))
    if report is not None:
        report["weight_equalization"] = {"regions": regions}


@torch.no_grad()
def act_ranges(q, regions, batches):
    """{first producer: max |input| per channel over the region's consumers} in the FLOAT
    network (quantizers bypassed)."""
    modules = dict(q.named_modules())
    ranges = {}
    record = {}   # consumer name -> recorder (a consumer reads one tensor: it is in one region)
    for ps, cs in regions:
        n = modules[ps[0]].weight.shape[0]
        for cn in cs:
            def rec(mod, inp, _key=ps[0], _n=n):
                r = _channel_max(C._value(inp[0]).detach(), _n)
                ranges[_key] = r if _key not in ranges else torch.maximum(ranges[_key], r)
            record[cn] = rec
    with C.float_network(q):
        C.run_until(q, batches, record)
    return ranges


def act_equalization(q, batches, *, progress=True, equalize_layers=None, alpha=0.5, report=None, **_):
    from tqdm.auto import tqdm

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"act_equalization: alpha must be in [0, 1], got {alpha}")
    regions = pairs(q, equalize_layers)
    ranges = act_ranges(q, regions, batches)
    for ps, cs in tqdm(regions, desc="fpq.ptq act_equalization", disable=not progress):
        s = _safe(ranges[ps[0]] ** alpha / _col_range(q, ps, cs) ** (1 - alpha))
        # X' = X / s (folded into the producers' rows), W_C' = W_C * s: SmoothQuant's migration
        scale_region(q, ps, cs, s)
    if report is not None:
        report["act_equalization"] = {"regions": regions, "alpha": alpha}
