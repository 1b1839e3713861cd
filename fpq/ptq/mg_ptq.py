"""MG-PTQ's graph-neural-network bit allocator over weight columns, on weight-only fpq models
(``fpq.ptq(q, batches, methods=["mg_ptq"])``, optionally followed by a rounding method such as
``gptq`` in the same call).

Per layer, in execution order (its inputs X from the model whose earlier layers already have their
formats; rows weighted as gptq's default "relative" rows, fpq/ptq/weight_only.py), H = X^T X / rows:

* the candidates: a base format f for the layer (the layer's format, or the widest candidates of
  ``importance.default_formats`` narrower than it) with k input columns kept in the wider
  ``mg_high`` format (``WeightOnlyLayer.set_keep``: fpq's mixed formats within one layer; default
  int8 for an integer layer, e4m3 for a narrower minifloat, else float16). k is the largest count
  whose ``layer_bits`` (weights, scales, the kept columns' indices and per-row scales: the same
  honest count as everywhere) fit the budget of ``mg_bits`` bits per weight (default: the layer's
  own current bits, so the model keeps the memory of the uniform format);
* which columns: a column graph from the Hessian (edge weight |H_jl| / sqrt(H_jj H_ll), the
  ``mg_topk`` strongest per column, symmetrized, self loops, normalized adjacency
  D^-1/2 (A + I) D^-1/2), node features (log diag H, log ||w_j||^2, log H_jj ||e_j||^2 of the
  round-to-nearest error e_j at the base and at the high format, their difference, log weighted
  degree; standardized) and a two-layer graph convolution network plus a linear skip from the
  features, written in plain torch (torch-geometric is not installed in fpq's environment and two
  sparse matrix products do not need it). Its output scores s_j; a soft selection
  p = sigmoid((s - t) / tau) with t set (no gradient) so that sum p = k and tau annealed 0.5 -> 0.01
  is trained for ``mg_steps`` Adam steps on the layer-output error it selects, exactly:
  with A = E_base, B = E_high - E_base and D(p) = A + B diag(p) the error
  mean((X D^T)^2) = tr(D H D^T) / out = (sum H o A^T A + 2 c . p + p^T (H o B^T B) p) / out,
  c_j = sum_l H_jl (B^T A)_jl: exact for a 0/1 selection (round-to-nearest at the base format's
  scales fit on all columns), so the GNN learns the interactions between columns that the plain
  per-column importance misses. The network starts at the plain ranking (its skip reads the
  standardized gain feature, the graph branch starts at zero) and learns corrections; the
  selection is the top-k of its scores at the training step whose hard selection has the lowest
  exact error (step 0 is the plain ranking, so it is never worse than that).
* the plain importance allocator on the same budget: the top-k columns by
  H_jj (||e_j(base)||^2 - ||e_j(high)||^2) (OWQ's sensitivity). Its exact error is computed too and
  reported (``error_diag`` against ``error_gnn``); the layer takes whichever candidate (base format,
  GNN or plain selection; ``chosen`` says which, "gnn" only where its columns are strictly better
  than the plain ones) has the lower exact error, and then the layer is set (the base format's
  scales re-fit without the kept columns) and its error recomputed. Guard: if that is above the
  uniform format's round-to-nearest error (``error_rtn``), the layer stays uniform.

Effective bits: every layer fits its budget, so the model does too; ``report["mg_ptq"]`` lists each
layer's base format, high columns, bits and errors, ``report["effective_bits"]`` the total.
"""
from __future__ import annotations

import torch

from ..formats import Int, parse_format
from ..nn.weight_only import (KEEP_FORMAT, WeightQuant, check_weight_format, effective_bits, half_up, layer_bits,
                              qmax_of, weight_only_layers)
from ..numerics.torch_ops import ste_apply_scaled


def default_high(fmt) -> list:
    """Candidate formats of the kept columns of a layer in ``fmt``: one and two bits wider and int8
    for an integer narrower than 7 bits, e2m3 and e4m3 for a 4-bit minifloat, else float16 (e5m10)."""
    if isinstance(fmt, Int) and fmt.width < 7:
        return [parse_format(f"int{b}") for b in sorted({fmt.width + 1, fmt.width + 2, 8})]
    if fmt.width < 6:
        return [parse_format("e2m3"), parse_format("e4m3")]
    return [parse_format("e4m3" if fmt.width < 8 else KEEP_FORMAT)]


def base_candidates(fmt) -> list:
    """The layer's format and the widest default candidates narrower than it."""
    from .importance import default_formats
    narrower = [f for f in default_formats(fmt) if f.width < fmt.width]
    top = max((f.width for f in narrower), default=None)
    return [fmt] + [f for f in narrower if f.width == top]


def _high_quant(w, fmt):
    """Round-to-nearest of (out, n) weights in the high format (per-row float16 scales, as set_keep)."""
    if fmt == parse_format(KEEP_FORMAT):
        return w.to(torch.float16).to(torch.float32)
    m = w.abs().to(torch.float64).amax(1, keepdim=True)
    s = half_up(torch.where(m > 0, m / qmax_of(fmt), torch.ones_like(m))).float()
    return ste_apply_scaled(w, fmt, s.expand(w.shape))


def _bits(out, n, n_scales, scale_bits, f, h, k) -> int:
    """layer_bits of a layer in ``f`` with k columns kept in ``h`` (fpq.nn.weight_only.layer_bits)."""
    b = out * (n - k) * f.width + out * k * h.width + n_scales * scale_bits + k * 16
    if k and h != parse_format(KEEP_FORMAT):
        b += out * 16
    return b


def adjacency(h: torch.Tensor, topk: int) -> torch.Tensor:
    """Sparse normalized adjacency D^-1/2 (A + I) D^-1/2 of the column graph of Hessian ``h``."""
    n = h.shape[0]
    d = torch.sqrt(torch.clamp(torch.diag(h), min=1e-30))
    c = (h.abs() / d[:, None] / d[None, :]).float()
    c.fill_diagonal_(0)
    k = min(int(topk), n - 1)
    a = torch.zeros_like(c)
    if k > 0:
        v, i = torch.topk(c, k, dim=1)
        a.scatter_(1, i, v)
    a = torch.maximum(a, a.T) + torch.eye(n)
    dinv = a.sum(1).rsqrt()
    return (a * dinv[:, None] * dinv[None, :]).to_sparse()


class ColumnGNN(torch.nn.Module):
    """Two graph convolutions (message passing over the normalized adjacency) and a linear skip:
    one score per column."""

    def __init__(self, features: int, hidden: int = 32):
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(features, hidden), torch.nn.Linear(hidden, hidden)
        self.out, self.skip = torch.nn.Linear(hidden, 1), torch.nn.Linear(features, 1)

    def forward(self, adj, x):
        z = torch.relu(torch.sparse.mm(adj, self.l1(x)))
        z = torch.relu(torch.sparse.mm(adj, self.l2(z)))
        return (self.out(z) + self.skip(x)).squeeze(1)


def _threshold(s, tau, k):
    """t with sum sigmoid((s - t) / tau) ~= k (three rounds of a 64-point bracket search, no gradient;
    the sum decreases in t)."""
    lo, hi = float(s.min()) - 30 * tau, float(s.max()) + 30 * tau
    for _ in range(3):
        ts = torch.linspace(lo, hi, 65, dtype=s.dtype)
        tot = torch.sigmoid((s[None, :] - ts[:, None]) / tau).sum(1)
        i = int(torch.searchsorted(-tot, torch.tensor([-float(k)], dtype=s.dtype))[0].clamp(1, 64))
        lo, hi = float(ts[i - 1]), float(ts[i])
    return 0.5 * (lo + hi)


def select(h, w, e_lo, e_hi, k, *, topk=8, steps=100, hidden=32, seed=0):
    """(GNN selection, plain selection, their exact errors) of k high columns (module docstring)."""
    a, b = e_lo.to(torch.float64), (e_hi - e_lo).to(torch.float64)
    out = a.shape[0]
    const = float((h * (a.T @ a)).sum())
    c = (h * (b.T @ a)).sum(1)
    m = h * (b.T @ b)

    def err(p):
        return (const + 2 * (c @ p) + p @ (m @ p)) / out

    dh = torch.clamp(torch.diag(h), min=1e-30)
    n_lo, n_hi = (a ** 2).sum(0), (e_hi.to(torch.float64) ** 2).sum(0)
    gain = dh * (n_lo - n_hi)
    plain = torch.topk(gain, k).indices
    eps = 1e-30
    feats = torch.stack([torch.log(dh), torch.log((w.to(torch.float64) ** 2).sum(0) + eps),
                         torch.log(dh * n_lo + eps), torch.log(dh * n_hi + eps), torch.sign(gain) * torch.log1p(gain.abs() / gain.abs().mean().clamp(min=eps)),
                         torch.log(h.abs().sum(1) + eps)], 1)
    feats = ((feats - feats.mean(0)) / feats.std(0).clamp(min=1e-6)).float()
    adj = adjacency(h, topk)
    torch.manual_seed(seed)
    net = ColumnGNN(feats.shape[1], hidden)
    with torch.no_grad():            # start from the plain ranking (the standardized gain feature): the
        net.out.weight.zero_()       # graph layers learn corrections to it
        net.skip.weight.zero_()
        net.skip.weight[0, 4] = 1.0
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    norm = max(const / out, 1e-30)

    def exact(idx):
        p = torch.zeros(a.shape[1], dtype=torch.float64)
        p[idx] = 1.0
        return float(err(p))
    best, gnn = exact(plain), plain
    for it in range(int(steps)):
        tau = 0.5 * (0.01 / 0.5) ** (it / max(int(steps) - 1, 1))
        s = net(adj, feats)
        with torch.no_grad():        # the hard selection these scores make, scored exactly
            idx = torch.topk(s, k).indices
            e = exact(idx)
            if e < best:
                best, gnn = e, idx
        p = torch.sigmoid((s - _threshold(s.detach(), tau, k)) / tau).to(torch.float64)
        loss = err(p) / norm
        opt.zero_grad()
        loss.backward()
        opt.step()
    return gnn, plain, best, exact(plain)


def _clear(layer, fmt, high):
    """Back to the uniform format ``fmt`` with no kept columns (``high`` is wider than both formats)."""
    layer.set_keep(fmt=high)
    layer.set_format(fmt)


def run_mg(q, batches, *, mg_bits=None, mg_high=None, mg_topk: int = 8, mg_steps: int = 100, max_rows: int = 8192,
           seed: int = 0, progress: bool = True, report: dict | None = None, write_back: bool = True):
    """Allocate per-column formats (module docstring); ``write_back``: store the round-to-nearest
    grid values (off when a rounding method follows and needs the float weights)."""
    from tqdm.auto import tqdm

    from .importance import _refuse_kept
    from .weight_only import _with_block_inputs, call_captured, layer_error, layer_rows, relative_rows
    if int(mg_topk) < 1 or int(mg_steps) < 1:
        raise ValueError(f"mg_topk and mg_steps must be >= 1, got {mg_topk}, {mg_steps}")
    if mg_bits is not None and not float(mg_bits) > 0:
        raise ValueError(f"mg_bits (the average-bit budget per weight) must be > 0, got {mg_bits}")
    if isinstance(mg_high, str):
        mg_high = [mg_high]
    high = None if mg_high is None else [check_weight_format(f, "fpq.ptq mg_ptq: mg_high") for f in mg_high]
    layers = weight_only_layers(q)
    _refuse_kept(layers, "mg_ptq")
    result = {}
    bar = tqdm(total=len(layers), desc="fpq.ptq mg_ptq", disable=not progress)
    for name, layer, block, inputs in _with_block_inputs(q, batches):
        bar.update()
        tq0 = layer.fpq_weight
        target, (out, n) = tq0.fmt, tq0.shape2d
        highs = default_high(target) if high is None else high
        if min(hf.width for hf in highs) <= target.width:
            raise ValueError(f"fpq.ptq mg_ptq: layer {name!r}: mg_high {[str(f) for f in highs]} must be wider "
                             f"than its format {target}")
        budget = layer_bits(layer) if mg_bits is None else float(mg_bits) * out * n
        w = layer.weight.detach().reshape(out, n).to(torch.float32)
        rel = next(r for r, mod in block.named_modules() if mod is layer)
        x = relative_rows(layer_rows(block, rel, inputs, max_rows, seed, call_captured), w.to(torch.float64))
        h = x.T @ x / x.shape[0]
        with torch.no_grad():
            e_his = {hf: w - _high_quant(w, hf) for hf in highs}
        rtn_err = layer_error(x, w, layer.quantize_weight2d(w).detach()) if layer_bits(layer) <= budget else float("inf")
        best = ("uniform", target, None, None, rtn_err)
        info = {}
        for f in base_candidates(target):
            tq = WeightQuant(f, out, n, tq0.granularity, tq0.group_size or 128, tq0.scale_kind, name)
            tq.init_from(w)
            with torch.no_grad():
                e_lo = w - tq(w)
            sb = 8 if tq0.scale_kind == "po2" else 16
            for hf in highs:
                fits = [k for k in range(n) if _bits(out, n, tq.log2_scale.numel(), sb, f, hf, k) <= budget]
                k = max(fits, default=None)
                if k is None or (k == 0 and f == target) or hf.width <= f.width:
                    continue
                if k == 0:               # the budget is below the layer's format: the narrower one alone
                    e = layer_error(x, w, w - e_lo)
                    if e < best[4]:
                        best = ("base", f, hf, None, e)
                    continue
                gnn, plain, eg, ep = select(h, w, e_lo, e_his[hf], k, topk=mg_topk, steps=mg_steps, seed=seed)
                info[f"{f}+{hf}"] = {"high_cols": k, "error_gnn": eg, "error_diag": ep}
                for tag, idx, e in (("diag", plain, ep), ("gnn", gnn, eg)):   # "gnn" only when strictly better
                    if e < best[4]:
                        best = (tag, f, hf, idx, e)
        tag, f, hf, idx, _ = best
        hf = hf or max(highs, key=lambda g: g.width)
        if tag == "uniform" and not rtn_err < float("inf"):
            raise ValueError(f"fpq.ptq mg_ptq: layer {name!r} cannot meet mg_bits={mg_bits} with its candidates")
        if tag != "uniform":
            layer.set_format(f)
            if idx is not None:
                layer.set_keep(cols=idx, fmt=hf)
            e = layer_error(x, w, layer.quantize_weight2d(w).detach())
            if (e > rtn_err or layer_bits(layer) > budget) and rtn_err < float("inf"):
                _clear(layer, target, hf)
                tag, f, e = "uniform", target, rtn_err
        else:
            e = rtn_err
        if str(f) != str(target):
            q.fpq_weight_only["layers"][name] = str(f)
        if write_back:
            with torch.no_grad():
                layer.weight.copy_(layer.quantized_weight())
        result[name] = {"format": str(f), "high_format": str(hf) if layer.has_kept() else None,
                        "high_cols": int(layer.keep_cols.numel()),
                        "chosen": tag, "error": e, "error_rtn": rtn_err, "bits": layer_bits(layer),
                        "budget": budget, "candidates": info}
    if report is not None:
        report["mg_ptq"] = result
        report["mg_budget"] = mg_bits
        report["effective_bits"] = effective_bits(q)["total"]
    return q
