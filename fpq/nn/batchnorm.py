"""Element-wise (unfolded) BatchNorm, quantized as QFX does: y = Q_out(x * s + t).

A BatchNorm that ``fpq.convert`` does not fold into the Conv / Linear before it (it follows a
ReLU, an add, the network input, ... or ``batchnorm="keep"`` was asked) becomes an
``FpqBatchNorm``: its inference form, a per-channel scale ``s = gamma / sqrt(var + eps)`` and
shift ``t = beta - mean * s``, each quantized per channel by an fpq quantizer (``s`` with the
policy's weight format, role "weight"; ``t`` with its bias format, role "bias"), and the output
quantized by the activation format. The layer is Brevitas' ``QuantScaleBias`` (so the QONNX
export writes Quant(s) -> Mul, Quant(t) -> Add, then the output Quant), with fpq's exact eval
arithmetic: the product and the sum in float64, or summed in pieces and rounded to odd when
wider than 53 bits (``fpq.numerics.wide``), exactly as the Linear / Conv layers do.
"""
from __future__ import annotations

import torch
from torch import nn

from brevitas.nn import QuantScaleBias

from ..numerics.wide import exact_bilinear
from .layers import _ExactWBIOL, _value, init_param_scales
from ..formats import parse_format
from .quantizers import default_scale_kind, make_quant


def _shape(x: torch.Tensor) -> tuple:
    """Broadcast layout of a per-channel constant for a channels-first tensor like ``x``."""
    return (1, -1) + (1,) * (x.dim() - 2)


class FpqBatchNorm(_ExactWBIOL, QuantScaleBias):
    """y = Q_out(x * Q_w(s) + Q_b(t)) with channel dim 1 of x; ``weight`` = s, ``bias`` = t.

    Args:
        num_features: the number of channels.
        weights: the Format (or string) of the scale s.
        bias: the Format of the shift t.
        output: the Format of the output.
        scale_kind: "po2", "float" or "none".
        dims: 1 for a BatchNorm1d, 2 for a BatchNorm2d (the way back to a float model).
        device: torch device of the parameters.
        dtype: torch dtype of the parameters.

    Example:
        >>> import torch
        >>> from fpq.nn import FpqBatchNorm
        >>> bn = FpqBatchNorm(2, "int8", "int16", "int8", dims=1).eval()   # s = 1, t = 0
        >>> bn(torch.tensor([[1.0, -2.0]])).tolist()
        [[1.0, -2.0]]
    """

    fpq_op = "batchnorm"

    def __init__(self, num_features: int, weights, bias, output, scale_kind: str = "po2", dims: int = 2,
                 device=None, dtype=None):
        def channels(fmt):  # a Fixed format carries its own scaling: one scale, no channels
            return 0 if default_scale_kind(parse_format(fmt), scale_kind) == "none" else num_features

        super().__init__(num_features, bias=True,
                         weight_quant=make_quant(weights, "weight", scale_kind, channels(weights)),
                         bias_quant=make_quant(bias, "bias", scale_kind, channels(bias)),
                         output_quant=make_quant(output, "act", scale_kind),
                         return_quant_tensor=False, device=device, dtype=dtype)
        self.dims = int(dims)   # 1: BatchNorm1d, 2: BatchNorm2d (for the way back to a float model)

    def inner_forward_impl(self, x, quant_weight, quant_bias):
        """Brevitas' layer hook: ``x * s + t`` per channel, exact in float64 in eval mode.

        Args:
            x: the layer input.
            quant_weight: the quantized per-channel scale s.
            quant_bias: the quantized per-channel shift t.
        """
        x, w, b = _value(x), _value(quant_weight), _value(quant_bias)
        shape = _shape(x)
        if self.training:
            return x * w.view(shape) + b.view(shape)
        x, w, b = x.to(torch.float64), w.to(torch.float64), b.to(torch.float64)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return x * w.view(shape) + b.view(shape)   # the exported graph holds Mul + Add
        # one product and one add per element: exact in float64 up to 53 bits, wider sums are
        # rounded to odd (the output quantizer then rounds as it would the exact value)
        y, _ = exact_bilinear(lambda a, c: a * c.view(shape), x, w, b, fan_in=1, bias_shape=shape,
                              x_bound=self._input_bound())
        return y

    def extra_repr(self):
        return f"{self.num_features}, dims={self.dims}"


@torch.no_grad()
def from_batchnorm(bn: nn.Module, weights, bias, output, scale_kind: str = "po2") -> FpqBatchNorm:
    """The FpqBatchNorm of a float BatchNorm1d / 2d in eval mode (running statistics)."""
    if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
        raise TypeError(f"expected a BatchNorm1d / BatchNorm2d, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics (track_running_stats=False) normalizes "
                         "with batch statistics at inference: not supported")
    C = bn.num_features
    gamma = bn.weight.to(torch.float64) if bn.weight is not None else torch.ones(C, dtype=torch.float64)
    beta = bn.bias.to(torch.float64) if bn.bias is not None else torch.zeros(C, dtype=torch.float64)
    s = gamma / torch.sqrt(bn.running_var.to(torch.float64) + bn.eps)
    t = beta - bn.running_mean.to(torch.float64) * s
    new = FpqBatchNorm(C, weights, bias, output, scale_kind, dims=1 if isinstance(bn, nn.BatchNorm1d) else 2,
                       device=bn.running_mean.device, dtype=torch.float32)
    new.weight.copy_(s.to(torch.float32))
    new.bias.copy_(t.to(torch.float32))
    init_param_scales(new)
    return new


def to_batchnorm(m: FpqBatchNorm) -> nn.Module:
    """A float BatchNorm computing x * s + t with m's float (latent) s and t (mean 0, var 1, eps 0)."""
    cls = nn.BatchNorm1d if m.dims == 1 else nn.BatchNorm2d
    bn = cls(m.num_features, eps=0.0)
    with torch.no_grad():
        bn.weight.copy_(m.weight)
        bn.bias.copy_(m.bias)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
    return bn.eval()
