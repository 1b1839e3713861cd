"""Nonlinear activations (Sigmoid, Tanh, SiLU, GELU, Hardswish, ELU, Softplus, LeakyReLU, PReLU,
...) as exact tables: ``FpqTable``.

The activation's input comes from an fpq quantizer (``link_input_quantizers`` finds it), so it
takes only that quantizer's values. In eval mode the forward looks each input up in the table
of fpq's numpy reference (``fpq.numerics.activations``: f in float64 on every input value) and
the layer's output quantizer rounds it: Q_out(f(x)), the same numbers as the emulator, the QONNX
``FpqTable`` node (exported with its table already rounded by Q_out) and the HLS project. In
training mode the forward value is the same table value and the backward pass is the true
derivative of torch's float function (f(x) + (table - f(x)).detach()). While fpq.calibrate
records float activations (the input quantizer passes its input through unquantized) the
float function of torch is used, as the input is then off the grid.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..numerics.activations import FUNCTIONS, check_table_input, describe, function_values, input_values
from .layers import FpqAct, linked_input_quantizer, tensor_type_of

FPQ_DOMAIN = "fpq.export.custom_op"   # the Python module holding FpqTable's qonnx executor

# torch's float functions (training's derivative, calibration's float network)
_TORCH = {
    "sigmoid": lambda x, p, w: torch.sigmoid(x), "tanh": lambda x, p, w: torch.tanh(x),
    "silu": lambda x, p, w: F.silu(x), "hardswish": lambda x, p, w: F.hardswish(x),
    "hardsigmoid": lambda x, p, w: F.hardsigmoid(x), "gelu": lambda x, p, w: F.gelu(x),
    "gelu_tanh": lambda x, p, w: F.gelu(x, approximate="tanh"),
    "elu": lambda x, p, w: F.elu(x, p["alpha"]),
    "softplus": lambda x, p, w: F.softplus(x, p["beta"], p["threshold"]),
    "leaky_relu": lambda x, p, w: F.leaky_relu(x, p["negative_slope"]),
    "prelu": lambda x, p, w: F.prelu(x, w.to(x.dtype)),
}


def table_spec(m: nn.Module):
    """(function name, params, PReLU weight or None) of a torch activation module, or None when
    ``m`` is not one fpq builds as a table."""
    if isinstance(m, nn.Sigmoid):
        return "sigmoid", {}, None
    if isinstance(m, nn.Tanh):
        return "tanh", {}, None
    if isinstance(m, nn.SiLU):
        return "silu", {}, None
    if isinstance(m, nn.Hardswish):
        return "hardswish", {}, None
    if isinstance(m, nn.Hardsigmoid):
        return "hardsigmoid", {}, None
    if isinstance(m, nn.GELU):
        return ("gelu_tanh" if m.approximate == "tanh" else "gelu"), {}, None
    if isinstance(m, nn.ELU):
        return "elu", {"alpha": float(m.alpha)}, None
    if isinstance(m, nn.Softplus):
        return "softplus", {"beta": float(m.beta), "threshold": float(m.threshold)}, None
    if isinstance(m, nn.LeakyReLU):
        return "leaky_relu", {"negative_slope": float(m.negative_slope)}, None
    if isinstance(m, nn.PReLU):
        return "prelu", {}, m.weight.detach().clone()
    return None


def _export_table(xs: list, ys: list, function: str, channels: int):
    """An autograd Function that is the table lookup as one ``FpqTable`` node in the exported graph
    (TorchScript export); the table is captured here (the exporter passes only tensors through)
    and written as the node's float attributes."""

    class ExportTable(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            xs_t = torch.tensor(xs, dtype=torch.float64, device=x.device)
            ys_t = torch.tensor(ys, dtype=torch.float64, device=x.device)
            ys_t = ys_t.view(channels, -1) if channels > 1 else ys_t
            idx = torch.searchsorted(xs_t, x.to(torch.float64).contiguous()).clamp(0, xs_t.numel() - 1)
            return _gather(ys_t, idx).to(torch.float32)

        @staticmethod
        def symbolic(g, x):
            out = g.op(f"{FPQ_DOMAIN}::FpqTable", x, x_values_f=xs, y_values_f=ys, function_s=function,
                       channels_i=int(channels))
            out.setType(x.type())
            return out

    return ExportTable


def _gather(ys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if ys.dim() == 1:
        return ys[idx]
    c = torch.arange(ys.shape[0], device=idx.device).view((-1,) + (1,) * (idx.dim() - 2))
    return ys[c, idx]


class FpqTable(nn.Module):
    """y = Q_out(f(x)) with f a table over every value of the input's quantizer (see the module
    docstring). ``function``: a name of ``fpq.numerics.activations.FUNCTIONS``; ``params`` its
    parameters; ``weight``: PReLU's slopes (a parameter, one per channel or one)."""

    fpq_op = "table"
    fpq_links_input = True   # link_input_quantizers records the quantizer feeding it

    def __init__(self, function: str, params: dict, fmt, scale_kind="po2", weight=None):
        super().__init__()
        if function not in FUNCTIONS:
            raise ValueError(f"unknown table function {function!r}; allowed: {', '.join(FUNCTIONS)}")
        self.function, self.params = function, dict(params)
        self.weight = None if weight is None else nn.Parameter(torch.as_tensor(weight, dtype=torch.float32).clone())
        self.quant = FpqAct(fmt, scale_kind)
        self._cache = {}

    @property
    def fpq_output(self):
        return self.quant.fpq_output

    def extra_repr(self):
        return describe(self.function, self.params)

    def _name(self) -> str:
        return self.__dict__.get("fpq_layer_name", f"{type(self).__name__}({self.extra_repr()})")

    def table(self, in_type, device=None):
        """(xs, f(xs)) float64 tensors for the input TensorType ``in_type`` (cached per format,
        scale, parameters and device)."""
        slopes = None if self.weight is None else self.weight.data.cpu().numpy().astype(np.float32)
        key = (str(in_type.format), in_type.scale.tobytes(), None if slopes is None else slopes.tobytes(), str(device))
        if key not in self._cache:
            who = f"activation {self._name()}"
            check_table_input(in_type.format, who, 1 if slopes is None else slopes.size)
            xs = input_values(in_type.format, in_type.scale, who)
            fx = function_values(self.function, self.params, xs, slopes)
            self._cache.clear()
            self._cache[key] = (torch.from_numpy(xs).to(device), torch.from_numpy(np.ascontiguousarray(fx)).to(device))
        return self._cache[key]

    def _float(self, x):
        return _TORCH[self.function](x, self.params, self.weight)

    def _lookup(self, xs, fx, x):
        x64 = x.detach().to(torch.float64).contiguous()
        idx = torch.searchsorted(xs, x64).clamp(0, xs.numel() - 1)
        if not torch.equal(xs[idx], x64):
            bad = x64[xs[idx] != x64].reshape(-1)[0].item()
            raise ValueError(f"activation {self._name()}: input {bad!r} is not a value of its input quantizer "
                             "(the table covers that quantizer's values only)")
        if fx.dim() == 2 and fx.shape[0] > 1 and (x.dim() < 2 or x.shape[1] != fx.shape[0]):
            raise ValueError(f"activation {self._name()}: {fx.shape[0]} slopes but the input has shape "
                             f"{tuple(x.shape)} (channels on axis 1)")
        if fx.dim() == 2 and fx.shape[0] == 1:
            fx = fx[0]
        return _gather(fx, idx)

    def forward(self, x):
        x = getattr(x, "value", x)
        tq = linked_input_quantizer(self)
        if tq is None:
            raise ValueError(f"activation {self._name()}: the quantizer of its input is unknown (fpq.convert links "
                             "it; an edited graph loses the link): convert the model again")
        if tq.observer is not None:    # fpq.calibrate: the float network
            return self.quant(self._float(x.to(torch.float64) if not self.training else x))
        xs, fx = self.table(tensor_type_of(tq), x.device)
        if torch.onnx.is_in_onnx_export():
            t = tensor_type_of(self.quant.fpq_output)
            from ..numerics import apply_scaled
            ys = apply_scaled(fx.cpu().numpy(), t.format, t.scale)    # Q_out(f(x)): the node's table
            ys = np.asarray(ys, dtype=np.float64)   # numpy sizes: tensor sizes are traced values here
            fn = _export_table(xs.cpu().tolist(), ys.ravel().tolist(), describe(self.function, self.params),
                               1 if ys.ndim == 1 else int(ys.shape[0]))
            y = fn.apply(x)
            return self.quant(y)
        y = self._lookup(xs, fx, x)
        if self.training:
            f = self._float(x)
            return self.quant(f + (y.to(f.dtype) - f).detach())
        return self.quant(y)


def float_module(m: FpqTable) -> nn.Module:
    """The float torch module of a table layer (``fpq.convert`` of a converted model starts from it)."""
    f, p = m.function, m.params
    simple = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "silu": nn.SiLU, "hardswish": nn.Hardswish,
              "hardsigmoid": nn.Hardsigmoid}
    if f in simple:
        return simple[f]()
    if f in ("gelu", "gelu_tanh"):
        return nn.GELU(approximate="tanh" if f == "gelu_tanh" else "none")
    if f == "elu":
        return nn.ELU(p["alpha"])
    if f == "softplus":
        return nn.Softplus(p["beta"], p["threshold"])
    if f == "leaky_relu":
        return nn.LeakyReLU(p["negative_slope"])
    prelu = nn.PReLU(m.weight.numel())
    with torch.no_grad():
        prelu.weight.copy_(m.weight)
    return prelu
