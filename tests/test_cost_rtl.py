"""The RTL operators priced by the cost model compute exactly what fpq emulates.

All operators are translated with yosys write_cxxrtl and compiled with g++ into one simulator
(one build for the module), then simulated on every input pair (formats up to 8+8 bits) or on
sampled pairs (wider), and compared with atol=0 to the products / sums of ``fpq.decode`` values
placed in the exact TypePlan types.
"""
import numpy as np
import pytest

from fpq.formats import Fixed, Int, Minifloat, decode, values
from fpq.cost_model import rtl, sim

pytestmark = pytest.mark.slow

EXHAUSTIVE = {
    "s8xs8": lambda: rtl.int_multiplier(8, 8, True, True),
    "u5xs3": lambda: rtl.int_multiplier(5, 3, False, True),
    "s1xu6": lambda: rtl.int_multiplier(1, 6, True, False),
    "e4m3xe4m3": lambda: rtl.multiplier("e4m3", "e4m3"),      # 8+8 bits, subnormals; NaN codes skipped
    "e5m2xe2m1": lambda: rtl.multiplier("e5m2", "e2m1"),      # widest exponent range
    "e5m2xe4m3": lambda: rtl.multiplier("e5m2", "e4m3"),
    "e3m2xint8": lambda: rtl.multiplier("e3m2", "int8"),
    "e2m3xuint8": lambda: rtl.multiplier("e2m3", "uint8"),
    "nosub_bias0": lambda: rtl.multiplier(Minifloat(3, 2, subnormals=False), Minifloat(2, 1, bias=0)),
    "unsigned_mf": lambda: rtl.multiplier(Minifloat(4, 3, signed=False), "e3m4"),
    "po2xint8": lambda: rtl.multiplier("e3m0", "int8"),       # power-of-two weights: a shift
    "binxint8": lambda: rtl.multiplier("binary", "int8"),
    "binxbin": lambda: rtl.multiplier("binary", "binary"),
    "fixed": lambda: rtl.multiplier(Fixed(6, 2), Fixed(7, 3, False)),
    "khot2": lambda: rtl.khot_multiplier("int6", "e2m0", 2),
    "add8": lambda: rtl.adder(8),
    "addu7u5": lambda: rtl.adder(7, 5, signed=False),
    "tree3": lambda: rtl.adder_tree(3, 5),
    "xnorpop8": lambda: rtl.xnor_popcount(8),
    # a binary x binary layer as the HLS project builds it: +-1 terms, 2^8 input codes
    "densebin": lambda: rtl.dense("binary", np.where(np.arange(16).reshape(8, 2) % 3 == 0, -1.0, 1.0), "binary"),
    # threshold lookups (float-scaled quantizers in the HLS project): the index k, irregular search
    "thr_index": lambda: rtl.threshold_quantizer(
        Fixed(10, 4), np.ldexp(np.sort(np.random.default_rng(1).choice(np.arange(-512, 512), 37, replace=False)), -6)),
    # the real table of int4 x 0.3 over fixed<12,6>, with its level ROM (15 thresholds: regular)
    "thr_int4": lambda: rtl.threshold_quantizer(Fixed(12, 6), *rtl.quantizer_table("int4", 0.3, Fixed(12, 6))),
}
# zero, +-powers of two, dense and sparse constants, minifloat weights as carrier constants
CONSTS = [(Int(8), 0.0, Int(4)), (Int(8), -4.0, Int(4)), (Int(8), 8.0, Int(5)), (Int(8), -3.0, Int(4)),
          (Int(8), 109.0, Int(8)), (Int(6, signed=False), -77.0, Int(8)),
          (Int(8), -0.1171875, "e4m3"), (Int(8), 448.0, "e4m3"), (Int(8), -5.0, "e2m1")]
SAMPLED = {
    "s16xs16": lambda: rtl.int_multiplier(16, 16),
    "e4m3xint16": lambda: rtl.multiplier("e4m3", "int16"),
    "xnorpop24": lambda: rtl.xnor_popcount(24),
    "xnorpop96": lambda: rtl.xnor_popcount(96),      # ports wider than 64 bits
    # uint8 x 0.0171 over a 45-bit accumulator (255 thresholds, as in a float-scaled MLP)
    "thr_w45": lambda: rtl.threshold_quantizer(Fixed(45, 9), *rtl.quantizer_table("uint8", 0.0171, Fixed(45, 9))),
}


def _dense():
    rng = np.random.default_rng(0)
    W = rng.choice(values("e4m3")[100:-100], size=(5, 3))
    W[1, 2] = 0.0
    return rtl.dense("int8", W, "e4m3")


def _wrong():
    op = rtl.int_multiplier(4, 4)
    op.name = "wrong"
    op.verilog = op.verilog.replace("module mul_s4_s4(", "module wrong(").replace("assign p = ", "assign p = 8'sd1 + ")
    return op


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    ops = {k: f() for k, f in EXHAUSTIVE.items()}
    ops.update({f"const{i}": rtl.const_multiplier(*c) for i, c in enumerate(CONSTS)})
    ops.update({k: f() for k, f in SAMPLED.items()})
    ops["acc"] = rtl.accumulator(8, 12)
    ops["dense"] = _dense()
    ops["wrong"] = _wrong()
    names = list(ops)
    exe = sim.build([ops[k] for k in names], tmp_path_factory.mktemp("cxxrtl"))
    return exe, ops, {k: i for i, k in enumerate(names)}


def _run(simulator, key, vectors):
    exe, ops, index = simulator
    op = ops[key]
    got = sim.run(exe, op, vectors, index[key])
    return op, sim.compare(op, got, vectors)


@pytest.mark.parametrize("key", list(EXHAUSTIVE) + [f"const{i}" for i in range(len(CONSTS))])
def test_operator_exhaustive(simulator, key):
    op = simulator[1][key]
    vectors = sim.exhaustive_vectors(op)
    space = 1
    for p, w in op.inputs:
        c = op.codes.get(p)
        space *= len(c) if c is not None else 1 << w
    assert len(next(iter(vectors.values()))) == space   # really every input combination
    _, bad = _run(simulator, key, vectors)
    assert bad == 0


@pytest.mark.parametrize("key", list(SAMPLED) + ["dense"])
def test_wide_operators_sampled(simulator, key):
    op = simulator[1][key]
    _, bad = _run(simulator, key, sim.sampled_vectors(op, 20000, seed=5))
    assert bad == 0


def test_accumulator_sequence(simulator):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, 5000)
    rst = (rng.random(5000) < 0.02).astype(np.int64)
    rst[0] = 1
    op, bad = _run(simulator, "acc", {"rst": rst, "x": x})
    assert bad == 0
    y = op.reference({"rst": rst, "x": x})["y"]
    assert max(abs(int(v)) for v in y) > 1000      # long runs between resets: big sums


def test_simulation_catches_a_wrong_circuit(simulator):
    op = simulator[1]["wrong"]
    vectors = sim.exhaustive_vectors(op)
    _, bad = _run(simulator, "wrong", vectors)
    assert bad == 256


def test_reference_is_fpq_numerics():
    # the oracle is fpq's decode in the product type of the carriers, not the RTL's own formula
    op = rtl.multiplier("e2m1", "e2m1")
    codes = op.codes
    va, vb = decode(codes["a"], "e2m1"), decode(codes["b"], "e2m1")
    got = op.reference({"a": codes["a"], "b": codes["b"]})["p"]
    frac = rtl.product_type(rtl.carrier(rtl._fmt("e2m1")), rtl.carrier(rtl._fmt("e2m1"))).frac_bits
    assert np.array_equal(np.array([float(g) for g in got]), np.ldexp(va * vb, frac))


def test_generator_errors():
    with pytest.raises(ValueError, match="ExM0"):
        rtl.khot_multiplier("int8", "e2m1", 2)
    with pytest.raises(ValueError, match="outside the carrier"):
        rtl.const_multiplier("int8", 1000.0, "int8")
    with pytest.raises(ValueError, match="not a value"):
        rtl.const_multiplier("int8", 0.3, "int8")
    with pytest.raises(ValueError, match="fixed or int"):
        rtl.const_multiplier("e4m3", 1.0, "int8")


def test_threshold_lookup_is_the_quantizer():
    """The RTL's oracle (levels[searchsorted(thresholds, x)]) is fpq's quantizer on every input."""
    import fpq
    t = Fixed(12, 6)
    th, lv = rtl.quantizer_table("int4", 0.3, t)
    op = rtl.threshold_quantizer(t, th, lv)
    assert op.params["n"] == len(th) == 15 and op.params["steps"] == 4
    codes = np.arange(1 << 12)
    x = decode(codes, t)
    want = fpq.quantize(x, "int4", np.float32(0.3)).astype(np.float32)   # stored as float32, as the HLS levels
    frac = rtl.values_carrier(lv).frac_bits
    got = np.array([float(v) for v in op.reference({"x": codes})["y"]])
    assert np.array_equal(np.ldexp(got, -frac), want.astype(np.float64))
    idx = rtl.threshold_quantizer(t, th)        # index output: k = #thresholds <= x
    k = idx.reference({"x": codes})["y"]
    assert np.array_equal(np.asarray(k, np.int64), np.searchsorted(th, x, side="right"))
    with pytest.raises(ValueError, match="ascending"):
        rtl.threshold_quantizer(t, th[::-1])
    with pytest.raises(ValueError, match="signed Fixed"):
        rtl.threshold_quantizer(Fixed(12, 6, False), th)
