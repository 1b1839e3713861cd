"""Per-layer weight format search (LLM-FP4, Liu et al. 2023): for each Linear / Conv layer choose,
from a candidate set, the weight format (e.g. the ExMy split at a fixed width) and its exponent
bias / clipping, minimizing the layer-output error on calibration rows.

For a minifloat, shifting the exponent bias by k is the same value set as multiplying a
power-of-two scale by 2**-k, so the exponent-bias / clipping search is a search over the
scale: po2 scales s0 * 2**-k (k = 0..search_shifts), float scales s0 * f (f from 1 down to
search_min_clip). s0 is the max rule of the candidate format (no weight clipped). With per-channel
weight scales (``fpq.convert(..., granularity="channel")``) each output channel picks its own
shift: LLM-FP4's per-channel pre-shifted exponent bias, folded into the channel's po2 scale. One
format per layer (the sum of the per-channel minima decides), so a layer stays one fpq Format.
The chosen format replaces the layer's weight quantizer (``policy.layers`` and ``overrides`` are
updated), keeping the bias and output quantizers and their scales.
"""
from __future__ import annotations

import torch

from ..formats import Int, Minifloat, finfo, parse_format
from ..numerics.torch_ops import quantize_unscaled_torch
from . import _common as C


def default_candidates(fmt) -> list:
    """Same-width alternatives of ``fmt``: every ExMy split (E >= 1) for a minifloat; the format
    itself otherwise (only the clipping is searched)."""
    if isinstance(fmt, Minifloat):
        width = fmt.width - (1 if fmt.signed else 0)
        return [parse_format(f"e{e}m{width - e}") for e in range(1, width + 1)
                if _valid(f"e{e}m{width - e}")]
    return [fmt]


def _valid(s):
    try:
        parse_format(s)
        return True
    except ValueError:
        return False


def scale_candidates(fmt, w2d, kind, channels, shifts, min_clip):
    """(S, C or 1) float64 candidate scales (row 0: the max rule)."""
    a = w2d.abs().to(torch.float64)
    m = a.amax(1) if channels else a.max().reshape(1)
    m = torch.where(m > 0, m, torch.ones_like(m))
    s0 = m / float(finfo(fmt).max)
    if kind == "po2":
        s0 = torch.exp2(torch.ceil(torch.log2(s0)))
        return torch.stack([s0 * 2.0 ** -k for k in range(shifts + 1)])
    f = torch.linspace(1.0, min_clip, 2 * shifts + 1, dtype=torch.float64)
    return torch.stack([(s0 * v).to(torch.float32).to(torch.float64) for v in f])


def candidate_errors(x, w, fmt, kind, channels, shifts=4, min_clip=0.5, groups=1):
    """(scales (S, C|1), errors (S, C)): per-channel layer-output error of every candidate scale."""
    w2 = C.w2d(w).to(torch.float32)
    cands = scale_candidates(fmt, w2, kind, channels, shifts, min_clip)
    errs = []
    for s in cands:
        sv = s.to(torch.float32).view(-1, 1)
        wq = quantize_unscaled_torch(w2 / sv, fmt) * sv      # what the weight quantizer computes
        errs.append(C.channel_errors(x, w2, wq, groups))
    return cands, torch.stack(errs)


def search_layer(x, w, candidates, kind, channels, shifts=4, min_clip=0.5, groups=1):
    """Best (format, scale tensor) and {str(format): error} for one layer."""
    best, table = None, {}
    for fmt in candidates:
        scales, errs = candidate_errors(x, w, fmt, kind, channels, shifts, min_clip, groups)
        if channels:
            idx = torch.argmin(errs, dim=0)
            scale = scales[idx, torch.arange(scales.shape[1])]
            err = float(errs[idx, torch.arange(errs.shape[1])].mean())
        else:
            i = int(torch.argmin(errs.mean(1)))
            scale, err = scales[i, 0], float(errs[i].mean())
        table[str(fmt)] = err
        if best is None or err < best[2]:
            best = (fmt, scale, err)
    return best[0], best[1], table


def _replace_weight_format(q, name, m, fmt, scale):
    new = C.rebuild_weight_layer(q, name, m, weights=fmt, fallback_kind=q.fpq_policy.scale)
    with torch.no_grad():
        new.fpq_weight.set_scale(scale.to(torch.float32).to(torch.float64))


def run(q, batches, *, seed=0, progress=True, format_candidates=None, search_shifts=4,
        search_min_clip=0.5, max_rows=8192, report=None, **_):
    from tqdm.auto import tqdm

    if search_shifts < 0 or not 0 < search_min_clip <= 1:
        raise ValueError("format_search: search_shifts must be >= 0 and search_min_clip in (0, 1]")
    layers = C.weight_layers(q)
    chosen = {}
    for name, m in tqdm(layers, desc="fpq.ptq format_search", disable=not progress):
        tq = m.fpq_weight
        if tq is None:
            raise ValueError(f"format_search: layer {name!r} has no weight quantizer")
        if tq.scale_kind == "none":
            raise ValueError(f"format_search: layer {name!r} has weight format {tq.fmt}, which carries "
                             "its own scaling (Fixed): no exponent bias / clipping to search")
        cands = [parse_format(c) for c in format_candidates] if format_candidates else default_candidates(tq.fmt)
        if not all(isinstance(c, (Int, Minifloat)) for c in cands):
            raise ValueError(f"format_search: candidates must be Int or Minifloat formats, got "
                             f"{[str(c) for c in cands]}")
        x = C.layer_inputs(q, [name], batches, max_rows, seed)[name]
        fmt, scale, table = search_layer(x, m.weight.detach(), cands, tq.scale_kind, tq.channels,
                                         search_shifts, search_min_clip, C.groups_of(m))
        _replace_weight_format(q, name, m, fmt, scale)
        chosen[name] = {"format": str(fmt), "errors": table}
    if report is not None:
        report["format_search"] = chosen
