"""Scale choice from statistics of a tensor (used for weights at convert time and by calibrate).

For a power-of-two scale kind the result is always a power of two: ``max`` and ``percentile``
round UP (ceil of log2), so the statistic stays representable; ``mse`` searches the powers of
two around that one and keeps the one with the smallest quantization MSE.
"""
from __future__ import annotations

import math

import torch

from ..numerics.torch_ops import quantize_unscaled_torch, scaled_apply

METHODS = ("max", "percentile", "mse")


def _from_stat(tq, m: float) -> float:
    if not math.isfinite(m) or m <= 0:
        return 1.0
    s = m / tq.qmax
    if tq.scale_kind == "po2":
        s = math.ldexp(1.0, math.ceil(math.log2(s)))
    # the scale is stored as float32; round to it now so that the choice is what will be used
    return float(torch.tensor(s, dtype=torch.float32))


def _mse(tq, x: torch.Tensor, s: float) -> float:
    q = scaled_apply(lambda v: quantize_unscaled_torch(v, tq.fmt), x, s)
    return float(torch.mean((q - x) ** 2))


def choose_scale(tq, x: torch.Tensor, method: str = "max", percentile: float = 99.99) -> torch.Tensor:
    """Scale (float64 scalar tensor) for the fpq tensor quantizer ``tq`` from the samples ``x``."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; allowed: {', '.join(METHODS)}")
    x = x.detach().to(torch.float64).reshape(-1)
    if x.numel() == 0:
        return torch.tensor(1.0, dtype=torch.float64)
    a = x.abs()
    mx = float(a.max())
    if method == "max":
        return torch.tensor(_from_stat(tq, mx), dtype=torch.float64)
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        k = max(1, min(a.numel(), math.ceil(a.numel() * percentile / 100.0)))
        m = float(torch.kthvalue(a, k).values)
        return torch.tensor(_from_stat(tq, m), dtype=torch.float64)
    # mse: candidates below the max-based scale (clipping outliers can lower the error)
    s0 = _from_stat(tq, mx)
    if tq.scale_kind == "po2":
        cands = [math.ldexp(s0, -i) for i in range(0, 9)]
    else:
        cands = [float(torch.tensor(s0 * f, dtype=torch.float32)) for f in
                 torch.linspace(1.0, 0.2, 41).tolist()]
    errs = [_mse(tq, x, s) for s in cands]
    best = min(range(len(cands)), key=lambda i: (errs[i], i))
    return torch.tensor(cands[best], dtype=torch.float64)
