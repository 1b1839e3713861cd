"""BiPer binary layers: the square wave and its sine surrogate, the binary activation, the
regularizer, fpq.convert(method="biper"), QONNX export and the cost model (issue 8)."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import fpq
from fpq.formats import Binary, Fixed
from fpq.nn import biper
from fpq.typeplan import LayerPlan, TensorType

OMEGA = 30.0


def _w(seed=0, n=4000, spread=0.5):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * spread
    w[:8] = torch.tensor([0.0, -0.0, math.pi / OMEGA, -math.pi / OMEGA, 1.0, -1.0, 1e-30, -1e-30])
    return w


def test_square_wave_forward_is_sign_of_sine():
    w = _w()
    b = biper.biper_binarize(w, OMEGA)
    s = np.sin(OMEGA * w.numpy())
    assert np.array_equal(b.numpy(), np.where(s >= 0, 1.0, -1.0))
    assert set(np.unique(b.numpy())) == {-1.0, 1.0}
    # a period of 2*pi/omega: w and w + 2*pi/omega (away from the zero crossings) binarize alike
    far = torch.abs(torch.sin(OMEGA * w)) > 1e-3
    shifted = biper.biper_binarize(w + 2 * math.pi / OMEGA, OMEGA)
    assert torch.equal(b[far], shifted[far])
    assert (b != torch.where(w >= 0, 1.0, -1.0)).any(), "the square wave must differ from sign(w) somewhere"


def test_square_wave_backward_is_sine_surrogate():
    w = _w(1).requires_grad_(True)
    g = torch.randn(w.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (biper.biper_binarize(w, OMEGA) * g).sum().backward()
    expect = g.numpy() * OMEGA * np.cos(OMEGA * w.detach().numpy())
    np.testing.assert_allclose(w.grad.numpy(), expect, rtol=1e-12, atol=1e-12)
    # and it is the derivative of sin(omega * w), the surrogate: autograd of the sine itself
    w2 = w.detach().clone().requires_grad_(True)
    (torch.sin(OMEGA * w2) * g).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), w2.grad.numpy(), rtol=1e-13, atol=1e-13)


def test_sign_ste_forward_and_clipped_backward():
    x = torch.tensor([-3.0, -1.0, -0.999, -1e-9, 0.0, 1e-9, 0.5, 1.0, 1.0001, 7.0], requires_grad=True)
    y = biper.sign_ste(x)
    assert y.tolist() == [-1, -1, -1, -1, 1, 1, 1, 1, 1, 1]
    y.backward(torch.arange(1.0, 11.0))
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 6, 7, 8, 0, 0]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "x", None])
def test_bad_omega_is_refused(bad):
    with pytest.raises(ValueError, match="omega"):
        biper.biper_binarize(torch.zeros(3), bad)


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 16, 10))


def _convert(model=None, **kw):
    model = model if model is not None else _cnn()
    q = fpq.convert(model, fmt="binary", inputs="int8", granularity="channel",
                    overrides=biper.end_layer_overrides(model), method="biper", omega=OMEGA, **kw)
    x = torch.rand(128, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    fpq.calibrate(q, [x], progress=False)
    with torch.no_grad():  # latent weights spanning several periods of the square wave
        q.get_submodule("1").weight.mul_(4.0)
    return q, x


def test_convert_biper_policy_and_typeplan():
    q, _ = _convert()
    qs = biper.biper_quantizers(q)
    assert [n for n, _, _ in qs] == ["1"], "only the middle layer is binary: first / last stay int8"
    assert str(q.get_submodule("0").fpq_weight.fmt) == "int8" and str(q.get_submodule("4").fpq_weight.fmt) == "int8"
    assert isinstance(q.get_submodule("0").fpq_output.fmt, Binary)  # the first layer's output is binary
    layer = q.get_submodule("1")
    tq = layer.fpq_weight
    lp = fpq.plan(q)["1"]
    assert isinstance(lp.tensors["weight"].format, Binary) and lp.tensors["weight"].scale.shape == (8,)
    s = tq.scale().detach().numpy().reshape(-1, 1, 1, 1)
    expect = np.where(np.sin(OMEGA * layer.weight.detach().numpy()) >= 0, 1.0, -1.0) * s
    assert np.array_equal(lp.values["weight"], expect.astype(np.float32))
    assert q.fpq_policy.method == "biper"


def test_convert_argument_errors():
    m = _cnn()
    with pytest.raises(ValueError, match="omega"):
        fpq.convert(m, fmt="binary", method="biper")
    with pytest.raises(ValueError, match="omega"):
        fpq.convert(m, fmt="binary", omega=3.0)
    with pytest.raises(ValueError, match="method"):
        fpq.convert(m, fmt="binary", method="xnor")
    with pytest.raises(ValueError, match="no layer has binary weights"):
        fpq.convert(m, fmt="int8", method="biper", omega=3.0)
    with pytest.raises(ValueError, match="at least two"):
        biper.end_layer_overrides(nn.Sequential(nn.Linear(3, 2)))


def test_stages_and_weight_quantizer_gradient():
    q, x = _convert()
    layer = q.get_submodule("1")
    tq = layer.fpq_weight
    w = layer.weight
    s = tq.scale().detach().reshape(-1, 1, 1, 1)
    q.train()
    assert biper.set_stage(q, 1) == 1
    y1, _ = tq.quantize(w)
    assert torch.equal(y1, (torch.sin(OMEGA * w) * s).float())          # stage 1: sine weights
    biper.set_stage(q, 2)
    w.grad = None
    y2, _ = tq.quantize(w)
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(4))
    (y2 * g).sum().backward()
    assert set(torch.unique(y2 / s).tolist()) == {-1.0, 1.0}
    np.testing.assert_allclose(w.grad.numpy(), (g * s * OMEGA * torch.cos(OMEGA * w.detach())).numpy(),
                               rtol=1e-5, atol=1e-6)
    q.eval()
    biper.set_stage(q, 1)  # eval mode is always binary (what the TypePlan and hardware hold)
    y3, _ = tq.quantize(w)
    assert torch.equal(y3, y2.detach())
    with pytest.raises(ValueError, match="stage"):
        biper.set_stage(q, 3)


def test_regularizer_value_and_gradient():
    q, _ = _convert()
    w = q.get_submodule("1").weight
    tau = 0.37
    r = biper.regularizer(q, tau)
    assert float(r.detach()) == pytest.approx(tau * float(torch.sin(OMEGA * w.detach()).pow(2).mean()), rel=1e-6)
    r.backward()
    expect = tau * 2 * torch.sin(OMEGA * w.detach()) * torch.cos(OMEGA * w.detach()) * OMEGA / w.numel()
    np.testing.assert_allclose(w.grad.numpy(), expect.numpy(), rtol=1e-4, atol=1e-9)
    assert float(biper.regularizer(_cnn(), tau)) == 0.0  # no BiPer weights


def test_state_dict_round_trip_keeps_biper():
    q, x = _convert()
    biper.set_stage(q, 1)
    q2 = fpq.convert(_cnn(), fmt="binary", inputs="int8", granularity="channel",
                     overrides=biper.end_layer_overrides(_cnn()), method="biper", omega=OMEGA)
    q2.load_state_dict(q.state_dict())
    assert isinstance(q2.get_submodule("1").fpq_weight, biper.BiPerWeightQuant)
    assert int(q2.get_submodule("1").fpq_weight.stage) == 1
    with torch.no_grad():
        assert torch.equal(q(x), q2(x))


def test_export_is_bipolar_and_emulator_equals_torch(tmp_path):
    q, _ = _convert()
    layer = q.get_submodule("1")
    latent = layer.weight.detach().clone()
    assert (torch.sign(latent) != torch.where(torch.sin(OMEGA * latent) >= 0, 1.0, -1.0)).any(), \
        "the test needs latent weights whose plain sign differs from BiPer's"
    path = fpq.export_qonnx(q, tmp_path / "biper.onnx", torch.zeros(1, 1, 8, 8))
    assert torch.equal(layer.weight, latent), "export must restore the trained latent weights"
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("BipolarQuant") >= 2  # binary weight and binary activations
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 1, 8, 8)).astype(np.float32) * 1.5   # off-grid, some out of range
    x[:30] *= 100
    y_emu = np.asarray(fpq.emulate(path, x), dtype=np.float64)
    with torch.no_grad():
        y_torch = q(torch.from_numpy(x)).double().numpy()
    assert np.unique(y_torch).size > 20
    assert np.array_equal(y_emu, y_torch)


def test_binary_product_type_includes_the_scales():
    lp = LayerPlan("b", "linear", {"input": TensorType("binary", np.float32(2.0)),
                                   "weight": TensorType("binary", np.float32([0.125, 0.25]))}, fan_in=16).derive()
    prod = lp.tensors["product"]
    # products are +-2^-2 and +-2^-1: two exponents, one sign bit
    assert prod == Fixed(3, 1, True)
    for p in (0.25, 0.5, -0.25, -0.5):
        assert np.array_equal(fpq.quantize(np.float64(p), prod), np.float64(p))
    assert lp.tensors["accumulator"] == Fixed(7, 5, True)


def test_cost_model_prices_binary_layers_in_luts_without_dsps():
    q, _ = _convert()
    rep = fpq.estimate_cost(q, part="xcvu9p")
    rows = {r["layer"]: r for r in rep.layers}
    assert rows["conv2d_1"]["mapping"] == "adder-tree"  # what the HLS project builds
    assert rows["conv2d_1"]["dsp"] == 0 and rows["conv2d_1"]["lut"] > 0
    # more output channels cost more LUTs (the cost follows the layer, not a constant)
    big = _cnn()
    big[1] = nn.Conv2d(4, 16, 3, padding=1)
    big[4] = nn.Linear(16 * 16, 10)
    qb, _ = _convert(big)
    assert {r["layer"]: r for r in fpq.estimate_cost(qb).layers}["conv2d_1"]["lut"] > rows["conv2d_1"]["lut"]


def test_layers_api_trains():
    torch.manual_seed(0)
    conv = biper.BiPerConv2d(2, 3, 3, omega=OMEGA, padding=1)
    lin = biper.BiPerLinear(12, 4, omega=OMEGA, output=None)
    x = torch.randn(5, 2, 4, 4)
    y = conv(x)
    assert set(torch.unique(y / conv.fpq_output.scale().detach()).tolist()) <= {-1.0, 1.0}
    lin(torch.randn(5, 12)).sum().backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    assert isinstance(lin.fpq_weight, biper.BiPerWeightQuant) and lin.fpq_weight.channels == 4


def test_sign_ste_baseline_quantizer():
    torch.manual_seed(0)
    m = _cnn()
    q = fpq.convert(m, fmt="binary", inputs="int8", granularity="channel", overrides=biper.end_layer_overrides(m))
    assert biper.to_sign_ste(q) == 1
    layer = q.get_submodule("1")
    tq = layer.fpq_weight
    assert isinstance(tq, biper.SignSTEWeightQuant) and not biper.biper_quantizers(q)
    with torch.no_grad():
        layer.weight.mul_(20.0)  # some latent weights beyond +-1 (no gradient there)
    w = layer.weight
    q.train()
    y, _ = tq.quantize(w)
    s = tq.scale().detach().reshape(-1, 1, 1, 1)
    assert torch.equal(y, torch.where(w >= 0, 1.0, -1.0) * s)
    y.sum().backward()
    inside = (w.detach().abs() <= 1).float()
    assert 0 < inside.mean() < 1
    assert torch.equal(w.grad, (s * inside).expand_as(w))  # the window is |w| <= 1, whatever the scale
