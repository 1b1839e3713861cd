"""Softmax (last axis) and LayerNorm (last axis, optional elementwise affine) as exact
fixed-point pipelines: ``FpqSoftmax``, ``FpqLayerNorm``.

The integer recipe is ``fpq.numerics.normalization`` (its docstring says every step and where it
rounds). The layer's input comes from an fpq quantizer (``link_input_quantizers`` finds it), so
the recipe is built from that quantizer's values. In eval mode the forward is the recipe
(int64 torch arithmetic on the input's integer codes, bit-identical to the numpy reference) and
then the layer's output quantizer; in training mode the forward value is the same and the
backward pass is the derivative of torch's float softmax / layer_norm (straight through:
f(x) + (exact - f(x)).detach()); gamma and beta train as float parameters and are quantized
like a weight and a bias (``quantize_affine``) in the forward. While fpq.calibrate records float
activations, torch's float function runs. Export writes one ``FpqSoftmax`` / ``FpqLayerNorm``
node (``fpq.export.custom_op``) holding the recipe.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..formats import parse_format
from ..numerics import normalization as N
from ..numerics.activations import input_values
from .layers import FpqAct, linked_input_quantizer, tensor_type_of

FPQ_DOMAIN = "fpq.export.custom_op"


def _export_fn(op_type: str, attrs: dict, compute):
    """An autograd Function that is one ``op_type`` node (fpq's domain) with ``attrs`` in the
    exported graph (TorchScript export); its forward computes the exact result (with the numpy
    reference: the int64 torch ops of the twin break TorchScript's peephole pass)."""

    def suffix(v):
        if isinstance(v, (list, tuple)):
            return "f" if v and isinstance(v[0], float) else "i"
        return {float: "f", int: "i", str: "s"}[type(v)]

    kw = {f"{k}_{suffix(v)}": v for k, v in attrs.items()}

    class Export(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            # the traced value only shapes the trace (the node replaces it); a minifloat quantizer's
            # export handler may trace values off the grid, which the recipe would refuse
            try:
                return compute(x)
            except ValueError:
                return torch.zeros_like(x)

        @staticmethod
        def symbolic(g, x):
            out = g.op(f"{FPQ_DOMAIN}::{op_type}", x, **kw)
            out.setType(x.type())
            return out

    return Export


class _Pipeline(nn.Module):
    fpq_links_input = True   # link_input_quantizers records the quantizer feeding it

    def __init__(self, fmt, scale_kind):
        super().__init__()
        self.quant = FpqAct(fmt, scale_kind)
        self._cache = {}

    @property
    def fpq_output(self):
        return self.quant.fpq_output

    def _name(self) -> str:
        return self.__dict__.get("fpq_layer_name", type(self).__name__)

    def _who(self) -> str:
        return f"{self.kind} {self._name()!r}"

    def _in_values(self, x):
        tq = linked_input_quantizer(self)
        if tq is None:
            raise ValueError(f"{self._who()}: the quantizer of its input is unknown (fpq.convert links it; an edited "
                             "graph loses the link): convert the model again")
        return tq

    def forward(self, x):
        x = getattr(x, "value", x)
        exporting = torch.onnx.is_in_onnx_export()
        if not exporting:    # (sizes are traced values during export)
            self._check_axis(x)
        tq = self._in_values(x)
        if tq.observer is not None:    # fpq.calibrate: the float network
            return self.quant(self._float(x))
        t = tensor_type_of(tq)
        key = (str(t.format), t.scale.tobytes()) + self._param_key()
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = self._recipe(input_values(t.format, t.scale, self._who()))
        rec = self._cache[key]
        if exporting:
            fn = _export_fn(self.op_type, self._attrs(rec), lambda v: self._exact_numpy(v, rec))
            return self.quant(fn.apply(x))
        y = self._exact(x, rec)
        if self.training:
            f = self._float(x)
            return self.quant(f + (y.to(f.dtype) - f).detach())
        return self.quant(y)

    def _check_axis(self, x):
        pass

    def _param_key(self) -> tuple:
        return ()


class FpqSoftmax(_Pipeline):
    """y = Q_out(softmax(x)) over the last axis, the exact pipeline (module docstring)."""

    fpq_op = "softmax"
    op_type = "FpqSoftmax"
    kind = "softmax"

    def __init__(self, fmt, scale_kind="po2", dim=-1):
        super().__init__(fmt, scale_kind)
        self.dim = dim

    def extra_repr(self):
        return f"dim={self.dim}"

    def _check_axis(self, x):
        if self.dim not in (-1, x.dim() - 1):
            raise ValueError(f"{self._who()}: softmax over dim={self.dim} of a {x.dim()}-d input; fpq's exact softmax "
                             "works over the last axis only (dim=-1): move the axis last first")

    def _float(self, x):
        return torch.softmax(x, -1)

    def _recipe(self, values):
        return N.softmax_recipe(values, self._who())

    def _exact(self, x, rec):
        return N.softmax_torch(x, rec, self._who())

    def _exact_numpy(self, x, rec):
        return torch.from_numpy(N.softmax(x.detach().cpu().numpy(), rec, self._who())).to(x.device)

    def _attrs(self, rec):
        return dict(rec.attrs(), axis=-1)


class FpqLayerNorm(_Pipeline):
    """y = Q_out(layer_norm(x) * gamma + beta) over the last axis, the exact pipeline; gamma and
    beta (``weight`` / ``bias``, None without elementwise affine) quantized to ``weights`` /
    ``bias`` formats."""

    fpq_op = "layernorm"
    op_type = "FpqLayerNorm"
    kind = "LayerNorm"

    def __init__(self, n: int, eps: float, weight, bias, fmt, weights, bias_fmt, scale_kind="po2"):
        super().__init__(fmt, scale_kind)
        self.n, self.eps = int(n), float(eps)
        self.weight = None if weight is None else nn.Parameter(torch.as_tensor(weight, dtype=torch.float32).clone())
        self.bias = None if bias is None else nn.Parameter(torch.as_tensor(bias, dtype=torch.float32).clone())
        self.weights_fmt, self.bias_fmt = str(weights), str(bias_fmt)

    def extra_repr(self):
        return f"{self.n}, eps={self.eps}, affine={self.weight is not None}, weights={self.weights_fmt}, " \
               f"bias={self.bias_fmt}"

    def affine(self):
        """(gamma, beta) as quantized float32 numpy arrays (None where the layer has none)."""
        who = self._who()
        g = None if self.weight is None else N.quantize_affine(self.weight.detach().cpu().numpy(),
                                                               parse_format(self.weights_fmt), who + " gamma")
        b = None if self.bias is None else N.quantize_affine(self.bias.detach().cpu().numpy(),
                                                             parse_format(self.bias_fmt), who + " beta")
        return g, b

    def _param_key(self):
        return tuple(None if p is None else p.detach().cpu().numpy().tobytes() for p in (self.weight, self.bias))

    def _check_axis(self, x):
        if x.shape[-1] != self.n:
            raise ValueError(f"{self._who()}: normalizes {self.n} values but the input's last axis has {x.shape[-1]}")

    def _float(self, x):
        return F.layer_norm(x, (self.n,), self.weight, self.bias, self.eps)

    def _recipe(self, values):
        g, b = self.affine()
        return N.layernorm_recipe(values, self.n, self.eps, g, b, self._who())

    def _exact(self, x, rec):
        return N.layernorm_torch(x, rec, self._who())

    def _exact_numpy(self, x, rec):
        return torch.from_numpy(N.layernorm(x.detach().cpu().numpy(), rec, self._who())).to(x.device)

    def _attrs(self, rec):
        g = np.ldexp(np.asarray(rec.gamma, dtype=np.float64), -rec.gamma_frac).tolist()
        b = np.ldexp(np.asarray(rec.beta, dtype=np.float64), -rec.beta_frac).tolist()
        return dict(rec.attrs(), axis=-1, eps=float(np.float32(self.eps)), gamma=g, beta=b)


def from_module(m: nn.Module, formats: dict, scale_kind: str, who: str) -> nn.Module:
    """The fpq layer of an nn.Softmax / nn.LayerNorm; ``formats``: the layer's resolved formats."""
    if isinstance(m, nn.Softmax):
        if m.dim is None:
            raise ValueError(f"fpq.convert: softmax {who!r} has dim=None (implicit, deprecated in torch); give "
                             "dim=-1 (fpq's exact softmax works over the last axis)")
        return FpqSoftmax(formats["activations"], scale_kind, int(m.dim))
    shape = tuple(m.normalized_shape)
    if len(shape) != 1:
        raise ValueError(f"fpq.convert: LayerNorm {who!r} normalizes over {shape}; fpq's exact LayerNorm works over "
                         "the last axis only (normalized_shape of one int)")
    bias = None if getattr(m, "bias", None) is None else m.bias.detach()
    return FpqLayerNorm(shape[0], m.eps, None if m.weight is None else m.weight.detach(), bias,
                        formats["activations"], formats["weights"], formats["bias"], scale_kind)


def float_module(m: nn.Module) -> nn.Module:
    """The float torch module of an FpqSoftmax / FpqLayerNorm."""
    if isinstance(m, FpqSoftmax):
        return nn.Softmax(m.dim)
    ln = nn.LayerNorm(m.n, m.eps, elementwise_affine=m.weight is not None, bias=m.bias is not None)
    with torch.no_grad():
        if m.weight is not None:
            ln.weight.copy_(m.weight)
        if m.bias is not None:
            ln.bias.copy_(m.bias)
    return ln


__all__ = ["FpqSoftmax", "FpqLayerNorm", "from_module", "float_module"]
