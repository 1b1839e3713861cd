"""Multiplier-free weights: power-of-two (one signed shift) and K-hot (at most K signed
power-of-two terms) weight quantizers, trainable with a straight-through gradient.

A K-hot weight is ``scale * k`` where ``scale = 2**e`` (per tensor or per output channel,
learnable like fpq's po2 scales) and the integer code k lies in the symmetric range
|k| <= 2**(W-1) - 1 and has at most K nonzero digits in canonical signed-digit form (CSD, also
called the non-adjacent form: the representation with the fewest signed power-of-two terms).
So every K-hot weight is a value of the ordinary format ``Int(W)`` at a power-of-two scale,
i.e. of a ``Fixed`` type: the TypePlan, the QONNX export, the emulator and the HLS writer see a
plain int-W weight, and the cost model prices each constant from its actual value (a
K-hot constant costs K - 1 adders and no DSP). Power-of-two weights are K = 1.

Rounding: to the nearest allowed code (ties to the smaller magnitude), saturating at the largest
allowed magnitude. Gradient: clipped straight-through in the weight (identity where |w / scale|
is within the code range); the scale gets the LSQ gradient through the division and
multiplication, as fpq's other po2 quantizers.
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn

from ..formats import Fixed, Int
from ..ir import MAC_KINDS
from ..numerics.torch_ops import scaled_apply
from .quantizers import FpqTensorQuant, tensor_quant_of

K_ALLOWED = (1, 2, 3)
MAX_WIDTH = 16   # the allowed codes are enumerated (2**W of them)


def csd_count(k) -> np.ndarray:
    """Number of nonzero canonical-signed-digit (NAF) digits of each integer in ``k``."""
    k = np.abs(np.asarray(k, dtype=np.int64))
    n = np.zeros(k.shape, dtype=np.int64)
    while np.any(k):
        odd = (k & 1).astype(bool)
        d = np.where(odd, 2 - (k & 3), 0)   # ...01 -> digit +1, ...11 -> digit -1
        n += odd
        k = (k - d) >> 1
    return n


def khot_codes(width: int, k: int) -> np.ndarray:
    """Sorted integer codes |c| <= 2**(width-1) - 1 with at most ``k`` nonzero CSD digits."""
    _check(width, k)
    top = 2 ** (width - 1) - 1
    c = np.arange(-top, top + 1, dtype=np.int64)
    return c[csd_count(c) <= k]


def _check(width: int, k: int) -> None:
    if k not in K_ALLOWED:
        raise ValueError(f"K-hot weights have K in {K_ALLOWED} nonzero power-of-two terms, got K={k!r}")
    if not isinstance(width, (int, np.integer)) or not 2 <= width <= MAX_WIDTH:
        raise ValueError(f"K-hot weight width must be an integer in [2, {MAX_WIDTH}], got {width!r}")


def nearest_code(v: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The allowed code nearest to each element of ``v`` (float64); ties to the smaller
    magnitude; beyond the ends, the end (saturation). NaN stays NaN."""
    c = codes.to(v.dtype)
    vc = torch.clamp(v, c[0], c[-1])
    hi_i = torch.clamp(torch.searchsorted(c, vc), 1, c.numel() - 1)
    lo, hi = c[hi_i - 1], c[hi_i]
    dlo, dhi = vc - lo, hi - vc
    pick_hi = (dhi < dlo) | ((dhi == dlo) & (hi.abs() < lo.abs()))
    out = torch.where(pick_hi, hi, lo)
    return torch.where(torch.isnan(v), v, out)


class _KHotSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, codes):
        lim = float(codes[-1])
        ctx.save_for_backward((xs.abs() <= lim))
        return nearest_code(xs.detach().to(torch.float64), codes).to(xs.dtype)

    @staticmethod
    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return g * inside.to(g.dtype), None


class KHotWeightQuant(FpqTensorQuant):
    """Weight quantizer to K-hot codes of Int(W) at a learnable power-of-two scale."""

    def __init__(self, fpq_format: str, fpq_scale_kind: str, fpq_channels: int, fpq_role: str, fpq_khot_k: int):
        super().__init__(fpq_format, "po2", fpq_channels, fpq_role)
        if not isinstance(self.fmt, Int) or self.fmt.narrow or not self.fmt.signed:
            raise ValueError(f"K-hot codes live in a signed Int(W) format, got {self.fmt}")
        self.k = int(fpq_khot_k)
        self.register_buffer("codes", torch.from_numpy(khot_codes(self.fmt.width, self.k)).to(torch.float64),
                             persistent=False)

    def quantize(self, x: torch.Tensor):
        s = self.scale()
        if not torch.is_floating_point(x):
            x = x.float()
        if self.observer is not None and x.dim() > 0:
            self.observer(x)
            return x.to(torch.float32), self._view(s, x)
        sv = self._view(s, x).to(x.dtype)
        y = scaled_apply(lambda v: _KHotSTE.apply(v, self.codes), x, sv)
        return y.to(torch.float32), self._view(s, x)

    @torch.no_grad()
    def init_mse(self, w: torch.Tensor, span: int = 4) -> None:
        """Per tensor / channel, the power-of-two scale with the least squared K-hot error among
        those around the max-based one (clipping a few large weights often pays)."""
        w = w.detach().to(torch.float64)
        rows = w.reshape(self.channels, -1) if self.channels else w.reshape(1, -1)
        top = float(self.codes[-1])
        best = []
        for r in rows:
            m = float(r.abs().max())
            e0 = int(np.ceil(np.log2(m / top))) if m > 0 else 0
            cands = [e0 - i for i in range(-1, span)]
            errs = [float(((nearest_code(r / 2.0 ** e, self.codes) * 2.0 ** e - r) ** 2).sum()) for e in cands]
            best.append(2.0 ** cands[int(np.argmin(errs))])
        self.set_scale(torch.tensor(best if self.channels else best[0], dtype=torch.float64))

    def export_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The quantized weight itself: a plain Int(W) Quant node maps it to itself."""
        with torch.no_grad():
            return self.quantize(w)[0].to(w.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, K={self.k}"


def _weight_layers(model: nn.Module):
    for name, m in model.named_modules():
        if getattr(m, "fpq_op", None) in MAC_KINDS and hasattr(m, "weight_quant"):
            yield name, m


def khot_quantizers(model: nn.Module) -> list:
    """(layer name, layer, KHotWeightQuant) of every K-hot weight of ``model``."""
    return [(n, m, m.fpq_weight) for n, m in _weight_layers(model) if isinstance(m.fpq_weight, KHotWeightQuant)]


def to_khot(model: nn.Module, k: int = 2, *, width: int | None = None, granularity: str = "channel",
            layers=None) -> int:
    """Make the weight quantizers of a converted model K-hot: multiplier-free weights (in place).

    Each weight becomes ``2**e * k`` with an integer code k of at most K nonzero signed
    power-of-two digits (canonical signed digits) in the symmetric W-bit range, trainable with a
    straight-through gradient (see the module docstring). Every K-hot weight is still a value of
    ``Int(W)`` at a power-of-two scale, so export, emulation and HLS see plain int-W weights, and
    the cost model prices each constant as K - 1 adders. Scales start at the least-squared-error
    power of two.

    Args:
        model (FpqModel): a model from ``fpq.convert``.
        k (int): nonzero power-of-two terms per weight, 1, 2 or 3 (1: power of two).
        width (int | None): code width W, 2 .. 16 (default: the width of each layer's converted Int
            / Fixed weight format).
        granularity (str): power-of-two scale per output "channel" or per "tensor".
        layers (Iterable[str] | None): names of the layers to change (default: every Linear / Conv).

    Returns:
        int: how many layers changed.

    Raises:
        ValueError: an unknown ``granularity``, a layer name that is no weight layer, ``k`` or
            ``width`` out of range, a weight format with no integer width (pass ``width``), or a
            model with no quantized Linear / Conv weight.

    Example:
        >>> import torch, fpq
        >>> from fpq.nn import multfree
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int4")
        >>> x = torch.randn(16, 4)
        >>> _ = fpq.calibrate(q, [x], progress=False)
        >>> multfree.to_khot(q, k=2)
        1
        >>> bool((torch.from_numpy(fpq.emulate(q, x)) == q(x)).all())
        True
    """
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"unknown granularity {granularity!r}; allowed: 'tensor', 'channel'")
    names = [n for n, _ in _weight_layers(model)]
    if layers is not None:
        unknown = sorted(set(layers) - set(names))
        if unknown:
            raise ValueError(f"to_khot: no weight layer named {unknown}; weight layers: {names}")
    n = 0
    for name, m in _weight_layers(model):
        if layers is not None and name not in layers:
            continue
        tq = m.fpq_weight
        if tq is None:
            continue
        if width is None and not isinstance(tq.fmt, (Int, Fixed)):
            raise ValueError(f"layer {name!r}: weight format {tq.fmt} has no integer width; pass width=")
        w = int(width if width is not None else tq.fmt.width)
        _check(w, k)
        ch = m.weight.shape[0] if granularity == "channel" else 0
        proxy = m.weight_quant
        proxy.quant_injector = proxy.quant_injector.let(
            tensor_quant=KHotWeightQuant, fpq_format=str(Int(w)), fpq_scale_kind="po2", fpq_channels=ch,
            fpq_khot_k=int(k), signed=True, narrow_range=False, float_to_int_impl_type="ROUND")
        proxy.init_tensor_quant()
        proxy.train(m.training)
        m.fpq_weight.init_mse(m.weight)
        n += 1
    if n == 0:
        raise ValueError("to_khot: the model has no quantized Linear / Conv weight")
    return n


def to_pow2(model: nn.Module, **kw) -> int:
    """Make the weights of a converted model powers of two: ``to_khot`` with K = 1 (in place).

    Each weight is one signed shift (or zero) of a power-of-two scale.

    Args:
        model (FpqModel): a model from ``fpq.convert``.
        **kw: ``width``, ``granularity`` and ``layers``, as ``to_khot`` takes them.

    Returns:
        int: how many layers changed.

    Raises:
        ValueError: as ``to_khot``.

    Example:
        >>> import torch, fpq
        >>> from fpq.nn import multfree
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int4")
        >>> multfree.to_pow2(q, granularity="tensor")
        1
    """
    return to_khot(model, 1, **kw)


