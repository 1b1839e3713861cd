"""Weight-only quantized Linear / Conv layers, for models fpq cannot trace as a whole.

``fpq.convert(model, weights=FMT, scope="modules")`` replaces every nn.Linear / Conv1d / Conv2d
of any module tree (a Hugging Face transformer, a model with data-dependent control flow) by a
``WeightOnlyLayer``; nothing is traced and the activations stay in float. The weights are
quantized to an fpq Format with scales per tensor, per output channel or per group of
``group_size`` consecutive weights along the input axis (of the flattened (out, fan_in) weight),
and a layer may keep some weights in a wider format (``keep_format``, float16 "e5m10" by default):
whole input columns (OWQ's weak columns, ``keep_cols``) and single weights (GWQ's outliers,
``keep_idx``, flat indices into the (out, fan_in) weight). A kept format other than e5m10 gets one
float16 scale per output row (``keep_scale``); float16 needs none, it holds the weights as they are.

Scales: "po2" (a power of two, 8 bits of exponent metadata) or "float" (a float16 number, 16
bits: the scale is rounded to float16 with a straight-through gradient, as the 16-bit scales of
GPTQ / AWQ checkpoints are).

The exactness contract of the eval forward (the layers' torch forward, ``emulate_layer`` for
numpy): y = RN(x . Wq + b), the exact real dot product of the float input with the quantized
weights, plus the float bias, rounded ONCE to the input's dtype (round to nearest even). Each
product x * wq is exact in float64 (a float32 significand has 24 bits, a quantized weight at
most 4 + 11 bits for int8 / e4m3 with a float16 scale, 11 for a float16 kept column), but a
sum of 384 such products generally is not; the sum is therefore taken by
``fpq.numerics.wide.exact_bilinear``: one float64 matmul when the data's bit spans prove it
exact, else split into pieces whose sums are exact, recombined and rounded to odd at 53 bits,
which the final rounding to float32 turns into the correctly rounded result (Boldo & Melquiond).
So the result depends on no summation order: CPU and GPU, any BLAS, give the same bits. The
one limit: when an input row spans more bits than two float64 limbs can hold (float32 values
from about 2^-60 to 2^30 in one row), the layer raises instead of returning an inexact value.
Training mode (and ``layer_mode(model, "fast")``, used by the PTQ methods to collect inputs)
runs a plain float32 F.linear / conv with the quantized weights instead.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..formats import Int, Minifloat, finfo, parse_format
from ..numerics.torch_ops import ste_apply_scaled
from ..numerics.wide import exact_bilinear
from .quantizers import _RoundSTE

GRANULARITIES = ("tensor", "channel", "group")
SCALE_KINDS = ("po2", "float")
SCALE_BITS = {"po2": 8, "float": 16}   # metadata bits of one stored scale
KEEP_FORMAT = "e5m10"                 # float16: the default format of kept columns / weights
INDEX_BITS = 16                       # metadata of one kept column or weight (its index), of one CSR row count
MODES = ("exact", "fast", "float", "soft")


def _to_half_ste(s: torch.Tensor) -> torch.Tensor:
    """s rounded to the nearest float16 value (as float32), straight-through."""
    return s + (s.detach().to(torch.float16).to(s.dtype) - s.detach())


def half_up(s: torch.Tensor) -> torch.Tensor:
    """Positive scales rounded to float16 numbers: up (so that max |w| / s fits the format), unless
    that overflows; at least float16's smallest subnormal."""
    s = s.to(torch.float64)
    h = s.to(torch.float16).to(torch.float64)
    up = torch.nextafter(h.to(torch.float16), torch.tensor(math.inf, dtype=torch.float16)).to(torch.float64)
    return torch.clamp(torch.where((h < s) & torch.isfinite(up), up, h), min=2.0 ** -24)


def qmax_of(fmt) -> float:
    """The largest |code| of a symmetric use of ``fmt``."""
    info = finfo(fmt)
    return float(max(abs(float(info.min)), float(info.max)))


def check_weight_format(fmt, where: str):
    try:
        fmt = parse_format(fmt)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not isinstance(fmt, (Int, Minifloat)) or (isinstance(fmt, Int) and fmt.width < 2):
        raise ValueError(f"{where}: weight-only layers take scaled Int (2..16 bits) or Minifloat formats, got {fmt}")
    return fmt


class WeightQuant(nn.Module):
    """Quantizer of a (out, fan_in) weight: Q(w / s) * s with s per tensor, per row or per group of
    ``group_size`` columns. ``log2_scale`` is learnable (shape (1, 1), (out, 1) or (out, fan_in / g))."""

    def __init__(self, fmt, out_features: int, fan_in: int, granularity: str = "group",
                 group_size: int = 128, scale_kind: str = "float", where: str = "WeightQuant"):
        super().__init__()
        self.fmt = check_weight_format(fmt, where)
        if granularity not in GRANULARITIES:
            raise ValueError(f"{where}: unknown granularity {granularity!r}; allowed: {', '.join(GRANULARITIES)}")
        if scale_kind not in SCALE_KINDS:
            raise ValueError(f"{where}: unknown scale kind {scale_kind!r}; allowed: {', '.join(SCALE_KINDS)}")
        self.granularity, self.scale_kind = granularity, scale_kind
        self.group_size = int(group_size) if granularity == "group" else None
        if granularity == "group":
            if self.group_size < 1 or fan_in % self.group_size:
                raise ValueError(f"{where}: group_size={group_size} must divide the fan-in {fan_in} "
                                 f"(in_features, or in_channels x kernel size for a convolution)")
            shape = (out_features, fan_in // self.group_size)
        else:
            shape = (out_features if granularity == "channel" else 1, 1)
        self.shape2d = (out_features, fan_in)
        self.qmax = qmax_of(self.fmt)   # symmetric range: max |code|
        self.log2_scale = nn.Parameter(torch.zeros(shape, dtype=torch.float32))

    def scale(self) -> torch.Tensor:
        t = self.log2_scale
        if self.scale_kind == "po2":
            return torch.exp2(_RoundSTE.apply(t))  # fpq.nn.quantizers' straight-through round
        return _to_half_ste(torch.exp2(t))

    def expand(self, s: torch.Tensor) -> torch.Tensor:
        """A (out, fan_in) tensor of each weight's scale."""
        if self.group_size is not None:
            return s.repeat_interleave(self.group_size, dim=1)
        return s.expand(self.shape2d)

    @torch.no_grad()
    def set_scale(self, s: torch.Tensor) -> None:
        s = torch.as_tensor(s, dtype=torch.float64).reshape(self.log2_scale.shape)
        if not torch.all(torch.isfinite(s) & (s > 0)):
            raise ValueError("scales must be finite and > 0")
        if self.scale_kind == "po2":
            t = torch.log2(s)
            if not torch.all(t == torch.round(t)):
                raise ValueError("po2 scales must be powers of two")
            self.log2_scale.copy_(t.float())
        else:
            half = s.to(torch.float16).to(torch.float64)
            if not torch.all(torch.isfinite(half) & (half > 0)):
                raise ValueError("float scales must be positive float16 numbers (6e-8 .. 65504)")
            self.log2_scale.copy_(torch.log2(half).float())

    @torch.no_grad()
    def init_from(self, w2d: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Scales mapping each block's max |w| (kept weights excluded: ``keep`` a bool mask of the
        (out, fan_in) weight or of its columns) to the format's max |code| (po2: rounded up to a
        power of two; float: to a float16 number, up unless that overflows)."""
        a = w2d.detach().abs().to(torch.float64).clone()
        if keep is not None:
            a = torch.where(keep.to(a.device), torch.zeros_like(a), a)
        out = self.shape2d[0]
        if self.granularity == "tensor":
            m = a.max().reshape(1, 1)
        elif self.granularity == "channel":
            m = a.max(dim=1, keepdim=True).values
        else:
            m = a.reshape(out, -1, self.group_size).max(dim=2).values
        s = torch.where(m > 0, m / self.qmax, torch.ones_like(m))
        self.set_scale(torch.exp2(torch.ceil(torch.log2(s))) if self.scale_kind == "po2" else half_up(s))

    def forward(self, w2d: torch.Tensor) -> torch.Tensor:
        return ste_apply_scaled(w2d.to(torch.float32), self.fmt, self.expand(self.scale()))

    def extra_repr(self) -> str:
        g = f"group={self.group_size}" if self.group_size else self.granularity
        return f"format={self.fmt}, scale={self.scale_kind}, {g}"


class WeightOnlyLayer(nn.Module):
    """A float Linear / Conv1d / Conv2d whose weights are quantized (``fpq.convert(scope="modules")``).

    The bias and the activations stay float. Weights are quantized to ``fmt`` with scales per
    tensor, output channel or group; some may be kept in a wider format (``set_keep``: OWQ's
    columns, GWQ's single weights). The eval forward computes ``RN(x . Wq + b)``: the exact dot
    product of the float input with the quantized weights plus the bias, rounded once to the
    input's dtype, so it does not depend on the summation order (CPU or GPU, any BLAS give the
    same bits; see the module docstring). Training mode runs a plain float32 forward with the
    quantized weights (straight-through gradients).

    Args:
        module (torch.nn.Module): the float ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` (its
            weight and bias are copied; convolutions need explicit zero padding).
        fmt (str | Format): the weight format, an Int or a Minifloat.
        granularity (str): scales per "tensor", "channel" (output channel) or "group".
        group_size (int): weights per group along the input axis (granularity "group"); must
            divide the fan-in.
        scale_kind (str): "po2" (power-of-two scales) or "float" (float16 scales).
        name (str): the layer's name in messages.

    Raises:
        TypeError: ``module`` is not a Linear / Conv1d / Conv2d.
        ValueError: a convolution with non-zero or implicit ("same") padding, a format that is not
            an Int or Minifloat, an unknown granularity or scale kind, or a group size that does
            not divide the fan-in.

    Example:
        >>> import torch, fpq
        >>> from fpq.nn.weight_only import WeightOnlyLayer
        >>> _ = torch.manual_seed(0)
        >>> layer = WeightOnlyLayer(torch.nn.Linear(8, 3), "int4", granularity="group", group_size=4)
        >>> len(torch.unique(layer.quantized_weight()[0, :4])) <= 16   # one group: int4 codes x one scale
        True
        >>> layer(torch.randn(2, 8)).shape
        torch.Size([2, 3])
        >>> model = fpq.convert(torch.nn.Sequential(torch.nn.Linear(8, 3)), weights="int4", scope="modules",
        ...                     group_size=4)
        >>> type(model[0]).__name__
        'WeightOnlyLayer'
    """

    def __init__(self, module: nn.Module, fmt, granularity: str = "group", group_size: int = 128,
                 scale_kind: str = "float", name: str = "layer"):
        super().__init__()
        if isinstance(module, nn.Linear):
            self.op = "linear"
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            self.op = "conv1d" if isinstance(module, nn.Conv1d) else "conv2d"
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise ValueError(f"layer {name!r}: padding={module.padding!r}, padding_mode={module.padding_mode!r} "
                                 "is not supported; give explicit zero padding")
            self.conv = dict(stride=module.stride, padding=module.padding, dilation=module.dilation,
                             groups=module.groups)
        else:
            raise TypeError(f"layer {name!r}: {type(module).__name__} is not a Linear / Conv1d / Conv2d")
        self.fpq_layer_name = name
        self.weight = nn.Parameter(module.weight.detach().clone())
        self.bias = None if module.bias is None else nn.Parameter(module.bias.detach().clone())
        out, fan_in = self.weight.shape[0], self.weight[0].numel()
        self.fpq_weight = WeightQuant(fmt, out, fan_in, granularity, group_size, scale_kind, f"layer {name!r}")
        self.register_buffer("keep_cols", torch.zeros(0, dtype=torch.long))
        self.register_buffer("keep_idx", torch.zeros(0, dtype=torch.long))
        self.register_buffer("keep_scale", torch.ones(out, 1))
        self.keep_format = parse_format(KEEP_FORMAT)
        self.fpq_mode = "exact"
        self.fpq_soft_weight = None   # set by signround while it learns: a callable returning (out, fan_in)
        self.fpq_weight.init_from(self.weight.reshape(out, -1))

    # -- weights ---------------------------------------------------------------------------
    def has_kept(self) -> bool:
        """Whether some weights are kept in ``keep_format`` (``set_keep`` was called with any).

        Returns:
            bool: True when kept columns or single kept weights exist.
        """
        return bool(self.keep_cols.numel() or self.keep_idx.numel())

    def keep_mask(self) -> torch.Tensor:
        """Which weights are kept in ``keep_format``.

        Returns:
            torch.Tensor: (out, fan_in) bool mask.
        """
        out, fan_in = self.fpq_weight.shape2d
        m = torch.zeros(out * fan_in, dtype=torch.bool, device=self.weight.device)
        m[self.keep_idx] = True
        m = m.reshape(out, fan_in)
        m[:, self.keep_cols] = True
        return m

    def keep_scaled(self) -> bool:
        """Whether the kept format has per-row scales (any kept format but float16, e5m10).

        Returns:
            bool: True when ``keep_format`` is not e5m10.
        """
        return self.keep_format != parse_format(KEEP_FORMAT)

    def quantize_kept(self, w2d: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Weights ``w2d`` in the kept format: float16 as they are, another format at ``scale``.

        Args:
            w2d (torch.Tensor): (out, n) weights.
            scale (torch.Tensor | None): per-row scales; None: the layer's ``keep_scale``.

        Returns:
            torch.Tensor: (out, n) float32 values, with a straight-through gradient.
        """
        if not self.keep_scaled():
            return _to_half_ste(w2d.to(torch.float32))
        s = self.keep_scale if scale is None else scale
        return ste_apply_scaled(w2d.to(torch.float32), self.keep_format, s.expand(w2d.shape))

    @torch.no_grad()
    def set_keep(self, cols=None, idx=None, fmt=KEEP_FORMAT) -> None:
        """Keep input columns and / or single weights in a wider format; re-fit the layer's scales without them.

        A scaled kept format (any but float16, e5m10) gets per-row scales.

        Args:
            cols (Sequence[int] | torch.Tensor | None): input columns to keep (0 .. fan_in - 1, distinct).
            idx (Sequence[int] | torch.Tensor | None): flat indices of single weights of the (out,
                fan_in) weight to keep (distinct).
            fmt (str | Format): the kept format, wider than the layer's (default float16, "e5m10").

        Raises:
            ValueError: a kept format not wider than the layer's, or indices out of range or repeated.
        """
        out, fan_in = self.fpq_weight.shape2d
        where = f"layer {self.fpq_layer_name!r}"
        fmt = check_weight_format(fmt, f"{where}: keep format")
        if fmt.width <= self.fpq_weight.fmt.width:
            raise ValueError(f"{where}: the keep format {fmt} must be wider than the layer's {self.fpq_weight.fmt} "
                             f"({fmt.width} <= {self.fpq_weight.fmt.width} bits)")
        dev = self.keep_cols.device
        cols = torch.zeros(0, dtype=torch.long) if cols is None else torch.as_tensor(cols, dtype=torch.long).flatten()
        idx = torch.zeros(0, dtype=torch.long) if idx is None else torch.as_tensor(idx, dtype=torch.long).flatten()
        for name, v, n in (("columns", cols, fan_in), ("weight indices", idx, out * fan_in)):
            if v.numel() and (int(v.min()) < 0 or int(v.max()) >= n or torch.unique(v).numel() != v.numel()):
                raise ValueError(f"{where}: kept {name} must be distinct and in 0..{n - 1}")
        self.keep_cols = torch.sort(cols).values.to(dev)
        self.keep_idx = torch.sort(idx).values.to(dev)
        self.keep_format = fmt
        w = self.weight.detach().reshape(out, -1)
        mask = self.keep_mask()
        if self.keep_scaled():
            m = torch.where(mask, w.abs().to(torch.float64), torch.zeros((), dtype=torch.float64)).amax(1, keepdim=True)
            self.keep_scale.copy_(half_up(torch.where(m > 0, m / qmax_of(fmt), torch.ones_like(m))).float())
        else:
            self.keep_scale.fill_(1.0)
        self.fpq_weight.init_from(w, mask)

    @torch.no_grad()
    def set_format(self, fmt) -> None:
        """Give the layer a new weight format (same granularity, group size and scale kind).

        Its scales are fit to the current weights, kept weights excluded.

        Args:
            fmt (str | Format): the new weight format, an Int or a Minifloat.

        Raises:
            ValueError: an invalid format, or kept weights not wider than the new format.
        """
        old = self.fpq_weight
        g = old.granularity
        new = WeightQuant(fmt, *old.shape2d, g, old.group_size or 128, old.scale_kind, f"layer {self.fpq_layer_name!r}")
        new.to(old.log2_scale.device)
        if self.has_kept() and self.keep_format.width <= new.fmt.width:
            raise ValueError(f"layer {self.fpq_layer_name!r}: its kept weights ({self.keep_format}) are not wider than {new.fmt}")
        new.init_from(self.weight.detach().reshape(old.shape2d), self.keep_mask() if self.has_kept() else None)
        self.fpq_weight = new

    def quantize_weight2d(self, w2d: torch.Tensor) -> torch.Tensor:
        """Quantize (out, fan_in) weights with the layer's format and scales, kept weights in ``keep_format``.

        Args:
            w2d (torch.Tensor): (out, fan_in) weights.

        Returns:
            torch.Tensor: the quantized (out, fan_in) weights.
        """
        q = self.fpq_weight(w2d)
        if self.has_kept():
            q = torch.where(self.keep_mask(), self.quantize_kept(w2d), q)
        return q

    def quantized_weight(self) -> torch.Tensor:
        """The layer's quantized weights, in the shape of ``weight``.

        Returns:
            torch.Tensor: the values the forward multiplies by (while signround learns: its soft
            weights).
        """
        if self.fpq_soft_weight is not None and self.fpq_mode == "soft":
            q = self.fpq_soft_weight()
        else:
            q = self.quantize_weight2d(self.weight.reshape(self.weight.shape[0], -1))
        return q.reshape(self.weight.shape)

    # -- forward ---------------------------------------------------------------------------
    def _f(self, x, w, b=None):
        if self.op == "linear":
            return F.linear(x, w, b)
        conv = F.conv1d if self.op == "conv1d" else F.conv2d
        return conv(x, w, b, **self.conv)

    def forward(self, x):
        """Apply the layer: exact ``RN(x . Wq + b)`` in eval mode, a float32 forward in training mode.

        Args:
            x (torch.Tensor): floating-point input of the wrapped layer's shape.

        Returns:
            torch.Tensor: the output, in ``x``'s dtype.
        """
        if self.fpq_mode == "float":
            return self._f(x, self.weight, self.bias)
        if self.training or self.fpq_mode in ("fast", "soft"):
            w = self.quantized_weight()
            return self._f(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        with torch.no_grad():
            w = self.quantized_weight()
        return exact_forward(self, x, w)

    def extra_repr(self) -> str:
        """The op, weight shape, bias and kept weights, for ``repr``.

        Returns:
            str: the description.
        """
        k = f", kept columns={self.keep_cols.numel()}" if self.keep_cols.numel() else ""
        k += f", kept weights={self.keep_idx.numel()}" if self.keep_idx.numel() else ""
        k += f", keep format={self.keep_format}" if self.has_kept() else ""
        return f"{self.op}, weight={tuple(self.weight.shape)}, bias={self.bias is not None}{k}"


def exact_forward(layer: WeightOnlyLayer, x, w):
    """RN_dtype(x . w + b) computed exactly (module docstring); ``x`` and ``w`` torch or numpy arrays."""
    is_torch = torch.is_tensor(x)
    if is_torch and not torch.is_floating_point(x):
        raise TypeError(f"layer {layer.fpq_layer_name!r}: input must be floating point, got {x.dtype}")
    b = layer.bias
    if is_torch:
        x64, w64 = x.detach().to(torch.float64), w.detach().to(torch.float64)
        b64 = None if b is None else b.detach().to(torch.float64)
        f = lambda a, c: layer._f(a, c)    # noqa: E731
    else:
        x64, w64 = np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64)
        b64 = None if b is None else b.detach().cpu().numpy().astype(np.float64)
        if layer.op != "linear":
            raise ValueError("emulate_layer: the numpy path covers Linear layers; run a Conv layer's torch forward")
        f = lambda a, c: a @ c.T           # noqa: E731
    bias_shape = None if layer.op == "linear" else ((-1, 1) if layer.op == "conv1d" else (-1, 1, 1))
    try:
        y, _ = exact_bilinear(f, x64, w64, b64, fan_in=layer.weight[0].numel(), bias_shape=bias_shape, strict=True,
                              any_span=True)
    except ValueError as e:
        raise ValueError(f"layer {layer.fpq_layer_name!r}: no exact result: {e}; its float inputs span too many "
                         "binary orders of magnitude for fpq's two-limb exact sum (run it in training mode or "
                         "layer_mode(model, 'fast') for a plain float32 result)") from e
    return y.to(x.dtype) if is_torch else y.astype(x.dtype)


@torch.no_grad()
def emulate_layer(layer: WeightOnlyLayer, x: np.ndarray) -> np.ndarray:
    """The numpy twin of a weight-only Linear's eval forward: same exact contract, same bits."""
    w = layer.quantized_weight().cpu().numpy()
    return exact_forward(layer, np.asarray(x), w)


def weight_only_layers(model: nn.Module):
    """[(name, layer)] of the WeightOnlyLayers of ``model`` in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WeightOnlyLayer)]


@contextlib.contextmanager
def layer_mode(model: nn.Module, mode: str):
    """Within the block every WeightOnlyLayer of ``model`` runs in ``mode``: "exact" (the eval
    contract), "fast" (float32 with the quantized weights), "float" (the float weights, no
    quantization: the float model) or "soft" (signround's learned weights)."""
    if mode not in MODES:
        raise ValueError(f"unknown layer mode {mode!r}; allowed: {', '.join(MODES)}")
    layers = [m for _, m in weight_only_layers(model)]
    saved = [m.fpq_mode for m in layers]
    try:
        for m in layers:
            m.fpq_mode = mode
        yield model
    finally:
        for m, s in zip(layers, saved):
            m.fpq_mode = s


def layer_bits(m: WeightOnlyLayer) -> int:
    """Stored bits of a weight-only layer's weights: each weight at its format's width (kept ones
    at the keep format's), every stored scale (po2 8 bits, float 16 bits; a scaled keep format one
    float16 scale per output row), every kept column's or weight's index (16 bits) and, with kept
    single weights, a 16-bit count per output row (their CSR row pointers)."""
    out, fan_in = m.fpq_weight.shape2d
    kept = int(m.keep_mask().sum()) if m.has_kept() else 0
    bits = ((out * fan_in - kept) * m.fpq_weight.fmt.width + kept * m.keep_format.width
            + m.fpq_weight.log2_scale.numel() * SCALE_BITS[m.fpq_weight.scale_kind]
            + (m.keep_cols.numel() + m.keep_idx.numel()) * INDEX_BITS)
    if m.keep_idx.numel():
        bits += out * INDEX_BITS
    if kept and m.keep_scaled():
        bits += out * SCALE_BITS["float"]
    return int(bits)


def effective_bits(model: nn.Module) -> dict:
    """Bits per weight of every weight-only layer and of the whole model, counted honestly
    (``layer_bits``: weights, kept weights, scales, indices). Float biases are not weights and
    not counted."""
    layers, tot_bits, tot_n = {}, 0, 0
    for name, m in weight_only_layers(model):
        out, fan_in = m.fpq_weight.shape2d
        bits = layer_bits(m)
        layers[name] = bits / (out * fan_in)
        tot_bits, tot_n = tot_bits + bits, tot_n + out * fan_in
    return {"layers": layers, "total": tot_bits / tot_n if tot_n else float("nan"), "weights": tot_n}


class WeightOnlyPolicy(dict):
    """What fpq.convert(scope="modules") did: the defaults and {layer name: format} (a dict, so it
    pickles and prints plainly)."""


def convert_modules(model: nn.Module, weights, *, granularity: str = "group", group_size: int = 128,
                    scale: str = "float", overrides: dict | None = None) -> nn.Module:
    """A copy of ``model`` whose every nn.Linear / Conv1d / Conv2d is a WeightOnlyLayer (see
    fpq.convert's ``scope="modules"``). overrides: {layer name or glob: format string, or None to
    keep that layer in float}; the exact name wins, then the last matching glob."""
    import copy
    import fnmatch

    if not isinstance(model, nn.Module):
        raise TypeError(f"fpq.convert expects a torch.nn.Module, got {type(model).__name__}")
    weights = str(check_weight_format(weights, "fpq.convert(scope='modules')"))
    overrides = dict(overrides or {})
    for pattern, v in overrides.items():
        if v is not None:
            check_weight_format(v, f"fpq.convert(scope='modules'): override {pattern!r}")
    for path, mod in model.named_modules():
        if type(mod).__module__.startswith("brevitas.") or isinstance(mod, WeightOnlyLayer):
            raise ValueError(f"fpq.convert(scope='modules'): layer {path!r} ({type(mod).__name__}) is already "
                             "quantized; pass the float model")
    q = copy.deepcopy(model)
    targets = [(n, m) for n, m in q.named_modules() if type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d)]
    if not targets:
        raise ValueError("fpq.convert(scope='modules'): the model has no nn.Linear / Conv1d / Conv2d to quantize")
    names = [n for n, _ in targets]
    stray = [p for p in overrides if not any(p == n or fnmatch.fnmatchcase(n, p) for n in names)]
    if stray:
        raise ValueError(f"fpq.convert(scope='modules'): overrides {stray} match no Linear / Conv; their names: {names}")
    policy = WeightOnlyPolicy(weights=weights, granularity=granularity, group_size=group_size, scale=scale,
                              overrides=overrides, layers={})
    for name, m in targets:
        hits = [v for p, v in overrides.items() if p != name and fnmatch.fnmatchcase(name, p)]
        fmt = overrides[name] if name in overrides else (hits[-1] if hits else weights)
        if fmt is None:
            continue
        new = WeightOnlyLayer(m, fmt, granularity, group_size, scale, name)
        new.to(m.weight.device)
        parent, _, leaf = name.rpartition(".")
        setattr(q.get_submodule(parent) if parent else q, leaf, new)
        policy["layers"][name] = str(parse_format(fmt))
    q.fpq_weight_only = policy
    return q.eval()


__all__ = ["convert_modules", "WeightOnlyPolicy", "WeightQuant", "WeightOnlyLayer", "emulate_layer", "exact_forward", "layer_mode",
           "weight_only_layers", "effective_bits", "layer_bits", "GRANULARITIES", "SCALE_KINDS"]


def convert_scope_modules(model, fmt, weights, scale, granularity, group_size, overrides, unused: dict):
    """``fpq.convert(model, ..., scope="modules")``: refuse the options that do not apply (``unused``:
    name -> value, None when not given), then ``convert_modules`` with this scope's defaults."""
    given = sorted(k for k, v in unused.items() if v is not None)
    if given:
        raise ValueError(f"fpq.convert(scope='modules') quantizes weights only: {given} do not apply; "
                         "allowed: weights (or fmt), granularity, group_size, scale, overrides")
    return convert_modules(model, weights if weights is not None else fmt,
                           granularity="group" if granularity is None else granularity,
                           group_size=128 if group_size is None else group_size,
                           scale="float" if scale is None else scale, overrides=overrides)
