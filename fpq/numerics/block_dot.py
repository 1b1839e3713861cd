"""Exact dot products of block-scaled tensors (numpy or torch arrays): the linear layer of a block
format (mxfp4, nvfp4, block<...>), for fpq's torch layers (eval mode) and both emulator backends,
so all of them compute the same value.

Why not one fixed-point accumulator: a block value is element x block scale (x a float32 tensor
scale for NVFP4-style formats). The products of a block pair are exact small fixed-point numbers
(element carrier x element carrier), but each block pair shifts them by its own scale exponents:
with E8M0 scales 2^-127 .. 2^127 on both sides the exact sum of a row may span ~560 bits, no
fixed accumulator worth building and far beyond float64 (53 bits) or fpq.numerics.wide's two limbs.
So the sum is formed as the hardware's block datapath does it, and held exactly:

1. every block of ``k`` values (along the reduction axis) is divided by 2^E, E the binary exponent
   of its largest magnitude (exact: a power of two), so each normalized block lies in (-1, 1) on a
   grid the element format (x its scale's and tensor scale's bits) fixes;
2. the products of two normalized blocks are summed per block pair in float64, split into bit
   bands (``wide.split``) when their span needs it, which makes every partial sum exact;
3. each partial sum is shifted back by 2^(Ex + Ew) (exact) and the terms of all blocks (and the
   bias) are summed exactly by ``exact_sum_odd``: bands of ~48 bits per band of the exponent range
   present, carries propagated, and the total *rounded to odd* at 53 bits. Every quantizer after it
   (fixed, minifloat, or a block format's element rounding and power-of-two scale) rounds that as it
   would the exact sum (Boldo & Melquiond, "When double rounding is odd"); when the exact sum fits
   53 bits, the result is the exact sum.

``block_linear`` also says, per output value, whether a plain float64 matmul would have summed it
exactly in ANY order (the span of its products and bias within 53 bits): what qonnx's float64
executor computes is then the same value; where not, only the quantizers after it can agree.
Nothing in numpy, torch, Brevitas or torchao sums block products exactly (torchao's MX matmul
dequantizes to float32 / bf16), hence this module.
"""
from __future__ import annotations

import math

import numpy as np

from .wide import FLOAT64_BITS, _plan_pieces, bit_span, round_to_odd, split


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _ldexp(x, e):
    """x * 2**e, exact (e: an integer array broadcastable to x, or an int)."""
    if _is_torch(x):
        import torch
        return torch.ldexp(x, torch.as_tensor(e, device=x.device).to(x.dtype))
    return np.ldexp(x, np.asarray(e, dtype=np.int64))


def _floor(x):
    return x.floor() if _is_torch(x) else np.floor(x)


def _trunc(x):
    return x.trunc() if _is_torch(x) else np.trunc(x)


def exact_sum_odd(terms):
    """The exact sum of float64 ``terms`` along the last axis, rounded to odd at 53 bits (== the
    exact sum whenever that fits float64), for terms of ANY exponents (numpy or torch).

    Every term is cut into bands [c_j, c_j + W) of the exponent range present (toward zero, so each
    piece is a run of the term's own bits); each band sums exactly in float64 (W + log2(m) + 3 <=
    53); carries move up by floor so every band but the top one lies in [0, 2^(c_j + W)); a negative total is negated
    and normalized again; then, from the bottom band up, s = RO(band_j + s), which is RO of the
    exact sum because band_j >= 2^c_j > s >= 0 whenever band_j != 0 (ulp(sum) >= 2 ulp(s))."""
    m = int(terms.shape[-1])
    span = bit_span(terms)
    if span is None:
        return terms.sum(-1)
    top, bottom = span
    g = math.ceil(math.log2(max(m, 1))) if m > 1 else 0
    if top - bottom + g <= FLOAT64_BITS:
        return terms.sum(-1)          # exact in any order
    if top - bottom > 1900 or bottom < -1070:
        raise ValueError(f"exact_sum_odd: terms spanning 2^{bottom} .. 2^{top} are beyond float64's exponent range")
    w = FLOAT64_BITS - g - 3
    nb = (top - bottom) // w + 1
    cuts = [bottom + j * w for j in range(nb)]
    bands = [None] * nb
    rest = terms
    for j in range(nb - 1, -1, -1):   # toward zero, so that every rest is exact (bits of the term)
        piece = _ldexp(_trunc(_ldexp(rest, -cuts[j])), cuts[j])
        rest = rest - piece
        bands[j] = piece.sum(-1)

    def carry(bands):
        for j in range(nb - 1):
            c = _ldexp(_floor(_ldexp(bands[j], -cuts[j + 1])), cuts[j + 1])
            bands[j] = bands[j] - c
            bands[j + 1] = bands[j + 1] + c
        return bands

    bands = carry(bands)
    neg = bands[-1] < 0
    if bool(neg.any()):
        bands = carry([_where(neg, -b, b) for b in bands])
    s = bands[0]
    for j in range(1, nb):
        s = round_to_odd(bands[j], s)
    return _where(neg, -s, s)


def _where(c, a, b):
    if _is_torch(a):
        import torch
        return torch.where(c, a, b)
    return np.where(c, a, b)


def _blocks(a, k: int):
    """a (..., n) -> (..., nb, k), zero-padded (a zero changes no sum)."""
    n = a.shape[-1]
    nb = -(-n // k)
    if nb * k != n:
        if _is_torch(a):
            import torch
            a = torch.cat([a, a.new_zeros(a.shape[:-1] + (nb * k - n,))], dim=-1)
        else:
            a = np.concatenate([a, np.zeros(a.shape[:-1] + (nb * k - n,))], axis=-1)
    return a.reshape(a.shape[:-1] + (nb, k))


def _normalize(b):
    """(blocks / 2^E, E, nonzero): E the frexp exponent of each block's largest magnitude."""
    if _is_torch(b):
        import torch
        amax = b.abs().amax(dim=-1)
        e = torch.frexp(amax)[1].to(torch.int64)
    else:
        amax = np.abs(b).max(axis=-1)
        e = np.frexp(amax)[1].astype(np.int64)
    return _ldexp(b, -e[..., None]), e, amax != 0


def block_linear(x, w, b=None, k: int = 32):
    """``x @ w.T + b`` of block-quantized float64 values (x (N, n), w (O, n), b (O,) or None; numpy
    or torch), exact: see the module docstring. ``k``: the blocks along n to normalize by (the
    block size both operands share, e.g. gcd of the two formats'; any k is correct, a matching one
    needs fewest bands). Returns (y (N, O) float64 rounded to odd at 53 bits, in_float64 (N, O)
    bool: a plain float64 matmul sums that value exactly in any order)."""
    torch_ = _is_torch(x)
    if x.shape[-1] != w.shape[-1]:
        raise ValueError(f"block_linear: x has {x.shape[-1]} inputs, the weight {w.shape[-1]}")
    bad_x = (x != x).any(-1) if torch_ else np.isnan(x).any(-1)
    bad_w = (w != w).any(-1) if torch_ else np.isnan(w).any(-1)
    if bool(bad_x.any()) or bool(bad_w.any()):   # a NaN block (NaN input): NaN rows / columns
        y, fits = block_linear(_where(x != x, 0.0 * x, x), _where(w != w, 0.0 * w, w), b, k)
        nan = bad_x[:, None] | bad_w[None, :]
        return _where(nan, y * math.nan, y), fits | nan
    xb, wb = _blocks(x, k), _blocks(w, k)
    xn, ex, nzx = _normalize(xb)
    wn, ew, nzw = _normalize(wb)
    xs, ws = bit_span(xn), bit_span(wn)
    bs = bit_span(b) if b is not None else None
    n_terms = x.shape[-1] + (b is not None)
    grow = math.ceil(math.log2(max(n_terms, 1)))
    if xs is None or ws is None:  # all zero on one side
        y = x @ w.T
        fits = (y == y) if torch_ else np.ones(y.shape, dtype=bool)
        return (y if b is None else y + b), fits
    e = ex[:, None, :] + ew[None, :, :]                     # (N, O, nb)
    live = nzx[:, None, :] & nzw[None, :, :]
    big, small = 1 << 40, -(1 << 40)
    hi = _where(live, e, small * (e * 0 + 1)).amax(-1) if torch_ else np.where(live, e, small).max(-1)
    lo = _where(live, e, big * (e * 0 + 1)).amin(-1) if torch_ else np.where(live, e, big).min(-1)
    top = hi + xs[0] + ws[0] + grow
    bottom = lo + xs[1] + ws[1]
    if bs is not None:
        top = _where(live.any(-1), top, bs[0] + grow * (top * 0 + 1)) if torch_ else \
            np.where(live.any(-1), top, bs[0] + grow)
        top = top.clamp(min=bs[0] + 1) if torch_ else np.maximum(top, bs[0] + 1)
        bottom = bottom.clamp(max=bs[1]) if torch_ else np.minimum(bottom, bs[1])
    fits = (top - bottom <= FLOAT64_BITS) | ~live.any(-1)
    if bool(fits.all()):
        y = x @ w.T
        return (y if b is None else y + b), fits
    nx, nw = _plan_pieces(xs, ws, math.ceil(math.log2(k)))
    terms = []
    for xp, _ in split(xn, xs, nx):
        for wp, _ in split(wn, ws, nw):
            if torch_:
                import torch
                p = torch.einsum("nbk,obk->nob", xp, wp)
            else:
                p = np.einsum("nbk,obk->nob", xp, wp, optimize=False)
            terms.append(_ldexp(p, e))
    if b is not None:
        bb = b.reshape(1, -1, 1).expand(x.shape[0], w.shape[0], 1) if torch_ else \
            np.broadcast_to(b.reshape(1, -1, 1), (x.shape[0], w.shape[0], 1))
        terms.append(bb)
    if torch_:
        import torch
        t = torch.cat(terms, dim=-1)
    else:
        t = np.concatenate(terms, axis=-1)
    return exact_sum_odd(t), fits


__all__ = ["exact_sum_odd", "block_linear"]
