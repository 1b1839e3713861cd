"""Cross-layer weight equalization (Nagel et al. 2019) and SmoothQuant-style activation
equalization (Xiao et al. 2022), on the float weights of an fpq model before calibration.

Both rescale channel j between a producer layer P and its consumer C: P's output channel j
(weight row and bias) is divided by s_j and C's input channel j (weight column) multiplied by
s_j. The float network computes the same function when everything between P and C is
positively homogeneous per channel (ReLU, max / average pooling, flatten), and the 1/s_j folds
into P's weights: no extra per-channel multiply appears in the exported graph, so the TypePlan
keeps only fpq Formats. Weight equalization takes s_j = sqrt(r_P,j / r_C,j) (weight ranges);
activation equalization s_j = a_j**alpha / r_C,j**(1 - alpha) with a_j the float activation
range of channel j at C's input on the calibration batches.

Written here rather than with ``brevitas.graph.equalize``: Brevitas' region search works on
float graphs and treats modules it does not know (fpq's FpqAdd / FpqAct quantizers) as region
boundaries, i.e. it skips them silently; fpq must instead name a pair it cannot equalize. A
producer whose output reaches anything else (a residual add, a second consumer, ReLU6 /
Hardtanh, the graph output) raises an error naming it; pass ``equalize_layers=[...]`` to choose
the producers explicitly.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..nn.layers import FpqAvgPool, FpqConv1d, FpqConv2d, FpqLinear
from . import _common as C

_HOMOGENEOUS_MODULES = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, FpqAvgPool)
_HOMOGENEOUS_FUNCTIONS = (F.relu, torch.relu, torch.flatten)
_HOMOGENEOUS_METHODS = ("relu", "flatten", "view", "reshape", "contiguous")


def _chain(q, name):
    """(consumer name, [nodes between]) or raise naming ``name`` and why it cannot be equalized."""
    modules = dict(q.named_modules())
    node = next(n for n in q.graph.nodes if n.op == "call_module" and n.target == name)
    path = []
    cur = node
    while True:
        users = list(cur.users)
        if len(users) != 1:
            what = "the graph output" if not users else f"{len(users)} consumers ({', '.join(u.name for u in users)})"
            raise ValueError(f"equalization: layer {name!r} cannot be equalized: its output reaches "
                             f"{what}, not a single Linear/Conv through ReLU / pooling / flatten; "
                             "pass equalize_layers=[...] naming only equalizable producers")
        u = users[0]
        if u.op == "call_module" and isinstance(modules[u.target], C.WEIGHT_LAYERS):
            return u.target, path
        ok = ((u.op == "call_module" and isinstance(modules[u.target], _HOMOGENEOUS_MODULES))
              or (u.op == "call_function" and u.target in _HOMOGENEOUS_FUNCTIONS)
              or (u.op == "call_method" and u.target in _HOMOGENEOUS_METHODS))
        if not ok:
            kind = type(modules[u.target]).__name__ if u.op == "call_module" else str(u.target)
            raise ValueError(f"equalization: layer {name!r} cannot be equalized: its output goes "
                             f"through {u.name!r} ({kind}), which is not positively homogeneous per "
                             "channel (supported between the two layers: ReLU, MaxPool, AvgPool, "
                             "flatten); pass equalize_layers=[...] naming only equalizable producers")
        path.append(u)
        cur = u


def pairs(q, names=None):
    """[(producer, consumer)] for the named producers (default: every layer but the last)."""
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
        c, _ = _chain(q, n)
        C.check_groups(c, modules[c])
        out.append((n, c))
    return out


def _column_view(p, c, s):
    """s (P's out channels) expanded to C's input features (flatten: s repeated per position)."""
    cin = c.weight.shape[1]
    if cin == s.numel():
        return s
    if isinstance(c, FpqLinear) and cin % s.numel() == 0:   # flatten of (N, ch, *spatial), ch-major
        return s.repeat_interleave(cin // s.numel())
    raise ValueError(f"equalization: cannot map {s.numel()} channels onto {cin} inputs of the consumer")


def _scale_pair(p, c, s):
    s = s.to(torch.float64)
    with torch.no_grad():
        view = (-1,) + (1,) * (p.weight.dim() - 1)
        p.weight.copy_((p.weight.to(torch.float64) / s.view(view)).to(p.weight.dtype))
        if p.bias is not None:
            p.bias.copy_((p.bias.to(torch.float64) / s).to(p.bias.dtype))
        sc = _column_view(p, c, s)
        cview = (1, -1) + (1,) * (c.weight.dim() - 2)
        c.weight.copy_((c.weight.to(torch.float64) * sc.view(cview)).to(c.weight.dtype))


def _col_range(p, c):
    """max |W_C| per input channel of P's numbering."""
    w = c.weight.detach().abs().to(torch.float64)
    cols = w.transpose(0, 1).reshape(w.shape[1], -1).amax(1)     # per input feature
    n = p.weight.shape[0]
    return cols.reshape(n, -1).amax(1) if cols.numel() != n else cols


def _safe(s):
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    return torch.clamp(s, 1e-4, 1e4)


def weight_equalization(q, batches, *, progress=True, equalize_layers=None, equalize_iters=3,
                        report=None, **_):
    from tqdm.auto import tqdm

    ps = pairs(q, equalize_layers)
    modules = dict(q.named_modules())
    for it in tqdm(range(equalize_iters), desc="fpq.ptq weight_equalization", disable=not progress):
        for pn, cn in ps:
            p, c = modules[pn], modules[cn]
            r_p = C.w2d(p.weight.detach().abs().to(torch.float64)).amax(1)
            r_c = _col_range(p, c)
            _scale_pair(p, c, _safe(torch.sqrt(r_p / r_c)))
    if report is not None:
        report["weight_equalization"] = {"pairs": ps}


@torch.no_grad()
def _act_ranges(q, producers, batches):
    """max |output| per channel of each producer in the FLOAT network (quantizers bypassed)."""
    modules = dict(q.named_modules())
    ranges = {}
    # calibrate-style bypass: every quantizer records nothing and passes its input through
    tqs = [tq for _, _, tq in q.fpq_quantizers()]
    for tq in tqs:
        tq.observer = lambda x: None
    hooks = []
    for pn in producers:
        c_name, _ = _chain(q, pn)

        def hook(mod, inp, _pn=pn):
            x = inp[0]
            x = x.value if hasattr(x, "value") else x
            x = x.detach().abs().to(torch.float64)
            n = modules[_pn].weight.shape[0]
            r = x.transpose(0, 1).reshape(x.shape[1], -1).amax(1)
            r = r.reshape(n, -1).amax(1) if r.numel() != n else r
            ranges[_pn] = r if _pn not in ranges else torch.maximum(ranges[_pn], r)
        hooks.append(modules[c_name].register_forward_pre_hook(hook))
    try:
        with C.eval_mode(q):
            for b in batches:
                q(C.first_tensor(b))
    finally:
        for h in hooks:
            h.remove()
        for tq in tqs:
            tq.observer = None
    return ranges


def act_equalization(q, batches, *, progress=True, equalize_layers=None, alpha=0.5, report=None, **_):
    from tqdm.auto import tqdm

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"act_equalization: alpha must be in [0, 1], got {alpha}")
    ps = pairs(q, equalize_layers)
    modules = dict(q.named_modules())
    ranges = _act_ranges(q, [p for p, _ in ps], batches)
    for pn, cn in tqdm(ps, desc="fpq.ptq act_equalization", disable=not progress):
        p, c = modules[pn], modules[cn]
        a = ranges[pn]
        r_c = _col_range(p, c)
        s = _safe(a ** alpha / r_c ** (1 - alpha))
        # X' = X / s (folded into P's rows), W_C' = W_C * s: SmoothQuant's migration
        _scale_pair(p, c, s)
    if report is not None:
        report["act_equalization"] = {"pairs": ps, "alpha": alpha}
