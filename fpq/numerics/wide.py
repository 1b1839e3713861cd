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


def split_abs(x, span, pieces: int):
    """``split`` by sign and magnitude: each piece is sign(x) times a band of |x|'s bits, so every
    piece is exactly representable whatever the span (the floor split of a negative value can
    need more than 53 bits once the span exceeds 53). Returns [(piece, (top, bottom))], |piece| < 2^top."""
    top, bottom = span
    step = math.ceil((top - bottom) / pieces)
    cuts = [c for c in (bottom + i * step for i in range(pieces - 1, 0, -1)) if c < top]
    sign = x.sign() if _is_torch(x) else np.sign(x)
    out, rest, upper = [], abs(x), top
    for cut in cuts:
        hi = _floor(rest * 2.0 ** -cut) * 2.0 ** cut
        rest = rest - hi
        out.append((sign * hi, (upper, cut)))
        upper = cut
    out.append((sign * rest, (upper, bottom)))
    return out


def _plan_pieces(x_span, w_span, grow, max_pieces: int = 8):
    """Fewest (nx, nw) pieces such that every piece pair sums exactly in float64."""
    best = None
    for nx in range(1, max_pieces + 1):
        for nw in range(1, max_pieces + 1):
            px = math.ceil((x_span[0] - x_span[1]) / nx) + 1
            pw = math.ceil((w_span[0] - w_span[1]) / nw) + 1
            if px + pw + grow <= FLOAT64_BITS and (best is None or nx * nw < best[0] * best[1]):
                best = (nx, nw)
    if best is None:
        raise ValueError(f"an exact sum of spans {x_span} x {w_span} needs more than {max_pieces} pieces per operand")
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


def exact_sum_rounded_to_odd_any(terms, spans):
    """``exact_sum_rounded_to_odd`` for terms spanning any number of bits (float32 data from
    2^-149 to 2^128), with as many float64 limbs as needed:

    1. each term's magnitude is cut at bits c_1 < c_2 < ... into bands of W = 52 - g bits (g =
       log2 of the term count), each band signed and summed over the terms, exactly;
    2. carries are propagated from the bottom so that every limb but the top one lies in
       [0, 2^c_next): value = S_top + S_(L-1) + ... + S_1, the lower limbs non-negative;
    3. from the top, limbs are added while the sum stays exact (TwoSum error 0); at the first
       inexact addition U + S_k, the result is RO_53(U + S_k): the limbs below add less than
       2^c_k, less than half a 53-bit ulp of U + S_k, and cannot move it across a 53-bit number, so
       they cannot change its rounding to odd (its truncation and inexactness).
    """
    n = len(terms)
    g = math.ceil(math.log2(n)) if n > 1 else 0
    width = FLOAT64_BITS - 1 - g
    bottom = min(sp[1] for sp in spans)
    top = max(sp[0] for sp in spans) + 1
    cuts = list(range(bottom + width, top, width))       # c_2, c_3, ...: L = len(cuts) + 1 limbs
    limbs = [None] * (len(cuts) + 1)
    for t in terms:                                        # bands of |t|, signed (split_abs)
        sign = t.sign() if _is_torch(t) else np.sign(t)
        rest = abs(t)
        for k in range(len(cuts), 0, -1):
            hi = _floor(rest * 2.0 ** -cuts[k - 1]) * 2.0 ** cuts[k - 1]
            rest = rest - hi
            limbs[k] = sign * hi if limbs[k] is None else limbs[k] + sign * hi
        limbs[0] = sign * rest if limbs[0] is None else limbs[0] + sign * rest
    for k in range(len(cuts)):                             # carries upwards
        carry = _floor(limbs[k] * 2.0 ** -cuts[k]) * 2.0 ** cuts[k]
        limbs[k] = limbs[k] - carry
        limbs[k + 1] = limbs[k + 1] + carry
    u, done, res = limbs[-1], None, None
    for k in range(len(limbs) - 2, -1, -1):
        s = u + limbs[k]
        bb = s - u
        err = (u - (s - bb)) + (limbs[k] - bb)
        ro = round_to_odd(u, limbs[k])
        stop = err != 0
        if done is None:
            res, done = ro, stop
        else:
            res = _where(done, res, ro)
            done = done | stop
        u = _where(done, u, s)
    return u if done is None else _where(done, res, u)


def _where(c, a, b):
    if _is_torch(c):
        import torch
        return torch.where(c, a, b)
    return np.where(c, a, b)


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
                   x_bound=None, any_span: bool = False):
    """``f(x, w) + b`` for a bilinear ``f`` (matmul, conv) that sums ``fan_in`` products, exactly:
    one float64 call when the sum fits 53 bits, else split pieces combined and rounded to odd.

    ``x``, ``w``, ``b`` are float64 arrays (numpy or torch); ``b`` is added after reshaping to
    ``bias_shape`` (for channels-first convs). Returns (result, wide) with ``wide`` True when the
    result is the rounded-to-odd value rather than the exact sum. A sum too wide for two limbs
    (about 90 bits; in practice unquantized float data, e.g. during calibration) raises with
    ``strict``, else takes one plain float64 call, as any float64 layer would. ``x_bound``:
    a (top, bottom) known to bound every x (from its quantizer), which spares a pass over x.
    ``any_span``: float inputs of any span (fpq.nn.weight_only): up to 16 pieces per operand and
    as many limbs as needed (``exact_sum_rounded_to_odd_any``), never a plain call.
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
        nx, nw = _plan_pieces(xs, ws, grow, 16 if any_span else 8)
    except ValueError:
        if strict or any_span:
            raise
        return plain()
    cut = split_abs if any_span else split
    pieces = [(xp, wp, (xt + wt + grow, xb + wb))
              for xp, (xt, xb) in cut(x, xs, nx) for wp, (wt, wb) in cut(w, ws, nw)]
    if bs is None:   # an all-zero bias adds nothing (and has no span)
        bb = None
    spans = [p[2] for p in pieces] + ([bs] if bb is not None else [])
    if not _limbs(spans)[1] and any_span:
        terms = [f(xp, wp) for xp, wp, _ in pieces] + ([bb] if bb is not None else [])
        return exact_sum_rounded_to_odd_any(terms, spans), True
    if not _limbs(spans)[1]:
        if strict:
            raise ValueError(f"the exact sum of spans {xs} x {ws} over {fan_in} terms needs more than two "
                             "float64 limbs")
        return plain()
    terms = [f(xp, wp) for xp, wp, _ in pieces] + ([bb] if bb is not None else [])
    return exact_sum_rounded_to_odd(terms, spans), True


__all__ = ["bit_span", "fits_float64", "split", "exact_sum_rounded_to_odd", "exact_sum_rounded_to_odd_any",
           "round_to_odd", "exact_bilinear"]
