"""SignRound (Cheng et al. 2023, "Optimize weight rounding via signed gradient descent", the method
of Intel's auto-round) on weight-only fpq models, on any Int or Minifloat weight format.

Per block (a member of an nn.ModuleList holding Linear layers, e.g. a BertLayer; a layer in no
such list is its own block), in execution order:
  * the block's inputs (positional and keyword arguments, e.g. the attention mask) are captured
    on the calibration batches from the model whose earlier blocks are already quantized, and the
    target is the FLOAT block's output on those inputs;
  * each weight gets a rounding offset V in [-0.5, 0.5] and each scale a clipping factor alpha in
    [0.5, 1] (float16 scales only: a power-of-two scale has no continuous clipping), and the block
    runs with w_q = s * Q(w / s + V * gap) where s = alpha * s0 and ``gap`` is the spacing of the
    format's grid around w / s0 (1 for integers; the local step for a minifloat, whose neighbours
    are not one unit apart); Q's rounding passes the gradient straight through;
  * ``round_iters`` (default 200) steps of signed gradient descent on the block-output MSE, one
    calibration batch per step: p -= lr * sign(grad), lr = ``round_lr`` (default 1 / round_iters)
    decaying linearly to 0, V and alpha clipped to their ranges after each step.
Best step (as auto-round keeps the V / alpha of its lowest-loss step rather than the last one):
the loss of one step's minibatch is not comparable with another step's (different batches), so
the parameters are scored on ALL calibration batches: before the first step (V = 0, alpha = 1:
round-to-nearest), every ``round_eval`` steps (default 10) and after the last step, the hard
block output (the weights ``finish`` would write) is compared with the float block's on every
captured batch, and the V / alpha with the lowest mean MSE are kept. This costs one no-grad
forward per batch per evaluation (about +15% on MiniLM at the defaults); ``round_eval=1`` scores
every step.
The final weights are the hard w_q at the best step's scales (grid values there). Guard: the block
keeps SignRound's result only when its block-output MSE over all calibration batches (recomputed
in the layers' fast mode) is not larger than round-to-nearest's; else the block's weights and
scales go back to round-to-nearest.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..formats import values
from ..nn.weight_only import _to_half_ste, layer_mode, weight_only_layers
from ..numerics.torch_ops import ste_quantize_unscaled
from .weight_only import each_call_input


def blocks(q) -> list:
    """[(block name, [(layer name, layer)])] in module order."""
    lists = {n for n, m in q.named_modules() if isinstance(m, nn.ModuleList)}
    out = {}
    for name, layer in weight_only_layers(q):
        parts = name.split(".")
        block = name
        for k in range(1, len(parts)):
            if ".".join(parts[:k - 1]) in lists:      # parts[:k] is a member of a ModuleList
                block = ".".join(parts[:k])
                break
        out.setdefault(block, []).append((name, layer))
    return list(out.items())


def _first(o):
    if torch.is_tensor(o):
        return o
    return o[0]


def _detach(v):
    if torch.is_tensor(v):
        return v.detach()
    if isinstance(v, (tuple, list)):
        return type(v)(_detach(a) for a in v)
    if isinstance(v, dict):
        return {k: _detach(a) for k, a in v.items()}
    return v


@torch.no_grad()
def capture(q, block: nn.Module, batches) -> list:
    """[(args, kwargs)] of ``block``'s call on each batch (the quantized model, fast mode)."""
    got = []

    each_call_input(q, block, batches, lambda args, kwargs: got.append((_detach(args), _detach(kwargs))))
    return got


def _gap(u: torch.Tensor, fmt) -> torch.Tensor:
    """Spacing of ``fmt``'s grid around each u (the interval [lo, hi) containing it, clipped to the range)."""
    grid = torch.from_numpy(np.unique(np.asarray(values(fmt), dtype=np.float64)))
    grid = grid[torch.isfinite(grid)]
    i = torch.clamp(torch.searchsorted(grid, u.contiguous(), right=True), 1, len(grid) - 1)
    return (grid[i] - grid[i - 1]).to(torch.float32)


class _Rounding:
    """SignRound's variables of one layer and its soft / hard weights."""

    def __init__(self, layer):
        self.layer = layer
        tq = layer.fpq_weight
        self.w = layer.weight.detach().reshape(layer.weight.shape[0], -1).to(torch.float32).clone()
        with torch.no_grad():
            self.s0 = tq.scale().detach().clone()
        self.learn_scale = tq.scale_kind == "float"
        self.alpha = torch.ones_like(self.s0, requires_grad=self.learn_scale)
        self.v = torch.zeros_like(self.w, requires_grad=True)
        self.gap = _gap((self.w / tq.expand(self.s0)).to(torch.float64), tq.fmt)
        self.keep = layer.keep_mask() if layer.has_kept() else None

    def params(self):
        return [self.v] + ([self.alpha] if self.learn_scale else [])

    def scale(self):
        s = self.s0 * self.alpha
        return _to_half_ste(torch.clamp(s, min=2.0 ** -24)) if self.learn_scale else s   # a float16 number > 0

    def weight(self):
        tq = self.layer.fpq_weight
        s = tq.expand(self.scale())
        q = ste_quantize_unscaled(self.w / s + self.v * self.gap, tq.fmt) * s
        if self.keep is not None:
            q = torch.where(self.keep, self.layer.quantize_kept(self.w), q)
        return q

    @torch.no_grad()
    def step(self, grads, lr):
        for p, g in zip(self.params(), grads):
            p.sub_(lr * torch.sign(g))
        self.v.clamp_(-0.5, 0.5)
        self.alpha.clamp_(0.5, 1.0)

    def snapshot(self):
        return [p.detach().clone() for p in self.params()]

    @torch.no_grad()
    def restore(self, saved):
        for p, v in zip(self.params(), saved):
            p.copy_(v)

    @torch.no_grad()
    def finish(self):
        """Write the hard weights and the final scales into the layer."""
        s = self.scale().detach()
        wq = self.weight().detach()
        if self.learn_scale:
            self.layer.fpq_weight.set_scale(s)
        self.layer.weight.copy_(wq.reshape(self.layer.weight.shape))


def _loss(block, inputs, targets, mode) -> float:
    with torch.no_grad(), layer_mode(block, mode):
        return float(sum(torch.mean((_first(block(*a, **k)) - t) ** 2) for (a, k), t in zip(inputs, targets))
                     / len(inputs))


def _soft_loss(block, inputs, targets) -> float:
    """Mean block-output MSE of the current hard weights (soft mode, no gradient) over all batches."""
    with torch.no_grad():
        return float(sum(torch.mean((_first(block(*a, **k)) - t) ** 2) for (a, k), t in zip(inputs, targets))
                     / len(inputs))


def run(q, batches, *, seed: int = 0, progress: bool = True, round_iters: int = 200, round_lr=None,
        round_eval: int = 10, report: dict | None = None):
    from tqdm.auto import tqdm
    if round_iters < 1:
        raise ValueError(f"round_iters must be >= 1, got {round_iters}")
    if int(round_eval) < 1:
        raise ValueError(f"round_eval (steps between scorings of the parameters on all calibration batches) "
                         f"must be >= 1, got {round_eval}")
    lr0 = 1.0 / round_iters if round_lr is None else float(round_lr)
    gen = torch.Generator().manual_seed(seed)
    result = {}
    for bname, layers in tqdm(blocks(q), desc="fpq.ptq signround", disable=not progress):
        block = q.get_submodule(bname)
        inputs = capture(q, block, batches)
        if not inputs:
            raise ValueError(f"fpq.ptq signround: block {bname!r} is not called by the model on these batches")
        with torch.no_grad(), layer_mode(block, "float"):
            targets = [_first(block(*a, **k)).detach() for a, k in inputs]
        saved = {n: (m.weight.detach().clone(), m.fpq_weight.log2_scale.detach().clone()) for n, m in layers}
        loss_rtn = _loss(block, inputs, targets, "fast")
        rs = [_Rounding(m) for _, m in layers]
        for (_, m), r in zip(layers, rs):
            m.fpq_soft_weight = r.weight
        try:
            with layer_mode(block, "soft"):
                best, best_step = _soft_loss(block, inputs, targets), 0
                best_p = [r.snapshot() for r in rs]
                for it in range(round_iters):
                    i = int(torch.randint(len(inputs), (1,), generator=gen))
                    a, k = inputs[i]
                    loss = torch.mean((_first(block(*a, **k)) - targets[i]) ** 2)
                    params = [p for r in rs for p in r.params()]
                    grads = torch.autograd.grad(loss, params)
                    lr = lr0 * (1.0 - it / round_iters)
                    j = 0
                    for r in rs:
                        n = len(r.params())
                        r.step(grads[j:j + n], lr)
                        j += n
                    if (it + 1) % int(round_eval) == 0 or it + 1 == round_iters:
                        cur = _soft_loss(block, inputs, targets)
                        if cur < best:
                            best, best_step, best_p = cur, it + 1, [r.snapshot() for r in rs]
                for r, p in zip(rs, best_p):
                    r.restore(p)
        finally:
            for _, m in layers:
                m.fpq_soft_weight = None
        for r in rs:
            r.finish()
        loss_sr = _loss(block, inputs, targets, "fast")
        kept = loss_sr <= loss_rtn
        if not kept:
            with torch.no_grad():
                for n, m in layers:
                    m.weight.copy_(saved[n][0])
                    m.fpq_weight.log2_scale.copy_(saved[n][1])
        result[bname] = {"kept": kept, "loss": min(loss_sr, loss_rtn), "loss_rtn": loss_rtn,
                         "best_step": best_step, "layers": [n for n, _ in layers]}
    if report is not None:
        report["signround"] = result
    return q
