"""QFX learned binary points: exact forward, the documented gradient, freeze, bit penalty."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.cost_model.penalty import cost_penalty
from fpq.formats import Fixed, Int
from fpq.nn import qfx
from fpq.nn.qfx import QfxTensorQuant, qfx_quantize
from fpq.testing.networks import ConvResidual as _Net


def _offgrid(rng, n, hi):
    """Off-grid values over +-3*hi (a third saturate), some tiny, plus exact ties."""
    x = rng.uniform(-3 * hi, 3 * hi, n)
    x[: n // 8] = rng.normal(0, hi / 64, n // 8)
    return x


@pytest.mark.parametrize("W,F,signed,rounding", [(8, 5, True, "RND_CONV"), (4, 1, True, "RND_CONV"),
                                                 (6, 8, False, "TRN"), (5, -2, True, "RND"),
                                                 (3, 0, True, "RND_INF")])
def test_forward_equals_reference_fixed(W, F, signed, rounding):
    rng = np.random.default_rng(W * 10 + F)
    fmt = Fixed(W, W - F, signed, rounding, "SAT")
    hi = 2.0 ** (W - F)
    x = np.concatenate([_offgrid(rng, 4000, hi), (np.arange(-40, 40) + 0.5) * 2.0 ** -F]).astype(np.float32)
    y = qfx_quantize(torch.from_numpy(x), torch.tensor(float(F)), torch.tensor(float(W - F)), signed, rounding)
    assert np.array_equal(y.numpy(), fpq.quantize(x, fmt))


def _relaxed_loss(x, c, F, I, signed):
    return (c * qfx_quantize(x, F, I, signed)).sum()


@pytest.mark.parametrize("signed", [True, False])
def test_binary_point_gradient_finite_difference_where_saturated(signed):
    """Where every element saturates, the relaxed forward (real F, I) is differentiable and the
    estimator must be its exact derivative: central differences agree to float64 precision."""
    rng = np.random.default_rng(1)
    F0, I0 = 4.3, 2.6                                    # real: the relaxation
    big = 2.0 ** I0 * 4
    x = torch.from_numpy(np.concatenate([rng.uniform(big, 2 * big, 50), rng.uniform(-2 * big, -big, 50)]))
    c = torch.from_numpy(rng.normal(size=100))
    F = torch.tensor(F0, dtype=torch.float64, requires_grad=True)
    I = torch.tensor(I0, dtype=torch.float64, requires_grad=True)
    _relaxed_loss(x, c, F, I, signed).backward()
    h = 1e-6
    for name, g in (("F", F.grad), ("I", I.grad)):
        def L(d):
            f, i = (F0 + d, I0) if name == "F" else (F0, I0 + d)
            return float(_relaxed_loss(x, c, torch.tensor(f, dtype=torch.float64),
                                       torch.tensor(i, dtype=torch.float64), signed))
        fd = (L(h) - L(-h)) / (2 * h)
        assert abs(float(g) - fd) <= 1e-6 * max(1.0, abs(fd)), (name, float(g), fd)
    assert float(F.grad) != 0 and float(I.grad) != 0


def test_binary_point_gradient_inside_is_lsq_term_and_x_is_clipped_ste():
    """Inside the range: dy/dF = -ln2 2^-F (round(x 2^F) - x 2^F) (STE through the rounding of
    x), dy/dx = 1; outside dy/dx = 0. Fixed width: I = W - F, so dF also gets -dI."""
    rng = np.random.default_rng(2)
    W, F0 = 8, 5
    x = torch.from_numpy(rng.uniform(-6, 6, 400)).requires_grad_(True)   # range of fixed<8,3>: [-4, 4)
    c = torch.from_numpy(rng.normal(size=400))
    f = torch.tensor(float(F0), dtype=torch.float64, requires_grad=True)
    (c * qfx_quantize(x, f, W - f)).sum().backward()
    xn, cn = x.detach().numpy(), c.numpy()
    v = xn * 2.0 ** F0
    k = np.clip(np.round(v), -128, 127)
    inside = (v >= -128) & (v <= 127)
    step = 2.0 ** -F0
    # outside, y = 2^-F * bound with the bound's code fixed: dy/dF = -ln2 * 2^-F * code
    expect = np.where(inside, -math.log(2) * step * (k - v), -math.log(2) * step * k)
    assert np.isclose(float(f.grad), float((cn * expect).sum()), rtol=1e-12, atol=0)
    assert np.array_equal(x.grad.numpy(), np.where(inside, cn, 0.0))
    assert inside.any() and (~inside).any()


def test_rounded_binary_point_is_straight_through():
    tq = QfxTensorQuant("fixed<8,3>", "none", 0, "output")
    with torch.no_grad():
        tq.frac_bits.fill_(4.6)      # F = 5
    x = torch.linspace(-7, 7, 301)
    y, _ = tq.quantize(x)
    y.sum().backward()
    f = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    qfx_quantize(x, f, 8 - f).sum().backward()
    assert torch.equal(y, qfx_quantize(x, torch.tensor(5.0), torch.tensor(3.0)))
    assert math.isclose(float(tq.frac_bits.grad), float(f.grad), rel_tol=1e-6)
    assert tq.fmt == Fixed(8, 3)


def _trained_qfx(granularity, learn_width=False, fmt="fixed<6,2>"):
    torch.manual_seed(0)
    q = fpq.convert(_Net(), fmt=fmt)
    n = qfx.make_trainable(q, granularity=granularity, learn_width=learn_width)
    x = torch.rand(64, 1, 4, 4) * 2
    qfx.init_activations(q, [x])
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    q.train()
    for _ in range(5):
        opt.zero_grad()
        ((q(x) - 1.0) ** 2).mean().backward()
        opt.step()
    q.eval()
    return q, n


@pytest.mark.slow   # fpq.verify exports and runs the qonnx executor (~8 s)
@pytest.mark.parametrize("granularity,learn_width", [("tensor", False), ("channel", False), ("tensor", True)])
def test_freeze_keeps_outputs_and_gives_plain_formats(granularity, learn_width):
    q, n = _trained_qfx(granularity, learn_width)
    assert n == 8   # 3 weights + input + 3 layer outputs + the add
    # spread the binary points as training might (per channel too), then compare
    with torch.no_grad():
        for i, (_, role, tq) in enumerate(qfx.qfx_quantizers(q)):
            tq.frac_bits.add_(torch.arange(tq.frac_bits.numel()).reshape(tq.frac_bits.shape) % 3 - (i % 2))
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.uniform(-3, 3, (200, 1, 4, 4)).astype(np.float32))
    formats = {(nm, r): (tq.fmt, tq.scale().clone()) for nm, r, tq in qfx.qfx_quantizers(q)}
    with torch.no_grad():
        before = q(x)
    frozen = qfx.freeze(q)
    assert len(frozen) == n and not qfx.qfx_quantizers(q)
    with torch.no_grad():
        after = q(x)
    assert torch.equal(before, after)
    for name, role, tq in q.fpq_quantizers():
        if (name, role) in formats:
            fmt, s = formats[(name, role)]
            assert type(tq) is fpq.nn.FpqTensorQuant and tq.fmt == fmt and torch.equal(tq.scale(), s)
            assert isinstance(fmt, Int if (granularity == "channel" and role == "weight") else Fixed)
    tp = fpq.plan(q)
    assert all(lp.tensors["accumulator"].width <= 53 for lp in tp if "accumulator" in lp.tensors)
    rep = fpq.verify(q, x)
    assert rep.exact, rep.first_mismatch


def test_learned_points_move_and_bit_penalty_shrinks_width():
    q, _ = _trained_qfx("tensor")
    moved = [tq for _, _, tq in qfx.qfx_quantizers(q) if float(tq.frac_bits.detach() % 1) != 0]
    assert moved, "training changed no binary point"
    torch.manual_seed(0)
    q = fpq.convert(_Net(), fmt="fixed<10,4>")
    qfx.make_trainable(q, learn_width=True, min_width=3, init="format")
    start = qfx.bit_penalty(q, "width").item()
    assert start == 8 * 10
    opt = torch.optim.SGD([p for n, p in q.named_parameters() if "bits" in n], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        qfx.bit_penalty(q).backward()
        opt.step()
    widths = [int(tq.fmt.width) for _, _, tq in qfx.qfx_quantizers(q)]
    assert min(widths) == 3 and max(widths) < 10


def test_errors_are_clear():
    q = fpq.convert(_Net(), fmt="int8")
    with pytest.raises(ValueError, match="no fixed-point"):
        qfx.make_trainable(q)
    q = fpq.convert(_Net(), fmt="fixed<6,2,RND,SAT>")
    with pytest.raises(ValueError, match="RND_CONV"):
        qfx.make_trainable(q, granularity="channel")
    q = fpq.convert(_Net(), fmt="fixed<6,2,RND_CONV,WRAP>")
    with pytest.raises(ValueError, match="SAT"):
        qfx.make_trainable(q)
    q = fpq.convert(_Net(), fmt="fixed<6,2>")
    with pytest.raises(ValueError, match="granularity"):
        qfx.make_trainable(q, granularity="block")
    with pytest.raises(ValueError, match="learn_width with per-channel"):
        qfx.make_trainable(q, granularity="channel", learn_width=True)


def _learned_width_net(fmt="fixed<8,4>"):
    torch.manual_seed(0)
    q = fpq.convert(_Net(), fmt=fmt)
    qfx.make_trainable(q, learn_width=True, min_width=3, init="format")
    return q


def test_cost_penalty_is_the_cost_models_price_and_its_gradient():
    """cost_penalty: per layer n_weights x (multiplier LUTs + accumulate adder) from the cost
    model's table at the current widths; gradient = the multiplier fit's slope (numpy features)."""
    from fpq.cost_model.ops import default_costs, mul_features

    costs = default_costs()
    q = _learned_width_net()
    layers = {"c1": (36, 9), "c2": (144, 36), "fc": (320, 64)}   # (weights, fan-in)

    def priced(widths):   # widths: {layer: (x bits, w bits)}, all signed here
        return sum(n * (costs.mul_luts(a, b)[0] + costs.add_luts(a + b + math.ceil(math.log2(fi))))
                   for (n, fi), (a, b) in zip(layers.values(), widths.values()))

    p = cost_penalty(q)
    assert math.isclose(p.item(), priced({k: (8, 8) for k in layers}), rel_tol=1e-12)
    p.backward()
    tq = {n: t for n, r, t in qfx.qfx_quantizers(q) if r == "weight"}["fc"]
    h = 1e-4
    slope = (costs.mul_fit(mul_features(8, 8 + h)) - costs.mul_fit(mul_features(8, 8 - h))) / (2 * h)
    expect = 320 * (slope + float(costs.add_fit.coef[0]))
    assert math.isclose(float(tq.int_bits.grad), expect, rel_tol=1e-6)
    # one bit less on the fc weights: the penalty falls by the cost model's difference
    with torch.no_grad():
        tq.int_bits.sub_(1)
    lower = cost_penalty(q).item()
    assert lower < p.item()
    assert math.isclose(lower, priced({"c1": (8, 8), "c2": (8, 8), "fc": (8, 7)}), rel_tol=1e-12)
    with pytest.raises(ValueError, match="'count', 'width'"):
        qfx.bit_penalty(q, "luts")
    with pytest.raises(ValueError, match="cost_penalty"):   # the old spelling, removed after a release
        qfx.bit_penalty(q, "cost")


def test_training_with_cost_penalty_lowers_the_estimate():
    import copy

    q = _learned_width_net()
    x = torch.rand(64, 1, 4, 4) * 2
    qfx.init_activations(q, [x])
    target = torch.randn(64, 5)

    def estimate(model):
        frozen = copy.deepcopy(model)
        qfx.freeze(frozen)
        return fpq.estimate_cost(frozen.fpq_typeplan(x[:1])).total["lut"]   # the plan needs the input shape

    before, p0 = estimate(q), cost_penalty(q).item()
    bits = [p for n, p in q.named_parameters() if "bits" in n]
    opt = torch.optim.Adam([{"params": [p for n, p in q.named_parameters() if "bits" not in n], "lr": 1e-3},
                            {"params": bits, "lr": 0.1}])
    q.train()
    for _ in range(30):
        opt.zero_grad()
        loss = ((q(x) - target) ** 2).mean() + 1e-5 * cost_penalty(q)
        loss.backward()
        opt.step()
    q.eval()
    after, p1 = estimate(q), cost_penalty(q).item()
    assert p1 < p0 and after < before, (p0, p1, before, after)


def test_unfoldable_batchnorm_is_kept_elementwise_and_residual_adds_are_quantized():
    """fpq folds a BatchNorm into the Conv / Linear right before it; one that cannot be folded
    (here after an add) is kept element-wise (fpq.nn.batchnorm, QFX trains its s, t and output;
    tests/test_batchnorm.py covers the whole path). A BatchNorm without running statistics is
    still refused, naming the layer and the reason."""
    from fpq.nn.batchnorm import FpqBatchNorm

    class Unfoldable(nn.Module):
        def __init__(self, stats=True):
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4, track_running_stats=stats)

        def forward(self, x):
            y = self.c(x)
            return self.bn(y + y)

    q = fpq.convert(Unfoldable(), fmt="fixed<8,3>")
    assert isinstance(q.bn, FpqBatchNorm)
    qfx.make_trainable(q)
    assert {("bn", "weight"), ("bn", "output")} <= {(n, r) for n, r, _ in qfx.qfx_quantizers(q)}
    with pytest.raises(ValueError, match=r"'bn' of type BatchNorm2d without running statistics"):
        fpq.convert(Unfoldable(stats=False).eval(), fmt="fixed<8,3>")
    q = fpq.convert(_Net(), fmt="fixed<8,3>")
    qfx.make_trainable(q)
    assert ("add.quant", "output") in {(n, r) for n, r, _ in qfx.qfx_quantizers(q)}   # the FpqAdd's quantizer
