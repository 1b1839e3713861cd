"""Learned rounding (AdaRound, Nagel et al. 2020) on any fpq weight format.

Reimplemented rather than taken from Brevitas: Brevitas' learned round replaces the
``float_to_int_impl`` inside its integer quantizer, a part fpq's quantizers do not have, and it
rounds between integers, whereas a minifloat's two neighbours of a value are not one unit apart.
Here each scaled weight w/s (clipped to the format's range) lies between its two neighbours
``lo <= w/s <= hi`` in ``fpq.values(fmt)``, the grid of any format of at most 16 bits, and a
rectified sigmoid h(V) in [0, 1] chooses between them:
    w_soft = s * (lo + (hi - lo) * h(V))
minimizing the layer-output error on calibration rows plus AdaRound's annealed regularizer that
drives h to 0 or 1. The final weights are the hard choice, i.e. grid values at the unchanged
scale. ``reference="float"`` compares against the float network's own layer output (its inputs
come from the float network, row-aligned): AdaRound's asymmetric reconstruction, which also
absorbs the error upstream quantization left in the inputs. Grouped convolutions are handled through block-diagonal weights (``_common.w2d``). As for
GPTQ, a layer keeps the learned rounding only when its layer-output error is not
larger than round-to-nearest's.
"""
from __future__ import annotations

import numpy as np
import torch

from ..formats import values
from . import _common as C

_ZETA, _GAMMA = 1.1, -0.1


def _h(v):
    return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)


def neighbours(u: torch.Tensor, fmt):
    """(lo, hi) grid values of ``fmt`` around u (float64), u clipped to the format's range."""
    grid = torch.from_numpy(np.unique(np.asarray(values(fmt), dtype=np.float64)))
    grid = grid[torch.isfinite(grid)]
    u = torch.clamp(u, float(grid[0]), float(grid[-1]))
    i = torch.searchsorted(grid, u.contiguous())            # first grid value >= u
    i = torch.clamp(i, 0, len(grid) - 1)
    hi = grid[i]
    lo = torch.where(hi == u, hi, grid[torch.clamp(i - 1, min=0)])
    return u, lo, hi


class SoftRounding:
    """AdaRound's rounding variables of one weight layer: ``v`` chooses, per weight, between the
    two grid neighbours of w/s; shared by the per-layer (this module) and block-wise
    (block_round.py) reconstructions."""

    def __init__(self, m, w):
        self.shape = w.shape
        s = m.fpq_weight.scale().detach().to(torch.float64)
        self.s = s.reshape(-1, *([1] * (w.dim() - 1))) if s.dim() else s
        u, self.lo, self.hi = neighbours(w.to(torch.float64) / self.s, m.fpq_weight.fmt)
        self.gap = self.hi - self.lo
        frac = torch.where(self.gap > 0, (u - self.lo) / torch.where(self.gap > 0, self.gap, torch.ones_like(u)),
                           torch.zeros_like(u))
        p = torch.clamp((frac - _GAMMA) / (_ZETA - _GAMMA), 1e-4, 1 - 1e-4)
        self.v = torch.log(p / (1 - p)).clone().requires_grad_(True)   # h(v) == frac at the start

    def soft(self):
        """The differentiable weights s * (lo + (hi - lo) * h(v)), float64."""
        return self.s * (self.lo + self.gap * _h(self.v))

    def regularizer(self, it: int, iters: int):
        """AdaRound's regularizer driving h(v) to 0 or 1, beta annealed 20 -> 2 after a 20 % warm-up."""
        t = it / max(1, iters - 1)
        if t < 0.2:
            return 0.0
        beta = 20.0 - 18.0 * (t - 0.2) / 0.8
        return torch.mean(1 - torch.abs(2 * _h(self.v) - 1) ** beta)

    @torch.no_grad()
    def hard(self):
        """The hard choice: grid values at the unchanged scale, float32."""
        return (torch.where(_h(self.v) >= 0.5, self.hi, self.lo) * self.s).to(torch.float32)


def _learn_layer(m, x, w, iters, lr, reg, gen, xf=None):
    """Hard grid weights (float32) minimizing mean((xr @ W.T - x @ W_soft.T)**2) + regularizer,
    xr = x (reference "quantized") or the float network's row-aligned inputs xf ("float")."""
    g = C.groups_of(m)
    r = SoftRounding(m, w)
    target = (x if xf is None else xf) @ C.w2d(w.to(torch.float64), g).T
    norm = float(torch.mean(target ** 2)) or 1.0
    opt = torch.optim.Adam([r.v], lr=lr)
    n = x.shape[0]
    batch = min(n, 1024)
    for it in range(iters):
        idx = torch.randint(0, n, (batch,), generator=gen)
        err = torch.mean((target[idx] - x[idx] @ C.w2d(r.soft(), g).T) ** 2) / norm
        opt.zero_grad()
        (err + reg * r.regularizer(it, iters)).backward()
        opt.step()
    return r.hard()


def run(q, batches, *, seed: int = 0, progress: bool = True, round_iters: int = 400,
        round_lr: float = 0.01, round_reg: float = 0.01, max_rows: int = 8192,
        reference: str = "quantized", report: dict | None = None, **_):
    from tqdm.auto import tqdm

    C.check_reference("learned_round", reference)
    layers = C.weight_layers(q)
    float_weights = {n: m.weight.detach().clone() for n, m in layers}
    gen = torch.Generator().manual_seed(seed)
    result = {}
    for name, m in tqdm(layers, desc="fpq.ptq learned_round", disable=not progress):
        w = m.weight.detach().clone()
        x = C.layer_inputs(q, [name], batches, max_rows, seed)[name]
        xf = C.layer_inputs(q, [name], batches, max_rows, seed, float_weights)[name] \
            if reference == "float" else None
        w_rtn = C.quantized_weight(m, w)
        with torch.enable_grad():
            w_learn = C.quantized_weight(m, _learn_layer(m, x, w, round_iters, round_lr, round_reg, gen, xf))
        g = C.groups_of(m)
        e_learn, e_rtn = C.layer_error(x, w, w_learn, g, xf), C.layer_error(x, w, w_rtn, g, xf)
        keep = e_learn <= e_rtn
        C.set_weight(m, w_learn if keep else w_rtn)
        result[name] = {"kept": keep, "error": min(e_learn, e_rtn), "error_rtn": e_rtn}
    if report is not None:
        report["learned_round"] = result
