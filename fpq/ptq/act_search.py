"""The activation side of LLM-FP4 (Liu et al. 2023): per activation tensor, a search over the
format (ExMy split) and its exponent bias / clipping; and per-channel power-of-two activation
scales folded into the weights.

``act_search``: every activation quantizer (network input, each layer's output, add / pool
requantizers), in execution order, tries each candidate format (default: its own format; give
``act_format_candidates`` to search the split) at the scales s0 * 2**-k, k = 0..act_shifts, for
a po2 scale (a shift of the exponent bias; s0 the max rule of the float activation's maximum, so
k > 0 clips) or s0 * f, f from 1 down to act_min_clip, for a float scale. It keeps the candidate
with the smallest network-output error on the calibration batches between y_q, the quantized
network's output with the choices made so far, and y_float, the float network's output (every
quantizer bypassed): ``act_metric="mse"`` mean((y_q - y_float)**2), or ``"kl"`` the KL
divergence of their softmaxes (classifiers: MSE rewards clipping large logits into ties). Greedy and end to end rather than per layer, because an activation
quantizer's error matters only through what it does to the rest of the network (the last
layer's output quantizer has no consumer at all). Ties keep the earlier candidate (current
format, least clipping).

A candidate changes only its own tensor, so the nodes before its owner in the graph compute the
same values for every candidate: they run once per activation tensor (``_Prefix``, which carries
the values the rest of the graph reads from them) and each candidate runs only the rest.

``act_channel_scales``: LLM-FP4's per-channel activation scales. For each equalization region
(equalize.py: producers P whose outputs reach consumers C through ReLU / pooling / flatten /
residual adds), channel j gets the power-of-two scale s * 2**-k_j with
k_j = floor(log2(max_all / max_j)) (at most ``act_max_shift``, max_j the float range of channel j
at the consumers' inputs): the channel's range is stretched onto the tensor's range. fpq keeps the
activation quantizers per tensor and realizes the per-channel scale exactly by folding 2**k_j into
the producers' row j and bias and 2**-k_j into the consumers' column j (a power of two: exact in
floating point, so the float network is unchanged bit for bit). For minifloat weights the column
shift is the "pre-shifted exponent bias" of LLM-FP4: the column keeps its relative precision
unless it falls into the subnormals. The model keeps per-tensor
activation quantizers, so it stays a TypePlan of fpq Formats that every path takes unchanged.
It changes float weights, so ``fpq.ptq`` runs it before calibration.
"""
from __future__ import annotations

import math

import torch
from torch import fx

from ..formats import Int, Minifloat, finfo, parse_format
from ..nn.layers import FpqAct, FpqAdd, FpqAvgPool, FpqClamp, FpqInput
from ..nn.quantizers import observing
from . import _common as C
from . import equalize as _eq


def act_quantizers(q):
    """[(module name, module)] of every module owning an activation quantizer, execution order."""
    modules = dict(q.named_modules())
    out = []
    for node in q.graph.nodes:
        if node.op != "call_module":
            continue
        m = modules[node.target]
        if isinstance(m, C.WEIGHT_LAYERS + (FpqAct, FpqAdd, FpqAvgPool, FpqClamp)) and m.fpq_output is not None:
            out.append((node.target, m))
    return out


def replace_act_format(q, name, m, fmt):
    """Give module ``name`` an activation quantizer of format ``fmt`` (scale carried over);
    returns the module now holding it. The policy records the new format."""
    old = m.fpq_output
    kind = old.scale_kind
    if isinstance(m, C.WEIGHT_LAYERS):
        owner = C.rebuild_weight_layer(q, name, m, activations=fmt, fallback_kind=kind)
    elif isinstance(m, FpqAct):   # FpqInput too
        owner = type(m)(str(fmt), kind).train(m.training)
        C.set_module(q, name, owner)
    else:                          # FpqAdd / FpqAvgPool / FpqClamp requantize through .quant
        m.quant = FpqAct(str(fmt), kind).train(m.training)
        owner = m
    with torch.no_grad():
        owner.fpq_output.log2_scale.copy_(old.log2_scale)
    if isinstance(m, FpqInput):
        q.fpq_policy.inputs = str(fmt)
    else:
        C.record_formats(q, name, activations=str(fmt))
    return owner


@torch.no_grad()
def _float_pass(q, batches):
    """(float network outputs per batch, {id(tq): max |input|} of every activation quantizer)."""
    maxima = {}
    tqs = [tq for _, _, tq in q.fpq_quantizers()]

    def observer(tq):
        def rec(x):
            if tq.role != "weight" and tq.role != "bias":
                maxima[id(tq)] = max(maxima.get(id(tq), 0.0), float(x.detach().abs().max()))
        return rec
    with observing((tq, observer(tq)) for tq in tqs), C.eval_mode(q):
        ys = [q(C.first_tensor(b)).to(torch.float64) for b in batches]
    return ys, maxima


METRICS = ("mse", "kl")


class _Prefix:
    """The graph of ``q`` cut before one node: per batch, the values of the earlier nodes that the
    node and its successors read (the frontier). ``advance`` moves the cut forward by running the
    nodes in between once; ``outputs`` runs only the nodes from the cut to the output. Modules
    are looked up by name on every call, so a module replaced at or after the cut is used."""

    def __init__(self, q, batches):
        self.nodes = list(q.graph.nodes)
        self.interp = fx.Interpreter(q, garbage_collect_values=False)
        self.batches = batches
        self.start, self.envs = 0, [{"input": C.first_tensor(b)} for b in batches]

    def _run(self, env, stop):
        """Run nodes[start:stop] on a copy of the frontier ``env`` (tensors cloned: a node may
        work in place); returns the extended environment, or the output value at the output node."""
        live = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in env.items()}
        x = live.pop("input", None)
        self.interp.env = live
        for node in self.nodes[self.start:stop]:
            if node.op == "placeholder":
                self.interp.args_iter = iter([x])
            live[node] = self.interp.run_node(node)
            if node.op == "output":
                return live[node]
        return live

    def advance(self, stop):
        """Move the cut to node index ``stop``; back to the start first if it is behind the
        current cut (a module called twice, searched again for its first call)."""
        if stop < self.start:
            self.start, self.envs = 0, [{"input": C.first_tensor(b)} for b in self.batches]
        if stop == self.start:
            return
        later = set(self.nodes[stop:])
        envs = [self._run(env, stop) for env in self.envs]
        keep = [n for n in self.nodes[:stop] if any(u in later for u in n.users)]
        self.envs = [{n: env[n] for n in keep} for env in envs]
        self.start = stop

    def outputs(self):
        return [self._run(env, len(self.nodes)) for env in self.envs]


@torch.no_grad()
def output_error(q, batches, ys, metric="mse", prefix: _Prefix | None = None) -> float:
    """The network-output error over the calibration batches (float64): "mse" mean((q(x) -
    y_float)**2); "kl" mean over samples of KL(softmax(y_float) || softmax(q(x))) along dim 1,
    for classifiers, whose logits matter only through their softmax. With ``prefix`` only the
    nodes after its cut run (the same values: the nodes before the cut are unchanged)."""
    tot, n = 0.0, 0
    with C.eval_mode(q):
        outs = prefix.outputs() if prefix is not None else [q(C.first_tensor(b)) for b in batches]
        for yq, y in zip(outs, ys):
            yq = yq.to(torch.float64)
            if metric == "mse":
                tot += float(((yq - y) ** 2).sum())
                n += y.numel()
            else:
                p = torch.log_softmax(y, 1)
                tot += float((p.exp() * (p - torch.log_softmax(yq, 1))).sum())
                n += y.shape[0]
    return tot / n


def scale_candidates(fmt, kind, maxabs, shifts, min_clip):
    """Candidate scales (python floats, float32-representable), the max rule first."""
    m = maxabs if math.isfinite(maxabs) and maxabs > 0 else 1.0
    s0 = m / float(finfo(fmt).max)
    if kind == "po2":
        s0 = math.ldexp(1.0, math.ceil(math.log2(s0)))
        return [math.ldexp(s0, -k) for k in range(shifts + 1)]
    fs = torch.linspace(1.0, min_clip, 2 * shifts + 1, dtype=torch.float64).tolist()
    return [float(torch.tensor(s0 * f, dtype=torch.float32)) for f in fs]


def run(q, batches, *, seed=0, progress=True, act_format_candidates=None, act_shifts=4,
        act_min_clip=0.5, act_metric="mse", report=None, prefix_cache=True, **_):
    """``prefix_cache=False`` runs the whole network for every candidate (the same choices,
    slower; kept to test the cache against)."""
    from tqdm.auto import tqdm

    if act_metric not in METRICS:
        raise ValueError(f"act_search: act_metric must be one of {METRICS}, got {act_metric!r}")
    if act_shifts < 0 or not 0 < act_min_clip <= 1:
        raise ValueError("act_search: act_shifts must be >= 0 and act_min_clip in (0, 1]")
    cands = None
    if act_format_candidates:
        cands = [parse_format(c) for c in act_format_candidates]
        if not all(isinstance(c, (Int, Minifloat)) for c in cands):
            raise ValueError(f"act_search: candidates must be Int or Minifloat formats, got "
                             f"{[str(c) for c in cands]}")
    owners = act_quantizers(q)
    for name, m in owners:
        if m.fpq_output.scale_kind == "none":
            raise ValueError(f"act_search: layer {name!r} has activation format {m.fpq_output.fmt}, "
                             "which carries its own scaling (Fixed): no exponent bias / clipping to search")
    ys, maxima = _float_pass(q, batches)
    maxabs = {name: maxima.get(id(m.fpq_output), 0.0) for name, m in owners}
    chosen = {}
    first_call = {}
    for i, node in enumerate(q.graph.nodes):
        if node.op == "call_module":
            first_call.setdefault(node.target, i)   # a module called twice: its first call
    prefix = _Prefix(q, batches) if prefix_cache else None
    for name, m in tqdm(owners, desc="fpq.ptq act_search", disable=not progress):
        if prefix is not None:
            with C.eval_mode(q), torch.no_grad():
                prefix.advance(first_call[name])
        fmts = cands or [m.fpq_output.fmt]
        table, best = {}, None
        for fmt in fmts:
            if fmt != m.fpq_output.fmt:
                m = replace_act_format(q, name, m, fmt)
            tq = m.fpq_output
            for s in scale_candidates(fmt, tq.scale_kind, maxabs[name], act_shifts, act_min_clip):
                tq.set_scale(s)
                e = output_error(q, batches, ys, act_metric, prefix)
                table[(str(fmt), s)] = e
                if best is None or e < best[2]:
                    best = (fmt, s, e)
        fmt, s, e = best
        if fmt != m.fpq_output.fmt:
            m = replace_act_format(q, name, m, fmt)
        m.fpq_output.set_scale(s)
        chosen[name] = {"format": str(fmt), "scale": s, "error": e, "errors": table}
    if report is not None:
        report["act_search"] = chosen


def channel_shifts(maxima: torch.Tensor, max_shift: int) -> torch.Tensor:
    """k_j = floor(log2(max_all / max_j)) clamped to [0, max_shift] (0 for a dead channel)."""
    top = float(maxima.max())
    if top <= 0:
        return torch.zeros_like(maxima)
    k = torch.floor(torch.log2(top / torch.where(maxima > 0, maxima, torch.full_like(maxima, top))))
    return torch.clamp(k, 0, max_shift)


def channel_scales(q, batches, *, seed=0, progress=True, equalize_layers=None, act_max_shift=3,
                   report=None, **_):
    from tqdm.auto import tqdm

    if not (isinstance(act_max_shift, int) and act_max_shift >= 0):
        raise ValueError(f"act_channel_scales: act_max_shift must be an int >= 0, got {act_max_shift!r}")
    regions = _eq.pairs(q, equalize_layers)
    ranges = _eq.act_ranges(q, regions, batches)
    shifts = {}
    for ps, cs in tqdm(regions, desc="fpq.ptq act_channel_scales", disable=not progress):
        k = channel_shifts(ranges[ps[0]], act_max_shift)
        # producers' row j times 2**k_j, consumers' column j times 2**-k_j (scale_region divides
        # the producers by its factor)
        _eq.scale_region(q, ps, cs, torch.exp2(-k))
        shifts[ps[0]] = [int(v) for v in k.tolist()]
    if report is not None:
        report["act_channel_scales"] = {"regions": regions, "shifts": shifts}
