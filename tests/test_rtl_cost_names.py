"""The circuit priced is the circuit emitted (#23 item 5): for Linear layers at int8 and e2m1, the
cost model's per-layer breakdown (``fpq.estimate_cost``, Latency, reuse 1) names the operators
``fpq.to_rtl`` writes for the same layer: fan-in, outputs, constant multipliers (nonzero weights),
zero and power-of-two weights, input / weight carrier widths, accumulator width, and for a cast
requantizer its input and output widths. No simulation or synthesis: the Verilog is only written.

The input quantizer of a minifloat network is the threshold lookup over the float32 port that
``to_rtl`` writes, priced as such (thresholds, input and output widths, one per element; its LUTs
from the synthesized float32-input lookups, ``fpq.rtl.calibration``).
"""
import numpy as np
import pytest
import torch

import fpq
from fpq.testing.networks import mlp


def _pair(fmt):
    m, shape = mlp((8, 16, 8, 4), seed=0)
    q = fpq.convert(m, fmt=fmt)
    fpq.calibrate(q, [torch.randn((256,) + shape, generator=torch.Generator().manual_seed(1)) * 2])
    q.eval()
    x0 = torch.zeros((1,) + shape)
    net = fpq.to_rtl(q, None, x0, pipeline_every=0)
    est = fpq.estimate_cost(q, strategy="Latency", reuse_factor=1, dsp_threshold=None, example_input=x0)
    return net, {r["layer"]: r for r in est.layers}


@pytest.fixture(scope="module", params=["int8", "e2m1"])
def pair(request):
    return request.param, *_pair(request.param)


def test_linear_layers_name_the_same_operators(pair):
    fmt, net, rows = pair
    macs = [li for li in net.layers if li.circuit == "mac"]
    assert len(macs) == 3
    for li in macs:
        r, p = rows[li.name], li.params
        assert (r["fan_in"], r["n_out"]) == (p["n_in"], p["n_out"]), li.name
        assert r["n_mult"] == p["multipliers"], li.name
        codes = np.array(p["weight_codes"], dtype=object)
        assert r["zero_weights"] == int(np.sum(codes == 0))
        assert r["po2_weights"] == sum(1 for k in codes if k and abs(k) & (abs(k) - 1) == 0)
        assert fpq.parse_format(r["x_type"]).width == p["x_bits"]
        assert fpq.parse_format(r["w_type"]).width == p["w_bits"]
        assert r["acc_bits"] == p["acc_bits"], li.name


def test_cast_requantizers_match(pair):
    fmt, net, rows = pair
    casts = [li for li in net.layers if li.circuit == "cast"]
    if fmt != "int8":
        assert not casts
        return
    assert len(casts) == 3
    for li in casts:
        # fused into its linear layer by the TypePlan: priced there, from the accumulator to the output
        lp = net.plan[li.name]
        src = net.plan[lp.attrs["fused_into"]]
        assert rows[src.name]["acc_bits"] == li.params["in_bits"]
        assert src.tensors["output"].carrier().width == li.params["out_bits"]
        assert rows[src.name]["n_out"] == li.params["n"]


def test_minifloat_requantizers_are_priced(pair):
    fmt, net, rows = pair
    mfs = [li for li in net.layers if li.circuit == "minifloat"]
    assert len(mfs) == (3 if fmt == "e2m1" else 0)
    for li in mfs:   # a quant layer of its own in both (not fused: no ap_fixed cast computes it)
        assert rows[li.name]["op"] == "quant" and rows[li.name]["lut"] > 0


def test_minifloat_input_quantizer_is_priced_as_a_lookup():
    net, rows = _pair("e2m1")
    for li in net.layers:
        if li.circuit == "lookup":
            r = rows.get(li.name)
            assert r is not None and r.get("mapping") == "threshold-lookup", (li.name, r and r.get("mapping"))
            assert r["lut"] > 0
            assert (r["thresholds"], r["in_bits"], r["out_bits"], r["lookups"]) == \
                (li.params["thresholds"], li.params["in_bits"], li.params["out_bits"], li.params["n"])


# --------------------------------------------------------------- pipeline registers (fpq.cost_model.pipeline)
def _conv_q(fmt):
    from torch import nn
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 2, groups=2),
                      nn.ReLU(), nn.Flatten(), nn.Linear(4, 3)).eval()
    q = fpq.convert(m, fmt=fmt)
    fpq.calibrate(q, [torch.randn((128, 2, 4, 4), generator=torch.Generator().manual_seed(2)) * 2], progress=False)
    return q.eval(), torch.zeros((1, 2, 4, 4))


def _mlp_q(fmt):
    m, shape = mlp((8, 16, 8, 4), seed=0)
    q = fpq.convert(m, fmt=fmt)
    fpq.calibrate(q, [torch.randn((256,) + shape, generator=torch.Generator().manual_seed(1)) * 2], progress=False)
    return q.eval(), torch.zeros((1,) + shape)


def _registers(verilog: str, prefix: str) -> tuple[int, int]:
    """(registers, bits) declared in the Verilog for the trees of one layer."""
    import re
    regs = re.findall(rf"^\s*reg signed \[(\d+):0\] {prefix}_s\d+_l\d+_\d+;$", verilog, re.M)
    return len(regs), sum(int(h) + 1 for h in regs)


@pytest.mark.parametrize("case", [("mlp", "int8", 1), ("mlp", "e2m1", 2), ("mlp", "binary", 3), ("conv", "int4", 1),
                                  ("conv", "e4m3", 2)])
def test_pipeline_registers_priced_are_those_emitted(case):
    kind, fmt, every = case
    q, x0 = (_mlp_q if kind == "mlp" else _conv_q)(fmt)
    net = fpq.to_rtl(q, None, x0, pipeline_every=every)
    est = fpq.estimate_cost(q, reuse_factor=1, dsp_threshold=None, example_input=x0, pipeline_every=every)
    rows = {r["layer"]: r for r in est.layers}
    macs = [li for li in net.layers if li.circuit == "mac"]
    assert macs
    for li in macs:
        r = rows[li.name]
        n, bits = _registers(net.verilog, li.name)
        assert (r["registers"], r["register_bits"]) == (n, bits) == (n, li.params["register_bits"]), li.name
        assert (r["adder_levels"], r["latency_cycles"]) == (li.params["adder_levels"], li.cycles), li.name
        assert r["ff"] == bits
    assert est.total["ff"] == sum(li.params["register_bits"] for li in macs)
    assert est.total["latency_cycles"] == net.latency > 0
    assert all(r["ff"] == 0 and r["latency_cycles"] == 0 for r in est.layers if r["layer"] not in
               {li.name for li in macs})


def test_combinational_rtl_is_priced_without_registers():
    q, x0 = _mlp_q("int4")
    est = fpq.estimate_cost(q, example_input=x0, pipeline_every=0)
    assert est.total["ff"] == 0 and est.total["latency_cycles"] == 0 == fpq.to_rtl(q, None, x0, 0).latency
    assert any("to_rtl's pipeline registers" in n for n in est.notes)


@pytest.mark.parametrize("kw, msg", [(dict(pipeline_every=-1), "integer >= 0"), (dict(pipeline_every=1.5), "integer"),
                                     (dict(pipeline_every=True), "integer"),
                                     (dict(pipeline_every=1, reuse_factor=2), "reuse_factor=1"),
                                     (dict(pipeline_every=1, io_type="io_stream"), "io_parallel"),
                                     (dict(pipeline_every=1, strategy="Resource"), "Latency")])
def test_pipeline_every_refused_where_to_rtl_has_no_such_circuit(kw, msg):
    q, x0 = _mlp_q("int4")
    with pytest.raises(ValueError, match=msg):
        fpq.estimate_cost(q, example_input=x0, **kw)
