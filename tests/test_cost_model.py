"""fpq.estimate_cost on hand-built TypePlans: structure, weight-value pricing, monotonic sanity,
hls4ml's reuse-factor trade-off, devices and errors; plus a tiny synthesis proving the flow."""
import json
import math

import numpy as np
import pytest
import torch

import fpq
from fpq import quantize
from fpq.formats import parse_format
from fpq.typeplan import LayerPlan, TensorType, TypePlan
from fpq.cost_model import estimate_cost, get_device
from fpq.cost_model.ops import csd_digits, default_costs, significant_bits

X_SCALE, W_SCALE = 2.0 ** -4, 2.0 ** -3


def _layer(name, W, w_fmt, x_fmt="int8", op="linear", out_shape=None, w_scale=W_SCALE):
    W = np.asarray(W, np.float32)
    lp = LayerPlan(name, op, {"input": TensorType(x_fmt, X_SCALE), "weight": TensorType(w_fmt, w_scale)},
                   fan_in=int(np.prod(W.shape[1:])), values={"weight": W},
                   attrs={"out_shape": out_shape or (1, W.shape[0])})
    return lp.derive()


def _plan(W, w_fmt="int8", x_fmt="int8", **kw):
    tp = TypePlan()
    n_in = int(np.prod(np.shape(W)[1:]))
    tp.add(LayerPlan("inp", "input_quant", {"output": TensorType(x_fmt, X_SCALE)}, attrs={"out_shape": (1, n_in)}))
    tp.add(_layer("fc1", W, w_fmt, x_fmt, **kw))
    tp.add(LayerPlan("act", "relu", {"input": TensorType(x_fmt, X_SCALE), "output": TensorType("uint8", X_SCALE)},
                     attrs={"out_shape": (1, np.shape(W)[0])}))
    return tp


def _weights(w_fmt, shape=(8, 16), seed=0, scale=W_SCALE):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.6, size=shape) * float(fpq.finfo(parse_format(w_fmt)).max) * scale / 2
    return quantize(w.astype(np.float32), parse_format(w_fmt), scale)


def test_estimate_on_hand_built_plan():
    tp = _plan(_weights("int8"))
    rep = estimate_cost(tp, part="xcvu9p", clock_period=4)
    assert [l["layer"] for l in rep.layers] == ["inp", "fc1", "act"]
    fc = rep.layers[1]
    assert fc["lut"] > 0 and fc["fan_in"] == 16 and fc["n_out"] == 8 and fc["mapping"] == "lut"
    for c in ("lut", "ff", "dsp", "bram18", "uram", "bops", "ebops"):
        assert rep.total[c] == pytest.approx(sum(l[c] for l in rep.layers))
    assert rep.total["latency_ns"] == rep.total["latency_cycles"] * 4
    assert rep.total["ii"] == 1
    text = str(rep)
    assert "fc1" in text and "total" in text and "xcvu9p" in text and "datapath" in text
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["device"] == "xcvu9p" and len(d["layers"]) == 3
    # the same result through fpq's public lazy API
    assert fpq.estimate_cost(tp).total["lut"] == estimate_cost(tp).total["lut"]


def test_weight_values_matter():
    W = _weights("int8")
    base = estimate_cost(_plan(W)).layers[1]["lut"]
    assert estimate_cost(_plan(np.zeros_like(W))).layers[1]["lut"] == 0          # zeros are free
    po2 = np.sign(W) * W_SCALE * 2.0 ** np.round(np.log2(np.maximum(np.abs(W) / W_SCALE, 1)))
    po2 = quantize(po2.astype(np.float32), parse_format("int8"), W_SCALE)
    assert estimate_cost(_plan(po2)).layers[1]["lut"] < 0.5 * base                # shifts are cheap
    pruned = W.copy()
    pruned[:, ::2] = 0
    assert estimate_cost(_plan(pruned)).layers[1]["lut"] < base
    rep = estimate_cost(_plan(pruned)).layers[1]
    assert rep["zero_weights"] == int((pruned == 0).sum())


def test_more_bits_never_cheaper():
    costs = default_costs()
    widths = list(range(1, 25))
    grid = np.array([[costs.mul_luts(a, b)[0] for b in widths] for a in widths])
    assert np.all(np.diff(grid, axis=0) >= 0) and np.all(np.diff(grid, axis=1) >= 0)
    # a constant multiplier never gets cheaper with a wider input (measured points and fit mixed)
    for k in list(range(-300, 301)) + [1021, -1340, 18776, -28514]:
        v = [costs.cmul_luts(x, k)[0] for x in range(2, 20)]
        assert all(b >= a for a, b in zip(v, v[1:])), (k, v)
    # the same layer with wider activations, constants unchanged
    W = _weights("int6")
    luts = [estimate_cost(_plan(W, "int6", x)).layers[1]["lut"] for x in ("int3", "int4", "int6", "int8", "int12")]
    assert all(b >= a for a, b in zip(luts, luts[1:])), luts
    # the same float weights at more weight bits, unrolled and shared (reuse 4)
    rng = np.random.default_rng(1)
    wf = rng.normal(0, 0.5, size=(8, 16)).astype(np.float32)
    for rf in (1, 4):
        luts = []
        for bits in (3, 4, 5, 6, 8):
            f = parse_format(f"int{bits}")
            s = np.float32(2.0 ** -(bits - 2))
            luts.append(estimate_cost(_plan(quantize(wf, f, s), f"int{bits}", w_scale=s), reuse_factor=rf,
                                      dsp_threshold=None).layers[1]["lut"])
        assert all(b >= a for a, b in zip(luts, luts[1:])), (rf, luts)


def test_reuse_factor_trades_resources_for_latency():
    W = _weights("int12", shape=(8, 32))
    reps = [estimate_cost(_plan(W, "int12"), reuse_factor=rf).layers[1] for rf in (1, 2, 4, 8, 16)]
    assert reps[0]["mapping"] == "dsp"
    dsp = [r["dsp"] for r in reps]
    lat = [r["latency_cycles"] for r in reps]
    assert all(b <= a for a, b in zip(dsp, dsp[1:])) and dsp[-1] < dsp[0], dsp
    assert all(b >= a for a, b in zip(lat, lat[1:])) and lat[-1] > lat[0], lat
    assert [r["ii"] for r in reps] == [1, 2, 4, 8, 16]
    assert reps[2]["n_mult"] == math.ceil(8 * 32 / 4)            # hls4ml's block factor
    W = _weights("int6", shape=(8, 32))
    luts = [estimate_cost(_plan(W, "int6"), reuse_factor=rf).layers[1]["lut"] for rf in (2, 4, 8, 16, 32)]
    assert all(b <= a for a, b in zip(luts, luts[1:])) and luts[-1] < luts[0], luts
    # Resource strategy keeps large weight arrays in BRAM
    big = _weights("int8", shape=(64, 256))
    res = estimate_cost(_plan(big), reuse_factor=64, strategy="Resource").layers[1]
    lat = estimate_cost(_plan(big), reuse_factor=64, strategy="Latency").layers[1]
    assert res["bram18"] > 0 and lat["bram18"] == 0 and res["lut"] < lat["lut"]


def test_devices_and_errors():
    assert get_device("xcvu9p-flga2104-2-e").name == "xcvu9p"
    fams = {get_device(n).family for n in ("xc7z020", "xcvu9p", "xcvc1902")}
    assert fams == {"7series", "ultrascale+", "versal"}
    tp = _plan(_weights("int12", shape=(4, 8)), "int12")
    with pytest.raises(ValueError, match="known devices: .*xcvu9p"):
        estimate_cost(tp, part="xc9000")
    with pytest.raises(ValueError, match="strategy"):
        estimate_cost(tp, strategy="Fast")
    with pytest.raises(ValueError, match="reuse_factor"):
        estimate_cost(tp, reuse_factor=0)
    with pytest.raises(ValueError, match="io_type"):
        estimate_cost(tp, io_type="io_serial")
    # a wide weight on a 7-series DSP48E1 (25x18) needs no more slices than on a DSP58 (27x24)
    d7 = estimate_cost(tp, part="xc7z020").total["dsp"]
    dv = estimate_cost(tp, part="xcvc1902").total["dsp"]
    assert d7 >= dv > 0


def test_weights_outside_their_type_are_refused():
    with pytest.raises(ValueError, match="not values of"):
        estimate_cost(_plan(_weights("int12"), "int8"))


def test_float_weight_scales_are_priced_as_their_codes():
    """Brevitas' default float (non power-of-two) weight scales: the stored weights are float32
    products q * s, and (q * s) / s in float64 is not q (68.00000276 for 68). The estimate reads
    the codes back from the float32 grid, so it prices them exactly as the same codes at a power
    of two scale; a weight off that grid (one float32 ulp away) is still refused."""
    rng = np.random.default_rng(1)
    codes = rng.integers(-128, 128, size=(8, 16)).astype(np.float64)
    s = np.float32(0.00092781364)
    W = (codes * np.float64(s)).astype(np.float32)
    assert not np.array_equal(W.astype(np.float64) / np.float64(s), codes)   # the case that crashed
    fl = estimate_cost(_plan(W, "int8", w_scale=s), dsp_threshold=None).layers[1]
    po2 = estimate_cost(_plan((codes * W_SCALE).astype(np.float32), "int8"), dsp_threshold=None).layers[1]
    assert fl["lut"] == po2["lut"] and fl["zero_weights"] == po2["zero_weights"]
    off = W.copy()
    off[3, 5] = np.nextafter(off[3, 5], np.float32(1))
    with pytest.raises(ValueError, match="not values of their type"):
        estimate_cost(_plan(off, "int8", w_scale=s))
    # a converted model with float scales (fpq.convert(scale="float")) prices end to end
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(8 * 4 * 4, 5)).eval()
    x = torch.randn(16, 4, 6, 6)
    q = fpq.convert(m, fmt="int8", scale="float")
    fpq.calibrate(q, [x], progress=False)
    rep = estimate_cost(q)
    assert {l["layer"] for l in rep.layers} >= {"conv2d_0", "linear_3"} and rep.total["lut"] > 0


def test_bops_and_ebops_by_hand():
    W = np.array([[0.0, 1.0, -3.0]], np.float32) * W_SCALE      # 1 output, fan-in 3, one zero
    rep = estimate_cost(_plan(W, "int4", "int4")).layers[1]
    b = 4
    assert rep["bops"] == pytest.approx(3 * ((2 / 3) * b * b + b + b + math.log2(3)))
    # EBOPs: effective bits of each nonzero weight (1 -> 1 bit, -3 -> 2 bits + sign) times input bits
    assert rep["ebops"] == pytest.approx((1 + 3) * 4)
    assert csd_digits(7) == 2 and csd_digits(5) == 2 and csd_digits(0) == 0 and significant_bits(12) == 2


def test_conv_binary_and_minifloat_datapath():
    rng = np.random.default_rng(2)
    Wc = quantize(rng.normal(0, 1, (4, 2, 3, 3)).astype(np.float32), parse_format("int4"), 0.5)
    tp = TypePlan()
    tp.add(_layer("conv", Wc, "int4", op="conv2d", out_shape=(1, 4, 6, 6), w_scale=0.5))
    r = estimate_cost(tp).layers[0]
    assert r["ii"] == 36 and r["pixels"] == 36 and r["fan_in"] == 18
    Wb = np.where(rng.random((8, 32)) < 0.5, -1.0, 1.0).astype(np.float32)
    tb = TypePlan()
    lp = LayerPlan("bin", "linear", {"input": TensorType("binary"), "weight": TensorType("binary")}, fan_in=32,
                   values={"weight": Wb}, attrs={"out_shape": (1, 8)}).derive()
    tb.add(lp)
    rb = estimate_cost(tb).layers[0]
    # priced as what fpq's HLS project builds (an adder tree of +-1 terms), the XNOR-popcount
    # alternative reported beside it
    assert rb["mapping"] == "adder-tree" and rb["dsp"] == 0
    assert 0 < rb["lut"] < estimate_cost(_plan(_weights("int8", (8, 32)))).layers[1]["lut"]
    assert 0 < rb["xnorpop_lut"] < rb["lut"]
    # minifloat weights: the report names the carrier datapath it priced
    We = quantize(rng.normal(0, 1, (8, 16)).astype(np.float32), parse_format("e4m3"), 1.0)
    rep = estimate_cost(_plan(We, "e4m3", w_scale=1.0), reuse_factor=4, dsp_threshold=None)
    assert "fixed<19" in rep.datapath and "carrier" in rep.datapath
    code = estimate_cost(_plan(We, "e4m3", w_scale=1.0), reuse_factor=4, dsp_threshold=None, datapath="code")
    assert code.layers[1]["lut"] < rep.layers[1]["lut"]          # decoding codes beats 19-bit multipliers


@pytest.mark.slow
def test_synthesis_flow_reproduces_table(tmp_path):
    from fpq.cost_model import rtl, synth
    meta = synth.table_meta()
    assert any("Yosys 0.70" in m for m in meta) and any("-nodsp" in m for m in meta)
    # one yosys run for both (the cell libraries are read once per run)
    row, neg = synth.synthesize_batch([rtl.adder(4), rtl.const_multiplier("int4", -8.0, "int5")], "lut", tmp_path)
    ref = [r for r in synth.read_table() if r["name"] == "add_s4_s4" and r["flow"] == "lut"][0]
    assert (row["lut"], row["carry"]) == (ref["lut"], ref["carry"])
    assert neg["lut"] <= 4 and neg["dsp"] == 0     # x * -8: a negation of 4 bits, no multiplier


def test_report_flags_a_design_that_does_not_fit():
    """e4m3 weights at reuse 1 on a small part need more DSPs than it has: the report says so."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    q = fpq.convert(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval(), "e4m3")
    fpq.calibrate(q, [torch.randn(32, 64)], progress=False)
    small = fpq.estimate_cost(q, part="xc7z020", reuse_factor=1)
    assert "dsp" in small.over_budget() and "DOES NOT FIT" in str(small)
    big = fpq.estimate_cost(q, part="xcvu9p", reuse_factor=64, strategy="Resource")
    assert big.over_budget() == [] and "DOES NOT FIT" not in str(big)


def test_io_stream_adds_fifos_and_line_buffers():
    import torch
    from fpq.testing.networks import conv2d_bn_net
    m, shape = conv2d_bn_net()
    q = fpq.convert(m, fmt="int8")
    fpq.calibrate(q, [torch.randn((64,) + shape)])
    par = fpq.estimate_cost(q, part="xcvu9p")
    st = fpq.estimate_cost(q, part="xcvu9p", io_type="io_stream")
    rows = {r["layer"]: r for r in st.layers}
    # the first conv's output: 4 channels x 8 bits x 64 pixels > 1024 bits, but only 64 words deep:
    # distributed RAM (LUTRAM), not a BRAM18 7/8 empty; the second conv keeps two input rows in
    # shift registers
    from fpq.cost_model.stream import lutram_luts
    assert rows["conv2d_0"]["fifo_bram18"] == 0 and rows["conv2d_0"]["fifo_lut"] == lutram_luts(32, 64)
    assert rows["conv2d_4"]["line_buffer_lut"] > 0
    assert any("io_stream" in n for n in st.notes)
    # element-wise layers run one pixel (its channels) per cycle in io_stream: their datapath is
    # the io_parallel one over the map divided by the pixels, II the pixels
    prow = {r["layer"]: r for r in par.layers}
    relus = [name for name, r in rows.items() if r["op"] == "relu"]
    assert relus
    for name in relus:
        own = rows[name]["lut"] - rows[name].get("fifo_lut", 0) - rows[name].get("line_buffer_lut", 0)
        pixels = rows[name]["ii"]
        assert pixels > 1 and own == pytest.approx(prow[name]["lut"] / pixels)
    # flat layers need no FIFO of their own
    assert rows["linear_7"]["fifo_lut"] == 0 and rows["linear_7"]["fifo_bram18"] == 0


def test_grouped_conv_priced_as_the_dense_conv_hls_builds():
    """fpq.to_hls builds a grouped conv dense with zero cross-group weights: the estimate prices
    exactly that circuit (same as an explicitly zero-filled dense conv), at reuse 1 and above:
    in the Latency strategy the zero slots need no multiplier (hls4ml's multiplier_limit), in the
    Resource strategy every slot is read from memory and takes one."""
    torch.manual_seed(0)
    grouped = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, groups=2)).eval()
    dense = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3)).eval()
    with torch.no_grad():
        dense[0].weight.zero_()
        dense[0].weight[:4, :2] = grouped[0].weight[:4]
        dense[0].weight[4:, 2:] = grouped[0].weight[4:]
        dense[0].bias.copy_(grouped[0].bias)
    x = torch.randn(16, 4, 6, 6)
    rows = {}
    for name, m in (("grouped", grouped), ("dense", dense)):
        q = fpq.convert(m, fmt="fixed<8,3>")
        q(x)
        rows[name] = [estimate_cost(q.fpq_typeplan(x[:1]), reuse_factor=rf).layers[1] for rf in (1, 4)]
    for g, d in zip(rows["grouped"], rows["dense"]):
        assert g["op"] == "conv2d" and g["fan_in"] == d["fan_in"] == 36
        for key in ("dsp", "n_mult", "latency_cycles"):
            assert g[key] == d[key], key
        # the grouped layer's accumulator is a bit narrower (its sums have 18 terms, not 36); at
        # reuse 4 the 8 x 8 shared multipliers are DSPs and the LUTs left are mostly those adders
        assert g["acc_bits"] <= d["acc_bits"] and g["lut"] == pytest.approx(d["lut"], rel=0.01 if g["dsp"] == 0 else 0.05)
    g4 = rows["grouped"][1]
    # hls4ml's Latency multiplier_limit: ceil(n_in * n_out / R) - n_zeros / R, at most the true MACs / R
    assert g4["n_mult"] == 36 * 8 // 4 - g4["zero_weights"] // 4 and g4["n_mult"] <= 18 * 8 // 4
    q = fpq.convert(grouped, fmt="fixed<8,3>")
    q(x)
    res = estimate_cost(q.fpq_typeplan(x[:1]), reuse_factor=4, strategy="Resource").layers[1]
    assert res["n_mult"] == 36 * 8 // 4   # every dense slot, zeros included


def test_depthwise_conv_costs_its_true_macs_at_any_reuse():
    """A depthwise conv at reuse R > 1 (Latency strategy) shares multipliers among its true MACs,
    not the dense layer's slots (DS-CNN priced 1.08M LUT at reuse 1 and 14.4M at reuse 2): its
    multipliers are the dense count / groups, it costs what a one-group conv with the same MACs
    costs, and with its weights in DSPs reuse 2 takes no more LUTs or DSPs than reuse 1. (With
    8-bit weights in fabric, reuse 2 honestly costs more LUTs than reuse 1: a shared general 8x8
    multiplier, 134 LUTs measured, against constant multipliers of 15-35.)"""
    torch.manual_seed(0)
    dw = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, groups=16)).eval()
    one = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3)).eval()       # the same 144 MACs, one group
    with torch.no_grad():
        one[0].weight.copy_(dw[0].weight)
        one[0].bias.copy_(dw[0].bias)
    plans = {}
    for name, m, cin in (("dw", dw, 16), ("one", one, 1)):
        x = torch.randn(16, cin, 6, 6)
        for w in ("int8", "int12"):
            q = fpq.convert(m, weights=w, activations="int8")
            fpq.calibrate(q, [x], progress=False)
            plans[name, w] = q.fpq_typeplan(x[:1])
    for rf in (2, 4, 8):
        d = estimate_cost(plans["dw", "int8"], reuse_factor=rf).layers[1]
        o = estimate_cost(plans["one", "int8"], reuse_factor=rf).layers[1]
        assert d["fan_in"] == 144 and d["n_mult"] == o["n_mult"] == 144 // rf     # dense 144 x 16 / 16 groups
        assert d["lut"] == pytest.approx(o["lut"], rel=0.05) and d["ff"] <= 2 * o["ff"], (rf, d, o)
    r1, r2 = (estimate_cost(plans["dw", "int12"], reuse_factor=rf).layers[1] for rf in (1, 2))
    assert r1["mapping"] == r2["mapping"] == "dsp"
    assert r2["lut"] <= r1["lut"] and r2["dsp"] <= r1["dsp"], (r1, r2)
    luts = [estimate_cost(plans["dw", "int8"], reuse_factor=rf).layers[1]["lut"] for rf in (2, 4, 8, 16)]
    assert all(b < a for a, b in zip(luts, luts[1:])), luts


def test_per_channel_weight_scales_price_each_channel_at_its_code_width():
    """Unrolled weights with per-output-channel po2 scales: channel c's constants are int codes
    times 2^e_c, so they cost what the same codes cost at one scale (DSP mapping and LUTs alike);
    the common carrier, wider by the spread of the exponents, matters only for shared multipliers."""
    rng = np.random.default_rng(3)
    codes = rng.integers(-127, 128, size=(8, 16)).astype(np.float64)
    exps = np.array([0, -3, -6, -1, -2, -5, -4, 0], dtype=np.float64)
    scales = (2.0 ** exps).astype(np.float32)
    per_ch = _plan((codes * scales[:, None]).astype(np.float32), "int8", w_scale=scales)
    one = _plan((codes * 2.0 ** -3).astype(np.float32), "int8", w_scale=np.float32(2.0 ** -3))
    for thr in (None, 8):
        a = estimate_cost(per_ch, dsp_threshold=thr).layers[1]
        b = estimate_cost(one, dsp_threshold=thr).layers[1]
        assert a["dsp"] == b["dsp"] and a["lut"] == pytest.approx(b["lut"], rel=0.05), (thr, a, b)
    assert estimate_cost(one, dsp_threshold=8).layers[1]["dsp"] > 0
    # shared multipliers (reuse 4) hold the common carrier: wider, so not cheaper
    wide = estimate_cost(per_ch, reuse_factor=4, dsp_threshold=None).layers[1]
    narrow = estimate_cost(one, reuse_factor=4, dsp_threshold=None).layers[1]
    assert wide["lut"] > narrow["lut"] and wide["w_type"] != narrow["w_type"]


def test_threshold_lookup_cost_monotone():
    """Wider input never cheaper; more thresholds never cheaper within one search shape. A count
    with n + 1 not a power of two makes an irregular search (mid a data-dependent sum), which
    yosys builds larger than the regular tree of 2**S - 1 thresholds: 252 thresholds (e4m3) cost
    more than 255 (int8). So monotone in n is asserted per shape, and irregular >= regular below;
    and up to half the input grid: a table holding nearly every value of a narrow input is nearly
    the identity, measured cheaper (8-bit input, 255 random thresholds: 41 LUTs)."""
    costs = default_costs()
    reg = [2 ** s - 1 for s in range(1, 9)]
    irr = [n for n in range(2, 256) if (n + 1) & n]
    for w in (8, 16, 24, 32, 45):
        for ns in (reg, irr):
            v = [costs.thr_luts(w, n, 30)[0] for n in ns if n <= 2 ** (w - 1)]
            assert all(b >= a for a, b in zip(v, v[1:])), (w, v)
        for n in irr:
            assert costs.thr_luts(w, n, 30)[0] >= costs.thr_luts(w, 2 ** (n.bit_length() - 1) - 1, 30)[0]
    for n in (1, 7, 100, 255):
        v = [costs.thr_luts(w, n, 30)[0] for w in range(8, 54)]
        assert all(b >= a for a, b in zip(v, v[1:])), (n, v)
        assert costs.thr_luts(32, n, 32)[0] >= costs.thr_luts(32, n, 8)[0]   # wider levels


def test_threshold_fit_on_held_out_lookups():
    """Held-out threshold lookups (cost_model/holdout_xcup.csv: other widths, counts, scales,
    never fitted) against the fit: median |rel err| within 20%."""
    from fpq.cost_model import synth
    costs = default_costs()
    rows = [r for r in synth.read_table(synth.HOLDOUT_TABLE) if r["kind"] == "thr"]
    assert len(rows) >= 8 and not {r["name"] for r in rows} & {r["name"] for r in costs.rows}
    err = [abs(costs.thr_luts(r["params"]["in_bits"], r["params"]["n"], r["params"]["out_bits"],
                              r["params"]["span"])[0] - r["lut"]) / r["lut"] for r in rows]
    assert np.median(err) < 0.2, err


def test_float_scaled_mlp_prices_its_lookups():
    """fpq.convert(scale="float") makes every activation quantizer a threshold lookup in the HLS
    project: the input quantizer over float32 and each layer's requantization over its exact
    accumulator. The report prices them with the HLS project's own tables and input types
    (checked against fpq's HLS builder), and the layers on the exact float32 values they carry."""
    from torch import nn
    from fpq.export.graph import typeplan_from_graph
    from fpq.hls.builder import plan_hls
    from fpq.hls.project import as_graph

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.randn(64, 16)
    reps, qs = {}, {}
    for sc in ("float", "po2"):
        qs[sc] = fpq.convert(m, weights="fixed<8,1>", activations="int8", scale=sc)
        fpq.calibrate(qs[sc], [x], progress=False)
        reps[sc] = estimate_cost(qs[sc])
    rep = reps["float"]
    rows = {r["layer"]: r for r in rep.layers}
    lk = [r for r in rep.layers if r.get("mapping") == "threshold-lookup"]
    assert [r["layer"] for r in lk] == ["input_quant", "quant_0", "quant_2"]
    assert all(r["lut"] > 0 and r["latency_cycles"] >= 1 for r in lk)
    assert rows["input_quant"]["in_bits"] == 32 and rows["input_quant"]["lookups"] == 16
    assert rows["quant_0"]["lookups"] == 32 and rows["quant_2"]["lookups"] == 10
    # the same tables and input widths as the HLS project fpq writes
    g = as_graph(qs["float"], x[:1])
    hls = plan_hls(g, typeplan_from_graph(g))
    acc = {L["name"]: hls.precisions[L["name"]]["accum"].width for L in hls.layers if L["class_name"] == "Dense"}
    n_th = {L["name"]: int(L["fpq_format"].split("(")[1].split()[0]) for L in hls.layers
            if L["class_name"] == "FpqQuantize"}
    assert rows["quant_0"]["in_bits"] == acc["linear_0"] and rows["quant_2"]["in_bits"] == acc["linear_2"]
    assert (rows["input_quant"]["thresholds"], rows["quant_0"]["thresholds"], rows["quant_2"]["thresholds"]) == \
        (n_th["input_quant"], n_th["quant_0"], n_th["quant_2"])
    assert not any("neither is priced" in n or "lookup bounded" in n for n in rep.notes)
    # float scales cost more: the lookups, and 32-bit value carriers instead of 8-bit codes
    # feeding the constant multipliers (fpq's HLS project multiplies the float32 values q * s)
    po2 = reps["po2"]
    assert not any(r.get("mapping") == "threshold-lookup" for r in po2.layers)
    assert rows["linear_0"]["x_type"].startswith("fixed<32") and rows["linear_0"]["lut"] > po2.layers[1]["lut"]
    assert rep.total["lut"] > po2.total["lut"] + sum(r["lut"] for r in lk) * 0.5
    # io_stream: flat tensors stream whole, so the same lookups
    st = estimate_cost(qs["float"], io_type="io_stream")
    assert [r["lookups"] for r in st.layers if r.get("mapping") == "threshold-lookup"] == [16, 32, 10]
