"""Exact wide sums (fpq.numerics.wide) against Python integer arithmetic."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import fpq
from fpq.numerics.wide import bit_span, exact_bilinear, round_to_odd

E5M2_MAX = 57344.0


def e5m2_data(shape, rng, spread=20.0):
    """e5m2 grid values over the whole range: subnormals, ties and saturating values included."""
    x = rng.standard_normal(shape) * np.exp2(rng.uniform(-spread, spread, shape))
    return np.asarray(fpq.quantize(x, "e5m2"), dtype=np.float64)


def ro53(v: Fraction) -> float:
    """Round-to-odd of an exact rational with a power-of-two denominator to 53 bits (reference)."""
    if v == 0:
        return 0.0
    sign = -1 if v < 0 else 1
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()  # 2^e <= a < 2^(e+2)
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    scaled = a / Fraction(2) ** (e - 52)       # in [2^52, 2^53)
    k = scaled.numerator // scaled.denominator
    if k * scaled.denominator != scaled.numerator and k % 2 == 0:
        k += 1
    return sign * float(Fraction(k) * Fraction(2) ** (e - 52))


def exact_dot(x, w, b):
    xf = [[Fraction(float(v)) for v in row] for row in x]
    wf = [[Fraction(float(v)) for v in col] for col in w.T]
    return [[sum((a * c for a, c in zip(r, col)), Fraction(0)) + Fraction(float(b[j]))
             for j, col in enumerate(wf)] for r in xf]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_e5m2_dot_is_rounded_to_odd_exact_sum(backend):
    rng = np.random.default_rng(0)
    x, w = e5m2_data((40, 64), rng), e5m2_data((64, 7), rng)
    b = e5m2_data((7,), rng)
    assert bit_span(x)[0] - bit_span(x)[1] > 25  # genuinely wide operands
    if backend == "torch":
        y, wide = exact_bilinear(lambda a, c: a @ c, torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                 fan_in=64)
        y = y.numpy()
    else:
        y, wide = exact_bilinear(lambda a, c: a @ c, x, w, b, fan_in=64)
    assert wide
    exact = exact_dot(x, w, b)
    want = np.array([[ro53(v) for v in row] for row in exact])
    assert np.array_equal(y, want)
    # many exact sums here do not fit float64 (else the test would prove nothing)
    assert sum(Fraction(float(v)) != v for row in exact for v in row) > 20


def test_quantizing_the_rounded_to_odd_sum_equals_quantizing_the_exact_sum():
    """Every fpq quantizer of < 51 bits rounds RO(t) as it rounds t; checked with sums built to sit
    just beside ties of the output grid (a tie plus a tiny remainder far below float64's reach)."""
    rng = np.random.default_rng(1)
    fmts = ["e5m2", "e4m3", "e2m1", "int8", "fixed<8,3>", "fixed<6,2,RND,SAT>", "fixed<10,4,TRN,SAT>",
            "fixed<12,6,RND_ZERO,WRAP>"]
    for fmt in fmts:
        grid = np.unique(np.abs(fpq.values(fmt)))
        grid = grid[np.isfinite(grid)]
        mids = (grid[:-1] + grid[1:]) / 2               # ties of round-to-nearest
        sgn = rng.choice([-1.0, 1.0], mids.size)
        tiny = mids * np.exp2(-60.0) * rng.choice([-1.0, 1.0], mids.size)
        hi, lo = sgn * mids, sgn * tiny * 1.0
        r = round_to_odd(hi, lo)
        got = np.asarray(fpq.quantize(r, fmt), dtype=np.float64)
        # exact reference: a tie plus a nonzero remainder rounds as the remainder's side says,
        # which the float64 nudge by one ulp of the tie reproduces when the grid is coarse
        nudged = np.nextafter(hi, hi + np.sign(lo) * np.inf)
        want = np.asarray(fpq.quantize(nudged, fmt), dtype=np.float64)
        assert np.array_equal(got, want), fmt
        # and the plain float64 sum loses the remainder: it rounds the tie instead
        assert np.array_equal(hi + lo, hi)


def test_narrow_sums_take_one_plain_call():
    rng = np.random.default_rng(2)
    x = np.asarray(fpq.quantize(rng.standard_normal((8, 16)), "int8", 2.0 ** -4), dtype=np.float64)
    w = np.asarray(fpq.quantize(rng.standard_normal((16, 3)), "int8", 2.0 ** -6), dtype=np.float64)
    calls = []
    y, wide = exact_bilinear(lambda a, c: calls.append(1) or a @ c, x, w, None, fan_in=16)
    assert not wide and len(calls) == 1 and np.array_equal(y, x @ w)


def wide_e5m2_layer():
    """One e5m2 x e5m2 layer whose inputs and weights span the whole format: products from
    2^-48 to 2^30, so most exact sums need more than float64's 53 bits."""
    rng = np.random.default_rng(3)
    lin = torch.nn.Linear(16, 6)
    with torch.no_grad():
        w = rng.choice([-1.0, 1.0], (6, 16)) * np.exp2(rng.uniform(-32, -1, (6, 16)))
        w[0, 0] = 0.875  # max |w| = 57344 * 2^-16: the weight scale is 2^-16, the tiniest weights subnormal
        # a row built on a tie: 1.5 * 1.5 = 2.25 sits halfway between two e5m2 values, and a 2^-48
        # product decides it; a plain float64 sum loses the 2^-48 and rounds the tie to even
        w[0, 1], w[0, 2] = 1.5 * 2.0 ** -3, 2.0 ** -32
        b = rng.standard_normal(6)
        b[0] = 0.0
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    q = fpq.convert(torch.nn.Sequential(lin), fmt="e5m2")
    calib = torch.full((4, 16), 57344.0)  # input scale 1: inputs use the format's whole range
    fpq.calibrate(q, [calib])
    q.eval()
    x = (rng.choice([-1.0, 1.0], (2000, 16)) * np.exp2(rng.uniform(-18, 16, (2000, 16)))
         * rng.uniform(1, 2, (2000, 16))).astype(np.float32)
    x[0] = 0.0
    x[0, 1], x[0, 2] = 1536.0, 2.0 ** -16
    return q, x


@pytest.mark.slow
def test_wide_e5m2_layer_torch_emulator_and_csim_agree(tmp_path):
    from fpq.emulate import Emulator
    from fpq.export.graph import read_graph
    q, x = wide_e5m2_layer()
    path = str(tmp_path / "wide.onnx")
    fpq.export_qonnx(q, path, torch.from_numpy(x[:1]))
    emu = Emulator(path)
    assert emu.rounded_to_odd, "the layer should need a wide accumulator"
    assert all(emu.exact.values())
    y_emu, trace = emu(x, return_trace=True)
    with torch.no_grad():
        y_torch = q(torch.from_numpy(x)).double().numpy()
    assert np.array_equal(np.asarray(y_emu, dtype=np.float64), y_torch)
    # the independent oracle: the HLS C-sim sums in a 72-bit ap_fixed
    proj = fpq.to_hls(path, tmp_path / "prj", backend="Vitis")
    y_hls = proj.predict(x)
    assert np.array_equal(y_hls, np.asarray(y_emu, dtype=np.float64))
    # and the test is not vacuous: a plain float64 sum rounds many of these sums, and the
    # quantized output of the plain sum differs from the exact one somewhere
    g = read_graph(path)
    lin = next(op for op in g.ops if op.kind == "linear")
    xq = np.asarray(trace[lin.inputs[0]] if lin.inputs[0] in trace else
                    next(v for k, v in trace.items() if k.startswith("input_quant")), dtype=np.float64)
    plain = xq @ lin.weight.astype(np.float64).T + lin.bias.astype(np.float64)
    assert (plain != trace[lin.name]).mean() > 0.05
    qop = next(op for op in g.ops if op.kind == "quant")
    from fpq.emulate import quantize_fast
    assert not np.array_equal(quantize_fast(plain, qop.quant), np.asarray(y_emu, dtype=np.float32))


def test_layers_know_their_input_grid_and_forget_it_when_the_graph_changes():
    from fpq.testing.networks import MODELS
    m, _ = MODELS["residual"]()
    q = fpq.convert(m, fmt="e4m3")
    fpq.calibrate(q, [torch.randn(64, 16)])
    head = q.get_submodule("head")
    top, bottom = head._input_bound()  # through the shared ReLU to the residual add's quantizer
    assert top - bottom == fpq.exact_fixed("e4m3").width
    node = next(n for n in q.graph.nodes if n.target == "head")
    with q.graph.inserting_before(node):  # a new op between the quantizer and the layer
        neg = q.graph.call_function(torch.neg, (node.args[0],))
    node.args = (neg,)
    q.recompile()
    assert head._input_bound() is None
