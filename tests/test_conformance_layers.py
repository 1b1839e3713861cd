"""Shared conformance test: the quantized forward of every supported layer and format equals
``fpq.quantize`` applied tensor by tensor (weights, bias, inputs, outputs; float64
accumulation), atol=0, on random off-grid inputs including out-of-range values."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import fpq
from fpq.nn import FpqAdd, FpqAvgPool, FpqClamp, FpqConv1d, FpqConv2d, FpqInput, FpqLinear


FORMATS = ["int8", "int4", "uint8", "fixed<8,3>", "fixed<6,2,RND,SAT>", "fixed<6,2,TRN,WRAP>",
           "e4m3", "e5m2", "e3m2", "e2m3", "e2m1"]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm1d(3)
        self.act = nn.Hardtanh(-1.0, 1.3)
        self.mp, self.ap = nn.MaxPool1d(2), nn.AvgPool1d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6, 4, bias=False)

    def forward(self, x):
        return self.fc(self.flat(self.ap(self.mp(self.act(self.bn(self.conv(x)))))))


class Conv2dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.relu6 = nn.ReLU6()
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(3, stride=1)   # window of 9: a non-power-of-two divisor
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = y + self.relu6(self.conv2(y))        # residual add
        y = self.gap(self.avg(self.pool(y)))
        return self.fc(torch.flatten(y, 1))


def _make(cls, in_shape, seed):
    torch.manual_seed(seed)
    m = cls()
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.3, 0.3)
    return m.eval(), in_shape


MODELS = {"mlp": (MLP, (6,)), "conv1d": (Conv1dNet, (2, 8)), "conv2d": (Conv2dNet, (1, 8, 8))}


def _q(x64_or_32, tq):
    """fpq.quantize with the quantizer's format and float32 scale, in the dtype of the tensor."""
    x = np.asarray(x64_or_32)
    s = tq.scale().detach().numpy().astype(np.float32)
    if tq.channels and x.ndim > 1:
        s = s.reshape(-1, *([1] * (x.ndim - 1)))
    if tq.scale_kind == "none":
        s = np.float32(1.0)
    return fpq.quantize(x, tq.fmt, s.astype(x.dtype)).astype(np.float32)


def _mean_pool(x: np.ndarray, pool) -> np.ndarray:
    """Window sums (exact in float64) divided once by the window size, written out in numpy."""
    from numpy.lib.stride_tricks import sliding_window_view
    if isinstance(pool, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        axes = (-1,) if isinstance(pool, nn.AdaptiveAvgPool1d) else (-2, -1)
        n = int(np.prod([x.shape[a] for a in axes]))
        return x.sum(axis=axes, keepdims=True) / n
    two = isinstance(pool, nn.AvgPool2d)
    k = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size,) * (2 if two else 1)
    st = pool.stride if isinstance(pool.stride, tuple) else (pool.stride,) * len(k)
    win = sliding_window_view(x, k, axis=tuple(range(-len(k), 0)))
    win = win[..., ::st[0], :, :, :] if two else win[..., ::st[0], :]
    if two:
        win = win[..., ::st[1], :, :]
    return win.sum(axis=tuple(range(-len(k), 0))) / int(np.prod(k))


def reference_forward(q, x: torch.Tensor) -> np.ndarray:
    """Evaluate the converted graph with fpq.quantize per tensor and float64 arithmetic."""
    mods = dict(q.named_modules())
    env = {}
    t64 = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    for node in q.graph.nodes:
        args = [env[a] if isinstance(a, fx.Node) else a for a in node.args]
        if node.op == "placeholder":
            env[node] = x.numpy()
        elif node.op == "output":
            return env[node.args[0]]
        elif node.op == "call_module":
            m = mods[node.target]
            if isinstance(m, FpqInput):
                env[node] = _q(args[0], m.fpq_output)
            elif isinstance(m, (FpqLinear, FpqConv1d, FpqConv2d)):
                w = t64(_q(m.weight.detach().numpy(), m.fpq_weight))
                b = None if m.bias is None else t64(_q(m.bias.detach().numpy(), m.fpq_bias))
                xin = t64(args[0])
                if isinstance(m, FpqLinear):
                    acc = F.linear(xin, w, b)
                else:
                    conv = F.conv1d if isinstance(m, FpqConv1d) else F.conv2d
                    acc = conv(xin, w, b, m.stride, m.padding, m.dilation, m.groups)
                env[node] = _q(acc.numpy(), m.fpq_output)
            elif isinstance(m, FpqAdd):
                env[node] = _q(np.float64(args[0]) + np.float64(args[1]), m.fpq_output)
            elif isinstance(m, FpqAvgPool):
                env[node] = _q(_mean_pool(np.float64(args[0]), m.pool), m.fpq_output)
            elif isinstance(m, FpqClamp):
                env[node] = _q(np.clip(args[0], np.float32(m.min_val), np.float32(m.max_val)), m.fpq_output)
            else:  # ReLU, MaxPool, Flatten: pass grid values through unchanged
                env[node] = m(torch.from_numpy(args[0])).numpy()
        elif node.op == "call_function":
            env[node] = node.target(torch.from_numpy(args[0]), *args[1:]).numpy()
        else:
            env[node] = getattr(torch.from_numpy(args[0]), node.target)(*args[1:]).numpy()
    raise AssertionError("no output node")


def _inputs(shape, seed, n=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g) * 2.0 + 0.1
    x[0] *= 50.0                      # far out of range
    x[1] = torch.rand(shape, generator=g) * 1e-3   # tiny: underflow / subnormal range
    return x


def _check(q, shape, seed):
    calib = [_inputs(shape, seed + 100 + i) for i in range(2)]
    fpq.calibrate(q, calib, progress=False)
    x = _inputs(shape, seed)
    with torch.no_grad():
        y = q(x).numpy()
    ref = reference_forward(q, x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, ref)
    # the export (Conv1dNet's Hardtanh(-1, 1.3) clamps with float32(1.3)) emulates to the same values
    np.testing.assert_array_equal(np.asarray(fpq.emulate(q, x.numpy()), dtype=np.float32), y)
    # every quantized weight is on its format's grid: the torch quantizer equals fpq.quantize
    for m in q.modules():
        if getattr(m, "fpq_weight", None) is not None:
            with torch.no_grad():
                w, _ = m.fpq_weight.quantize(m.weight.detach())
            np.testing.assert_array_equal(w.numpy().astype(np.float32), _q(m.weight.detach().numpy(), m.fpq_weight))
    return y


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", list(MODELS))
def test_layers_formats(model, fmt):
    cls, shape = MODELS[model]
    m, shape = _make(cls, shape, seed=FORMATS.index(fmt))
    q = fpq.convert(m, fmt)
    y = _check(q, shape, seed=3)
    assert np.isfinite(y).all() or "e5m2" in fmt


@pytest.mark.parametrize("model", list(MODELS))
def test_binary_weights(model):
    cls, shape = MODELS[model]
    m, shape = _make(cls, shape, seed=1)
    q = fpq.convert(m, weights="binary", activations="int8")
    _check(q, shape, seed=4)
    first = next(m for m in q.modules() if getattr(m, "fpq_weight", None) is not None)
    with torch.no_grad():
        w, _ = first.fpq_weight.quantize(first.weight.detach())
    assert len(np.unique(np.abs(w.numpy()))) == 1


@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e2m1"])
def test_float_scales_per_channel(fmt):
    m, shape = _make(Conv2dNet, (1, 8, 8), seed=2)
    q = fpq.convert(m, fmt, scale="float", granularity="channel")
    _check(q, shape, seed=5)
    tq = q.conv1.fpq_weight
    assert tq.scale().shape == (3,) and tq.log2_scale.requires_grad


def test_quantizers_match_reference_elementwise():
    """Each fpq quantizer inside Brevitas equals fpq.quantize on float32 and float64 inputs."""
    from fpq.nn.quantizers import make_quant
    from brevitas.nn import QuantIdentity
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(4096, generator=g) * 8
    x32[:50] *= 1e4
    for fmt in FORMATS + ["binary", "int3", "e3m4", "e4m3", "fixed<5,1,RND_ZERO,SAT_SYM>",
                          "fixed<7,0,RND_MIN_INF,SAT_ZERO>"]:
        for kind in ("po2", "float"):
            act = QuantIdentity(act_quant=make_quant(fmt, "act", kind)).eval()
            tq = act.act_quant.fused_activation_quant_proxy.tensor_quant
            tq.set_scale(0.375 if kind == "float" else 0.25) if tq.scale_kind != "none" else None
            for x in (x32, x32.double() / 3):
                y = act(x).detach().numpy()
                ref = _q(x.numpy(), tq)
                np.testing.assert_array_equal(y, ref, err_msg=f"{fmt} {kind} {x.dtype}")


@pytest.mark.parametrize("fmt", ["e3m2_nosub", "e4m3_b5", "e5m2_nosat", "e4m3_b8_fnuz", "ue3m2", "e4m3_none",
                                 "e2m2", "e3m4", "ufixed<6,2>", "fixed<7,2,RND_INF,SAT_SYM>",
                                 "fixed<6,1,TRN_ZERO,SAT_ZERO>", "fixed<8,2,RND_MIN_INF,WRAP>",
                                 "int8_narrow", "uint4", "int2"])
def test_more_format_variants(fmt):
    """Minifloat bias / subnormal / specials / saturation variants and more fixed modes."""
    m, shape = _make(Conv2dNet, (1, 8, 8), seed=7)
    _check(fpq.convert(m, fmt), shape, seed=8)
