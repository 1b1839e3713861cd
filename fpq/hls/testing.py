"""Inputs that probe exactness of a quantized network: off-grid, ties, out-of-range."""
from __future__ import annotations

import numpy as np

from ..formats import values


def probe_inputs(graph, n: int = 2000, seed: int = 0, spread: float = 3.0) -> np.ndarray:
    """``n`` float32 inputs for a graph IR: mostly random off-grid values at the scale of the
    input quantizer's range, one in ten far out of range (they saturate), and one in ten put
    exactly on a rounding tie of the input quantizer (the midpoint of two neighbouring values)
    or one float32 ulp beside it."""
    rng = np.random.default_rng(seed)
    iq = next(op for op in graph.ops if op.kind == "input_quant")
    shape = tuple(int(d) for d in graph.input_shapes[graph.inputs[0]][1:])
    tt = iq.quant.ttype
    scale = float(np.ravel(tt.scale)[0])
    grid = values(tt.format) * scale
    top = float(np.max(np.abs(grid)))
    x = rng.standard_normal((n,) + shape) * (top / spread)
    flat = x.reshape(n, -1)
    k = max(1, n // 10)
    flat[:k] *= 50.0  # saturating
    ties = (grid[1:] + grid[:-1]) / 2
    pick = rng.choice(ties, size=flat[k:2 * k].shape)
    nudge = rng.choice([-1, 0, 0, 1], size=pick.shape)
    p32 = pick.astype(np.float32)
    p32 = np.where(nudge > 0, np.nextafter(p32, np.float32(np.inf)),
                   np.where(nudge < 0, np.nextafter(p32, np.float32(-np.inf)), p32))
    flat[k:2 * k] = p32
    return flat.reshape(x.shape).astype(np.float32)
