"""The block-scaled datapath's hardware facts (numpy only), read by the HLS writer (fpq.hls.blocks,
hls/fpq_block.h) and the cost model (fpq.cost_model.blocks), so both describe the same circuit:
what travels on the wire (element sign, element index among the format's non-negative values,
block scale code), the rounding tables (midpoints, ties to even as fpq.numerics.reference rounds),
the static weights as element codes and per-block scale codes, and every exact width of the block
dot product (``dense_widths``). Refusals are ValueErrors naming the layer (``who``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..formats import BlockFormat
from ..formats.facts import values as format_values
from .blocks import block_quantize, to_blocks
from .reference import quantize_unscaled

MAX_WIDTH = 1000  # ap_int's default AP_INT_MAX_W is 1024


def _exp2(v: float) -> int:
    """The exponent of the LSB of a nonzero dyadic float."""
    f = Fraction(v)
    if f.denominator > 1:
        return -(f.denominator.bit_length() - 1)
    n = abs(f.numerator)
    return (n & -n).bit_length() - 1


def sig_exp(v: float) -> tuple[int, int]:
    """v = sig * 2^exp, sig an odd integer (v > 0 dyadic)."""
    e = _exp2(v)
    return int(Fraction(v) / Fraction(2) ** e), e


def exact_product(product: float, *factors: float) -> float:
    if Fraction(product) != math.prod(Fraction(f) for f in factors):
        raise AssertionError(f"{factors} has no exact float64 product")   # formats are checked to fit
    return product


@dataclass(frozen=True)
class Grid:
    """A format's non-negative values (ascending; index = the wire's element index), their
    midpoints and, per midpoint, whether its tie rounds up (the upper value has the even code:
    decided by the reference's own rounding, fpq.numerics.reference)."""

    pos: np.ndarray
    mids: np.ndarray
    up: np.ndarray

    @property
    def idx_bits(self) -> int:
        return max(1, (len(self.pos) - 1).bit_length())


def _reachable(fmt) -> np.ndarray:
    """The finite values the format's quantizer can produce (e.g. SAT_SYM never gives -2^(W-1))."""
    v = np.asarray(format_values(fmt), dtype=np.float64)
    return np.unique(quantize_unscaled(v[np.isfinite(v)], fmt))


def value_grid(fmt, lo: float = 0.0) -> Grid:
    v = _reachable(fmt)
    pos = np.unique(v[v >= lo])
    mids = (pos[:-1] + pos[1:]) / 2
    up = quantize_unscaled(mids, fmt) == pos[1:]
    return Grid(pos, mids, up)


def elem_grid(fmt: BlockFormat, who: str) -> Grid:
    v = _reachable(fmt.elem)
    g = value_grid(fmt.elem)
    if not np.array_equal(np.unique(-v[v < 0]), g.pos[1:]):
        raise ValueError(f"{who}: the block element format {fmt.elem} is not sign-symmetric; the HLS block "
                                  "datapath carries sign and magnitude (use e.g. a narrow int or a minifloat)")
    return g


@dataclass(frozen=True)
class Wire:
    """A block-scaled tensor on the HLS wire: its format, static tensor scale (1 for E8M0) and the
    tables of its words."""

    fmt: BlockFormat
    st: float
    elem: Grid
    scale_vals: np.ndarray   # per scale code: the block scale (E8M0: 2^(c - 127))

    @property
    def scale_bits(self) -> int:
        return 8 if self.fmt.po2_scale else max(1, (len(self.scale_vals) - 1).bit_length())

    @property
    def word_bits(self) -> int:
        return 1 + self.elem.idx_bits + self.scale_bits


def make_wire(fmt: BlockFormat, scale, who: str) -> Wire:
    if fmt.axis not in (-1, 1):
        raise ValueError(f"{who}: {fmt} blocks along axis {fmt.axis}; HLS blocks the last axis of a vector or "
                         "axis 1 (the channels) of a feature map or a convolution's weight")
    st = float(np.ravel(scale)[0])
    if fmt.po2_scale:
        if st != 1.0:
            raise AssertionError(f"{who}: an e8m0 block format with tensor scale {st}")
        svals = np.ldexp(1.0, np.arange(-127, 128))
    else:
        svals = value_grid(fmt.scale, fmt.scale.min_normal).pos
    return Wire(fmt, st, elem_grid(fmt, who), svals)


# ---------------------------------------------------------------------------------------- weights
def weight_codes(w: np.ndarray, wire: Wire, who: str):
    """Static block weights (out, in) float64 -> (element index, negative, scale code per block),
    with element x scale x tensor scale == w exactly. The reference's own codes where its
    re-quantization reproduces the values; otherwise the first scale code that holds the block."""
    fmt, pos = wire.fmt, wire.elem.pos
    blocks, _ = to_blocks(w, fmt.k, -1)                       # (out, nb, k), zero padded
    ts = None if fmt.po2_scale else wire.st
    bq = block_quantize(w, fmt, ts)
    if fmt.po2_scale:
        codes = bq.scale_codes.copy()
    else:
        codes = np.searchsorted(wire.scale_vals, bq.scales)
    codes = np.clip(codes, 0, len(wire.scale_vals) - 1)

    def elems(c):
        S = wire.scale_vals[c] * wire.st
        e = blocks / S[..., None]
        ok = (e * S[..., None] == blocks) & np.isin(np.abs(e), pos)
        return e, ok.all(-1)

    e, ok = elems(codes)
    for idx in zip(*np.nonzero(~ok)):
        for c in range(len(wire.scale_vals)):
            S = wire.scale_vals[c] * wire.st
            eb = blocks[idx] / S
            if np.all(eb * S == blocks[idx]) and np.all(np.isin(np.abs(eb), pos)):
                codes[idx] = c
                break
        else:
            raise ValueError(f"{who}: a weight block holds values that are not {fmt} values at any scale")
    e, ok = elems(codes)
    assert ok.all()
    e = e.reshape(e.shape[0], -1)[:, :w.shape[1]]
    return np.searchsorted(pos, np.abs(e)), e < 0, codes


def dyadic_ints(vals: np.ndarray) -> tuple[list, int]:
    """Non-negative dyadic values -> (integers, lsb exponent): vals = ints * 2^lsb."""
    nz = [float(v) for v in vals if v != 0]
    lsb = min((_exp2(v) for v in nz), default=0)
    return [int(Fraction(float(v)) / Fraction(2) ** lsb) for v in vals], lsb


def scale_sig_exp(wire: Wire, codes=None):
    """Per scale code: (significand, exponent) tables; and the exponent range and largest
    significand over ``codes`` (all codes when None)."""
    se = [sig_exp(float(s)) for s in wire.scale_vals]
    used = range(len(se)) if codes is None else sorted(set(int(c) for c in np.ravel(codes)))
    return [s for s, _ in se], [e for _, e in se], min(se[c][1] for c in used), max(se[c][1] for c in used), \
        max(se[c][0] for c in used)




@dataclass(frozen=True)
class DenseWidths:
    """Every number of one block dot product y = x @ w.T + b (hls/fpq_block.h, ``block_dense``)."""

    n_in: int
    n_out: int
    g: int                  # values per sub-block: gcd of both block sizes
    n_sub: int              # sub-blocks along the reduction axis (the last one zero-padded)
    nbw: int                # weight blocks per row
    x_ints: list            # element index -> integer (x 2^lx)
    lx: int
    w_ints: list
    lw: int
    x_sig: list             # scale code -> significand, exponent
    x_exp: list
    w_sig: list
    w_exp: list
    w_idx: np.ndarray       # (n_out, n_in) element indices of the weights
    w_neg: np.ndarray       # (n_out, n_in) their signs
    w_codes: np.ndarray     # (n_out, nbw) their block scale codes
    e_min: int              # lowest exponent of a product of two block scales
    e_span: int             # highest minus lowest: the accumulator's shift range
    x_e_span: int           # the run-time (activation) exponent range: the shifter's range
    cm: int                 # significand of the static tensor scales' product (1 for e8m0 x e8m0)
    acc_shift: int
    bias_shift: int
    b_int: list
    lsb_y: int              # the result's LSB: 2^lsb_y
    pw: int                 # bits of one sub-block's sum of element products
    tw: int                 # ... times both scale significands
    aw: int                 # the exact accumulator
    yw: int                 # the result (times the tensor scales, plus the bias)
    kw: int = 0             # weight values per weight scale code (the block size; 1 per element)


def dense_widths(xw: Wire, ww: Wire, w: np.ndarray, bias, who: str, taps: int = 1, perm=None) -> DenseWidths:
    """The exact widths of y = x @ w.T + bias with x on wire ``xw`` (run-time block scales over the
    whole range of its scale format) and the static weights ``w`` on ``ww`` (their own codes).
    A convolution (``taps`` > 1, fpq::block_conv): ``w`` holds n_out * taps rows (output channel
    major, then kernel tap) of n_in = input channels, each row blocked on its own, and every output
    sums ``taps`` rows (the widths, w_idx / w_codes per row; n_out is rows / taps).
    ``perm`` (a Linear after a flattened feature map, which arrives in channels-last order: input i
    is torch feature perm[i]): the two operands' blocks no longer line up, so every product is its
    own sub-block (g = 1) with its own pair of scales, the weights' codes given per input in that
    order (kw = 1)."""
    rows, n_in = w.shape
    n_out = rows // taps
    w_idx, w_neg, w_codes = weight_codes(w, ww, who)
    g, kw = math.gcd(xw.fmt.k, ww.fmt.k), ww.fmt.k
    if perm is not None:
        w_codes = np.repeat(w_codes, kw, axis=1)[:, :n_in][:, perm]
        w_idx, w_neg, g, kw = w_idx[:, perm], w_neg[:, perm], 1, 1
    n_sub, nbw = -(-n_in // g), -(-n_in // kw)
    x_ints, lx = dyadic_ints(xw.elem.pos)
    w_ints, lw = dyadic_ints(ww.elem.pos)
    xsig, xexp, xe_lo, xe_hi, xs_max = scale_sig_exp(xw)
    wsig, wexp, we_lo, we_hi, ws_max = scale_sig_exp(ww, w_codes)
    maxp = g * max(x_ints) * max(w_ints)                  # |sum of one sub-block's element products|
    term_max = maxp * xs_max * ws_max
    e_min = xe_lo + we_lo
    acc_max = (taps * n_sub * term_max) << (xe_hi + we_hi - e_min)
    lsb = e_min + lx + lw                                 # the accumulator's LSB: 2^lsb
    c = Fraction(xw.st) * Fraction(ww.st)                 # the static tensor scales' product
    cm, ce = c.numerator, -(c.denominator.bit_length() - 1)
    b = np.zeros(n_out) if bias is None else np.asarray(bias, dtype=np.float64)
    if not np.isfinite(b).all():
        raise ValueError(f"{who}: its bias holds non-finite values")
    b_abs, lb = dyadic_ints(np.abs(b))
    if not np.any(b):
        lb = lsb + ce
    b_int = [-v if s < 0 else v for v, s in zip(b_abs, b)]
    ly = min(lsb + ce, lb)
    acc_shift, bias_shift = lsb + ce - ly, lb - ly
    y_max = (acc_max * cm << acc_shift) + (max(b_abs, default=0) << bias_shift)
    yw = y_max.bit_length() + 1
    if yw > MAX_WIDTH or max(b_abs, default=0) >= 1 << 62:
        raise ValueError(
            f"{who}: its exact sum needs {yw} bits (scale exponents 2^{e_min} .. 2^{xe_hi + we_hi}, bias LSB 2^{lb}), "
            f"more than the {MAX_WIDTH} an ap_int holds; use block formats of a narrower scale range")
    return DenseWidths(n_in, n_out, g, n_sub, nbw, x_ints, lx, w_ints, lw, xsig, xexp, wsig, wexp, w_idx, w_neg,
                       w_codes, e_min, xe_hi + we_hi - e_min, xe_hi - xe_lo, cm, acc_shift, bias_shift, b_int, ly,
                       maxp.bit_length() + 1, term_max.bit_length() + 1, acc_max.bit_length() + 1, yw, kw)


def output_widths(wire: Wire) -> tuple[int, int]:
    """(width, LSB exponent) of the exact value of any word of ``wire`` (elem x scale x tensor scale)."""
    el, lx = dyadic_ints(wire.elem.pos)
    _, _, e_lo, e_hi, s_max = scale_sig_exp(wire)
    stm, ste = sig_exp(wire.st)
    return (max(el) * s_max * stm).bit_length() + (e_hi - e_lo) + 1, lx + e_lo + ste
