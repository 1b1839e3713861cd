"""Exact dot products wider than float64's 53 significant bits (numpy or torch arrays).

An e5m2 x e5m2 layer needs a 72-bit exact accumulator (each carrier spans 2^-16 .. 2^15.8).
float64 cannot hold such a sum, but fpq never needs the sum itself: it needs what the next
quantizer makes of it. So:

1. each operand is split by bit position into pieces narrow enough that every piece x piece
   matmul sums exactly in float64 (the spans are read off the data: every value of a quantized
   tensor is a multiple of 2^bottom and below 2^top);
2. the partial sums (and the bias) are combined exactly into hi + lo (split at one bit, sum the
   high and the low parts separately, then TwoSum);
3. the result is hi + lo *rounded to odd* at 53 bits. Rounding to odd keeps every value that has
   at most 51 significant bits in the same order relative to the exact sum, so any later rounding
   to a coarser grid (a quantizer of any rounding mode, fixed-point or minifloat, < 51 bits) gives
   the result it would give on the exact sum; ReLU and max commute with it (Boldo & Melquiond,
   "When double rounding is odd", 2005).

Nothing in numpy, torch or Brevitas does exact wide sums, hence this module. The same code serves
fpq's torch layers (eval mode), the numpy emulator and its torch backend, so all of them agree.
"""
from __future__ import annotations

import math

import numpy as np

FLOAT64_BITS = 53
# widest accumulator (TypePlan bits) that two limbs always hold: the data's spans add at most 2
# bits to it and a sum of up to 16 pieces needs 2 * 4 bits of headroom (see _limbs)
WIDE_BITS = 2 * FLOAT64_BITS - 2 - 2 * 4 - 2


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def bit_span(x):
    """(top, bottom) with every nonzero |x| < 2^top and a multiple of 2^bottom; None if all zero."""
    if _is_torch(x):
        import torch
        nz = x[x != 0].to(torch.float64)
        if nz.numel() == 0:
            return None
        m, e = torch.frexp(nz)
        mant = (m.abs() * 2.0 ** FLOAT64_BITS).to(torch.int64)
        low = torch.log2((mant & -mant).to(torch.float64)).to(torch.int64)
        return int(e.max()), int((e.to(torch.int64) - FLOAT64_BITS + low).min())
    nz = np.asarray(x, dtype=np.float64)
    nz = nz[nz != 0]
    if nz.size == 0:
        return None
    m, e = np.frexp(nz)
    mant = (np.abs(m) * 2.0 ** FLOAT64_BITS).astype(np.int64)
    low = np.log2((mant & -mant).astype(np.float64)).astype(np.int64)
    return int(e.max()), int((e.astype(np.int64) - FLOAT64_BITS + low).min())


def _sum_top(x_top: int, w_span, fan_in: int, b_span) -> int:
    """Bit above every partial sum of ``fan_in`` products x * w (and the bias)."""
    grow = math.ceil(math.log2(max(fan_in, 1) + (b_span is not None)))
    top = x_top + w_span[0] + grow
    return top if b_span is None else max(top, b_span[0] + 1)


def fits_float64(x_span, w_span, fan_in: int, b_span=None) -> bool:
    """Whether sum(x * w) (+ b) over ``fan_in`` terms is exact in float64 in any order."""
    if x_span is None or w_span is None:
        return True
    bottom = x_span[1] + w_span[1]
    if b_span is not None:
        bottom = min(bottom, b_span[1])
    return _sum_top(x_span[0], w_span, fan_in, b_span) - bottom <= FLOAT64_BITS


def _x_fits(x, ws, fan_in, bs) -> bool:
    """A cheap sufficient test of fits_float64 for a large activation tensor (a few elementwise
    passes instead of bit_span's): from max |x|, the coarsest grid step x may sit on for the sum
    to fit 53 bits, then one check that it does."""
    if ws is None:
        return True
    amax = float(x.detach().abs().max()) if _is_torch(x) else float(np.abs(x).max(initial=0.0))
    if amax == 0.0:
        return True
    if not math.isfinite(amax):
        return False
    x_top = math.frexp(amax)[1]
    x_bottom = _sum_top(x_top, ws, fan_in, bs) - FLOAT64_BITS - ws[1]
    if abs(x_bottom) > 1000 or not fits_float64((x_top, x_bottom), ws, fan_in, bs):  # (the bias' grid)
        return False
    y = x * 2.0 ** -x_bottom
    return bool((y == y.trunc()).all()) if _is_torch(y) else bool(np.array_equal(y, np.trunc(y)))


def _floor(x):
    return x.floor() if _is_torch(x) else np.floor(x)


def split(x, span, pieces: int):
    """x as ``pieces`` arrays summing to x exactly, each holding a band of x's bits.

    Returns [(piece, (top, bottom))]: the top piece carries the sign (floor rounds toward -inf),
    the lower ones lie in [0, 2^top)."""
    top, bottom = span
    step = math.ceil((top - bottom) / pieces)
    cuts = [c for c in (bottom + i * step for i in range(pieces - 1, 0, -1)) if c < top]
    out, rest, upper = [], x, top + 1  # floor may push the top piece one bit above |x|'s top
    for cut in cuts:
        hi = _floor(rest * 2.0 ** -cut) * 2.0 ** cut
        rest = rest - hi
        out.append((hi, (upper, cut)))
        upper = cut
    out.append((rest, (upper, bottom)))
    return out


def _plan_pieces(x_span, w_span, grow):
    """Fewest (nx, nw) pieces such that every piece pair sums exactly in float64."""
    best = None
    for nx in range(1, 9):
        for nw in range(1, 9):
            px = math.ceil((x_span[0] - x_span[1]) / nx) + 1
            pw = math.ceil((w_span[0] - w_span[1]) / nw) + 1
            if px + pw + grow <= FLOAT64_BITS and (best is None or nx * nw < best[0] * best[1]):
                best = (nx, nw)
    if best is None:
        raise ValueError(f"an exact sum of spans {x_span} x {w_span} needs more than 8 pieces per operand")
    return best


def _limbs(spans):
    """(cut, ok): the bit at which the terms split into high and low parts that each sum exactly."""
    n = len(spans)
    g = math.ceil(math.log2(n)) if n > 1 else 0
    bottom = min(s[1] for s in spans)
    top = max(s[0] for s in spans)
    cut = bottom + FLOAT64_BITS - g          # the low parts, in [0, n * 2^cut), sum exactly
    return cut, top + 1 + g - cut <= FLOAT64_BITS  # and so must the high parts (|h| < 2^(top+1))


def exact_sum_rounded_to_odd(terms, spans):
    """Round-to-odd (53 bits) of the exact sum of float64 arrays ``terms`` (broadcastable), given
    each term's span (top, bottom): |term| < 2^top, a multiple of 2^bottom."""
    cut, ok = _limbs(spans)
    if not ok:
        raise ValueError(f"an exact sum of terms spanning {spans} needs more than two float64 limbs")
    high = low = None
    for t in terms:
        h = _floor(t * 2.0 ** -cut) * 2.0 ** cut
        high = h if high is None else high + h
        low = t - h if low is None else low + (t - h)
    return round_to_odd(high, low)


def round_to_odd(a, b):
    """RO_53(a + b) for float64 arrays whose sum has no overflow: TwoSum, then the odd neighbour."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    if _is_torch(s):
        import torch
        even = (s.view(torch.int64) & 1) == 0
        away = torch.nextafter(s, torch.where(err > 0, torch.full_like(s, math.inf), torch.full_like(s, -math.inf)))
        return torch.where((err != 0) & even, away, s)
    even = (s.view(np.int64) & 1) == 0
    away = np.nextafter(s, np.where(err > 0, np.inf, -np.inf))
    return np.where((err != 0) & even, away, s)


def exact_bilinear(f, x, w, b=None, fan_in: int | None = None, bias_shape=None, strict: bool = False,
                   x_bound=None):
    """``f(x, w) + b`` for a bilinear ``f`` (matmul, conv) that sums ``fan_in`` products, exactly:
    one float64 call when the sum fits 53 bits, else split pieces combined and rounded to odd.

    ``x``, ``w``, ``b`` are float64 arrays (numpy or torch); ``b`` is added after reshaping to
    ``bias_shape`` (for channels-first convs). Returns (result, wide) with ``wide`` True when the
    result is the rounded-to-odd value rather than the exact sum. A sum too wide for two limbs
    (about 90 bits; in practice unquantized float data, e.g. during calibration) raises with
    ``strict``, else takes one plain float64 call, as any float64 layer would. ``x_bound``:
    a (top, bottom) known to bound every x (from its quantizer), which spares a pass over x.
    """
    ws = bit_span(w)
    bs = bit_span(b) if b is not None else None
    bb = None if b is None else (b.reshape(bias_shape) if bias_shape is not None else b)

    def plain():
        y = f(x, w)
        return (y if bb is None else y + bb), False

    if (x_bound is not None and fits_float64(x_bound, ws, fan_in, bs)) or \
            (x_bound is None and _x_fits(x, ws, fan_in, bs)):
        return plain()
    xs = bit_span(x)
    if fits_float64(xs, ws, fan_in, bs):
        return plain()
    grow = math.ceil(math.log2(max(fan_in, 1)))
    try:
        nx, nw = _plan_pieces(xs, ws, grow)
    except ValueError:
        if strict:
            raise
        return plain()
    pieces = [(xp, wp, (xt + wt + grow, xb + wb))
              for xp, (xt, xb) in split(x, xs, nx) for wp, (wt, wb) in split(w, ws, nw)]
    spans = [p[2] for p in pieces] + ([bs] if bb is not None else [])
    if not _limbs(spans)[1]:
        if strict:
            raise ValueError(f"the exact sum of spans {xs} x {ws} over {fan_in} terms needs more than two "
                             "float64 limbs")
        return plain()
    terms = [f(xp, wp) for xp, wp, _ in pieces] + ([bb] if bb is not None else [])
    return exact_sum_rounded_to_odd(terms, spans), True


__all__ = ["bit_span", "fits_float64", "split", "exact_sum_rounded_to_odd", "round_to_odd", "exact_bilinear"]
