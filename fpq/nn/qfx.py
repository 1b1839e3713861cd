"""QFX: fixed-point quantizers with a learned binary point, the freeze step and a bit penalty.

After Dai et al., "Trainable Fixed-Point Quantization for Deep Learning Acceleration on FPGAs"
(their code was never released; this is fpq's own implementation on fpq's Formats).

A QFX quantizer holds a real parameter ``f`` (fractional bits; per tensor, or per output
channel for weights) and, with ``learn_width=True``, a real parameter ``i`` (integer bits,
sign included as in ap_fixed). The forward pass uses the integers F = round(f), I = round(i)
(I = W - F when the width W is fixed) and quantizes exactly as ``Fixed(I + F, I)`` (saturating,
the rounding mode of the converted format):

    y = 2**-F * clamp(round(x * 2**F), lo, hi)

The gradient estimator (straight-through, LSQ-style; documented because the forward is piecewise
constant in f and i):
  * x: clipped straight-through, dy/dx = 1 where x * 2**F lies in [lo, hi], else 0.
  * F, I: the derivative of the relaxation in which F and I are real (round(f) and round(i)
    pass the gradient straight through). Inside the range the rounding of x is also straight
    through, which gives LSQ's term dy/dF = -ln2 * 2**-F * (round(x 2**F) - x 2**F) (the
    quantization error's sensitivity to the step). Outside the range y is the bound itself,
    2**(I-1) - 2**-F or -2**(I-1) (signed; 2**I - 2**-F or 0 unsigned), and the gradient is
    that bound's exact derivative: the relaxed forward is differentiable there, which is what
    tests/test_qfx.py checks by finite differences.
With a fixed width the int bits follow the binary point (I = W - F), so dF collects both terms.

``freeze(q)`` replaces each QFX quantizer by an ordinary fpq quantizer with the learned
``Fixed`` format (per channel: Int(W) with power-of-two channel scales 2**-F_c), so export,
emulation, HLS and cost see plain fixed-point types; the frozen model's outputs are identical.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..formats import Fixed, Int
from ..ir import MAC_KINDS
from ..numerics.torch_ops import round_fixed_torch
from .quantizers import FpqTensorQuant, _RoundSTE, observing, tensor_quant_of

LN2 = math.log(2.0)
MAX_WIDTH = 24     # quantized values stay exact in float32 (the contract stores them so)


def _reduce_to(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape``."""
    while t.dim() > len(shape):
        t = t.sum(0)
    for d, n in enumerate(shape):
        if n == 1 and t.shape[d] != 1:
            t = t.sum(d, keepdim=True)
    return t.reshape(shape)


class _QfxQuant(torch.autograd.Function):
    """y = 2**-F clamp(round(x 2**F), lo, hi) for Fixed(I+F, I); F, I broadcastable to x."""

    @staticmethod
    def forward(ctx, x, F, I, signed, rounding):
        x64 = x.detach().to(torch.float64)
        F64, I64 = F.detach().to(torch.float64), I.detach().to(torch.float64)
        W = I64 + F64
        v = torch.ldexp(x64, F64)  # exact for integer F: the code of x before rounding
        # as fpq's Fixed quantizer: underflow keeps the sign (TRN of a tiny negative is -1 LSB),
        # inf reads as a huge finite value
        v = torch.where((v == 0) & (x64 != 0), torch.copysign(torch.full_like(v, 0.25), x64), v)
        v = torch.where(torch.isinf(v), torch.copysign(torch.full_like(v, 2.0 ** 1000), v), v)
        if signed:
            lo, hi = -torch.exp2(W - 1), torch.exp2(W - 1) - 1
        else:
            lo, hi = torch.zeros_like(W), torch.exp2(W) - 1
        k = torch.minimum(torch.maximum(round_fixed_torch(v, rounding), lo), hi)
        ctx.save_for_backward(v, k, lo, hi, F64, I64)
        ctx.signed = signed
        ctx.shapes = (F.shape, I.shape)
        ctx.dtypes = (F.dtype, I.dtype)
        return torch.ldexp(k, -F64).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        v, k, lo, hi, F, I = ctx.saved_tensors
        g64 = g.to(torch.float64)
        below, above = v < lo, v > hi
        inside = ~(below | above)
        step = torch.exp2(-F)
        gx = g * inside.to(g.dtype)
        zero = torch.zeros_like(v)
        # inside: LSQ term; outside: derivative of the saturation bound (see module docstring)
        dF = torch.where(inside, -LN2 * step * (k - v), zero)
        dF = torch.where(above, LN2 * step + zero, dF)
        top = torch.exp2(I - 1) if ctx.signed else torch.exp2(I)
        dI = torch.where(above, LN2 * top + zero, zero)
        if ctx.signed:
            dI = torch.where(below, -LN2 * top + zero, dI)
        fs, is_ = ctx.shapes
        gF = _reduce_to(g64 * dF, fs).to(ctx.dtypes[0])
        gI = _reduce_to(g64 * dI, is_).to(ctx.dtypes[1])
        return gx, gF, gI, None, None


def qfx_quantize(x: torch.Tensor, F: torch.Tensor, I: torch.Tensor, signed: bool = True,
                 rounding: str = "RND_CONV") -> torch.Tensor:
    """Fixed(I + F, I) saturating quantization of ``x`` with the QFX gradient in x, F and I.

    F and I broadcast against x and may be real in a gradient check (the relaxation); in
    training they are integers (round(f), round(i))."""
    return _QfxQuant.apply(x, F, I, bool(signed), rounding)


class QfxTensorQuant(FpqTensorQuant):
    """A Fixed quantizer whose binary point (and, optionally, width) is learned.

    ``fmt`` always reports the current format: per tensor Fixed(W, W - F) at scale 1; per
    channel Int(W) with power-of-two channel scales ``scale()`` = 2**-F_c, i.e. channel c is
    fixed<W, W - F_c> (the representation ``freeze`` keeps; fpq's QONNX reader takes a Fixed
    format only at its own scale, so per-channel points are spelled as Int x 2**-F_c).
    """

    def __init__(self, fpq_format: str, fpq_scale_kind: str, fpq_channels: int, fpq_role: str,
                 fpq_qfx_channels: int = 0, fpq_qfx_learn_width: bool = False,
                 fpq_qfx_min_width: int = 2, fpq_qfx_max_width: int = 16):
        super().__init__(fpq_format, "none", 0, fpq_role)
        base = self._base
        if not isinstance(base, Fixed):
            raise ValueError(f"QFX learns the binary point of a fixed-point format, got {base}; "
                             "convert with fmt='fixed<W,I>' (or weights= / activations=)")
        if base.overflow != "SAT":
            raise ValueError(f"QFX trains saturating fixed point (overflow SAT), got {base}")
        if base.width > MAX_WIDTH:
            raise ValueError(f"QFX width {base.width} > {MAX_WIDTH}: values would not be exact in float32")
        self.qfx_channels = int(fpq_qfx_channels)
        if self.qfx_channels and base.rounding != "RND_CONV":
            raise ValueError(f"per-channel binary points freeze to Int x 2**-F_c, which rounds half "
                             f"to even (RND_CONV); {base} rounds {base.rounding}")
        if self.qfx_channels and fpq_role not in ("weight", "bias"):
            raise ValueError("per-channel binary points are for weights and biases only (channel dim 0)")
        self.learn_width = bool(fpq_qfx_learn_width)
        if self.learn_width and self.qfx_channels:
            raise ValueError("learn_width with per-channel binary points is not supported: the "
                             "frozen channels would need different widths in one Fixed type")
        self.min_width, self.max_width = int(fpq_qfx_min_width), int(fpq_qfx_max_width)
        if not 1 <= self.min_width <= self.max_width <= MAX_WIDTH:
            raise ValueError(f"need 1 <= min_width <= max_width <= {MAX_WIDTH}, "
                             f"got {self.min_width}, {self.max_width}")
        shape = (self.qfx_channels,) if self.qfx_channels else ()
        self.frac_bits = nn.Parameter(torch.full(shape, float(base.frac_bits)))
        ib = torch.full(shape, float(base.int_bits))
        if self.learn_width:
            self.int_bits = nn.Parameter(ib)
        else:
            self.register_buffer("int_bits", ib)
            self.register_buffer("width_t", torch.tensor(float(base.width)))

    # -- the current integer binary point ------------------------------------------------
    def bits(self):
        """(F, I) as float tensors of integers, with straight-through rounding."""
        F = _RoundSTE.apply(self.frac_bits)
        if not self.learn_width:
            return F, self.width_t - F
        I = _RoundSTE.apply(self.int_bits)
        # keep the width in [min_width, max_width]: clamp I given F (the gradient passes)
        W = torch.clamp(I + F, self.min_width, self.max_width)
        return F, I + (W - (I + F)).detach()

    def width(self) -> torch.Tensor:
        F, I = self.bits()
        return F + I

    @property
    def fmt(self):
        if "frac_bits" not in self._parameters:  # during the base class' __init__
            return self._base
        b = self._base
        with torch.no_grad():
            F, I = self.bits()
            W = int((F + I).reshape(-1)[0])
        if self.qfx_channels:  # W-bit integer codes, channel c at power-of-two scale 2**-F_c
            return Int(W, b.signed)
        return Fixed(W, W - int(F), b.signed, b.rounding, b.overflow)

    @fmt.setter
    def fmt(self, value) -> None:  # the base class sets the converted format once
        self.__dict__["_base"] = value

    def scale(self) -> torch.Tensor:
        if not self.qfx_channels:
            return torch.ones((), dtype=torch.float32, device=self.frac_bits.device)
        return torch.exp2(-torch.round(self.frac_bits.detach())).to(torch.float32)

    def set_scale(self, scale) -> None:
        raise ValueError("a QFX quantizer's scale follows its learned binary points: set frac_bits")

    @torch.no_grad()
    def init_from_max(self, maxabs) -> None:
        """Binary point so that ``maxabs`` (per tensor / channel) just fits the integer bits."""
        m = torch.as_tensor(maxabs, dtype=torch.float64).reshape(self.frac_bits.shape)
        m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
        # signed fixed<W,I> holds magnitudes below 2**(I-1); unsigned below 2**I
        need = torch.floor(torch.log2(m)) + (2 if self._base.signed else 1)
        if self.learn_width:
            self.int_bits.copy_(need.to(torch.float32))
        else:
            self.frac_bits.copy_((self.width_t - need).to(torch.float32))

    # -- forward -------------------------------------------------------------------------
    def quantize(self, x: torch.Tensor):
        if x.dim() == 0 or not torch.is_floating_point(x):
            x = x.float()
        s = self.scale()
        if self.observer is not None and x.dim() > 0:
            self.observer(x)
            return x.to(torch.float32), self._view_qfx(s, x)
        F, I = self.bits()
        y = qfx_quantize(x, self._view_qfx(F, x), self._view_qfx(I, x), self._base.signed, self._base.rounding)
        return y.to(torch.float32), self._view_qfx(s, x)

    def _view_qfx(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_channels and x.dim() > 1:
            return t.view(-1, *([1] * (x.dim() - 1)))
        return t

    def brevitas_scale(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.qfx_channels else s * (2.0 ** -self.fmt.frac_bits)

    def forward(self, x: torch.Tensor):
        y, s = self.quantize(x)
        return y, self.brevitas_scale(s), self.zero_t.to(s.dtype), \
            torch.tensor(float(self.fmt.width), device=y.device)

    def extra_repr(self) -> str:
        with torch.no_grad():
            F, I = self.bits()
        per = f"channels={self.qfx_channels}" if self.qfx_channels else "tensor"
        return f"qfx {per}, learn_width={self.learn_width}, F={F.tolist()}, I={I.tolist()}"


# ----------------------------------------------------------------------------- model level
def _proxies(model: nn.Module):
    """(module name, role, proxy, module) of every weight / output quantizer proxy of an fpq model,
    and of the scale (weight), shift (bias) and output of each element-wise BatchNorm."""
    from .layers import FpqAct
    for name, m in model.named_modules():
        if getattr(m, "fpq_op", None) in MAC_KINDS and hasattr(m, "weight_quant"):
            yield name, "weight", m.weight_quant, m
            yield name, "output", m.output_quant, m
        elif getattr(m, "fpq_op", None) == "batchnorm":
            # QFX quantizes element-wise BatchNorm too: its s, t and output each learn a binary point
            yield name, "weight", m.weight_quant, m
            yield name, "bias", m.bias_quant, m
            yield name, "output", m.output_quant, m
        elif isinstance(m, FpqAct):
            yield name, "output", m.act_quant, m


def _replace(proxy, module, **let) -> None:
    # the injector builds the tensor quantizer (also when Brevitas re-creates it), so the new
    # class goes into the injector, as fpq.nn.biper does
    proxy.quant_injector = proxy.quant_injector.let(**let)
    proxy.init_tensor_quant()
    proxy.train(module.training)


def qfx_quantizers(model: nn.Module) -> list:
    """(module name, role, QfxTensorQuant) of every QFX quantizer of ``model``."""
    out = []
    for name, role, proxy, _ in _proxies(model):
        tq = tensor_quant_of(proxy)
        if isinstance(tq, QfxTensorQuant):
            out.append((name, role, tq))
    return out


def make_trainable(q: nn.Module, *, weights: bool = True, activations: bool = True,
                   granularity: str = "tensor", learn_width: bool = False, min_width: int = 2,
                   max_width: int = 16, init: str = "max") -> int:
    """Give every Fixed weight / activation quantizer of a converted model a learned binary point (QFX).

    Changes ``q`` in place: each quantizer whose format is Fixed gets a real parameter for its
    fractional bits (and, with ``learn_width``, its integer bits) that any torch optimizer trains
    (see the module docstring for the gradient). Non-Fixed quantizers are left alone. An
    element-wise BatchNorm (``fpq.nn.batchnorm``) counts as weights for its scale s and shift t
    (each trained when its format is Fixed) and as an activation for its output. ``freeze``
    turns the result back into plain fixed-point quantizers.

    Args:
        q (FpqModel): a model from ``fpq.convert`` with Fixed formats, e.g. ``fmt="fixed<8,3>"``.
        weights (bool): make weight and bias quantizers trainable.
        activations (bool): make activation (output) quantizers trainable.
        granularity (str): "tensor" or "channel" (one binary point per output channel for weights
            and BatchNorm s / t; activations stay per tensor).
        learn_width (bool): also learn the integer bits (``bit_penalty`` then trades width for
            accuracy).
        min_width (int): smallest width a learned width may take.
        max_width (int): largest width a learned width may take.
        init (str): "max" puts each weight's binary point where max |w| just fits (activations keep
            the converted format's point until ``init_activations`` sees data); "format" keeps the
            converted format's binary point everywhere.

    Returns:
        int: how many quantizers became trainable.

    Raises:
        ValueError: an unknown ``granularity`` or ``init``, or no Fixed quantizer to train.

    Example:
        >>> import torch, fpq
        >>> from fpq.nn import qfx
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="fixed<8,3>")
        >>> qfx.make_trainable(q)               # input, weight and output quantizers (the bias is int16)
        3
        >>> opt = torch.optim.SGD(q.parameters(), lr=0.01)
        >>> q.train()(torch.randn(16, 4)).square().mean().backward(); opt.step()
    """
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"unknown granularity {granularity!r}; allowed: 'tensor', 'channel'")
    if init not in ("max", "format"):
        raise ValueError(f"unknown init {init!r}; allowed: 'max', 'format'")
    n = 0
    for name, role, proxy, m in _proxies(q):
        tq = tensor_quant_of(proxy)
        if tq is None or isinstance(tq, QfxTensorQuant) or not isinstance(tq.fmt, Fixed):
            continue
        if (role in ("weight", "bias") and not weights) or (role == "output" and not activations):
            continue
        ch = m.weight.shape[0] if role in ("weight", "bias") and granularity == "channel" else 0
        _replace(proxy, m, tensor_quant=QfxTensorQuant, fpq_qfx_channels=ch,
                 fpq_qfx_learn_width=learn_width, fpq_qfx_min_width=min_width, fpq_qfx_max_width=max_width)
        if role in ("weight", "bias") and init == "max":
            w = (m.weight if role == "weight" else m.bias).detach().abs().to(torch.float64)
            tensor_quant_of(proxy).init_from_max(w.reshape(ch, -1).amax(1) if ch else w.max())
        n += 1
    if n == 0:
        raise ValueError("make_trainable: no fixed-point weight or activation quantizer to train; "
                         "convert with fmt='fixed<W,I>' (or weights= / activations=)")
    return n


@torch.no_grad()
def init_activations(q: nn.Module, batches) -> int:
    """Set each QFX activation binary point from data: max |x| just fits (as fpq.calibrate's
    'max'). ``batches``: input tensors or (input, target) tuples. Returns how many were set."""
    qs = [tq for _, role, tq in qfx_quantizers(q) if role == "output"]
    maxima = {id(tq): 0.0 for tq in qs}

    def observer(tq):
        def rec(x):
            maxima[id(tq)] = max(maxima[id(tq)], float(x.detach().abs().max()))
        return rec

    was = q.training
    q.eval()
    first = None
    try:
        with observing((tq, observer(tq)) for tq in qs):
            for b in batches:
                x = b[0] if isinstance(b, (tuple, list)) else b
                first = x if first is None else first
                q(x)
    finally:
        q.train(was)
    for tq in qs:
        tq.init_from_max(maxima[id(tq)])
    if first is not None and hasattr(q, "fpq_record_shapes"):
        q.fpq_record_shapes(first[:1])   # as fpq.calibrate: the TypePlan (read from the export) needs them
    return len(qs)


def bit_penalty(q: nn.Module, weight_by: str = "count", *, costs=None) -> torch.Tensor:
    """Differentiable size of the learned-width QFX quantizers (straight-through in the
    rounding), to multiply by a coefficient and add to the loss:

    * "count": total bits, weights counted once per element;
    * "width": each quantizer's width once;
    The estimated LUTs by fpq's cost model are ``fpq.cost_model.penalty.cost_penalty(q)`` (the
    cost model prices layers; fpq.nn does not depend on it).
    Quantizers of fixed width add a constant (no gradient)."""
    if weight_by == "cost":   # removed after one release of deprecation (fpq.nn must not import cost_model)
        raise ValueError("bit_penalty(q, 'cost') was removed; use fpq.cost_model.penalty.cost_penalty(q)")
    if weight_by not in ("count", "width"):
        raise ValueError(f"unknown weight_by {weight_by!r}; allowed: 'count', 'width' "
                         "(estimated LUTs: fpq.cost_model.penalty.cost_penalty)")
    total = torch.zeros(())
    modules = dict(q.named_modules())
    for name, role, tq in qfx_quantizers(q):
        w = tq.width().sum() if tq.qfx_channels else tq.width()
        if weight_by == "count" and role in ("weight", "bias"):
            p = getattr(modules[name], role)
            w = w * (p.numel() / max(1, tq.qfx_channels or 1))
        total = total + w
    return total


@torch.no_grad()
def freeze(q: nn.Module) -> list:
    """Replace every QFX quantizer by an ordinary fpq quantizer with its learned Fixed format.

    In place. Per tensor the format is ``Fixed(W, W - F)`` at scale 1; per channel ``Int(W)``
    at power-of-two channel scales 2**-F_c (each channel a ``fixed<W, W - F_c>``). The frozen
    model's outputs are identical, and export, emulation, HLS and the cost model see plain
    fixed-point types.

    Args:
        q (FpqModel): a model ``make_trainable`` changed (quantizers that are not QFX are left alone).

    Returns:
        list[tuple[str, str, str]]: (module name, role, format string) of each frozen quantizer.

    Example:
        >>> import torch, fpq
        >>> from fpq.nn import qfx
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="fixed<8,3>")
        >>> _ = qfx.make_trainable(q, activations=False)
        >>> x = torch.randn(16, 4)
        >>> y = q(x)
        >>> [(name, role) for name, role, fmt in qfx.freeze(q)]
        [('0', 'weight')]
        >>> bool((q(x) == y).all())
        True
    """
    from .quantizers import FpqTensorQuant as Plain
    out = []
    for name, role, proxy, m in _proxies(q):
        tq = tensor_quant_of(proxy)
        if not isinstance(tq, QfxTensorQuant):
            continue
        fmt, s, ch = tq.fmt, tq.scale().detach().clone(), tq.qfx_channels
        _replace(proxy, m, tensor_quant=Plain, fpq_format=str(fmt), fpq_scale_kind="po2" if ch else "none",
                 fpq_channels=ch)
        new = tensor_quant_of(proxy)
        if ch:
            new.set_scale(s.to(torch.float64))
        out.append((name, role, str(fmt)))
    return out
