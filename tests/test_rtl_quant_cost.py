"""#23: the activation quantizers fpq.to_rtl writes, priced as synthesized.

* one element of each kind (cast, minifloat, the float32 network-input lookup) simulated with CXXRTL
  equals fpq's quantizer on every input code (exhaustive up to 2^16 codes, sampled finite float32
  numbers for the port), and a wrong oracle is caught (the check can fail);
* the committed table holds the synthesized quantizers (yosys version in its header) and the fit
  on them holds on the held-out rows;
* ``estimate_cost`` prices a network's minifloat requantizers and its input quantizer with those fits.
"""
import numpy as np
import pytest
import torch

import fpq
from fpq.cost_model.ops import OperatorCosts, minifloat_quantizer_shape, quant_features
from fpq.cost_model.synth import HOLDOUT_TABLE, TABLE, read_table, table_meta
from fpq.formats import Fixed, parse_format
from fpq.rtl.calibration import check, grid
from fpq.rtl.quantizers import input_lookup_op, quantizer_op


def test_quantizer_operators_equal_fpq(tmp_path):
    ops = [quantizer_op("int4", Fixed(14, 6), -1), quantizer_op("e2m1", Fixed(13, 5), 0),
           quantizer_op("e4m3", Fixed(16, 7), -4), quantizer_op("e3m0", Fixed(12, 6), 1),
           input_lookup_op("e2m1", 2.0), input_lookup_op("uint8", 0.0123)]
    assert [op.kind for op in ops] == ["castq", "mfq", "mfq", "mfq", "f32q", "f32q"]
    assert check(ops, tmp_path) == len(ops)


def test_a_wrong_oracle_is_caught(tmp_path):
    op = quantizer_op("e2m1", Fixed(10, 4), 0)
    good = op.reference
    op.reference = lambda inp: {"y": good(inp)["y"] + (np.ravel(inp["x"]) == 37)}   # one code off
    with pytest.raises(AssertionError, match="1 of 1024 simulated outputs differ"):
        check([op], tmp_path)


def test_quantizer_refuses_an_unsigned_input():
    with pytest.raises(ValueError, match="signed Fixed"):
        quantizer_op("int4", Fixed(8, 4, False))


def test_shape_counts_only_the_binades_the_input_reaches():
    e4m3 = parse_format("e4m3")
    r_narrow, c_narrow, _ = minifloat_quantizer_shape(e4m3, 0, 8, 0)      # 8-bit integers (|x| on 9 bits)
    r_wide, c_wide, _ = minifloat_quantizer_shape(e4m3, 0, 24, 12)
    assert c_narrow < c_wide and r_narrow < r_wide
    # binades 2^4 .. 2^8 have an ulp (2^1 .. 2^5) coarser than the integer input: 5 rounders; below
    # 2^4 the input is on the grid (a shift). Candidates: the 15 binades 2^-6 .. 2^8; the saturation
    # select (|x| >= 2^9) is constant false on a 9-bit magnitude
    assert r_narrow == 5 and c_narrow == 15


@pytest.fixture(scope="module")
def costs():
    return OperatorCosts()


def test_table_holds_the_synthesized_quantizers(costs):
    rows = read_table(TABLE)
    kinds = {k: [r for r in rows if r["kind"] == k] for k in ("castq", "mfq", "f32q")}
    assert all(len(v) >= 5 for v in kinds.values()), {k: len(v) for k, v in kinds.items()}
    assert "Yosys 0.70" in table_meta(TABLE)[0]
    names = {op.name for op in grid("fit")}
    assert {r["name"] for v in kinds.values() for r in v} == names
    e4m3 = [r for r in kinds["mfq"] if r["params"]["fmt"] == "e4m3"]
    # an e4m3 quantizer is no rounding adder: every one costs over 3x the largest cast
    assert min(r["lut"] for r in e4m3) > 3 * max(r["lut"] for r in kinds["castq"])


def test_quantizer_fit_holds_out(costs):
    held = [r for r in read_table(HOLDOUT_TABLE) if r["kind"] in ("castq", "mfq")]
    assert len(held) >= 12
    err = []
    for r in held:
        est = max(0.0, costs.quant_fits[r["kind"]](quant_features(r["kind"], r["params"])))
        err.append(abs(est - r["lut"]) / r["lut"])
    assert np.median(err) < 0.2, sorted(np.round(err, 3))


def _mlp(fmt):
    from fpq.testing.networks import mlp

    m, shape = mlp((8, 16, 8, 4), seed=0)
    q = fpq.convert(m, fmt=fmt)
    fpq.calibrate(q, [torch.randn((256,) + shape, generator=torch.Generator().manual_seed(1)) * 2])
    q.eval()
    return q, torch.zeros((1,) + shape)


def test_estimate_prices_minifloat_quantizers_as_synthesized(costs):
    q, x0 = _mlp("e4m3")
    net = fpq.to_rtl(q, None, x0, pipeline_every=0)
    rows = {r["layer"]: r for r in fpq.estimate_cost(q, reuse_factor=1, dsp_threshold=None, example_input=x0).layers}
    mfs = [li for li in net.layers if li.circuit == "minifloat"]
    assert len(mfs) == 3
    for li in mfs:
        lp = net.plan[li.name]
        src = net.plan[lp.attrs["inputs"][0]].exact_sum()
        t = lp.tensors["output"]
        per = costs.quant_luts(t.format, int(np.log2(float(t.scale))), src, t.carrier())
        assert per > 100 and rows[li.name]["lut"] == pytest.approx(li.params["n"] * per)
    inp = rows["input_quant"]
    assert inp["mapping"] == "threshold-lookup" and inp["in_bits"] == 32 and inp["lut"] > 0
