"""BiPer binary layers (Vargas et al., "BiPer: Binary Neural Networks using a Periodic Function").

A BiPer weight is binarized with a square wave, b = sign(sin(omega * w)), and trained through
its sine surrogate: the backward pass uses d sin(omega * w) / dw = omega * cos(omega * w) instead
of the zero derivative of the square wave. Training has two stages: stage 1 uses the
continuous weights sin(omega * w) (activations already binary), stage 2 the binarized weights,
warm-started from stage 1. A regularizer tau * mean(sin(omega * w)^2) and a learnable
per-output-channel scale complete the method; the first and last layers stay at 8 bits.

In fpq a BiPer weight is an ordinary ``Binary()`` weight with a per-channel scale: only the
map from the latent float weight to the sign differs. So the TypePlan, the emulator, the HLS
path and the cost model see plain binary layers. The QONNX export writes a ``BipolarQuant``
node, which computes sign(w) * scale: ``fpq.nn.layers.exportable_weights`` temporarily puts each latent weight on
a peak of its sine (w = b * pi / (2 omega)), where sign(w) = sign(sin(omega * w)) = b, so the
exported graph computes exactly the trained binary weights.

Public pieces: ``biper_binarize`` / ``sign_ste`` (autograd functions), ``BiPerWeightQuant``
(the fpq tensor quantizer), ``to_biper`` (used by ``fpq.convert(..., method="biper")``),
``SignSTEWeightQuant`` / ``to_sign_ste`` (the classic sign / clipped-STE baseline),
``BiPerLinear`` / ``BiPerConv2d`` (layers for hand-built models), ``set_stage``,
``regularizer``, ``end_layer_overrides`` and ``train_two_stage`` (the training helper).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..formats import Binary
from .layers import FpqConv1d, FpqConv2d, FpqLinear, init_param_scales
from .quantizers import FpqTensorQuant, make_quant

STAGES = (1, 2)


def _check_omega(omega) -> float:
    try:
        w = float(omega)
    except (TypeError, ValueError):
        raise ValueError(f"BiPer needs a frequency omega (a positive number), got {omega!r}") from None
    if not (math.isfinite(w) and w > 0):
        raise ValueError(f"BiPer needs a finite frequency omega > 0, got {omega!r}")
    return w


# ----------------------------------------------------------------------------- autograd pieces
class _SquareWave(torch.autograd.Function):
    """sign(sin(omega * w)) forward (sign(0) = +1, as fpq's Binary), omega * cos(omega * w) backward."""

    @staticmethod
    def forward(ctx, w, omega):
        ctx.save_for_backward(w)
        ctx.omega = omega
        s = torch.sin(omega * w)
        return torch.where(s >= 0, torch.ones_like(w), -torch.ones_like(w))

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return g * ctx.omega * torch.cos(ctx.omega * w), None


def biper_binarize(w: torch.Tensor, omega: float) -> torch.Tensor:
    """The BiPer square wave sign(sin(omega * w)) in {-1, +1}, with the sine surrogate gradient."""
    return _SquareWave.apply(w, _check_omega(omega))


class _SignSTE(torch.autograd.Function):
    """sign forward (sign(0) = +1); clipped straight-through backward (gradient where |x| <= 1)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """The binary activation: sign(x) forward, g * 1{|x| <= 1} backward."""
    return _SignSTE.apply(x)


# ----------------------------------------------------------------------------- the quantizer
class _LatentBinaryWeightQuant(FpqTensorQuant):
    """Binary weight quantizer: value = binarize(w) * scale, with a binarizer chosen by the subclass.

    The scale (per output channel with granularity "channel") is FpqTensorQuant's learnable
    scale (po2 or float kind); unlike fpq's generic Binary quantizer, the gradient window of
    the binarizer does not depend on the scale.
    """

    def __init__(self, fpq_format: str, fpq_scale_kind: str, fpq_channels: int, fpq_role: str):
        super().__init__(fpq_format, fpq_scale_kind, fpq_channels, fpq_role)
        if not isinstance(self.fmt, Binary):
            raise ValueError(f"{type(self).__name__} binarizes weights: its format must be binary, got {self.fmt}")

    def latent_map(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def quantize(self, x: torch.Tensor):
        s = self.scale()
        if not torch.is_floating_point(x):
            x = x.float()
        sv = self._view(s, x).to(x.dtype)
        # +-1 times a float32 scale is exact in float32 (the contract stores quantized values so)
        return (self.latent_map(x) * sv).to(torch.float32), self._view(s, x)

    def export_weight(self, w: torch.Tensor) -> torch.Tensor:
        """A latent weight that QONNX's BipolarQuant (sign(w) * scale) binarizes identically."""
        return w.detach()


class SignSTEWeightQuant(_LatentBinaryWeightQuant):
    """The classic BNN weight binarizer (BinaryConnect / XNOR-Net): sign(w) forward, gradient
    where |w| <= 1 (``sign_ste``); BiPer's baseline."""

    def latent_map(self, w: torch.Tensor) -> torch.Tensor:
        return sign_ste(w)


class BiPerWeightQuant(_LatentBinaryWeightQuant):
    """BiPer: value = sign(sin(omega * w)) * scale, trained through the sine surrogate.

    Stage 1 in training mode gives sin(omega * w) * scale (continuous); stage 2, and eval mode
    in either stage, the binary value.
    """

    def __init__(self, fpq_format: str, fpq_scale_kind: str, fpq_channels: int, fpq_role: str, fpq_omega: float):
        super().__init__(fpq_format, fpq_scale_kind, fpq_channels, fpq_role)
        self.omega = _check_omega(fpq_omega)
        self.register_buffer("stage", torch.tensor(2, dtype=torch.int64))

    def latent_map(self, w: torch.Tensor) -> torch.Tensor:
        """The weight before the scale: sin(omega * w) in stage-1 training, else the square wave."""
        if self.training and int(self.stage) == 1:
            return torch.sin(self.omega * w)
        return biper_binarize(w, self.omega)

    def export_weight(self, w: torch.Tensor) -> torch.Tensor:
        """A latent weight with sign(w) == sign(sin(omega * w)): the peak of its half period."""
        with torch.no_grad():
            b = torch.where(torch.sin(self.omega * w) >= 0, torch.ones_like(w), -torch.ones_like(w))
            return b * (math.pi / (2 * self.omega))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, omega={self.omega}, stage={int(self.stage)}"


def _weight_layers(model: nn.Module):
    """fpq's weight layers (Linear, Conv1d, Conv2d and their subclasses)."""
    for name, m in model.named_modules():
        if isinstance(m, (FpqLinear, FpqConv1d, FpqConv2d)):
            yield name, m


def biper_quantizers(model: nn.Module) -> list:
    """(layer name, layer, BiPerWeightQuant) of every BiPer weight in ``model``."""
    return [(n, m, m.fpq_weight) for n, m in _weight_layers(model) if isinstance(m.fpq_weight, BiPerWeightQuant)]


def _swap_binary_weight_quant(model: nn.Module, cls, **kwargs) -> int:
    n = 0
    for _, m in _weight_layers(model):
        tq = m.fpq_weight
        if tq is None or not isinstance(tq.fmt, Binary):
            continue
        proxy = m.weight_quant
        # the injector builds the tensor quantizer (also when Brevitas re-creates it on a
        # state-dict load), so the class goes there, not onto the proxy only
        proxy.quant_injector = proxy.quant_injector.let(tensor_quant=cls, **kwargs)
        proxy.init_tensor_quant()
        with torch.no_grad():
            m.fpq_weight.log2_scale.copy_(tq.log2_scale)
        proxy.train(m.training)
        n += 1
    if n == 0:
        raise ValueError(f"{cls.__name__} binarizes binary weights, but no layer has binary weights; "
                         "convert with fmt='binary' or weights='binary'")
    return n


def to_biper(model: nn.Module, omega: float) -> int:
    """Make every binary weight quantizer of ``model`` a BiPer quantizer (in place; the learned
    scales are kept). Returns how many layers changed; ValueError if none has binary weights."""
    return _swap_binary_weight_quant(model, BiPerWeightQuant, fpq_omega=_check_omega(omega))


def to_sign_ste(model: nn.Module) -> int:
    """Make every binary weight quantizer a classic sign / clipped-STE one (BiPer's baseline)."""
    return _swap_binary_weight_quant(model, SignSTEWeightQuant)


# ----------------------------------------------------------------------------- layers
def _biper_kwargs(out_channels: int, omega: float, output, bias: bool, scale_kind: str, bias_fmt: str):
    inj = make_quant("binary", "weight", scale_kind, out_channels).let(tensor_quant=BiPerWeightQuant,
                                                                       fpq_omega=_check_omega(omega))
    return dict(weight_quant=inj, bias_quant=make_quant(bias_fmt, "bias", scale_kind) if bias else None,
                output_quant=make_quant(output, "act", scale_kind) if output is not None else None,
                return_quant_tensor=False)


class BiPerLinear(FpqLinear):
    """Linear layer with BiPer weights (per-output-channel scale) and, by default, a binary output."""

    def __init__(self, in_features, out_features, omega, bias=True, output="binary", scale="po2", bias_fmt="int16"):
        super().__init__(in_features, out_features, bias=bias,
                         **_biper_kwargs(out_features, omega, output, bias, scale, bias_fmt))
        init_param_scales(self)


class BiPerConv2d(FpqConv2d):
    """Conv2d layer with BiPer weights (per-output-channel scale) and, by default, a binary output."""

    def __init__(self, in_channels, out_channels, kernel_size, omega, stride=1, padding=0, bias=True,
                 output="binary", scale="po2", bias_fmt="int16"):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias,
                         **_biper_kwargs(out_channels, omega, output, bias, scale, bias_fmt))
        init_param_scales(self)


# ----------------------------------------------------------------------------- training helper
def set_stage(model: nn.Module, stage: int) -> int:
    """Set the BiPer stage (1: sine weights, 2: binarized) of every BiPer quantizer; returns
    how many there are (0 for a model without BiPer weights: the call is then a no-op)."""
    if stage not in STAGES:
        raise ValueError(f"BiPer stage must be 1 (sin(omega*w) weights) or 2 (binarized), got {stage!r}")
    qs = biper_quantizers(model)
    for _, _, tq in qs:
        tq.stage.fill_(stage)
    return len(qs)


def regularizer(model: nn.Module, tau: float) -> torch.Tensor:
    """tau * mean(sin(omega * w)^2) over all BiPer latent weights of ``model`` (0 if none)."""
    terms = [torch.sin(tq.omega * m.weight).pow(2).reshape(-1) for _, m, tq in biper_quantizers(model)]
    if not terms:
        return torch.zeros(())
    return tau * torch.cat(terms).mean()


def end_layer_overrides(model: nn.Module, fmt: str = "int8") -> dict:
    """fpq.convert overrides keeping the first and last Linear / Conv layer at ``fmt``: the first
    layer's weights (its output stays binary), the last layer's weights and output."""
    gm = fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    names = [n.target for n in gm.graph.nodes
             if n.op == "call_module" and type(mods[n.target]) in (nn.Linear, nn.Conv1d, nn.Conv2d)]
    if len(names) < 2:
        raise ValueError(f"BiPer keeps the first and last layers at {fmt}: the model needs at least two "
                         f"Linear / Conv layers, it has {names}")
    return {names[0]: {"weights": fmt}, names[-1]: {"weights": fmt, "activations": fmt}}


def train_two_stage(model: nn.Module, batches, epochs: tuple, lr: float = 1e-3, tau: float = 0.0, seed: int = 0,
                    loss_fn=F.cross_entropy) -> list:
    """BiPer's schedule: ``epochs[0]`` epochs in stage 1, then ``epochs[1]`` in stage 2, warm-started.

    ``batches(epoch)`` returns the (x, y) batches of one epoch. Each stage gets a fresh Adam
    optimizer with a cosine learning-rate decay; the loss is ``loss_fn`` plus the regularizer.
    A model without BiPer weights (e.g. the sign/STE baseline) is trained by exactly the same
    loop, so the two compare fairly. Returns the mean training loss per epoch.
    """
    if len(epochs) != 2 or min(epochs) < 0:
        raise ValueError(f"epochs must be (stage-1 epochs, stage-2 epochs), both >= 0, got {epochs!r}")
    torch.manual_seed(seed)
    losses, ep_global = [], 0
    for stage, n_ep in zip(STAGES, epochs):
        if n_ep == 0:
            continue
        set_stage(model, stage)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_ep)
        for _ in range(n_ep):
            model.train()
            total, count = 0.0, 0
            for xb, yb in batches(ep_global):
                opt.zero_grad()
                loss = loss_fn(model(xb), yb) + regularizer(model, tau)
                loss.backward()
                opt.step()
                total += loss.item() * len(xb)
                count += len(xb)
            sched.step()
            losses.append(total / max(count, 1))
            ep_global += 1
    set_stage(model, 2)
    model.eval()
    return losses
