"""Quantized layers: Brevitas quant layers whose eval-mode arithmetic is exact.

Per the exactness contract, in eval mode linear / conv / add / average run in float64 (exact up
to 53 bits; wider linear / conv sums are rounded to odd, see fpq.numerics.wide) and the output quantizer
quantizes that float64 value directly, with no intermediate float32 rounding. Training mode
runs in float32 for speed (the quantizers still produce grid values).
"""
from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch import fx, nn

from brevitas.nn import QuantConv1d, QuantConv2d, QuantIdentity, QuantLinear
from brevitas.quant_tensor import QuantTensor

from ..numerics.wide import exact_bilinear
from ..typeplan import TensorType, wrap
from .quantizers import make_quant, tensor_quant_of


def _value(t):
    return t.value if isinstance(t, QuantTensor) else t


class _ExactWBIOL:
    """Mixin for Brevitas weight layers: float64 arithmetic in eval mode, and the optional
    narrow wrapping accumulator (``fpq_accumulator_bits``, see fpq.typeplan.narrow_accumulator)."""

    fpq_accumulator_bits = None   # set per layer by fpq.convert(accumulator_bits=...)
    fpq_wrap_off = False          # True while fpq.calibrate records unquantized activations

    def inner_forward_impl(self, x, quant_weight, quant_bias):
        x, w, b = _value(x), _value(quant_weight), _value(quant_bias)
        acc = self._narrow_accumulator()
        if self.training:
            y = super().inner_forward_impl(x, w, b)
            # the hardware's wrap in the forward pass, straight through in the backward pass
            return y if acc is None else y + (wrap(y.detach().to(torch.float64), acc).to(y.dtype) - y.detach())
        x, w = x.to(torch.float64), w.to(torch.float64)
        b = None if b is None else b.to(torch.float64)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            y = super().inner_forward_impl(x, w, b)  # the exported graph holds the plain op
            return y if acc is None else wrap(y, acc)   # (and the wrap as Add / Div / Floor / Mul / Sub)
        k = block_size_of(self)
        if k is not None and self.fpq_op == "linear" and x.dim() == 2:
            # block-scaled formats: the exact block sum (fpq.numerics.block_dot), rounded to odd at
            # 53 bits as the emulator's; a plain float64 matmul is exact only for some scale exponents
            from ..numerics.block_dot import block_linear
            y = block_linear(x, w, b, k)[0]
            return y if acc is None else wrap(y, acc)
        if k is not None and self.fpq_op in ("conv1d", "conv2d"):
            # a block-scaled conv: blocks of input channels per kernel tap (fpq.numerics.block_conv)
            from ..numerics.block_conv import block_conv, conv_attrs
            nd = x.dim() - 2
            pads = tuple(self.padding) * 2 if not isinstance(self.padding, str) else None
            if pads is None:
                raise ValueError(f"{type(self).__name__}: padding={self.padding!r}; block-scaled convolutions take "
                                 "integer padding")
            y = block_conv(x, w, b, conv_attrs(self.kernel_size[:nd], self.stride, pads, self.dilation,
                                               self.groups), k)[0]
            return y if acc is None else wrap(y, acc)
        # a sum wider than 53 bits (e5m2 x e5m2) is summed in pieces and rounded to odd, which the
        # output quantizer then rounds as it would the exact sum (fpq.numerics.wide)
        parent = super()
        bias_shape = None if self.fpq_op == "linear" else (-1,) + (1,) * (x.dim() - 2)
        y, _ = exact_bilinear(lambda a, c: parent.inner_forward_impl(a, c, None), x, w, b,
                              fan_in=w[0].numel(), bias_shape=bias_shape, x_bound=self._input_bound())
        return y if acc is None else wrap(y, acc)

    def _narrow_accumulator(self):
        """The WRAP accumulator type when ``fpq_accumulator_bits`` narrows this layer's exact one,
        else None. Needs the input's quantizer (linked by fpq.convert) to know the product grid."""
        bits = self.fpq_accumulator_bits
        if bits is None or self.fpq_wrap_off:
            return None
        from ..typeplan import LayerPlan
        t_in = self._input_type()
        if t_in is None or not t_in.po2:
            raise ValueError(f"{type(self).__name__}: accumulator_bits={bits} needs a power-of-two scaled input "
                             "quantizer right before the layer (the product grid sets the accumulator's LSB)")
        with torch.no_grad():
            tensors = {"input": t_in, "weight": tensor_type_of(self.fpq_weight)}
            if self.fpq_bias is not None:
                tensors["bias"] = tensor_type_of(self.fpq_bias)
        name = self.__dict__.get("fpq_layer_name", type(self).__name__)
        exact = LayerPlan(name, self.fpq_op, dict(tensors), self.weight[0].numel()).derive().tensors["accumulator"]
        if exact.width > 53 and bits < exact.width:
            raise ValueError(f"layer {name!r}: accumulator_bits={bits}: its exact sum needs {exact.width} bits, more "
                             "than the 53 that float64 holds exactly, so its wrap cannot be computed exactly here")
        acc = LayerPlan(name, self.fpq_op, tensors, self.weight[0].numel(), attrs={"accumulator_bits": bits}
                        ).derive().tensors["accumulator"]
        return None if acc == exact else acc

    def fit_bias_to_products(self) -> None:
        """With a narrow accumulator, a scaled bias finer than the products takes the products'
        LSB as its scale (the bias is rounded onto the grid the accumulator keeps, its range only
        grows). Fixed bias formats carry their own scaling and are left as they are (a finer one
        is then refused by _narrow_accumulator, naming the fix)."""
        tb = self.fpq_bias
        t_in = self._input_type()
        if self.fpq_accumulator_bits is None or tb is None or tb.scale_kind == "none" or t_in is None \
                or not t_in.po2:
            return
        with torch.no_grad():
            bt, wt = tensor_type_of(tb), tensor_type_of(self.fpq_weight)
            if not (bt.po2 and wt.po2):
                return
            p_frac = t_in.carrier().frac_bits + wt.carrier().frac_bits
            extra = bt.carrier().frac_bits - p_frac      # fractional bits finer than the products
            if extra > 0:
                tb.set_scale(tb.scale().detach().double() * 2.0 ** extra)

    fpq_links_input = True   # link_input_quantizers records the quantizer feeding it

    def _input_type(self):
        return linked_input_type(self)

    def _input_bound(self):
        """(top, bottom) bounding every input value, from the fpq quantizer that produced the input,
        so the eval forward need not read the data to know that one float64 sum is exact; None
        when unknown (the data is then examined)."""
        t = self._input_type()
        try:
            carrier = None if t is None else t.carrier()
        except ValueError:  # no exact carrier (a float scale)
            return None
        return None if carrier is None else (carrier.int_bits, carrier.int_bits - carrier.width)

    # the fpq tensor quantizers (None when the role is not quantized)
    @property
    def fpq_weight(self):
        return tensor_quant_of(self.weight_quant)

    @property
    def fpq_bias(self):
        return tensor_quant_of(self.bias_quant) if self.bias is not None else None

    @property
    def fpq_output(self):
        return tensor_quant_of(self.output_quant)


def block_size_of(module) -> int | None:
    """The block size a linear layer's exact block sum normalizes by (fpq.numerics.block_dot): the
    gcd of its weight's and its input's block format block sizes; None when neither is a block format."""
    import math

    from ..formats import BlockFormat
    tx = linked_input_quantizer(module)
    if tx is not None and tx.observer is not None:
        return None   # fpq.calibrate records unquantized inputs: the plain eval path
    ks = [t.fmt.k for t in (module.fpq_weight, tx) if t is not None and isinstance(getattr(t, "fmt", None), BlockFormat)]
    return math.gcd(*ks) if ks else None


def linked_input_quantizer(module):
    """The fpq tensor quantizer that produced ``module``'s input (see link_input_quantizers), None
    when unknown."""
    link = module.__dict__.get("_fpq_input_link")
    if link is None:
        return None
    ref, code, src, chain = link
    root = ref()
    if root is None or root.code != code:  # the graph changed since the link was made
        return None
    try:
        tq = root.get_submodule(src).fpq_output
        if tq is None or not all(isinstance(root.get_submodule(c), _VALUE_PRESERVING) for c in chain):
            return None
        return tq
    except AttributeError:  # no such module any more
        return None


def linked_input_type(module):
    """TensorType of the fpq quantizer that produced ``module``'s input, None when unknown."""
    tq = linked_input_quantizer(module)
    if tq is None:
        return None
    with torch.no_grad():
        return tensor_type_of(tq)


def tensor_type_of(tq) -> TensorType:
    """The TensorType (format and current scale) of an fpq tensor quantizer."""
    with torch.no_grad():
        return TensorType(tq.fmt, tq.scale().detach().to(torch.float32).cpu().numpy())


class FpqLinear(_ExactWBIOL, QuantLinear):
    """A quantized Linear, exact on every path.

    Built by ``fpq.convert`` from a torch ``nn.Linear`` (the constructor is Brevitas' ``QuantLinear``, with
    fpq's quantizers); in eval mode it computes in float64 so that its sum is exact, and
    ``fpq_accumulator_bits`` narrows its accumulator (wrapping) when ``fpq.convert`` is given
    ``accumulator_bits``.

    Example:
        >>> import torch, fpq
        >>> from fpq.nn import FpqLinear
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int8")
        >>> isinstance(q.get_submodule("0"), FpqLinear)
        True
    """

    fpq_op = "linear"


class FpqConv1d(_ExactWBIOL, QuantConv1d):
    """A quantized Conv1d, exact on every path.

    Built by ``fpq.convert`` from a torch ``nn.Conv1d`` (the constructor is Brevitas' ``QuantConv1d``, with
    fpq's quantizers); in eval mode it computes in float64 so that its sum is exact, and
    ``fpq_accumulator_bits`` narrows its accumulator (wrapping) when ``fpq.convert`` is given
    ``accumulator_bits``.

    Example:
        >>> import torch, fpq
        >>> from fpq.nn import FpqConv1d
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3)), fmt="int8")
        >>> isinstance(q.get_submodule("0"), FpqConv1d)
        True
    """

    fpq_op = "conv1d"


class FpqConv2d(_ExactWBIOL, QuantConv2d):
    """A quantized Conv2d, exact on every path.

    Built by ``fpq.convert`` from a torch ``nn.Conv2d`` (the constructor is Brevitas' ``QuantConv2d``, with
    fpq's quantizers); in eval mode it computes in float64 so that its sum is exact, and
    ``fpq_accumulator_bits`` narrows its accumulator (wrapping) when ``fpq.convert`` is given
    ``accumulator_bits``.

    Example:
        >>> import torch, fpq
        >>> from fpq.nn import FpqConv2d
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3)), fmt="int8")
        >>> isinstance(q.get_submodule("0"), FpqConv2d)
        True
    """

    fpq_op = "conv2d"


class FpqAct(QuantIdentity):
    """An activation quantizer (network input, or requantization after add / pool / clamp).

    Args:
        fmt: the activation's Format or format string.
        scale_kind: "po2", "float" or "none" (fpq.nn.make_quant).

    Example:
        >>> import torch
        >>> from fpq.nn import FpqAct
        >>> act = FpqAct("int8").eval()
        >>> act(torch.tensor([1.2, -3.0])).tolist()
        [1.0, -3.0]
    """

    fpq_op = "quant"

    def __init__(self, fmt, scale_kind="po2"):
        super().__init__(act_quant=make_quant(fmt, "act", scale_kind), return_quant_tensor=False)

    @property
    def fpq_output(self):
        """The fpq tensor quantizer of the activation's output."""
        return tensor_quant_of(self.act_quant)


class FpqInput(FpqAct):
    """The explicit input quantizer, first op of every converted network.

    Args:
        fmt: the input's Format or format string.
        scale_kind: "po2", "float" or "none".

    Example:
        >>> from fpq.nn import FpqInput
        >>> FpqInput("int8").fpq_op
        'input'
    """

    fpq_op = "input"


class FpqAdd(nn.Module):
    """Residual add: exact sum (float64 in eval) then the activation quantizer.

    Args:
        fmt: the sum's Format or format string.
        scale_kind: "po2", "float" or "none".

    Example:
        >>> import torch
        >>> from fpq.nn import FpqAdd
        >>> add = FpqAdd("int8").eval()
        >>> add(torch.tensor([1.0]), torch.tensor([0.3])).tolist()
        [1.0]
    """

    fpq_op = "add"

    def __init__(self, fmt, scale_kind="po2"):
        super().__init__()
        self.quant = FpqAct(fmt, scale_kind)

    def forward(self, a, b):
        """The quantized sum ``a + b``.

        Args:
            a: a tensor (or Brevitas QuantTensor).
            b: a tensor of a shape that broadcasts with ``a``.
        """
        a, b = _value(a), _value(b)
        if not self.training:
            a, b = a.to(torch.float64), b.to(torch.float64)
        return self.quant(a + b)

    @property
    def fpq_output(self):
        """The fpq tensor quantizer of the sum."""
        return self.quant.fpq_output


class FpqAvgPool(nn.Module):
    """Average pooling (AvgPool1d/2d, AdaptiveAvgPool to 1) then the activation quantizer.

    In eval mode the window sum is exact in float64 and the mean is ONE correctly rounded
    float64 division by the window size, so an exact tie of the next quantizer stays a tie
    (torch's own float64 average may multiply by a rounded reciprocal instead). Windows must
    have a constant size: no ceil_mode, and padding only with count_include_pad=True.

    Args:
        pool: the torch pooling module (AvgPool1d / AvgPool2d / AdaptiveAvgPool1d / 2d to 1).
        fmt: the output's Format or format string.
        scale_kind: "po2", "float" or "none".

    Raises:
        ValueError: an AvgPool with ceil_mode, divisor_override or count_include_pad=False and padding.

    Example:
        >>> import torch; from fpq.nn import FpqAvgPool
        >>> pool = FpqAvgPool(torch.nn.AvgPool2d(2), "int8").eval()
        >>> pool.exact_mean(torch.arange(4.0, dtype=torch.float64).reshape(1, 1, 2, 2)).item()
        1.5
    """

    fpq_op = "avgpool"

    def __init__(self, pool: nn.Module, fmt, scale_kind="po2"):
        super().__init__()
        if isinstance(pool, (nn.AvgPool1d, nn.AvgPool2d)):
            pad = pool.padding if isinstance(pool.padding, tuple) else (pool.padding,)
            if pool.ceil_mode or (any(pad) and not pool.count_include_pad) or \
                    getattr(pool, "divisor_override", None) is not None:
                raise ValueError("AvgPool with ceil_mode, divisor_override or count_include_pad=False "
                                 "has windows of varying size: not supported")
        self.pool = pool
        self.quant = FpqAct(fmt, scale_kind)

    def window(self) -> int | None:
        """Number of elements averaged (None: the whole spatial extent).

        Returns:
            int | None: the window size.
        """
        p = self.pool
        if isinstance(p, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            return None
        k = p.kernel_size if isinstance(p.kernel_size, tuple) else (p.kernel_size,) * (1 if isinstance(p, nn.AvgPool1d) else 2)
        n = 1
        for v in k:
            n *= v
        return n

    def exact_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The window mean computed exactly: the window sum (exact in float64), then one division.

        Args:
            x: the float64 input.

        Returns:
            torch.Tensor: the float64 window means.
        """
        p = self.pool
        if isinstance(p, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            dims = (-1,) if isinstance(p, nn.AdaptiveAvgPool1d) else (-2, -1)
            count = 1
            for d in dims:
                count *= x.shape[d]
            return x.sum(dim=dims, keepdim=True) / count
        if isinstance(p, nn.AvgPool1d):
            s = F.avg_pool2d(x.unsqueeze(-2), (1, p.kernel_size[0]), (1, p.stride[0]), (0, p.padding[0]),
                             divisor_override=1).squeeze(-2)
        else:
            s = F.avg_pool2d(x, p.kernel_size, p.stride, p.padding, divisor_override=1)
        return s / self.window()

    def forward(self, x):
        """The quantized window means.

        Args:
            x: the input tensor (or Brevitas QuantTensor).
        """
        x = _value(x)
        if self.training:
            return self.quant(self.pool(x))
        return self.quant(self.exact_mean(x.to(torch.float64)))

    @property
    def fpq_output(self):
        """The fpq tensor quantizer of the pooled output."""
        return self.quant.fpq_output


class FpqClamp(nn.Module):
    """ReLU6 / Hardtanh / clamp: clamp (exact) then the activation quantizer (a bound may be off-grid).

    The bounds are kept as float32 numbers (None: no bound): a float model clamps its float32
    activations with the float32 rounding of a bound such as Hardtanh's 1.3, and the exported
    Clip, the emulator and the HLS project use that same number (fpq's eval forward runs in
    float64, where 1.3 itself would be another bound).

    Args:
        min_val: the lower bound (None: none).
        max_val: the upper bound (None: none).
        fmt: the output's Format or format string.
        scale_kind: "po2", "float" or "none".

    Raises:
        ValueError: ``min_val > max_val``.

    Example:
        >>> import torch
        >>> from fpq.nn import FpqClamp
        >>> relu6 = FpqClamp(0.0, 6.0, "uint8").eval()
        >>> relu6(torch.tensor([-1.0, 7.0, 2.1])).tolist()
        [0.0, 6.0, 2.0]
    """

    fpq_op = "clip"

    def __init__(self, min_val, max_val, fmt, scale_kind="po2"):
        super().__init__()
        self.min_val, self.max_val = _float32_bound(min_val), _float32_bound(max_val)
        if self.min_val is not None and self.max_val is not None and self.min_val > self.max_val:
            raise ValueError(f"clamp bounds min={min_val} > max={max_val}")
        self.quant = FpqAct(fmt, scale_kind)

    def forward(self, x):
        """The quantized clamp of ``x``.

        Args:
            x: the input tensor (or Brevitas QuantTensor).
        """
        return self.quant(torch.clamp(_value(x), self.min_val, self.max_val))

    @property
    def fpq_output(self):
        """The fpq tensor quantizer of the clamped output."""
        return self.quant.fpq_output

    def extra_repr(self):
        return f"min={self.min_val}, max={self.max_val}"


def _float32_bound(v):
    """A clamp bound as the float32 number float32 tensors clamp with (None or +-inf: no bound)."""
    if v is None or abs(float(v)) == float("inf"):
        return None
    if float(v) != float(v):
        raise ValueError("a clamp bound is NaN")
    f = float(torch.tensor(float(v), dtype=torch.float32))
    if abs(f) == float("inf"):
        raise ValueError(f"clamp bound {v!r} overflows float32")
    return f


def quant_layer(module: nn.Module, weights, bias, output, scale_kind: str, granularity: str):
    """The fpq twin of a float Linear / Conv1d / Conv2d, with the same float parameters."""
    channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    wch = channels if granularity == "channel" else 0
    kw = dict(weight_quant=make_quant(weights, "weight", scale_kind, wch),
              bias_quant=make_quant(bias, "bias", scale_kind) if module.bias is not None else None,
              output_quant=make_quant(output, "act", scale_kind),
              return_quant_tensor=False,
              device=module.weight.device, dtype=module.weight.dtype)
    has_bias = module.bias is not None
    if isinstance(module, nn.Linear):
        new = FpqLinear(module.in_features, module.out_features, bias=has_bias, **kw)
    else:
        if module.padding_mode != "zeros":
            raise ValueError(f"padding_mode={module.padding_mode!r} is not supported (only 'zeros')")
        from .block_axes import conv_block_weights
        kw["weight_quant"] = make_quant(conv_block_weights(module, weights), "weight", scale_kind, wch)
        cls = FpqConv1d if isinstance(module, nn.Conv1d) else FpqConv2d
        new = cls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                  padding=module.padding, dilation=module.dilation, groups=module.groups,
                  bias=has_bias, **kw)
    with torch.no_grad():
        new.weight.copy_(module.weight)
        if has_bias:
            new.bias.copy_(module.bias)
    init_param_scales(new)
    return new


@torch.no_grad()
def init_param_scales(layer, method: str = "max") -> None:
    """Weight / bias scales from the parameters (max |w|; Binary weights: mean |w|)."""
    from ..formats import Binary
    from .calibration_stats import choose_scale

    for tq, p in ((layer.fpq_weight, layer.weight), (layer.fpq_bias, layer.bias)):
        if tq is None or p is None or tq.scale_kind == "none":
            continue
        a = p.detach().abs().to(torch.float64)
        if tq.channels:
            a = a.reshape(tq.channels, -1)
            if isinstance(tq.fmt, Binary):
                tq.init_from_max(a.mean(1))  # qmax = 1: the scale is mean |w| (XNOR-Net)
            else:
                tq.set_scale(torch.stack([choose_scale(tq, row, method) for row in a]))
        else:
            if isinstance(tq.fmt, Binary):
                tq.init_from_max(a.mean())
            else:
                tq.set_scale(choose_scale(tq, a.reshape(-1), method))


@contextlib.contextmanager
def exportable_weights(model: nn.Module):
    """Within the block, every weight whose quantizer defines ``export_weight(w)`` holds that value.

    Some quantizers map a latent float weight in a way QONNX's nodes cannot (BiPer's square wave,
    K-hot rounding); ``export_weight`` gives an equivalent latent weight that the exported plain
    BipolarQuant / Quant node maps to the same quantized value. The trained weights come back after.
    """
    saved = []
    try:
        for m in model.modules():
            tq = getattr(m, "fpq_weight", None)
            if tq is not None and hasattr(tq, "export_weight"):
                saved.append((m, m.weight.detach().clone()))
                with torch.no_grad():
                    m.weight.copy_(tq.export_weight(m.weight))
        yield model
    finally:
        with torch.no_grad():
            for m, w in saved:
                m.weight.copy_(w)


# Ops between a quantizer and a weight layer that output a subset of their input values.
_VALUE_PRESERVING = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity, nn.Upsample)
_VALUE_PRESERVING_FUNCTIONS = {torch.flatten, torch.relu, F.relu, F.max_pool1d, F.max_pool2d, torch.reshape}
_VALUE_PRESERVING_METHODS = {"flatten", "view", "reshape", "relu"}


def input_sources(root: fx.GraphModule) -> dict:
    """{weight / table layer name: (name of the module whose fpq quantizer produced its input, names of the
    value-preserving modules in between)}, following the graph back through value-preserving ops
    only (ReLU, max pooling, flatten / reshape, dropout); layers whose input comes from anything
    else are left out."""
    modules = dict(root.named_modules())
    out = {}
    for node in root.graph.nodes:
        layer = modules.get(node.target) if node.op == "call_module" else None
        if not getattr(layer, "fpq_links_input", False):
            continue
        src, chain = node.args[0] if node.args else None, []
        while isinstance(src, fx.Node):
            if src.op == "call_module" and getattr(modules[src.target], "fpq_output", None) is not None:
                out[node.target] = (src.target, tuple(chain))
                break
            if src.op == "call_module" and isinstance(modules[src.target], _VALUE_PRESERVING):
                chain.append(src.target)
            elif not ((src.op == "call_function" and src.target in _VALUE_PRESERVING_FUNCTIONS) or
                      (src.op == "call_method" and src.target in _VALUE_PRESERVING_METHODS)):
                break
            src = src.args[0]
    return out


def link_input_quantizers(root: fx.GraphModule) -> None:
    """Record, on each weight layer, which fpq quantizer produced its input (``input_sources``),
    so that its eval forward knows the input grid without a pass over the data. The link is
    checked against the graph's code on every use: an edited graph drops it."""
    sources = input_sources(root)
    for name, layer in root.named_modules():
        if getattr(layer, "fpq_links_input", False):
            found = sources.get(name)
            layer.__dict__["_fpq_input_link"] = None if found is None else (weakref.ref(root), root.code) + found
