"""Block-scaled convolutions (issue 20, item 2): Conv1d / Conv2d with mxfp4, nvfp4, mxfp8_e4m3, mxint8
through convert -> calibrate -> export -> emulate (numpy and torch) -> verify, atol=0. Blocks run
along the input channels per kernel tap (weight axis 1, input axis 1; fpq.numerics.block_conv says
why): the exact conv sum against Python's rationals, the converted CNN against the numpy reference
(fpq.numerics.blocks), and torch == emulator == qonnx on 2,000 off-grid inputs with zero blocks
and outliers."""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpq
from fpq.numerics.block_conv import block_conv, conv_attrs
from fpq.numerics.blocks import block_quantize
from test_block_emulate import ro53

FORMATS = ["mxfp4", "nvfp4", "mxfp8_e4m3", "mxint8"]


def axis1(fmt: str, k: int | None = None):
    f = fpq.parse_format(fmt)
    return dataclasses.replace(f, axis=1, k=f.k if k is None else k)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_block_conv_exact_against_rationals(backend):
    """Strided, dilated, asymmetrically padded conv of blocks hundreds of binades apart: every output
    is the exact sum rounded to odd at 53 bits (== the exact sum where it fits)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 5, 6)) * np.exp2(rng.integers(-40, 40, size=(2, 6, 5, 6)) // 4)
    x[0, :, 1, 1] *= 2.0 ** 200       # one pixel's channel block far above the rest
    x[1, :, 2, :] = 0.0               # zero blocks
    w = rng.standard_normal((3, 6, 3, 2))
    w[1, :, 0, 0] *= 2.0 ** -150
    b = np.round(rng.standard_normal(3) * 16) / 16   # on a grid, as a quantized bias is
    f = axis1("mxfp4", 4)             # 6 channels in blocks of 4: the second block is padded
    xq, wq = block_quantize(x, f).values, block_quantize(w, f).values
    a = conv_attrs((3, 2), strides=(2, 1), pads=(1, 0, 0, 2), dilations=(1, 2))
    args = (torch.tensor(xq), torch.tensor(wq), torch.tensor(b)) if backend == "torch" else (xq, wq, b)
    y, fits = block_conv(*args, a, 4)
    y, fits = np.asarray(y), np.asarray(fits)
    xp = np.pad(xq, [(0, 0), (0, 0), (1, 0), (0, 2)])
    assert y.shape == (2, 3, 2, 6)
    want = np.empty(y.shape)
    for n, o, i, j in np.ndindex(*y.shape):
        s = Fraction(b[o])
        for c, u, v in np.ndindex(6, 3, 2):
            s += Fraction(xp[n, c, 2 * i + u, j + 2 * v]) * Fraction(wq[o, c, u, v])
        want[n, o, i, j] = ro53(s)
    assert np.array_equal(y, want)
    assert not fits.all() and fits.any()   # some sums are beyond float64, others are not


def cnn2d():
    """Conv2d (padding, 3 -> 8 channels: one padded block) -> ReLU -> strided Conv2d (8 -> 40: the
    next layer's 40 = 32 + 8 channels, a full and a padded block) -> ReLU -> Conv2d 1x1 -> flatten
    -> Linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 40, 3, stride=2), nn.ReLU(),
                         nn.Conv2d(40, 6, 1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 10))


def cnn1d():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv1d(4, 34, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv1d(34, 8, 2, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5, 5))


def cnn_inputs(n=2000, dims=2):
    """Off-grid inputs over many binades; every 7th sample has zero blocks (pixels with every
    channel zero), every 11th a huge outlier."""
    rng = np.random.default_rng(0)
    shape = (n, 3, 7, 7) if dims == 2 else (n, 4, 10)
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-8, 8, size=(n,) + (1,) * (len(shape) - 1)))
    x[::7, :, 2] = 0.0
    x[::11, 1, 4] = 3e4
    return torch.tensor(x, dtype=torch.float32)


def reference_cnn2d(model: nn.Sequential, x: torch.Tensor, fmt: str, q) -> np.ndarray:
    """The first two convolutions by the numpy reference: input, weights and outputs block-quantized
    along the channels (axis 1), bias int16 as converted; the float64 conv (torch) is exact here
    (the equality itself confirms it against the model's exact block sum)."""
    f = axis1(fmt)

    def ts(name):
        tq = q.get_submodule(name).fpq_output
        return None if f.po2_scale else float(tq.tensor_scale_t)

    h = block_quantize(x.numpy(), f, ts("input_quant")).values
    for i in (0, 2):
        w = block_quantize(model[i].weight.detach().numpy(), f).values
        layer = q.get_submodule(str(i))
        b = layer.bias_quant(layer.bias).value.detach().double()
        y = F.conv2d(torch.tensor(h), torch.tensor(w), b, stride=model[i].stride, padding=model[i].padding).numpy()
        h = np.maximum(block_quantize(y, f, ts(str(i))).values, 0)
    return h


@pytest.mark.parametrize("fmt", FORMATS)
def test_converted_cnn_equals_reference(fmt):
    model = cnn2d()
    q = fpq.convert(model, fmt=fmt)
    x = cnn_inputs(500)
    fpq.calibrate(q, [x[:256]], progress=False)
    for name in ("input_quant", "0", "2"):        # every quantizer read by a conv blocks along its channels
        assert q.get_submodule(name).fpq_output.fmt == axis1(fmt)
    assert q.get_submodule("0").fpq_weight.fmt == axis1(fmt)
    assert q.get_submodule("7").fpq_weight.fmt == fpq.parse_format(fmt)   # the Linear: its last axis
    trace = {}
    hook = q.get_submodule("3").register_forward_hook(lambda m, i, o: trace.setdefault("h", o))
    q(x)
    hook.remove()
    assert np.array_equal(trace["h"].detach().double().numpy(), reference_cnn2d(model, x, fmt, q))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("net", ["2d", "1d"])
def test_cnn_torch_emulator_qonnx_exact(fmt, net):
    """2,000 inputs: torch == numpy emulator (fpq.verify, all rows) == torch emulator (all rows) ==
    qonnx's executor (fpq.verify's subset of 64 rows; all 2,000 in the slow test)."""
    torch.set_num_threads(1)
    model, x = (cnn2d(), cnn_inputs()) if net == "2d" else (cnn1d(), cnn_inputs(dims=1))
    q = fpq.convert(model, fmt=fmt)
    fpq.calibrate(q, [x[:256]], progress=False)
    rep = fpq.verify(q, x)
    assert rep.exact, rep.table
    y = q(x).detach().double().numpy()
    from fpq.emulate import Emulator
    from fpq.export import export_qonnx
    emu = Emulator(export_qonnx(q, None, x[:1]), backend="torch")
    assert np.array_equal(np.asarray(emu(x), dtype=np.float64), y)


def test_block_conv_refusals():
    with pytest.raises(ValueError, match=r"Conv2d\(groups=2\) with the block-scaled weight format"):
        fpq.convert(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), fmt="mxfp4")
    with pytest.raises(ValueError, match=r"layer '1' \(AvgPool2d\) has the block-scaled activations format"):
        fpq.convert(nn.Sequential(nn.Conv2d(4, 4, 3), nn.AvgPool2d(2)), fmt="mxfp4")
    with pytest.raises(ValueError, match="groups=1"):
        block_conv(np.zeros((1, 4, 3, 3)), np.zeros((2, 2, 1, 1)), None, conv_attrs((1, 1), groups=2), 4)


@pytest.mark.full   # 2-2.5 min per format; test_cnn_torch_emulator_qonnx_exact runs qonnx on a subset
@pytest.mark.parametrize("fmt", FORMATS)
def test_cnn_qonnx_executor_2000_inputs(fmt):
    model, x = cnn2d(), cnn_inputs()
    q = fpq.convert(model, fmt=fmt)
    fpq.calibrate(q, [x[:256]], progress=False)
    rep = fpq.verify(q, x, qonnx_subset=len(x))
    assert rep.exact, rep.table
