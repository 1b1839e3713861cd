"""Block-scaled formats through the emulator (numpy and torch backends) and fpq.verify: the exact
block dot product (fpq.numerics.block_dot) against Python's exact rationals, the reader of fpq's
BlockQuant node, and torch == emulator == qonnx's executor at atol=0."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from fpq.numerics.block_dot import block_linear, exact_sum_odd
from fpq.numerics.blocks import block_quantize


def ro53(fr: Fraction) -> float:
    """Round-to-odd of an exact rational at 53 bits (the oracle, by integers)."""
    if fr == 0:
        return 0.0
    sign = -1 if fr < 0 else 1
    a = abs(fr)
    e = math.floor(math.log2(a.numerator) - math.log2(a.denominator))
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    scaled = a / Fraction(2) ** (e - 52)
    m = scaled.numerator // scaled.denominator
    if m != scaled and m % 2 == 0:
        m += 1
    return sign * math.ldexp(m, e - 52)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_exact_sum_odd_against_rationals(backend):
    rng = np.random.default_rng(1)
    t = rng.standard_normal((300, 9)) * np.exp2(rng.integers(-300, 300, size=(300, 9)))
    t[::5, 3] = -t[::5, 4]                    # exact cancellation of the largest terms
    t[::7] = np.round(t[::7] * 0)             # all zero rows
    t[1::6, 0] = 2.0 ** 200
    t[1::6, 1] = -(2.0 ** 200)
    t[1::6, 2] = 2.0 ** -200                  # cancels to a tiny value
    arr = torch.tensor(t) if backend == "torch" else t
    got = np.asarray(exact_sum_odd(arr), dtype=np.float64)
    want = np.array([ro53(sum((Fraction(v) for v in row), Fraction(0))) for row in t])
    assert np.array_equal(got, want)


def exact_linear(x, w, b):
    return np.array([[ro53(sum((Fraction(a) * Fraction(c) for a, c in zip(xr, wr)), Fraction(b[o])))
                      for o, wr in enumerate(w)] for xr in x])


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxfp8_e5m2", "mxint8"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_block_linear_exact_over_wide_scale_ranges(fmt, backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 70)) * np.exp2(rng.integers(-60, 60, size=(12, 70)) // 8)
    x[:, 40:] *= 2.0 ** 90        # blocks hundreds of binades apart
    x[::4, :32] = 0.0
    x[3, 7] = 3e30
    w = rng.standard_normal((5, 70)) * np.exp2(rng.integers(-100, 100, size=(5, 1)))
    xq, wq = block_quantize(x, fmt).values, block_quantize(w, fmt).values
    b = np.array([0.25, -3.0, 2.0 ** -40, 0.0, 1e10])
    args = (torch.tensor(xq), torch.tensor(wq), torch.tensor(b)) if backend == "torch" else (xq, wq, b)
    y, fits = block_linear(*args, k=int(fpq_k(fmt)))
    y = np.asarray(y, dtype=np.float64)
    assert np.array_equal(y, exact_linear(xq, wq, b))
    fits = np.asarray(fits)
    assert not fits.all()
    assert np.array_equal(y[fits], (xq @ wq.T + b)[fits])   # where float64 suffices, it is the plain sum


def fpq_k(fmt):
    import fpq
    return fpq.parse_format(fmt).k


# ------------------------------------------------------------------ the whole path: reader, emulator, verify
FORMATS = [("mxfp4", "mxfp4"), ("nvfp4", "nvfp4"), ("mxfp8_e4m3", "mxfp8_e4m3"), ("mxint8", "mxint8"),
           ("nvfp4", "mxfp8_e4m3")]


def converted(w_fmt, a_fmt, x):
    import fpq
    from test_block_convert import mlp
    q = fpq.convert(mlp(), weights=w_fmt, activations=a_fmt)
    fpq.calibrate(q, [x[:256]], progress=False)
    return q


def test_reader_plan_and_refusals(tmp_path):
    import fpq
    import fpq.export
    from test_block_convert import inputs
    x = inputs(300)
    q = converted("nvfp4", "mxfp8_e4m3", x)
    path = fpq.export_qonnx(q, tmp_path / "m.onnx", x[:1])
    g = fpq.export.read_graph(path)
    assert [op.kind for op in g.ops] == ["input_quant", "linear", "quant", "relu", "linear", "quant", "output"]
    lin = g.ops[1]
    assert lin.weight.dtype == np.float64 and str(lin.types["weight"].format) == "block<e2m1,ue4m3,16>"
    ref = block_quantize(q.get_submodule("0").weight.detach().numpy(), "nvfp4").values
    assert np.array_equal(lin.weight, ref)          # the exact float64 values (up to 30 bits)
    assert float(lin.weight_quant.scale) == block_quantize(q.get_submodule("0").weight.detach().numpy(),
                                                           "nvfp4").tensor_scale
    lp = fpq.plan(path)["linear_0"]
    assert "accumulator" not in lp.tensors and "scale exponent (-9, 8)" in lp.attrs["block_sum"]
    assert "scale exponent (-127, 127)" in lp.attrs["block_sum"]   # HLS and cost: tests/test_block_hls.py


def test_verify_exact_mxfp4_qonnx_counted():
    """mxfp4 on 300 off-grid inputs: every sum fits float64, so qonnx's executor counts too."""
    import fpq
    from test_block_convert import inputs
    x = inputs(300)
    q = converted("mxfp4", "mxfp4", x)
    r = fpq.verify(q, x, qonnx_subset=8)
    assert r.status == "EXACT" and r.notes == [], r.notes


@pytest.mark.slow
@pytest.mark.parametrize("w_fmt, a_fmt", FORMATS)
def test_verify_exact(w_fmt, a_fmt):
    """torch == numpy emulator == torch backend (== qonnx's executor where float64 holds the sums;
    else verify's note says so) at atol=0 on 2,000 off-grid inputs with zero blocks and a huge
    outlier; qonnx on the first 16, one sample at a time."""
    import fpq
    from test_block_convert import inputs
    x = inputs(2000)
    q = converted(w_fmt, a_fmt, x)
    y = np.asarray(fpq.emulate(q, x), dtype=np.float64)
    assert np.array_equal(y, q(x).detach().double().numpy())
    assert np.array_equal(np.asarray(fpq.emulate(q, x, backend="torch"), dtype=np.float64), y)
    r = fpq.verify(q, x, qonnx_subset=16)
    assert r.status == "EXACT", (r.first_mismatch, r.notes)
    assert {row["path"] for row in r.table} == {"torch", "qonnx"}


def test_verify_says_when_float64_cannot_hold_the_sum():
    """Blocks 2^200 apart: the emulator's exact sum (rounded to odd) and torch agree; qonnx's float64
    MatMul is not counted, and verify says why."""
    import fpq
    from test_block_convert import inputs
    x = inputs(64)
    x[:, 40:] *= 2.0 ** 100
    x[:, :32] *= 2.0 ** -100
    x[:, 32:40] = 0
    q = converted("mxfp4", "mxfp4", x)
    import fpq.export
    from fpq.emulate import Emulator
    emu = Emulator(fpq.export.read_graph(fpq.export_qonnx(q, None, x[:1])))
    assert np.array_equal(np.asarray(emu(x.numpy()), dtype=np.float64), q(x).detach().double().numpy())
    assert emu.block_inexact["linear_0"] > 0
    r = fpq.verify(q, x, qonnx_subset=4)
    assert any("float64 cannot hold" in n for n in r.notes)
    assert r.status == "EXACT"   # torch counted; qonnx compared, not counted
