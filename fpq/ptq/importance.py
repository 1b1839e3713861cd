"""Gradient (Fisher) importance on weight-only fpq models: GWQ's sparse outliers and the per-layer
mixed-precision allocator (issue 19). Both read one measurement, ``fisher_diag``.

The calibration loss is the output error to the float model, L(W') = E_x ||f(x; W') - f(x; W)||^2
(the model needs no labels: a sentence encoder, a backbone). Its gradient vanishes at the float
weights W and its Hessian there is 2 E_x J^T J (J = df/dW; Gauss-Newton is exact at a zero-residual
minimum), so a rounding perturbation d costs L ~= sum_i F_ii d_i^2 to second order with F the
diagonal of E_x J^T J. ``fisher_diag`` estimates that diagonal from gradients only: for a random
sign vector r (Rademacher, over every output element), E_r[(d(r . f(x))/dW_i)^2] = sum_k J_ki^2
(Hutchinson's estimator of diag(J^T J)), one backward pass per batch and probe. No library
computes it for an arbitrary module tree with fpq's weight-only layers, hence the few lines here.

* ``gwq`` (GWQ, Shao et al. 2024): each weight's saliency F_ii (w_i - RTN(w_i))^2 (its expected
  share of the calibration loss); the top ``gwq_ratio`` (1%) of each layer's weights are kept in
  ``keep_format`` (float16 "e5m10" by default; sparse: flat indices, ``WeightOnlyLayer.keep_idx``),
  the layer's scales are re-fit without them and the rest is rounded to nearest, group-wise.
  (GWQ ranks by the gradient; multiplying by the rounding error leaves out weights that gradient
  marks but that already sit on the grid, where keeping them saves nothing.)
* ``mixed_precision`` (gradient-based importance mixed precision, e.g. HAWQ-V3 / "Fisher" bit
  allocation): for every layer l and candidate format f, S(l, f) = sum_i F_ii (w_i - Q_f(w_i))^2
  with Q_f round-to-nearest at fresh scales of the layer's granularity; the formats minimizing
  sum_l S(l, f_l) with the average effective bits (``layer_bits``: weights, scales, kept weights
  and indices) at most ``mp_bits`` are a multiple-choice knapsack, solved exactly as a 0/1 integer
  program by scipy's ``milp`` (HiGHS). Default budget: the model's current effective bits.
  ``mp_sensitivity="output"`` replaces the second-order estimate by the measured calibration loss
  with layer l alone in format f (one forward per batch, layer and candidate): the Fisher estimate
  is exact only for small perturbations, and on all-MiniLM-L6-v2 it under-priced int2 so much that
  the int3 budget gave int2 to 11 of 36 layers (below round-to-nearest); the measured loss sees
  the large errors as they are.

Guards (the objective each optimizes is the estimated calibration loss sum F d^2): gwq keeps a
layer's outliers only when its estimate is not above round-to-nearest's without them;
mixed_precision's optimum is never above the current formats' estimate when the budget admits
them (they are a feasible choice), reported as ``error`` / ``error_rtn``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..formats import parse_format
from ..nn.weight_only import (KEEP_FORMAT, WeightQuant, check_weight_format, effective_bits, layer_bits,
                              layer_mode, weight_only_layers)


def _first(o):
    return o if torch.is_tensor(o) else o[0]


def fisher_diag(q, batches, call, probes: int = 1, seed: int = 0) -> dict:
    """{layer name: float64 (out, fan_in)} estimate of diag(E_x J^T J) of the model's first output
    w.r.t. each weight-only layer's float weights (module docstring)."""
    if int(probes) < 1:
        raise ValueError(f"fisher_probes must be >= 1, got {probes}")
    layers = weight_only_layers(q)
    params = [m.weight for _, m in layers]
    acc = [torch.zeros(m.fpq_weight.shape2d, dtype=torch.float64, device=m.weight.device) for _, m in layers]
    gen = torch.Generator().manual_seed(seed)
    saved = [p.requires_grad for p in params]
    n = 0
    try:
        for p in params:
            p.requires_grad_(True)
        with layer_mode(q, "float"), torch.enable_grad():
            for b in batches:
                out = _first(call(q, b))
                if not torch.is_floating_point(out):
                    raise ValueError(f"fpq.ptq: the model's first output must be floating point, got {out.dtype}")
                for _ in range(int(probes)):
                    r = (torch.randint(0, 2, out.shape, generator=gen) * 2 - 1).to(out.dtype).to(out.device)
                    grads = torch.autograd.grad((out * r).sum(), params, retain_graph=True, allow_unused=True)
                    for a, g in zip(acc, grads):
                        if g is not None:
                            a += g.detach().reshape(a.shape).to(torch.float64) ** 2
                    n += 1
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)
    return {name: a / n for (name, _), a in zip(layers, acc)}


def _w2d(layer):
    return layer.weight.detach().reshape(layer.fpq_weight.shape2d)


def run_gwq(q, batches, call, *, gwq_ratio: float = 0.01, keep_format: str = KEEP_FORMAT, fisher_probes: int = 1,
            seed: int = 0, progress: bool = True, report: dict | None = None):
    from tqdm.auto import tqdm
    if not 0 < gwq_ratio < 1:
        raise ValueError(f"gwq_ratio (the share of each layer's weights kept in keep_format) must be in (0, 1), got {gwq_ratio}")
    check_weight_format(keep_format, "fpq.ptq gwq: keep_format")
    layers = weight_only_layers(q)
    _refuse_kept(layers, "gwq")
    fisher = fisher_diag(q, batches, call, fisher_probes, seed)
    result = {}
    for name, layer in tqdm(layers, desc="fpq.ptq gwq", disable=not progress):
        w = _w2d(layer).to(torch.float32)
        f = fisher[name]
        with torch.no_grad():
            d_rtn = (w - layer.quantize_weight2d(w)).to(torch.float64)
        e_rtn = float((f * d_rtn ** 2).sum())
        k = max(1, round(gwq_ratio * w.numel()))
        idx = torch.topk((f * d_rtn ** 2).flatten(), k).indices
        scales = layer.fpq_weight.log2_scale.detach().clone()
        layer.set_keep(idx=idx, fmt=keep_format)
        with torch.no_grad():
            wq = layer.quantize_weight2d(w)
        e = float((f * (w - wq).to(torch.float64) ** 2).sum())
        kept = e <= e_rtn
        with torch.no_grad():
            if kept:
                layer.weight.copy_(wq.reshape(layer.weight.shape))
            else:   # back to round-to-nearest, no kept weights
                layer.set_keep(fmt=keep_format)
                layer.fpq_weight.log2_scale.copy_(scales)
        result[name] = {"kept": kept, "error": min(e, e_rtn), "error_rtn": e_rtn,
                        "kept_weights": int(idx.numel()) if kept else 0}
    if report is not None:
        report["gwq"] = result
        report["effective_bits"] = effective_bits(q)["total"]
    return q


def _refuse_kept(layers, method):
    done = [n for n, m in layers if m.has_kept()]
    if done:
        raise ValueError(f"fpq.ptq {method}: layers {done[:3]} already keep weights in a wider format (an earlier "
                         "owq / gwq); start from a fresh fpq.convert model")


def default_formats(fmt) -> list:
    """Candidates of a layer whose format is ``fmt``: the integers of 2..8 bits for an Int, else
    the OCP minifloats of 4, 6 and 8 bits (e2m1, e3m2, e2m3, e4m3) with int2 and int3 below them
    (no OCP minifloat is narrower than 4 bits); always ``fmt`` itself."""
    from ..formats import Int
    names = (["int2", "int3", "int4", "int5", "int6", "int8"] if isinstance(fmt, Int)
             else ["int2", "int3", "e2m1", "e3m2", "e2m3", "e4m3"])
    out = [parse_format(n) for n in names]
    return out if fmt in out else out + [fmt]


@torch.no_grad()
def output_sensitivity(q, batches, call, layer, fmt, ref) -> float:
    """Measured calibration loss E_x ||f(x; W') - f(x; W)||^2 (mean over output elements; ``ref`` the
    float model's outputs) with only ``layer`` quantized, to ``fmt`` at fresh round-to-nearest
    scales (kept weights kept)."""
    old = layer.fpq_weight
    with layer_mode(q, "float"):
        try:
            layer.set_format(fmt)
            layer.fpq_mode = "fast"
            out = sum(float(torch.mean((_first(call(q, b)) - r) ** 2)) for b, r in zip(batches, ref))
        finally:
            layer.fpq_weight = old
    return out / len(batches)


def run_mixed(q, batches, call, *, mp_bits: float | None = None, mp_formats=None, fisher_probes: int = 1,
              mp_sensitivity: str = "fisher", seed: int = 0, progress: bool = True, report: dict | None = None,
              write_back: bool = True):
    """Choose the layers' formats; ``write_back``: store the round-to-nearest grid values as the
    weights (as every rounding method leaves them), off when a rounding method follows and needs
    the float weights."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    layers = weight_only_layers(q)
    if mp_formats is not None:
        if isinstance(mp_formats, str) or not len(mp_formats):
            raise ValueError(f"mp_formats must be a non-empty list of weight formats, got {mp_formats!r}")
        cands = list(dict.fromkeys(check_weight_format(f, "fpq.ptq mixed_precision: mp_formats") for f in mp_formats))
    if mp_sensitivity not in ("fisher", "output"):
        raise ValueError(f"mp_sensitivity={mp_sensitivity!r}; allowed: fisher, output")
    fisher = fisher_diag(q, batches, call, fisher_probes, seed) if mp_sensitivity == "fisher" else None
    if fisher is None:
        with torch.no_grad(), layer_mode(q, "float"):
            ref = [_first(call(q, b)) for b in batches]
    rows, total_n = [], 0
    for name, layer in layers:
        w = _w2d(layer).to(torch.float32)
        keep = layer.keep_mask() if layer.has_kept() else None
        out, fan_in = layer.fpq_weight.shape2d
        n_q = out * fan_in - (int(keep.sum()) if keep is not None else 0)
        base_bits = layer_bits(layer)
        opts = cands if mp_formats is not None else default_formats(layer.fpq_weight.fmt)
        if keep is not None:
            opts = [f for f in opts if f.width < layer.keep_format.width]
        for f in opts:
            tq = WeightQuant(f, out, fan_in, layer.fpq_weight.granularity, layer.fpq_weight.group_size or 128,
                             layer.fpq_weight.scale_kind, f"layer {name!r}")
            tq.init_from(w, keep)
            with torch.no_grad():
                wq = tq(w)
                if keep is not None:
                    wq = torch.where(keep, layer.quantize_kept(w), wq)
            if fisher is None:
                s = output_sensitivity(q, batches, call, layer, f, ref)
            else:
                s = float((fisher[name] * (w - wq).to(torch.float64) ** 2).sum())
            bits = base_bits + n_q * (f.width - layer.fpq_weight.fmt.width)
            rows.append((name, f, s, bits, f == layer.fpq_weight.fmt))
        total_n += out * fan_in
    budget = effective_bits(q)["total"] if mp_bits is None else float(mp_bits)
    names = [n for n, _ in layers]
    lo = sum(min(r[3] for r in rows if r[0] == n) for n in names) / total_n
    if not np.isfinite(budget) or budget < lo:
        raise ValueError(f"mp_bits={mp_bits}: the smallest average these candidate formats reach is {lo:.3f} "
                         "effective bits per weight; give a budget at least that")
    s = np.array([r[2] for r in rows])
    c = np.array([r[3] for r in rows], dtype=np.float64)
    sel = np.array([[r[0] == n for r in rows] for n in names], dtype=np.float64)
    scale = s.max() if s.max() > 0 else 1.0
    res = milp(s / scale, integrality=np.ones(len(rows)), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(sel, 1, 1), LinearConstraint(c[None, :], -np.inf, budget * total_n)])
    if res.x is None:
        raise RuntimeError(f"fpq.ptq mixed_precision: the knapsack solver failed: {res.message}")
    pick = np.round(res.x).astype(bool)
    result = {}
    for name, layer in layers:
        mine = [(r, p) for r, p in zip(rows, pick) if r[0] == name]
        chosen = next(r for r, p in mine if p)
        current = next((r for r, _ in mine if r[4]), None)
        if chosen[1] != layer.fpq_weight.fmt:
            layer.set_format(chosen[1])
            q.fpq_weight_only["layers"][name] = str(chosen[1])
        if write_back:
            with torch.no_grad():
                layer.weight.copy_(layer.quantized_weight())
        result[name] = {"format": str(chosen[1]), "error": chosen[2],
                        "error_rtn": current[2] if current is not None else float("nan"), "bits": chosen[3]}
    if report is not None:
        report["mixed_precision"] = result
        report["mp_budget"] = budget
        report["effective_bits"] = effective_bits(q)["total"]
    return q
