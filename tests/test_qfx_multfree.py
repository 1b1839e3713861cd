"""Multiplier-free weights: power-of-two and K-hot quantizers, exact end to end, DSP-free cost."""
import itertools

import numpy as np
import pytest
import torch

import fpq
from fpq.cost_model.ops import csd_digits
from fpq.nn import multfree
from fpq.nn.multfree import KHotWeightQuant, csd_count, khot_codes
from fpq.testing.networks import ConvResidual as _Net


def _brute_force_codes(width, k):
    """Every sum of at most k signed powers of two, |sum| <= 2**(width-1) - 1 (independent of CSD)."""
    top = 2 ** (width - 1) - 1
    terms = [s * 2 ** e for e in range(width) for s in (1, -1)]
    out = {0}
    for n in range(1, k + 1):
        for combo in itertools.combinations_with_replacement(terms, n):
            v = sum(combo)
            if abs(v) <= top:
                out.add(v)
    return np.array(sorted(out))


@pytest.mark.parametrize("width,k", [(4, 1), (6, 2), (8, 1), (8, 2), (8, 3)])
def test_codes_are_exactly_the_k_term_sums(width, k):
    codes = khot_codes(width, k)
    assert np.array_equal(codes, _brute_force_codes(width, k))
    assert all(csd_digits(int(c)) <= k for c in codes)          # the cost model's CSD count
    assert np.array_equal(csd_count(codes), [csd_digits(int(c)) for c in codes])


def test_quantizer_rounds_to_nearest_code_ties_to_smaller_magnitude():
    tq = KHotWeightQuant("int6", "po2", 0, "weight", 2)
    codes = khot_codes(6, 2).astype(np.float64)
    rng = np.random.default_rng(0)
    mids = (codes[1:] + codes[:-1]) / 2                               # every tie
    x = np.concatenate([rng.uniform(-45, 45, 3000), mids]).astype(np.float32)
    y = tq.quantize(torch.from_numpy(x))[0].detach().numpy().astype(np.float64)
    d = np.abs(x.astype(np.float64)[:, None] - codes[None, :])
    best = d.min(1)
    assert np.isin(y, codes).all()
    assert np.array_equal(np.abs(y - x), best)                        # nearest (saturates beyond)
    tie = np.isin(x, mids)
    cands = np.where(d[tie] == best[tie][:, None], np.abs(codes)[None, :], np.inf).min(1)
    assert np.array_equal(np.abs(y[tie]), cands)


def test_gradient_is_clipped_straight_through_and_scale_learns():
    tq = KHotWeightQuant("int8", "po2", 0, "weight", 2)
    tq.set_scale(2.0 ** -5)
    w = torch.linspace(-6, 6, 501, requires_grad=True)
    y, _ = tq.quantize(w)
    y.sum().backward()
    inside = (w.detach() / 2.0 ** -5).abs() <= 127
    assert torch.equal(w.grad, inside.float())
    assert tq.log2_scale.grad is not None and float(tq.log2_scale.grad) != 0


@pytest.mark.slow   # fpq.verify exports and runs the qonnx executor
@pytest.mark.parametrize("k,granularity", [(1, "tensor"), (2, "tensor"), (3, "channel")])
def test_khot_model_exact_few_terms_and_no_dsp(k, granularity):
    torch.manual_seed(k)
    q = fpq.convert(_Net(), fmt="int8")
    x = torch.from_numpy(np.random.default_rng(k).uniform(-2, 2, (200, 1, 4, 4)).astype(np.float32))
    fpq.calibrate(q, [x], progress=False)
    assert multfree.to_khot(q, k, granularity=granularity) == 3
    q.train()   # a few QAT steps: weights and scales move, the constraint must hold after
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (q(x) ** 2).mean().backward()
        opt.step()
    q.eval()
    tp = fpq.plan(q)
    for lp in tp:
        if "weight" not in lp.values:
            continue
        wt, w = lp.tensors["weight"], lp.values["weight"].astype(np.float64)
        s = wt.scale.astype(np.float64).reshape((-1,) + (1,) * (w.ndim - 1)) if wt.scale.ndim else wt.scale
        codes = w / s
        assert np.array_equal(codes, np.round(codes)) and np.abs(codes).max() <= 127
        assert max(csd_digits(int(c)) for c in codes.ravel()) <= k, lp.name
        assert wt.po2 and str(wt.format) == "int8"
    rep = fpq.verify(q, x)
    assert rep.exact, rep.first_mismatch
    if granularity == "tensor":   # an 8-bit carrier: every constant multiply in fabric
        cost = fpq.estimate_cost(q)
        assert all(r["dsp"] == 0 for r in cost.layers if r["op"] in ("conv2d", "linear"))


def test_to_khot_errors():
    q = fpq.convert(_Net(), fmt="int8")
    with pytest.raises(ValueError, match="K=4"):
        multfree.to_khot(q, 4)
    with pytest.raises(ValueError, match="no weight layer named"):
        multfree.to_khot(q, 2, layers=["nope"])
    with pytest.raises(ValueError, match="width"):
        multfree.to_khot(q, 2, width=40)
    assert multfree.to_pow2(q, layers=["fc"]) == 1
    assert [n for n, _, _ in multfree.khot_quantizers(q)] == ["fc"]
