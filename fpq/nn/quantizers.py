"""Brevitas quantizers generated from fpq Formats.

Users never write injectors: ``make_quant(fmt, role=...)`` returns a Brevitas injector class whose
``tensor_quant`` is an fpq module whose forward is ``fpq.numerics.torch_ops`` (the torch twin of
``fpq.quantize``). Brevitas' own quantizers were checked against the reference (brevitas 0.13.4):
its int8 and OCP e4m3 / e5m2 act quantizers agree exactly on random inputs, on every tie and
just below powers of two. They are still not used because they cover only part of what fpq
formats mean: no minifloat without subnormals (and export always says has_subnormal=1), no
ap_fixed rounding other than round / floor / ceil, no WRAP / SAT_ZERO / SAT_SYM overflow, no
non-saturating ieee / fn overflow to inf / NaN as fpq defines it; one quantizer for every format
keeps all paths identical. The injector still carries every piece of metadata Brevitas' QONNX export reads
(scale, zero point, bit width; exponent / mantissa widths, exponent bias, saturation, inf / NaN
codes), so ``brevitas.export.export_qonnx`` emits Quant / FloatQuant / BipolarQuant nodes.

Scale kinds (``QuantSpec.scale``):
  * ``none``  the format carries its own scaling (always used for Fixed); scale 1, not learned.
  * ``po2``   scale = 2**round(t) with a learnable real exponent ``t`` (rounding STE).
  * ``float`` scale = 2**t, learnable, any positive float32.
The scale is stored as float32 and the quantizer applies it as ``fpq.quantize`` does: the
division / multiplication run in the dtype of the incoming tensor (float32 activations and
weights; float64 accumulations in eval mode), Q itself exactly.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from brevitas.inject import ExtendedInjector
from brevitas.proxy import (ActQuantProxyFromInjector, BiasQuantProxyFromInjector,
                            WeightQuantProxyFromInjector)
from brevitas.proxy.float_parameter_quant import (BiasFloatQuantProxyFromInjector,
                                                  WeightFloatQuantProxyFromInjector)
from brevitas.proxy.float_runtime_quant import ActFloatQuantProxyFromInjector

from ..formats import BlockFormat, Fixed, Int, Minifloat, finfo, parse_format
from ..numerics.torch_ops import ste_apply_scaled

SCALE_KINDS = ("none", "po2", "float")



def _narrow(fmt) -> bool:
    """QONNX's narrow range (codes +-(2^(b-1) - 1)): a narrow Int, or a signed Fixed saturating
    symmetrically (ap_fixed SAT_SYM), so the exported Quant node computes the format itself."""
    if isinstance(fmt, Int):
        return bool(fmt.narrow)
    return isinstance(fmt, Fixed) and fmt.signed and fmt.overflow == "SAT_SYM" and fmt.width >= 2


def default_scale_kind(fmt, requested: str) -> str:
    """Fixed formats define their own scaling; every other format takes the requested kind."""
    if requested not in SCALE_KINDS:
        raise ValueError(f"unknown scale kind {requested!r}; allowed: 'po2', 'float'")
    return "none" if isinstance(fmt, Fixed) else requested


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return torch.round(t)

    @staticmethod
    def backward(ctx, g):
        return g


def po2_round_scale(value: float) -> float:
    """The smallest power of two >= value (so that a calibrated maximum stays representable)."""
    return math.ldexp(1.0, math.ceil(math.log2(value)))


class FpqTensorQuant(nn.Module):
    """Quantize a tensor to an fpq Format; returns Brevitas' (value, scale, zero_point, bit_width).

    Args:
        fpq_format: the format string.
        fpq_scale_kind: "po2", "float" or "none".
        fpq_channels: number of output channels for per-channel scales (weights, biases), 0: per tensor.
        fpq_role: "weight", "bias" or "act".

    Example:
        >>> import torch
        >>> from fpq.nn import FpqTensorQuant
        >>> q = FpqTensorQuant("int8", "po2", 0, "act")
        >>> q.init_from_max(3.0)
        >>> q.scale().item()
        0.03125
        >>> q(torch.tensor([1.3]))[0].tolist()
        [1.3125]
    """

    def __init__(self, fpq_format: str, fpq_scale_kind: str, fpq_channels: int, fpq_role: str):
        super().__init__()
        self.fmt = parse_format(fpq_format)
        self.scale_kind = fpq_scale_kind
        self.role = fpq_role
        self.channels = int(fpq_channels)  # 0: per tensor
        info = finfo(self.fmt)
        self.qmin, self.qmax = float(info.min), float(info.max)
        shape = (self.channels,) if self.channels else ()
        # log2 of the scale; a buffer when the scale is fixed by the format
        t = torch.zeros(shape, dtype=torch.float32)
        if self.scale_kind == "none":
            self.register_buffer("log2_scale", t)
        else:
            self.log2_scale = nn.Parameter(t)
        self.register_buffer("bit_width_t", torch.tensor(float(self.fmt.width)))
        self.register_buffer("zero_t", torch.tensor(0.0))
        # set by fpq.calibrate: a callable that records the input, which then passes unquantized
        self.observer = None

    # -- scale ---------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        """The current float32 scale.

        Returns:
            torch.Tensor: the scale, shape () or (C,).
        """
        t = self.log2_scale
        if self.scale_kind == "po2":
            t = _RoundSTE.apply(t)
        elif self.scale_kind == "none":
            return torch.ones_like(t)
        return torch.exp2(t)

    @torch.no_grad()
    def set_scale(self, scale) -> None:
        """Set the scale; po2 scales must be powers of two.

        Args:
            scale: tensor / array / float, > 0 (1 for a format with its own scaling).

        Raises:
            ValueError: a scale that is not finite and > 0, not a power of two for po2, or not 1 for "none".
        """
        s = torch.as_tensor(scale, dtype=torch.float64).reshape(self.log2_scale.shape)
        if self.scale_kind == "none":
            if not torch.all(s == 1):
                raise ValueError(f"{self.fmt} carries its own scaling: its scale is fixed at 1")
            return
        if not torch.all(torch.isfinite(s) & (s > 0)):
            raise ValueError(f"scale must be finite and > 0, got {s}")
        t = torch.log2(s)
        if self.scale_kind == "po2" and not torch.all(t == torch.round(t)):
            raise ValueError(f"po2 scale expected, got {s}")
        self.log2_scale.copy_(t.to(torch.float32))

    @torch.no_grad()
    def init_from_max(self, maxabs) -> None:
        """Scale so that ``maxabs`` (per tensor or per channel) maps to the format's maximum.

        po2: rounded up to a power of two (ceil), so the maximum is never clipped.

        Args:
            maxabs: the largest magnitude (float, or a (C,) tensor per channel).
        """
        if self.scale_kind == "none":
            return
        m = torch.as_tensor(maxabs, dtype=torch.float64).reshape(self.log2_scale.shape)
        m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
        s = m / self.qmax
        if self.scale_kind == "po2":
            s = torch.exp2(torch.ceil(torch.log2(s)))
        self.set_scale(s.to(torch.float32).to(torch.float64))

    # -- forward -------------------------------------------------------------------------
    def _view(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channels and x.dim() > 1:
            return s.view(-1, *([1] * (x.dim() - 1)))  # weights: channel dim 0
        return s

    def quantize(self, x: torch.Tensor):
        """Quantize ``x`` to the format at the current scale (straight-through gradient in training).

        Args:
            x: the tensor to quantize.
        """
        s = self.scale()
        if x.dim() == 0 or not torch.is_floating_point(x):
            x = x.float()
        if self.observer is not None and x.dim() > 0:
            self.observer(x)
            return x.to(torch.float32), self._view(s, x)
        sv = self._view(s, x).to(x.dtype)
        y = ste_apply_scaled(x, self.fmt, None if self.scale_kind == "none" else sv)
        # quantized values are exactly representable in float32 (the contract stores them so)
        return y.to(torch.float32), self._view(s, x)

    def brevitas_scale(self, s: torch.Tensor) -> torch.Tensor:
        """The scale in Brevitas / QONNX terms (value = integer code * scale): a Fixed format's
        own step 2**-frac_bits is part of it, so Quant(bit_width=W, scale=2**-F) is fixed<W, W-F>.

        Args:
            s: the fpq scale.

        Returns:
            torch.Tensor: the Brevitas scale.
        """
        if isinstance(self.fmt, Fixed):
            return s * (2.0 ** -self.fmt.frac_bits)
        return s

    def forward(self, x: torch.Tensor):
        """Brevitas' (value, scale, zero_point, bit_width) of ``x`` quantized.

        Args:
            x: the tensor to quantize.
        """
        y, s = self.quantize(x)
        return y, self.brevitas_scale(s), self.zero_t.to(s.dtype), self.bit_width_t

    def extra_repr(self) -> str:
        """The format, scale kind and channels, for ``repr``.

        Returns:
            str: e.g. ``format=int8, scale=po2, channels=tensor``.
        """
        return f"format={self.fmt}, scale={self.scale_kind}, channels={self.channels or 'tensor'}"


class FpqFloatTensorQuant(FpqTensorQuant):
    """Minifloat version: returns the 9-tuple Brevitas' float proxies expect.

    Args:
        fpq_format: the minifloat format string.
        fpq_scale_kind: "po2", "float" or "none".
        fpq_channels: number of channels for per-channel scales, 0: per tensor.
        fpq_role: "weight", "bias" or "act".

    Example:
        >>> import torch
        >>> from fpq.nn import FpqFloatTensorQuant
        >>> out = FpqFloatTensorQuant("e4m3", "po2", 0, "act")(torch.tensor([0.3]))
        >>> len(out), out[0].tolist()
        (9, [0.3125])
    """

    def __init__(self, fpq_format: str, fpq_scale_kind: str, fpq_channels: int, fpq_role: str):
        super().__init__(fpq_format, fpq_scale_kind, fpq_channels, fpq_role)
        f = self.fmt
        self.register_buffer("exp_bw", torch.tensor(float(f.exp_bits)))
        self.register_buffer("man_bw", torch.tensor(float(f.man_bits)))
        self.register_buffer("exp_bias", torch.tensor(float(f.bias)))
        self.inf_values, self.nan_values = minifloat_special_codes(f)

    def forward(self, x: torch.Tensor):
        """Brevitas' float 9-tuple (value, scale, zero point, exponent / mantissa widths, bias, ...) of ``x``.

        Args:
            x: the tensor to quantize.
        """
        y, s = self.quantize(x)
        return (y, s, self.zero_t.to(s.dtype), self.exp_bw, self.man_bw, self.exp_bias,
                self.fmt.saturate, self.inf_values, self.nan_values)


class FpqBlockTensorQuant(FpqTensorQuant):
    """A block-scaled format (mxfp4, nvfp4, block<...>; fpq.numerics.blocks_torch): the scales come
    from each block of ``k`` values along the last axis (a Linear's reduction axis), so Brevitas
    sees scale 1. Weights: the block scales (and an NVFP4 tensor scale) follow the weight, static
    once trained. Activations: block scales from each block's max at run time; a tensor-scaled
    format's float32 tensor scale is a calibrated constant (``init_from_max``; 1.0 until then), so
    a sample's result never depends on the rest of its batch. ``stochastic`` (with a seeded
    ``generator``) rounds the elements stochastically in training mode only."""

    def __init__(self, fpq_format: str, fpq_scale_kind: str, fpq_channels: int, fpq_role: str):
        super().__init__(fpq_format, "none", 0, fpq_role)
        self.register_buffer("tensor_scale_t", torch.tensor(1.0, dtype=torch.float32))
        self.stochastic = False
        self.generator = None

    @torch.no_grad()
    def init_from_max(self, maxabs) -> None:
        if self.fmt.po2_scale or self.role == "weight":
            return
        from ..numerics.blocks import _tensor_scale_from_amax
        m = float(torch.as_tensor(maxabs, dtype=torch.float64).max())
        self.tensor_scale_t.fill_(float(_tensor_scale_from_amax(m if math.isfinite(m) else 0.0, self.fmt)))

    def quantize(self, x: torch.Tensor):
        from ..numerics.blocks_torch import ste_block_quantize
        one = torch.ones((), dtype=torch.float32, device=x.device)
        if not torch.is_floating_point(x):
            x = x.float()
        if self.observer is not None and x.dim() > 0:
            self.observer(x)
            return x.to(torch.float32), one
        ts = None if self.fmt.po2_scale or self.role == "weight" else float(self.tensor_scale_t)
        # eval: float64, exact (an NVFP4 value has up to 30 significant bits, beyond float32)
        y = ste_block_quantize(x, self.fmt, ts, training=self.training, stochastic=self.stochastic and self.training,
                               generator=self.generator, exact=not self.training)
        return y, one

    def extra_repr(self) -> str:
        return f"format={self.fmt}, block scales along axis {self.fmt.axis}"


def block_format_quantizers(q) -> list:
    """(module path, role, Format) of every quantizer of a converted model with a block format."""
    quants = getattr(q, "fpq_quantizers", None)
    if not callable(quants):
        return []
    return [(name, role, tq.fmt) for name, role, tq in quants() if isinstance(tq.fmt, BlockFormat)]


def refuse_block_formats(q, who: str) -> None:
    """Refuse a model with block-scaled formats in a path that does not handle them yet."""
    found = block_format_quantizers(q)
    if found:
        name, role, fmt = found[0]
        raise ValueError(f"{who}: layer {name!r} ({role}) uses the block-scaled format {fmt}; {who} of block-scaled "
                         f"formats is not built yet (block formats run in torch: fpq.convert, QAT, "
                         f"fpq.numerics.blocks). Layers with block formats: {sorted({n for n, _, _ in found})}")


def minifloat_special_codes(f: Minifloat):
    """Brevitas' description of inf / NaN: mantissa bit strings of the top exponent field."""
    M = f.man_bits
    if f.specials == "ieee":
        inf = ("0" * M,)
        nan = tuple(format(m, f"0{M}b") for m in range(1, 1 << M)) or None
        return inf, nan
    if f.specials == "fn":
        return None, ("1" * M,)
    return None, None  # "none"; "fnuz" (its NaN is the negative-zero code) as Brevitas' fnuz


def make_quant(fmt, role: str, scale_kind: str = "po2", channels: int = 0):
    """A Brevitas injector class quantizing to ``fmt`` for ``role`` (weight|bias|act).

    Args:
        fmt: a Format or format string.
        role: "weight", "bias" or "act".
        scale_kind: "po2", "float" or "none".
        channels: per-channel scales for this many channels (0: per tensor).

    Returns:
        type: a Brevitas injector class.

    Raises:
        ValueError: a block format for a bias, or with an axis other than the reduction axis or per channel.

    Example:
        >>> from fpq.nn import make_quant
        >>> q = make_quant("int8", "weight")
        >>> q.fpq_format, q.fpq_scale_kind
        ('int8', 'po2')
    """
    fmt = parse_format(fmt)
    if isinstance(fmt, BlockFormat):
        if role == "bias":
            raise ValueError(f"a bias is added in the accumulator: it takes a scalar format (e.g. int16), not the "
                             f"block format {fmt}")
        if fmt.axis not in (-1, 1) or channels:
            raise ValueError(f"{fmt}: a layer's block format blocks along its reduction axis, per tensor: the last "
                             "axis of a Linear, axis 1 (input channels) of a Conv, which fpq.convert sets; drop "
                             "axis= and granularity='channel'")
        proxy = WeightQuantProxyFromInjector if role == "weight" else ActQuantProxyFromInjector
        return type(f"FpqBlockQuant_{role}", (ExtendedInjector,), dict(
            proxy_class=proxy, tensor_quant=FpqBlockTensorQuant, fpq_format=str(fmt), fpq_scale_kind="none",
            fpq_channels=0, fpq_role=role, signed=bool(fmt.signed), narrow_range=False,
            float_to_int_impl_type="ROUND", requires_input_scale=False))
    kind = default_scale_kind(fmt, scale_kind)
    is_float = isinstance(fmt, Minifloat)
    proxy = {("weight", False): WeightQuantProxyFromInjector,
             ("weight", True): WeightFloatQuantProxyFromInjector,
             ("bias", False): BiasQuantProxyFromInjector,
             ("bias", True): BiasFloatQuantProxyFromInjector,
             ("act", False): ActQuantProxyFromInjector,
             ("act", True): ActFloatQuantProxyFromInjector}[(role, is_float)]
    attrs = dict(
        proxy_class=proxy,
        tensor_quant=FpqFloatTensorQuant if is_float else FpqTensorQuant,
        fpq_format=str(fmt), fpq_scale_kind=kind, fpq_channels=int(channels), fpq_role=role,
        signed=bool(fmt.signed),
        narrow_range=_narrow(fmt),
        # what Brevitas' export op runs while tracing (it knows ROUND / FLOOR / CEIL only; the
        # values do not matter): fpq.export's AnnotateFormats writes the format's QONNX rounding
        float_to_int_impl_type="FLOOR" if getattr(fmt, "rounding", None) == "TRN" else "ROUND",
        requires_input_scale=False,
    )
    if is_float:
        attrs["max_available_float"] = float(fmt.max_value)
    return type(f"FpqQuant_{role}", (ExtendedInjector,), attrs)


@contextlib.contextmanager
def observing(observers):
    """Within the block each quantizer of ``observers`` ((tensor quantizer, callable) pairs) passes
    its input through unquantized and calls its callable on it (calibration, QFX initialisation,
    the float network of PTQ); the quantizers quantize again afterwards, also on error."""
    observers = list(observers)
    for tq, fn in observers:
        tq.observer = fn
    try:
        yield
    finally:
        for tq, _ in observers:
            tq.observer = None


def tensor_quant_of(proxy):
    """The fpq tensor quantizer inside a Brevitas proxy (None when quantization is off).

    Args:
        proxy: a Brevitas quantizer proxy.

    Returns:
        FpqTensorQuant | None: its fpq quantizer.

    Example:
        >>> from fpq.nn import FpqAct, tensor_quant_of
        >>> act = FpqAct("int8")
        >>> str(tensor_quant_of(act.act_quant).fmt)
        'int8'
    """
    if proxy is None:
        return None
    tq = getattr(proxy, "tensor_quant", None)
    if tq is None and getattr(proxy, "fused_activation_quant_proxy", None) is not None:
        tq = proxy.fused_activation_quant_proxy.tensor_quant
    return tq if isinstance(tq, FpqTensorQuant) else None
