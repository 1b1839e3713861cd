"""Exact lookup tables for quantizers whose scale is not a power of two.

y = Q(x / s) * s with a float scale s needs a division no fixed-point datapath does exactly. But
the quantizer is monotone in x (a correctly rounded division and any rounding to a grid both are,
and so is clipping), and x can only take the values of its exact type: the grid of the
accumulator feeding it, or float32 at the network input. So the quantizer is a step function on
that finite, ordered set, and is given exactly by the first input of each step (its thresholds)
and the output of each step (its levels). This module finds them with fpq's own quantizer
(``fpq.numerics.scaled.apply_scaled``, as the emulator applies it), one step after the other by a 256-way search over the input keys,
and then checks the table against the quantizer on random inputs and on every threshold and its
predecessor. The C++ side (``fpq::quantize_by_thresholds``, written by fpq.hls) and the cost model's RTL
(``fpq.cost_model.rtl.threshold_quantizer``) are a binary search over the table.

No library does this for fpq's quantizer semantics: FINN's MultiThreshold nodes hold thresholds,
but are computed there for FINN's own streamlined integer graphs.
"""
from __future__ import annotations

import numpy as np

from ..formats import Fixed, parse_format
from .scaled import apply_scaled

MAX_LEVELS = 4096       # a larger table is not a sensible circuit (and never an 8-bit format)
FLOAT64_EXACT_BITS = 53
_FAN = 256              # points per search step: one numpy call costs about the same for 1 or 256


class _FixedGrid:
    """The values of a Fixed type, keyed by their integer code n (value n * 2^-frac)."""

    def __init__(self, t: Fixed):
        if t.width > FLOAT64_EXACT_BITS:
            raise ValueError(f"input type {t} is wider than {FLOAT64_EXACT_BITS} bits: its values are not all "
                             "float64 numbers, which the table search evaluates")
        self.frac = t.width - t.int_bits
        self.lo, self.hi = (-(1 << (t.width - 1)), (1 << (t.width - 1)) - 1) if t.signed else (0, (1 << t.width) - 1)
        self.dtype = np.float64

    def values(self, keys: np.ndarray) -> np.ndarray:
        return np.ldexp(keys.astype(np.float64), -self.frac)


class _Float32Grid:
    """The finite float32 values, keyed by an order-preserving integer (-0.0 and 0.0 share 0)."""

    def __init__(self):
        top = int(np.array(np.finfo(np.float32).max, np.float32).view(np.int32))
        self.lo, self.hi = -top, top
        self.dtype = np.float32

    def values(self, keys: np.ndarray) -> np.ndarray:
        keys = keys.astype(np.int64)
        bits = np.where(keys >= 0, keys, (-keys) | 0x80000000).astype(np.uint32)
        return bits.view(np.float32)


def float32_keys(values) -> np.ndarray:
    """The order-preserving integer keys of float32 values (``_Float32Grid``'s, the search over a
    float32 input compares them: -0.0 and 0.0 share 0): the bit pattern for x >= 0, minus the
    magnitude bits for x < 0."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.int64)
    mag = bits & 0x7FFFFFFF
    return np.where(bits >> 31, -mag, mag)


def lookup_table(quantize, input_type) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, levels) of the monotone ``quantize`` (array -> array) over the values of
    ``input_type`` (a Fixed, or "float32" for a float32 network input): levels[k] is the output
    for inputs with exactly k thresholds <= them. Raises ValueError when the quantizer is not a
    step function there (it would not be exact) or has more than MAX_LEVELS levels."""
    grid = _Float32Grid() if input_type == "float32" else _FixedGrid(input_type)

    def f(keys):
        x = grid.values(np.asarray(keys, dtype=np.int64)).astype(grid.dtype)
        with np.errstate(over="ignore"):  # float32 inputs near the top overflow x / s: they saturate
            return np.asarray(quantize(x), dtype=np.float64).ravel()

    top = f([grid.hi])[0]
    keys, levels = [], [f([grid.lo])[0]]
    a = grid.lo
    while levels[-1] != top:
        cur = levels[-1]
        b = grid.hi              # invariant: f(a) == cur < f(b)
        while b - a > 1:
            probe = np.unique(np.linspace(a, b, _FAN + 1).astype(np.int64)[1:-1])
            probe = probe[(probe > a) & (probe < b)]
            if probe.size == 0:
                break
            y = f(probe)
            above = np.nonzero(y != cur)[0]
            if above.size:
                b = int(probe[above[0]])
                a = int(probe[above[0] - 1]) if above[0] > 0 else a
            else:
                a = int(probe[-1])
        nxt = f([b])[0]
        if not nxt > cur:
            raise ValueError(f"the quantizer is not monotone over {input_type} (output {nxt} after {cur})")
        keys.append(b)
        levels.append(nxt)
        a = b
        if len(levels) > MAX_LEVELS:
            raise ValueError(f"more than {MAX_LEVELS} output levels over {input_type}: a lookup table of that "
                             "size is not a sensible circuit")
    keys = np.asarray(keys, dtype=np.int64)
    thresholds = grid.values(keys)
    levels = np.asarray(levels, dtype=np.float64)
    _check(f, keys, levels, grid)
    return thresholds.astype(np.float64), levels


def _check(f, keys, levels, grid, n_random: int = 20000, seed: int = 0) -> None:
    """The table reproduces the quantizer on every threshold, the input just below each, the
    ends of the range and random inputs; it cannot when the quantizer is not monotone."""
    rng = np.random.default_rng(seed)
    probe = np.concatenate([keys, keys - 1, [grid.lo, grid.hi],
                            rng.integers(grid.lo, grid.hi, n_random, endpoint=True)])
    probe = np.clip(probe, grid.lo, grid.hi)
    k = np.searchsorted(keys, probe, side="right")
    if not np.array_equal(levels[k], f(probe)):
        bad = int(np.nonzero(levels[k] != f(probe))[0][0])
        raise ValueError(f"the quantizer is not monotone over its input values: the lookup table differs "
                         f"from it at input {grid.values(probe[bad:bad + 1])[0]!r}")


def quantizer_table(fmt, scale, in_type, divisor: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, levels) of fpq's quantizer ``fmt`` x ``scale`` (one float scale) over the values
    of ``in_type`` (a Fixed, or "float32" for a float32 network input): the very table fpq's HLS
    project holds and the cost model prices. A float32 input is divided in float32 (as the graph
    input is), a Fixed input in float64 (an exact sum). ``divisor`` N: the input is an average
    pool's window sum S and the quantizer reads the float64 S / N (the emulator's mean)."""
    s, fmt = np.float32(scale), parse_format(fmt)
    dt = np.float32 if in_type == "float32" else np.float64
    if divisor != 1:
        return lookup_table(lambda x: apply_scaled(np.asarray(x, np.float64) / float(divisor), fmt, s), in_type)
    return lookup_table(lambda x: apply_scaled(np.asarray(x, dt), fmt, s), in_type)
