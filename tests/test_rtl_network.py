"""fpq.to_rtl: the Verilog of a whole network equals fpq.emulate bit for bit (atol=0).

A small MLP (8-16-8-4, ReLU) at int8, int4, fixed<8,3>, e2m1 and e4m3 is written with
``fpq.to_rtl`` (pipelined differently per format, one combinational), all five compiled into one
CXXRTL simulator (one yosys + g++ run for the module), and simulated on 2,000 off-grid random
inputs (about a third saturate the input quantizer) against the emulator of the same graph.
The cast quantizer (shift, rounding, overflow) is checked exhaustively for every ap_fixed mode, the
minifloat requantizer (fpq::quantize_minifloat unrolled) exhaustively for eight minifloats.
"""
import numpy as np
import pytest
import torch

import fpq
from fpq.formats import Fixed, decode
from fpq.numerics.scaled import apply_scaled
from fpq.rtl import RTLUnsupportedError, Simulator, check, to_rtl
from fpq.rtl.network import Sig, Writer
from fpq.testing.networks import conv1d_net, mlp
from fpq.verification import random_inputs

# format -> pipeline_every (0: combinational)
CASES = {"int8": 0, "int4": 1, "fixed<8,3>": 3, "e2m1": 2, "e4m3": 1}


def _model(fmt, dims=(8, 16, 8, 4), seed=0):
    m, shape = mlp(dims, seed=seed)
    q = fpq.convert(m, fmt=fmt)
    fpq.calibrate(q, [torch.randn((256,) + shape, generator=torch.Generator().manual_seed(3)) * 2])
    return q.eval(), shape


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    out = {}
    for i, (fmt, every) in enumerate(CASES.items()):
        q, shape = _model(fmt)
        out[fmt] = to_rtl(q, tmp_path_factory.mktemp("v"), torch.zeros((1,) + shape), pipeline_every=every,
                          top=f"net{i}")
    sim = Simulator(list(out.values()), tmp_path_factory.mktemp("sim"))
    return out, sim


@pytest.mark.parametrize("fmt", list(CASES))
def test_network_rtl_equals_emulator(nets, fmt):
    out, sim = nets
    net = out[fmt]
    x = random_inputs(net.graph, 2000, seed=11)
    r = check(net, x, simulator=sim, index=list(out).index(fmt))
    assert r["n"] == 2000
    assert r["mismatches"] == 0, (fmt, r["first"], r["got"][r["first"][0]], r["want"][r["first"][0]])
    # the check can fail: the outputs take many values, and a requantizer inside saturates
    assert len(np.unique(r["want"])) >= 12   # int4: 16 levels
    _, trace = fpq.emulate(net.graph, x, return_trace=True)
    hit = [op.name for op in net.graph.ops if op.kind == "quant"
           and np.max(np.abs(trace[op.name])) == np.max(np.abs(fpq.values(op.quant.format))) * op.quant.ttype.scale]
    assert hit, "no requantizer saturates on these inputs"


def test_pipeline_latency_and_ports(nets):
    out, _ = nets
    # adder levels per layer: ceil(log2(fan_in + bias)) = 4, 5, 4
    assert out["int8"].latency == 0 and not out["int8"].clocked
    assert out["int4"].latency == 13
    assert out["e2m1"].latency == 2 + 3 + 2
    assert out["fixed<8,3>"].latency == 2 + 2 + 2
    assert out["int8"].input_kind == "codes" and out["int8"].inputs[0] == ("x0", 8)
    # a minifloat input is quantized in the circuit, from the float32 bit pattern
    assert out["e4m3"].input_kind == "float32" and out["e4m3"].inputs[0] == ("x0", 32)
    assert out["int8"].path.read_text().count("module ") == 1
    lin = out["int8"].layer("linear_0")
    assert lin.circuit == "mac" and lin.params["n_in"] == 8 and lin.params["n_out"] == 16
    assert out["e4m3"].layer("quant_0").circuit == "minifloat"   # fpq::quantize_minifloat, unrolled
    assert out["e4m3"].layer("input_quant").circuit == "lookup"


@pytest.mark.slow
def test_cast_every_rounding_and_overflow_mode(tmp_path):
    """The shift + rounding + overflow of a cast quantizer, exhaustive over a 9-bit input, for every
    ap_fixed rounding and overflow mode, against fpq's quantizer (as the emulator applies it)."""
    from fpq.cost_model import sim
    from fpq.cost_model.rtl import Operator, _module, _port
    from fpq.formats import ROUNDING_MODES
    from fpq.formats.types import OVERFLOW_MODES

    in_t = Fixed(9, 4, True)
    ops, refs = [], []
    for rnd in ROUNDING_MODES:
        for ovf in OVERFLOW_MODES:
            for fmt, s in ((Fixed(5, 2, True, rnd, ovf), 0), (Fixed(4, 1, False, rnd, ovf), 1)):
                name = f"c_{rnd}_{ovf}_{'s' if fmt.signed else 'u'}"
                w = Writer(None, None, 0, name)
                out_t = fpq.exact_fixed(fmt, s)
                y = w._cast("c", Sig("x", in_t), out_t, fmt)
                w.lines.append(f"assign y = {y.name};")
                v = _module(name, [_port("input", "x", 9), _port("output", "y", out_t.width, out_t.signed)], w.lines)
                ops.append(Operator(name, "cast", v, [("x", 9)], [("y", out_t.width, out_t.signed)]))
                refs.append((fmt, s, out_t))
    exe = sim.build(ops, tmp_path)
    codes = np.arange(512, dtype=np.int64)
    xv = decode(codes, in_t)
    for i, (op, (fmt, s, out_t)) in enumerate(zip(ops, refs)):
        got = np.array([int(c) for c in sim.run(exe, op, {"x": codes}, i)["y"]], dtype=np.float64)
        want = apply_scaled(xv.astype(np.float64), fmt, np.float32(2.0 ** s))
        np.testing.assert_array_equal(np.ldexp(got, -out_t.frac_bits), want, err_msg=op.name)


MINIFLOATS = [("e2m1", 0), ("e4m3", -3), ("e3m2", 1), ("e2m3", -1), ("e2m0", 0), ("e3m1_nosub", 0),
              ("e3m2_b5", 2), ("ue3m2", -2)]


@pytest.mark.slow
def test_minifloat_requantizer_exhaustive(tmp_path):
    """The unrolled fpq::quantize_minifloat equals fpq's quantizer (as the emulator applies it) on
    every code of a 10-bit fixed input that spans the format's range, saturation and ties included
    (subnormals or none, another bias, unsigned, no mantissa bit); one simulator for all."""
    from fpq.cost_model import sim
    from fpq.cost_model.rtl import Operator, _module, _port

    ops, refs = [], []
    for i, (name, s) in enumerate(MINIFLOATS):
        fmt = fpq.parse_format(name)
        out_t = fpq.exact_fixed(fmt, s)
        ib = int(np.ceil(np.log2(fpq.finfo(fmt).max * 2.0 ** s))) + 2   # integer bits: beyond the largest value
        in_t = Fixed(10, ib, True)
        w = Writer(None, None, 0, f"mf{i}")
        y = w._minifloat("c", Sig("x", in_t), out_t, fmt, s)
        w.lines.append(f"assign y = {y.name};")
        v = _module(f"mf{i}", [_port("input", "x", 10), _port("output", "y", out_t.width, out_t.signed)], w.lines)
        ops.append(Operator(f"mf{i}", "minifloat", v, [("x", 10)], [("y", out_t.width, out_t.signed)]))
        refs.append((fmt, s, in_t, out_t))
    exe = sim.build(ops, tmp_path)
    codes = np.arange(1024, dtype=np.int64)
    for i, (op, (fmt, s, in_t, out_t)) in enumerate(zip(ops, refs)):
        got = np.array([int(c) for c in sim.run(exe, op, {"x": codes}, i)["y"]], dtype=np.float64)
        want = apply_scaled(decode(codes, in_t).astype(np.float64), fmt, np.float32(2.0 ** s))
        np.testing.assert_array_equal(np.ldexp(got, -out_t.frac_bits), want, err_msg=f"{fmt} x 2^{s}")
        assert len(np.unique(want)) > 4


def test_refuses_what_is_not_built():
    m, shape = conv1d_net()
    q = fpq.convert(m, fmt="int8")
    fpq.calibrate(q, [torch.randn((64,) + shape)])
    with pytest.raises(RTLUnsupportedError, match=r"of kind 'maxpool' is not built by fpq.to_rtl"):
        to_rtl(q.eval(), None, torch.zeros((1,) + shape))
    q, shape = _model("int8", (4, 3))
    with pytest.raises(ValueError, match="pipeline_every must be an integer >= 0"):
        to_rtl(q, None, torch.zeros((1,) + shape), pipeline_every=-1)


@pytest.mark.full   # ~50 s; the small networks' RTL == emulator tests stay in make test
def test_jet_mlp_rtl_equals_emulator(tmp_path):
    """The 16-64-32-32-5 jet MLP at int4 (about 3,800 constant multipliers; 13 cycles at
    pipeline_every=2: 3 + 4 + 3 + 3 adder-level pairs): one CXXRTL build of the whole network,
    2,000 random inputs, atol=0."""
    q, shape = _model("int4", (16, 64, 32, 32, 5))
    net = to_rtl(q, None, torch.zeros((1,) + shape), pipeline_every=2)
    assert net.latency == 13
    r = check(net, random_inputs(net.graph, 2000, seed=5), tmp_path)
    assert r["mismatches"] == 0, r["first"]
