"""The emulator's small step builders and exactness helpers (used by ``Emulator``; split from
``__init__`` to keep it readable): BLAS thread control, tensor lifetimes, the fused integer
quantizer, and the value-accumulator and odd-bias rules of the module docstring there."""
from __future__ import annotations

import numpy as np

from ..formats import Fixed, Int
from ..ir import Op
from ..typeplan import LayerPlan, is_block, po2_exponents


_CONTROLLER = []


def block_k(op) -> int:
    """The block size a block-scaled linear op's exact sum normalizes by: gcd of its block formats'."""
    import math
    ks = [t.format.k for t in (op.types.get("input"), op.types.get("weight")) if is_block(t)]
    return math.gcd(*ks)


def _blas_controller():
    """threadpoolctl's controller, built once (finding the BLAS libraries takes milliseconds)."""
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


def with_frees(steps, keep):
    """(fn, ins, out) steps -> (fn, ins, out, tensors to free after it): each tensor not in
    ``keep`` is dropped after its last use."""
    last = {}
    for k, (_, ins, _) in enumerate(steps):
        for t in ins:
            last[t] = k
    return [(fn, ins, out, [t for t in ins if last.get(t) == k and t not in keep])
            for k, (fn, ins, out) in enumerate(steps)]


def _int_po2(q) -> bool:
    return q is not None and q.pre_scale is None and isinstance(q.format, Int) and po2_exponents(q.scale) is not None


def _only_consumer(graph, tensor, outputs, kind):
    cs = graph.consumers(tensor)
    if len(cs) == 1 and cs[0].kind == kind and tensor not in outputs:
        return cs[0]
    return None


def _int_quant_fn(q, lo, hi, inplace):
    """rint / clip / rescale of a po2-scaled integer quantizer, in the input's dtype (exact: the
    scale is a power of two), in place when the input is a temporary."""
    s = np.asarray(q.scale, dtype=np.float64)
    unit = bool(np.all(s == 1))

    def fn(x):
        if unit:
            y = x if inplace else x.copy()
        else:
            y = np.multiply(x, (1.0 / s).astype(x.dtype), out=x if inplace else None)
        np.rint(y, out=y)
        np.clip(y, lo, hi, out=y)
        if not unit:
            y *= s.astype(y.dtype)
        return y.astype(np.float32, copy=False)
    return fn


def _float_scaled_reader(graph, name) -> bool:
    """Whether graph input ``name`` feeds a quantizer whose scale (or Trunc pre-scale) is not a
    power of two: that division is not exact, and the exported model runs it in float32."""
    for c in graph.consumers(name):
        q = c.quant if c.kind in ("input_quant", "quant") else None
        if q is not None and (po2_exponents(q.scale) is None or
                              (q.pre_scale is not None and po2_exponents(q.pre_scale) is None)):
            return True
    return False


def value_accumulator_bits(op: Op) -> int | None:
    """Bits of the exact sum of a linear / conv / batchnorm whose input or weight scale is not a
    power of two: the width of its TypePlan's value accumulator (``LayerPlan.derive``: from the
    values each operand can take), or of its exact accumulator when both scales are powers of
    two. None when the input's format is too wide to enumerate or its type is unknown."""
    values = {k: v for k, v in (("weight", op.weight), ("bias", op.bias)) if v is not None}
    lp = LayerPlan(op.name, op.kind, dict(op.types), op.fan_in, values).derive()
    acc = lp.attrs.get("value_accumulator", lp.tensors.get("accumulator"))
    return acc.width if isinstance(acc, Fixed) else None


def odd_bias(b, p_exp: int) -> np.ndarray:
    """b rounded to odd on the grid 2**p_exp: b itself on the grid, else the midpoint of the grid
    interval holding it (float64, exact). See Emulator._odd_bias for why quantizers cannot tell."""
    b = np.asarray(b, dtype=np.float64)
    p = np.ldexp(1.0, p_exp)
    hi = np.floor(b / p) * p      # exact: p is a power of two
    return hi + np.where(b != hi, p / 2, 0.0)
