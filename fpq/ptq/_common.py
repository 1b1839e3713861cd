"""Shared pieces of the PTQ methods: the weight layers in execution order, their inputs on
calibration data (im2col rows), and the layer-output error every method measures.

The layer-output error of weights ``Wq`` is ``mean((X @ (W - Wq).T) ** 2)`` over calibration
rows ``X`` (the layer's quantized inputs, im2col'd for convolutions) and output channels, with
``W`` the layer's float weights before the rounding method ran. The bias cancels in it.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..calibration import first_tensor  # noqa: F401  (re-exported: the methods call C.first_tensor)
from ..nn.layers import FpqConv1d, FpqConv2d, FpqLinear, _value, quant_layer
from ..nn.quantizers import observing

WEIGHT_LAYERS = (FpqLinear, FpqConv1d, FpqConv2d)


def weight_layers(q):
    """[(name, module)] of the Linear / Conv layers of an fpq model, in graph execution order."""
    modules = dict(q.named_modules())
    out = []
    for node in q.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], WEIGHT_LAYERS):
            out.append((node.target, modules[node.target]))
    return out


def check_groups(name, m):
    if isinstance(m, (FpqConv1d, FpqConv2d)) and m.groups != 1:
        raise ValueError(f"layer {name!r}: grouped convolution (groups={m.groups}) is not supported "
                         "by this PTQ method (gptq: Brevitas' GPTQ is used as is; equalization: "
                         "channel j of a grouped consumer is not one column); only groups=1")


def im2col(m, x: torch.Tensor) -> torch.Tensor:
    """Rows of the layer's dot products: (rows, in_features) so that y = rows @ W2d.T."""
    if isinstance(m, FpqLinear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(m, FpqConv1d):
        x = x.unsqueeze(-2)
        k, s, p, d = (1, m.kernel_size[0]), (1, m.stride[0]), (0, m.padding[0]), (1, m.dilation[0])
    else:
        k, s, p, d = m.kernel_size, m.stride, m.padding, m.dilation
    if isinstance(p, str):
        raise ValueError(f"padding={p!r} is not supported by fpq's PTQ methods; give explicit padding")
    cols = F.unfold(x, k, dilation=d, padding=p, stride=s)        # (N, C*k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def w2d(w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """(out, in_features) weights so that y = im2col rows @ w2d.T. A grouped convolution's
    weights become block diagonal over the full im2col row (F.unfold is channel-major, so group
    g's inputs are one contiguous slice): the same sums, with the zeros outside each group."""
    w = w.reshape(w.shape[0], -1)
    if groups == 1:
        return w
    return torch.block_diag(*w.split(w.shape[0] // groups))


def groups_of(m) -> int:
    return int(getattr(m, "groups", 1))


@contextlib.contextmanager
def eval_mode(q):
    was = q.training
    q.eval()
    try:
        yield
    finally:
        q.train(was)


REFERENCES = ("quantized", "float")


def check_reference(method, reference):
    if reference not in REFERENCES:
        raise ValueError(f"{method}: reference must be one of {REFERENCES}, got {reference!r}")


@contextlib.contextmanager
def float_network(q, float_weights: dict | None = None, float_biases: dict | None = None):
    """Within the block ``q`` is its float network: every quantizer passes its input through
    (as during calibration) and the layers named in ``float_weights`` / ``float_biases`` hold
    those float parameters (after rounding the weights hold grid values; after bias correction
    the biases are corrected)."""
    modules = dict(q.named_modules())
    saved = []
    try:
        with observing((tq, lambda t: None) for _, _, tq in q.fpq_quantizers()):
            with torch.no_grad():
                for attr, params in (("weight", float_weights), ("bias", float_biases)):
                    for n, v in (params or {}).items():
                        p = getattr(modules[n], attr)
                        saved.append((p, p.detach().clone()))
                        p.copy_(v)
            yield q
    finally:
        with torch.no_grad():
            for p, v in saved:
                p.copy_(v)


class _Done(Exception):
    """Raised by run_until's hooks: every module of interest has seen its inputs."""


@torch.no_grad()
def run_until(q, batches, record: dict) -> None:
    """Run ``q`` (eval) on every batch, calling ``record[name](module, inputs)`` at each call of
    module ``name``. Each forward stops once every named module has made as many calls as the
    graph has for it: what follows cannot change their inputs, so it is not run."""
    modules = dict(q.named_modules())
    calls = {n: sum(1 for nd in q.graph.nodes if nd.op == "call_module" and nd.target == n) for n in record}
    stop = all(calls.values())     # a module not called by the graph itself: run to the end
    seen = {}

    def make(n, fn):
        def hook(mod, inp):
            fn(mod, inp)
            seen[n] = seen.get(n, 0) + 1
            if stop and all(seen.get(k, 0) >= c for k, c in calls.items()):
                raise _Done
        return hook
    hooks = [modules[n].register_forward_pre_hook(make(n, fn)) for n, fn in record.items()]
    try:
        with eval_mode(q):
            for b in batches:
                seen.clear()
                try:
                    q(first_tensor(b))
                except _Done:
                    pass
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def layer_inputs(q, layer_names, batches, max_rows: int = 8192, seed: int = 0,
                 float_weights: dict | None = None) -> dict:
    """{name: float64 (rows, in_features)} inputs of the named layers on ``batches`` in the
    model's current (quantized, eval) state; at most ``max_rows`` rows, sampled with ``seed``.
    With ``float_weights`` (a dict, may be empty): the inputs in the float network instead
    (``float_network``); the same seed samples the same rows, so the two are row-aligned."""
    if float_weights is not None:
        with float_network(q, float_weights):
            return layer_inputs(q, layer_names, batches, max_rows, seed)
    rows = {n: [] for n in layer_names}

    def recorder(n):
        return lambda mod, inp: rows[n].append(im2col(mod, _value(inp[0]).detach().to(torch.float32)))
    run_until(q, batches, {n: recorder(n) for n in layer_names})
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n, parts in rows.items():
        x = torch.cat(parts)
        if x.shape[0] > max_rows:
            x = x[torch.randperm(x.shape[0], generator=gen)[:max_rows]]
        out[n] = x.to(torch.float64)
    return out


@torch.no_grad()
def quantized_weight(m, w: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's weight quantizer applied to ``w`` (default: its own weight), float32."""
    w = m.weight if w is None else w
    y, _ = m.fpq_weight.quantize(w.detach().to(torch.float32))
    return y


@torch.no_grad()
def layer_error(x: torch.Tensor, w_ref: torch.Tensor, w_q: torch.Tensor, groups: int = 1,
                xf: torch.Tensor | None = None) -> float:
    """mean((x @ (w_ref - w_q).T) ** 2) in float64 (the layer-output MSE); with the float
    network's row-aligned inputs ``xf``: mean((xf @ w_ref.T - x @ w_q.T) ** 2)."""
    if xf is not None:
        d = xf @ w2d(w_ref, groups).to(torch.float64).T - x @ w2d(w_q, groups).to(torch.float64).T
        return float(torch.mean(d ** 2))
    d = w2d(w_ref, groups).to(torch.float64) - w2d(w_q, groups).to(torch.float64)
    return float(torch.mean((x @ d.T) ** 2))


@torch.no_grad()
def channel_errors(x: torch.Tensor, w_ref: torch.Tensor, w_q: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Per output channel mean squared output error (C,), float64."""
    d = w2d(w_ref, groups).to(torch.float64) - w2d(w_q, groups).to(torch.float64)
    return torch.mean((x @ d.T) ** 2, dim=0)


def set_weight(m, w: torch.Tensor) -> None:
    with torch.no_grad():
        m.weight.copy_(w.to(m.weight.dtype).reshape(m.weight.shape))


def rebuild_weight_layer(q, name, m, *, weights=None, activations=None, fallback_kind="po2"):
    """Replace weight layer ``name`` (module ``m``) by one built for new weight / output formats
    (None: keep the policy's), put it in ``q`` and record it in the policy; the scales of the
    roles that keep their format are carried over. Returns the new module."""
    from ..nn.plan import float_twin
    policy = q.fpq_policy
    f = dict(policy.layers[name])
    f.update({k: str(v) for k, v in (("weights", weights), ("activations", activations)) if v is not None})
    kind = m.fpq_weight.scale_kind
    new = quant_layer(float_twin(m), f["weights"], f["bias"], f["activations"],
                      kind if kind != "none" else fallback_kind, "channel" if m.fpq_weight.channels else "tensor")
    keep = ["fpq_bias"] + (["fpq_weight"] if weights is None else []) + (["fpq_output"] if activations is None else [])
    with torch.no_grad():
        for role in keep:
            old, nw = getattr(m, role), getattr(new, role)
            if old is not None and nw is not None:
                nw.log2_scale.copy_(old.log2_scale)
    new.train(m.training)
    set_module(q, name, new)
    record_formats(q, name, **{k: f[k] for k in ("weights", "activations", "bias") if k in f})
    return new


def set_module(q, name, new):
    parent, _, leaf = name.rpartition(".")
    setattr(q.get_submodule(parent) if parent else q, leaf, new)


def record_formats(q, name, **formats):
    """Record module ``name``'s new formats in the policy: its layer entry and its exact-name
    override (merged into an existing one; a plain-format override covers weights and activations)."""
    policy = q.fpq_policy
    policy.layers[name] = dict(policy.layers.get(name, {}), **formats)
    ov = policy.overrides.get(name)
    ov = dict(ov) if isinstance(ov, dict) else ({"weights": ov, "activations": ov} if ov else {})
    policy.overrides[name] = dict(ov, **formats)

