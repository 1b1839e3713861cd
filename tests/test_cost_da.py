"""#23: ``fpq.estimate_cost(..., strategy="distributed_arithmetic")`` prices each Dense kernel from
da4ml's own cost report of the kernel fpq's HLS path hands it, corrected by the synthesized ratio
of da4ml's Verilog (cost_model/da_xcup.csv)."""
import numpy as np
import pytest
import torch

import fpq

pytest.importorskip("da4ml")

from fpq.cost_model import da  # noqa: E402
from fpq.cost_model.estimate import _weight_ints  # noqa: E402
from fpq.cost_model.ops import default_costs  # noqa: E402


@pytest.fixture(scope="module")
def mlp_int8():
    from fpq.testing.networks import mlp

    m, shape = mlp((8, 16, 4), seed=0)
    q = fpq.convert(m, fmt="int8")
    fpq.calibrate(q, [torch.randn((256,) + shape, generator=torch.Generator().manual_seed(1)) * 2])
    q.eval()
    return q, torch.zeros((1,) + shape)


def test_da_strategy_is_priced_from_da4ml(mlp_int8):
    q, x0 = mlp_int8
    rep = fpq.estimate_cost(q, strategy="distributed_arithmetic", example_input=x0)
    lat = {r["layer"]: r for r in fpq.estimate_cost(q, strategy="Latency", dsp_threshold=None,
                                                    example_input=x0).layers}
    tp = fpq.plan(q, x0)
    macs = [r for r in rep.layers if r["op"] == "linear"]
    assert len(macs) == 2
    for r in macs:
        assert r["mapping"] == "distributed-arithmetic" and r["dsp"] == 0 and r["n_mult"] == 0
        lp = tp[r["layer"]]
        W = np.asarray(lp.values["weight"], np.float64)
        xc = lp.tensors["input"].carrier()
        sol = da.solve(xc, W.T, lp.values.get("bias"))
        assert r["da_cost"] == pytest.approx(float(sol.cost))
        # the kernel's price plus the same fused requantizer the Latency row carries
        K = _weight_ints(lp, lp.tensors["weight"], lp.tensors["weight"].carrier(), [])
        requant = lat[r["layer"]]["lut"] - default_costs().dense_luts(xc.width, K, xc.signed)
        assert requant > 0
        assert r["lut"] == pytest.approx(da.price(sol.cost, W.shape[0]) + requant, rel=1e-9)
    assert rep.total["dsp"] == 0 and rep.total["lut"] > 0
    # the other spelling hls4ml accepts
    assert fpq.estimate_cost(q, strategy="da", example_input=x0).total["lut"] == pytest.approx(rep.total["lut"])


def test_da_strategy_refuses_reuse(mlp_int8):
    q, x0 = mlp_int8
    with pytest.raises(ValueError, match="reuse_factor 2; allowed: 1"):
        fpq.estimate_cost(q, strategy="distributed_arithmetic", reuse_factor=2, example_input=x0)
    with pytest.raises(ValueError, match="allowed: Latency, Resource, distributed_arithmetic"):
        fpq.estimate_cost(q, strategy="Pipelined", example_input=x0)


def test_da_price_is_fitted_on_synthesized_kernels():
    rows = da.read_table()
    fit_rows = [r for r in rows if r["split"] == "fit"]
    held = [r for r in rows if r["split"] == "holdout"]
    assert len(fit_rows) >= 8 and len(held) >= 3
    assert all(r["lut"] > 0 and r["da_cost"] > 0 for r in rows)
    err = [abs(da.price(r["da_cost"], r["n_out"]) - r["lut"]) / r["lut"] for r in held]
    assert np.median(err) < 0.2, err
    with open(da.TABLE) as f:
        assert "Yosys 0.70" in f.readline()
