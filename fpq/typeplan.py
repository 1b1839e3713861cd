"""The TypePlan: every tensor's exact Format (and scale), layer by layer.

It is computed by fpq from the formats, never left to hls4ml's ``auto``: the emulator, the HLS
writer and the cost model all read it. Products and accumulators are derived here so that
every consumer uses the same exact widths: an accumulator is wide enough that no sum of
``fan_in`` products plus the bias can overflow, unless the user narrows it explicitly.

Block-scaled tensors (mxfp4, nvfp4, ``block<ELEM,SCALE,K>``): a TensorType of a BlockFormat whose
``scale`` is the float32 tensor scale (1 for E8M0 formats); each value is element x block scale
(x tensor scale), so the tensor has no single fixed-point type (``carrier`` refuses). A linear
layer's exact sum is described, not typed (``attrs["block_sum"]``): per block pair, the element
products sum exactly in the product of the element carriers (e.g. e2m1 x e2m1: Fixed<8,4> products,
+5 bits for k = 32) and are shifted by the sum of the two blocks' scale exponents; over the
exponent range of the scales (E8M0: 2^-127 .. 2^127 on each side, so ~540 bits plus the element
products' span) no fixed accumulator is worth building, and float64 cannot hold it. Every float
path (torch's eval forward, both emulator backends) therefore forms that sum with
``fpq.numerics.block_dot``: partial sums per block pair exact in float64, summed over blocks
exactly in bands of the exponents present, rounded to odd at 53 bits (the exact sum when it fits),
which the block (or any) quantizer after it rounds as the exact sum. No product / accumulator
types are derived for such a layer; the HLS project forms the same sum in a Kulisch accumulator
sized from the scale formats' exponent ranges (``fpq.numerics.block_hw``, ``hls/fpq_block.h``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .formats import Binary, BlockFormat, Fixed, Format, exact_fixed, parse_format
from .formats.facts import MAX_ENUMERABLE_BITS, values as format_values
from .numerics.reference import po2_exponents  # noqa: F401  (re-exported: callers read it here)

ROLES_ORDER = ("input", "other", "weight", "bias", "product", "accumulator", "output")


def is_block(t) -> bool:
    """A TensorType of a block-scaled format (mxfp4, nvfp4, block<...>)."""
    return isinstance(getattr(t, "format", None), BlockFormat)


def block_exponent_range(fmt: BlockFormat) -> tuple:
    """(lowest, highest) binary exponent a block scale of ``fmt`` contributes (2^lo .. 2^hi, before
    a tensor-scaled format's float32 tensor scale)."""
    if fmt.po2_scale:
        return (-127, 127)
    sf = fmt.scale
    lo = math.frexp(sf.min_normal)[1] - 1 - sf.man_bits    # its grid: min normal's ulp
    return (lo, math.frexp(sf.max_value)[1] - 1)


@dataclass(frozen=True)
class TensorType:
    """A tensor's Format and scale: real value = format value * scale.

    Args:
        format (str | Format): the format (a string is parsed).
        scale (array_like): float32, shape () (per tensor) or (C,) (per output channel).

    Raises:
        ValueError: an invalid format string.

    Example:
        >>> import fpq
        >>> from fpq.typeplan import TensorType
        >>> t = TensorType("int8", 2.0 ** -5)
        >>> t.describe(), t.po2, str(t.carrier())
        ('int8 x 2^-5', True, 'fixed<8,3,RND_CONV,SAT>')
        >>> TensorType("int8", 0.3).carrier()
        Traceback (most recent call last):
        ...
        ValueError: scale [0.3]... of int8 is not a power of two: no exact fixed-point carrier
    """

    format: Format
    scale: np.ndarray = field(default_factory=lambda: np.float32(1.0))

    def __post_init__(self):
        object.__setattr__(self, "format", parse_format(self.format))
        object.__setattr__(self, "scale", np.asarray(self.scale, dtype=np.float32))

    @property
    def po2(self) -> bool:
        """True when every scale is a power of two (then the tensor has an exact fixed-point carrier).
        """
        return po2_exponents(self.scale) is not None

    def carrier(self) -> Fixed:
        """The exact fixed-point type holding every value of this tensor (scale folded in).

        Per-channel power-of-two scales share one carrier wide enough for all channels.

        Returns:
            Fixed: the carrier.

        Raises:
            ValueError: a scale that is not a power of two (no exact fixed carrier).
        """
        exps = po2_exponents(self.scale)
        if exps is None:
            raise ValueError(f"scale {self.scale.ravel()[:4]}... of {self.format} is not a power of two: "
                             "no exact fixed-point carrier")
        carriers = [exact_fixed(self.format, int(e)) for e in np.unique(exps)]
        return fixed_union(carriers)

    def value_carrier(self) -> Fixed | None:
        """The exact Fixed holding every value this tensor takes as stored (float32 of q * scale).

        Also for a scale that is not a power of two: computed from the format's values when there
        are at most 2**16 of them.

        Returns:
            Fixed | None: the carrier, or None for a non-power-of-two scale on a format too wide to
            enumerate.
        """
        if self.po2:
            return self.carrier()
        if self.format.width > MAX_ENUMERABLE_BITS:
            return None
        levels = (format_values(self.format)[:, None] * self.scale.astype(np.float64).ravel()[None, :])
        return values_carrier(levels.astype(np.float32))

    def describe(self) -> str:
        """Short text of the type, e.g. ``int8 x 2^-5`` or ``e4m3 x per-channel[16] po2``.

        Returns:
            str: the format and the scale (a power of two as 2^e).
        """
        s = self.scale.ravel()
        if s.size == 1:
            exps = po2_exponents(s)
            sc = f"2^{int(exps[0])}" if exps is not None else f"{float(s[0]):.6g}"
        else:
            sc = f"per-channel[{s.size}]" + (" po2" if self.po2 else "")
        return f"{self.format} x {sc}"


def values_carrier(v) -> Fixed:
    """Smallest signed Fixed holding the given finite float values exactly. Float numbers are
    dyadic (x = k * 2**-f), so fixed point holds any of them: weights or quantizer outputs whose
    scale is not a power of two, for instance."""
    v = np.asarray(v, dtype=np.float64).ravel()
    nz = np.abs(v[v != 0])
    if nz.size == 0:
        return Fixed(2, 2, True)
    if not np.all(np.isfinite(nz)):
        raise ValueError("non-finite values have no fixed-point carrier")
    m, e = np.frexp(nz)                            # nz = m * 2**e, 0.5 <= m < 1
    k = np.ldexp(m, 53).astype(np.int64)           # an integer: float64 has 53 significant bits
    trailing = np.log2((k & -k).astype(np.float64)).astype(np.int64)
    frac = int(np.max(53 - e - trailing))          # the smallest f with every x * 2**f an integer
    width = int(np.max(np.ldexp(nz, frac))).bit_length() + 1
    return Fixed(width, width - frac, True)


def levels_carrier(t: TensorType, levels) -> Fixed:
    """The type of a threshold lookup's output levels (fpq.hls's FpqQuantize, the cost model's
    lookup row): the quantizer's own carrier when its scale is a power of two (every level is a
    value of it), else the carrier of the levels themselves."""
    if t.po2:
        c = t.carrier()
        return Fixed(c.width, c.int_bits, c.signed)
    return values_carrier(levels)


def fixed_union(formats) -> Fixed:
    """Smallest Fixed that holds every value of each of ``formats`` (all Fixed)."""
    formats = list(formats)
    signed = any(f.signed for f in formats)
    frac = max(f.frac_bits for f in formats)
    # integer bits needed, counting the sign bit once when any format is signed
    ints = [f.int_bits + (1 if signed and not f.signed else 0) for f in formats]
    int_bits = max(ints)
    return Fixed(int_bits + frac, int_bits, signed)


def product_type(a: Fixed, b: Fixed) -> Fixed:
    """Exact type of a * b."""
    signed = a.signed or b.signed
    width = a.width + b.width + (1 if signed and not (a.signed and b.signed) else 0)
    return Fixed(width, a.int_bits + b.int_bits + (width - a.width - b.width), signed)


def sum_type(term: Fixed, count: int, extra: Fixed | None = None) -> Fixed:
    """Exact type of a sum of ``count`` terms of type ``term`` (plus one ``extra`` term)."""
    if count < 1:
        raise ValueError("a sum needs at least one term")
    grow = math.ceil(math.log2(count + (1 if extra is not None else 0))) if count > 1 or extra else 0
    base = term if extra is None else fixed_union([term, extra])
    return Fixed(base.width + grow, base.int_bits + grow, base.signed)


def narrow_accumulator(exact: Fixed, bits: int) -> Fixed:
    """A user's ``bits``-wide accumulator: the exact accumulator's LSB (so no product or bias is
    ever rounded), its top bits dropped, wrapping on overflow as ap_fixed's default AP_WRAP does.
    Wrapping is arithmetic modulo 2**bits, which does not depend on the order of the additions,
    so every path (torch, QONNX, emulator, HLS) computes the same wrapped sum; a saturating
    narrow accumulator would depend on that order and is not offered. No narrower than needed:
    ``bits`` >= the exact width gives the exact accumulator."""
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or bits < 2:
        raise ValueError(f"accumulator_bits must be an integer >= 2, got {bits!r}")
    if bits >= exact.width:
        return exact
    return Fixed(int(bits), exact.int_bits - (exact.width - int(bits)), exact.signed, "TRN", "WRAP")


def wrap(y, acc: Fixed):
    """``y`` (float64 values on the grid of the WRAP accumulator ``acc``; a numpy array or a torch
    tensor) wrapped into ``acc``: y - m * floor((y + h) / m), m = 2**width LSBs, h = half of it when
    signed. Every step is exact in float64 for sums that fit 53 bits. The one wrap of torch, the
    export and both emulator backends."""
    m = math.ldexp(1.0, acc.int_bits)
    q = (y + (m / 2 if acc.signed else 0.0)) / m
    return y - m * (q.floor() if hasattr(q, "floor") else np.floor(q))


def constant_carrier(t, values) -> Fixed | None:
    """The exact Fixed of a constant tensor (weight / bias): its type's carrier for a power-of-two
    scale, else the carrier of its own values (None with neither)."""
    if isinstance(t, TensorType) and t.po2:
        return t.carrier()
    return None if values is None else values_carrier(values)


@dataclass
class LayerPlan:
    """One layer of a TypePlan: its op and the type of each tensor role it has.

    Args:
        name (str): the IR op name (e.g. "linear_0").
        op (str): the op kind (e.g. "linear", "conv2d", "relu", "quant").
        tensors (dict): role ("input", "weight", "bias", "product", "accumulator", "output", ...)
            -> TensorType, or Fixed for the derived product / accumulator.
        fan_in (int | None): products summed per output (MAC layers).
        values (dict): role -> numpy array of quantized values (weight, bias).
        attrs (dict): op attributes: kernel, stride, padding, shapes, the torch module, ...
        note (str): a remark for the table.

    Example:
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int8")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> lp = fpq.plan(q)["0"]
        >>> lp.fan_in, lp.exact_sum() == lp.tensors["accumulator"]
        (4, True)
    """

    name: str
    op: str
    tensors: dict = field(default_factory=dict)   # role -> TensorType or Fixed (derived)
    fan_in: int | None = None
    values: dict = field(default_factory=dict)    # role -> np.ndarray of quantized values (weight, bias)
    attrs: dict = field(default_factory=dict)     # op attributes: kernel, stride, padding, shapes, ...
    note: str = ""

    def exact_sum(self) -> Fixed | None:
        """The fixed type the layer's sum is formed in.

        Returns:
            Fixed | None: its accumulator (power-of-two scales), else the value accumulator of a
            float-scaled layer (``attrs["value_accumulator"]``), else None.
        """
        acc = self.tensors.get("accumulator")
        if isinstance(acc, Fixed):
            return acc
        acc = self.attrs.get("value_accumulator")
        return acc if isinstance(acc, Fixed) else None

    def derive(self) -> "LayerPlan":
        """Fill the product and accumulator types from the input, weight (and bias) types.

        When all are exact fixed point (power-of-two scales); with a float scale,
        ``attrs["value_accumulator"]`` instead; a block-scaled layer gets ``attrs["block_sum"]``.

        Returns:
            LayerPlan: ``self``.

        Raises:
            ValueError: a narrow accumulator (``accumulator_bits``) with a bias finer than the products,
                or with block-scaled operands (the message names the fix).
        """
        # a matmul of two activations (attention) sums input x other exactly as a Linear sums input x weight
        x, w = self.tensors.get("input"), self.tensors.get("other" if self.op == "matmul" else "weight")
        if x is None or w is None or self.fan_in is None:
            return self
        if self.op == "matmul":
            return self._derive_matmul(x, w)
        if is_block(x) or is_block(w):
            self._derive_block_sum(x, w)
            return self
        if not (x.po2 and w.po2):
            self._derive_value_accumulator()
            return self
        xc, wc = x.carrier(), w.carrier()
        prod = product_type(xc, wc)
        if isinstance(w.format, Binary) and isinstance(x.format, Binary):
            # +-2^a * +-2^b = +-2^(a+b): a sign bit plus the exponent span of both carriers
            # (each binary carrier is Fixed(2 + span, 2 + max exponent)); scales included
            prod = Fixed(xc.width + wc.width - 2, xc.int_bits + wc.int_bits - 2, True)
        b = self.tensors.get("bias")
        bias_c = b.carrier() if isinstance(b, TensorType) and b.po2 else None
        self.tensors["product"] = prod
        acc = sum_type(prod, self.fan_in, bias_c)
        bits = self.attrs.get("accumulator_bits")
        if bits is not None and bias_c is not None and bias_c.frac_bits > prod.frac_bits:
            raise ValueError(
                f"layer {self.name!r}: accumulator_bits={bits} keeps the exact sum's LSB, and this layer's bias "
                f"({b.describe()}, LSB 2^-{bias_c.frac_bits}) is finer than its products (LSB 2^-{prod.frac_bits}), "
                f"so {bits} bits would hold almost no integer part. Quantize the bias on the product grid, e.g. "
                f"bias='fixed<{max(16, bits)},{max(16, bits) - prod.frac_bits}>' (at most {prod.frac_bits} "
                "fractional bits), or an integer bias format such as int16 (fpq.calibrate then scales it onto "
                "that grid), or leave accumulator_bits unset")
        self.tensors["accumulator"] = acc if bits is None else narrow_accumulator(acc, bits)
        if bits is not None:
            self.attrs["exact_accumulator"] = acc   # what the narrow one wraps (every path wraps alike)
        return self

    def _derive_matmul(self, x, w) -> "LayerPlan":
        """Product, exact accumulator (as a Linear's, no bias) and ``output`` = 2**alpha_exp times it
        of a matmul; with a non-power-of-two scale ``attrs["value_accumulator"]`` from both operands'
        value carriers (None when a format is too wide to enumerate)."""
        if is_block(x) or is_block(w):
            raise ValueError(f"layer {self.name!r}: block-scaled operands of a matmul of two activations are not "
                             "supported (give them a scalar format)")
        if not (x.po2 and w.po2):
            xc, wc = x.value_carrier(), w.value_carrier()
            if xc is not None and wc is not None:
                self.attrs["value_accumulator"] = sum_type(product_type(xc, wc), self.fan_in)
            return self
        prod = product_type(x.carrier(), w.carrier())
        acc = sum_type(prod, self.fan_in)
        e = int(self.attrs.get("alpha_exp", 0))
        self.tensors.update(product=prod, accumulator=acc, output=Fixed(acc.width, acc.int_bits + e, acc.signed))
        return self

    def _derive_block_sum(self, x, w) -> None:
        """A block-scaled layer (see the module docstring, "Block-scaled tensors"): no product or
        accumulator type; ``attrs["block_sum"]`` says what the exact sum is made of."""
        if self.attrs.get("accumulator_bits") is not None:
            raise ValueError(f"layer {self.name!r}: accumulator_bits with block-scaled formats is not supported "
                             "(their exact sum has no fixed-point accumulator to narrow)")
        parts = []
        for role, t in (("input", x), ("weight", w)):
            f = t.format
            if is_block(t):
                parts.append(f"{role} {f}: element carrier {exact_fixed(f.elem, 0)} x scale exponent "
                             f"{block_exponent_range(f)}")
            else:
                parts.append(f"{role} {t.describe()}")
        self.attrs["block_sum"] = ("; ".join(parts) + "; per block pair an exact element-product sum, shifted by "
                                   "the two scale exponents, summed over blocks exactly and rounded to odd at 53 "
                                   "bits (fpq.numerics.block_dot)")

    def _derive_value_accumulator(self) -> None:
        """The exact sum of a layer with a float scale: no type follows from the formats, but
        every value is dyadic, so the sum of the values as stored has one: the input's (float32
        q * s for every value q of its format), times the weights' own values, plus the bias'
        own values (typed or not). ``attrs["value_accumulator"]``, read by the emulator (is the
        float64 sum exact?) and the cost model (its adder width); absent when the input's format
        has too many values to enumerate or the weights are unknown."""
        xc = self.tensors["input"].value_carrier()
        wc = constant_carrier(self.tensors["weight"], self.values.get("weight"))
        if xc is None or wc is None:
            return
        bc = constant_carrier(self.tensors.get("bias"), self.values.get("bias"))
        self.attrs["value_accumulator"] = sum_type(product_type(xc, wc), self.fan_in, bc)


@dataclass
class TypePlan:
    """Ordered per-layer types of a quantized network: every tensor's exact Format and scale.

    Computed by fpq from the formats (never hls4ml's ``auto``) and read by the emulator, the HLS
    writer and the cost model alike; products and accumulators are derived exactly (no sum of
    ``fan_in`` products plus the bias can overflow unless ``accumulator_bits`` narrows it). Get it
    with ``fpq.plan``. Iterating gives the LayerPlans in execution order; ``plan[name]`` looks a
    layer up by its op name or by the torch module it was made from; ``print(plan)`` shows a table.

    Args:
        layers (dict): {op name: LayerPlan} in execution order (``fpq.plan`` fills it).

    Example:
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int8", weights="e2m1")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> tp = fpq.plan(q)
        >>> lp = tp["0"]                        # by torch module name
        >>> lp.name, lp.op, str(lp.tensors["weight"].format), lp.tensors["product"] is not None
        ('linear_0', 'linear', 'e2m1', True)
        >>> print(tp.table().splitlines()[0])
        layer        op           role         type
    """

    layers: dict = field(default_factory=dict)   # name -> LayerPlan, in execution order

    def add(self, layer: LayerPlan) -> LayerPlan:
        """Append a layer (at the end of the execution order; an existing name is replaced in place).

        Args:
            layer (LayerPlan): the layer to add.

        Returns:
            LayerPlan: ``layer``.
        """
        self.layers[layer.name] = layer
        return layer

    def __getitem__(self, name) -> LayerPlan:
        """The layer ``name``, or the layer made from the torch module ``name`` (``attrs["module"]``;
        the op itself before a requantizer fused into it)."""
        if name in self.layers:
            return self.layers[name]
        found = [lp for lp in self if lp.attrs.get("module") == name and not lp.attrs.get("fused_into")]
        if not found:
            raise KeyError(f"no layer or module named {name!r}; layers: {list(self.layers)}")
        ops = [lp for lp in found if lp.op not in ("quant", "input_quant")] or found
        if len(ops) > 1:   # e.g. one module called twice: the caller must say which call
            raise KeyError(f"module {name!r} made several layers {[lp.name for lp in ops]}; name one of them")
        return ops[0]

    def __iter__(self):
        return iter(self.layers.values())

    def __len__(self):
        return len(self.layers)

    def rows(self):
        """Rows of the table: one per layer and role.

        Returns:
            Iterator[tuple[str, str, str, str]]: (layer name, op, role, type description), roles in the
            order input, other, weight, bias, product, accumulator, output.
        """
        for layer in self:
            for role in sorted(layer.tensors, key=lambda r: ROLES_ORDER.index(r) if r in ROLES_ORDER else 99):
                t = layer.tensors[role]
                yield layer.name, layer.op, role, (t.describe() if isinstance(t, TensorType) else str(t))

    def table(self) -> str:
        """The plan as an aligned text table (layer, op, role, type); ``str(plan)`` is the same.

        Returns:
            str: the table, a header and a dashed line first.
        """
        rows = [("layer", "op", "role", "type")] + list(self.rows())
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    __str__ = table
