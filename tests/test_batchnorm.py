"""Element-wise (unfolded) BatchNorm, issue 7: y = Q_out(x * Q_w(s) + Q_b(t)), kept by fpq.convert
where it cannot be folded (or when asked), exact from torch through QONNX, the emulator, qonnx's
executor and the HLS C-sim (atol=0), trained by QFX, priced by the cost model."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import fpq
from fpq.cost_model.penalty import cost_penalty
from fpq.emulate import Emulator
from fpq.export.graph import read_graph
from fpq.testing.conformance import probe_inputs
from fpq.nn import qfx
from fpq.nn.batchnorm import FpqBatchNorm

FORMATS = ("int8", "fixed<8,3>", "e4m3", "e5m2")   # e5m2: x * s + t wider than 53 bits (rounded to odd)


class BNNet(nn.Module):
    """BatchNorm as the first layer, one folded into a conv, one after a ReLU (unfoldable), and a
    BatchNorm1d after a ReLU on a flat tensor."""

    def __init__(self):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(2)
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn_fold = nn.BatchNorm2d(4)
        self.bn_relu = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 6 * 6, 8)
        self.bn_flat = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn_fold(self.c1(self.bn_in(x))))
        y = torch.flatten(self.bn_relu(y), 1)
        return self.fc2(self.bn_flat(torch.relu(self.fc1(y))))


def _model(seed=0):
    torch.manual_seed(seed)
    m = BNNet()
    with torch.no_grad():  # statistics far from the identity, so s and t matter
        for bn in m.modules():
            if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.2, 3.0)
                bn.weight.uniform_(0.5, 2.0)
                bn.bias.uniform_(-1, 1)
    return m.eval()


def _converted(fmt, **kw):
    q = fpq.convert(_model(), fmt=fmt, **kw)
    fpq.calibrate(q, [torch.randn(256, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 2], progress=False)
    return q.eval()


def test_convert_keeps_unfoldable_batchnorms_and_folds_the_rest():
    q = fpq.convert(_model(), fmt="int8")
    kept = {n for n, m in q.named_modules() if isinstance(m, FpqBatchNorm)}
    assert kept == {"bn_in", "bn_relu", "bn_flat"}     # bn_fold went into c1
    assert q.fpq_policy.layers["bn_relu"]["batchnorm"] == "element-wise"
    roles = {(n, r) for n, r, _ in q.fpq_quantizers() if n in kept}
    assert roles == {(n, r) for n in kept for r in ("weight", "bias", "output")}
    # s = gamma / sqrt(var + eps), t = beta - mean * s of the float model
    ref = _model().bn_relu
    s = ref.weight / torch.sqrt(ref.running_var + ref.eps)
    assert torch.allclose(q.bn_relu.weight, s) and torch.allclose(q.bn_relu.bias, ref.bias - ref.running_mean * s)
    tp = fpq.plan(q, torch.zeros(1, 2, 6, 6))
    assert tp["bn_relu"].op == "batchnorm" and tp["bn_relu"].fan_in == 1
    assert {"input", "weight", "bias", "product", "accumulator", "output"} <= set(tp["bn_relu"].tensors)
    # int8 scale per channel: s and t have one power-of-two scale per channel
    assert tp["bn_relu"].tensors["weight"].scale.shape == (4,) and tp["bn_relu"].tensors["weight"].po2


def test_calibrate_sets_the_batchnorm_scales_from_data():
    q = fpq.convert(_model(), fmt="int8")
    x = torch.randn(256, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    fpq.calibrate(q, [x], progress=False)
    out = float(q.bn_in.fpq_output.scale())
    # the first BatchNorm is affine in its (calibration-time unquantized) input: 4x the data, 4x the scale
    fpq.calibrate(q, [4 * x], progress=False)
    assert float(q.bn_in.fpq_output.scale()) == 4 * out
    # s and t: per-channel power-of-two scales from max |s_c|, max |t_c| (the format's max just covers them)
    for tq, p in ((q.bn_relu.fpq_weight, q.bn_relu.weight), (q.bn_relu.fpq_bias, q.bn_relu.bias)):
        s = tq.scale().double()
        assert torch.all(p.abs() <= s * tq.qmax) and torch.all(p.abs() > s * tq.qmax / 2)


def test_batchnorm_option_keep_per_layer_and_refusals():
    keep = fpq.convert(_model(), fmt="int8", batchnorm="keep")
    assert isinstance(keep.bn_fold, FpqBatchNorm)
    one = fpq.convert(_model(), fmt="int8", batchnorm={"bn_f*": "keep"})
    assert isinstance(one.bn_fold, FpqBatchNorm) and isinstance(one.bn_relu, FpqBatchNorm)
    over = fpq.convert(_model(), fmt="int8", overrides={"bn_relu": {"weights": "int4", "bias": "int8"}})
    assert str(over.bn_relu.fpq_weight.fmt) == "int4" and str(over.bn_relu.fpq_bias.fmt) == "int8"
    with pytest.raises(ValueError, match="unknown batchnorm mode 'never'; allowed: 'fold', 'keep'"):
        fpq.convert(_model(), fmt="int8", batchnorm="never")
    with pytest.raises(ValueError, match=r"batchnorm entries \['bn9'\] match no BatchNorm"):
        fpq.convert(_model(), fmt="int8", batchnorm={"bn9": "keep"})
    with pytest.raises(ValueError, match="batchnorm modes .*allowed values are 'fold' and 'keep'"):
        fpq.convert(_model(), fmt="int8", batchnorm={"bn_relu": "yes"})


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_emulator_qonnx_agree_exactly(fmt):
    q = _converted(fmt)
    model = fpq.export_qonnx(q, None, torch.zeros(1, 2, 6, 6))   # runs onnx.checker
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Mul") == 3 and "Reshape" in ops
    g = read_graph(model)
    bns = [op for op in g.ops if op.kind == "batchnorm"]
    assert [op.weight.shape for op in bns] == [(2,), (4,), (8,)]
    assert all("weight" in op.types and "bias" in op.types for op in bns)
    x = probe_inputs(g, 2000, seed=3)
    with torch.no_grad():
        y = q(torch.from_numpy(x)).double().numpy()
    emu = Emulator(g)
    assert all(emu.exact[op.name] for op in bns)
    if fmt == "e5m2":
        assert {op.name for op in bns} & emu.rounded_to_odd   # the wide path is exercised
    assert np.array_equal(emu(x), y)
    assert np.array_equal(Emulator(g, backend="torch")(x).cpu().numpy(), y)
    rep = fpq.verify(q, x[:16], qonnx_subset=16, model=model)
    assert rep.exact and "qonnx" in " ".join(rep.paths), str(rep)


# x * s + t just off a rounding tie of the output quantizer fixed<8,3> (step 2^-5), by less than
# the rounding of a narrower sum: float32 puts (k + 1/2) 2^-5 - 2^-28 on the tie (a 34-bit sum);
# float64 puts k 2^-6 + 2^-60 on the tie for odd k (a 66-bit sum: summed in pieces, rounded to odd)
TIES = {"float32-would-tie": (1.0, 2.0 ** -6 - 2.0 ** -28, "fixed<24,-4>"),
        "float64-would-tie": (0.5, 2.0 ** -60, "fixed<4,-56>")}


def _tie_model(case):
    s, t, t_fmt = TIES[case]
    q = fpq.convert(nn.Sequential(nn.BatchNorm2d(4)).eval(), fmt="fixed<8,3>",
                    overrides={"0": {"weights": "fixed<8,2>", "bias": t_fmt}})
    with torch.no_grad():
        q.get_submodule("0").weight.fill_(s)
        q.get_submodule("0").bias.fill_(t)
    k = np.arange(-128, 128)
    x = np.broadcast_to((k * 2.0 ** -5)[:, None, None, None], (256, 4, 2, 2)).astype(np.float32)  # every code
    # the exact answer in rationals: nearest code (no exact tie by construction), saturated
    exact = [min(max(math.floor((Fraction(int(c), 32) * Fraction(s) + Fraction(t)) * 32 + Fraction(1, 2)), -128), 127)
             for c in k]
    return q, x, np.broadcast_to(np.array(exact, dtype=np.float64)[:, None, None, None] / 32, x.shape)


@pytest.mark.parametrize("case", list(TIES))
def test_sums_just_off_a_tie_are_exact(case):
    q, x, exact = _tie_model(case)
    s, t, _ = TIES[case]
    naive = fpq.quantize((x * np.float32(s) + np.float32(t)).astype(np.float64), "fixed<8,3>")
    assert not np.array_equal(naive, exact)          # a float32 sum would fail this test
    with torch.no_grad():
        assert np.array_equal(q(torch.from_numpy(x)).double().numpy(), exact)
    g = read_graph(fpq.export_qonnx(q, None, torch.from_numpy(x[:1])))
    emu = Emulator(g)
    assert (case == "float64-would-tie") == bool(emu.rounded_to_odd)
    assert np.array_equal(emu(x), exact)
    assert np.array_equal(Emulator(g, backend="torch")(x).cpu().numpy(), exact)


def _foreign(C=3):
    """A hand-written QONNX file with the element-wise BatchNorm pattern (no Reshape, constants
    of shape (1, C, 1, 1) and (C, 1, 1)), as another tool might write it."""
    rng = np.random.default_rng(0)
    s = (rng.integers(-127, 128, (1, C, 1, 1)) / 64.0).astype(np.float32)
    t = (rng.integers(-2000, 2000, (C, 1, 1)) / 1024.0).astype(np.float32)
    inits = {"s": s, "t": t, "sx": 2.0 ** -4, "ss": 2.0 ** -6, "st": 2.0 ** -10, "so": 2.0 ** -3, "z": 0.0,
             "b8": 8.0, "b16": 16.0}
    init = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()]
    dom = "qonnx.custom_op.general"
    q = lambda i, sc, b, o: helper.make_node("Quant", [i, sc, "z", b], [o], domain=dom, name=o,  # noqa: E731
                                             signed=1, narrow=0, rounding_mode="ROUND")
    nodes = [q("x", "sx", "b8", "xq"), q("s", "ss", "b8", "sq"), q("t", "st", "b16", "tq"),
             helper.make_node("Mul", ["xq", "sq"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "tq"], ["a"], name="add"), q("a", "so", "b8", "y")]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 4, 4])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(dom, 1)])
    onnx.checker.check_model(model)
    return model, s, t


def test_foreign_mul_add_pattern_reads_as_one_batchnorm():
    model, s, t = _foreign()
    g = read_graph(model)
    (bn,) = [op for op in g.ops if op.kind == "batchnorm"]
    assert np.array_equal(bn.weight, s.ravel()) and np.array_equal(bn.bias, t.ravel())
    assert str(bn.types["weight"].format) == "int8" and str(bn.types["bias"].format) == "int16"
    x = np.random.default_rng(1).normal(0, 4, (500, 3, 4, 4)).astype(np.float32)
    ref = fpq.quantize(fpq.quantize(x, "int8", 2.0 ** -4).astype(np.float64) * s + t, "int8", 2.0 ** -3)
    assert np.array_equal(fpq.emulate(g, x), ref)
    rep = fpq.verify(model, x[:8], qonnx_subset=8)
    assert rep.exact, str(rep)


@pytest.mark.slow
@pytest.mark.parametrize("fmt,io_type", [("e4m3", "io_stream")])   # io_parallel: the next test
def test_hls_csim_equals_emulator(fmt, io_type, tmp_path):
    q = _converted(fmt)
    path = fpq.export_qonnx(q, tmp_path / "m.onnx", torch.zeros(1, 2, 6, 6))
    proj = fpq.to_hls(path, tmp_path / "prj", io_type=io_type)
    layers = {L: c for L, c in proj.info["layers"].items()}
    bn_layers = [L for L in layers if "batchnorm" in L]
    assert len(bn_layers) == 3 and all("scale" in layers[L] and "bias" in layers[L] for L in bn_layers)
    x = probe_inputs(read_graph(path), 2000, seed=4)
    with torch.no_grad():
        y = q(torch.from_numpy(x)).double().numpy()
    emu = fpq.emulate(path, x)
    assert np.array_equal(emu, y)
    assert np.array_equal(proj.predict(x), emu)


@pytest.mark.slow
def test_hls_csim_sums_a_66_bit_batchnorm_exactly(tmp_path):
    q, x, exact = _tie_model("float64-would-tie")
    proj = fpq.to_hls(q, tmp_path / "prj", io_type="io_parallel", example_input=torch.from_numpy(x[:1]))
    assert proj.info["layers"]["batchnorm_0"]["result"].startswith("fixed<8,3")   # the output cast, fused
    assert np.array_equal(proj.predict(x), exact)


def test_qfx_learns_batchnorm_binary_points_and_freeze_keeps_outputs():
    torch.manual_seed(0)
    q = fpq.convert(_model(), fmt="fixed<8,3>", bias="fixed<12,4>")
    qfx.make_trainable(q, granularity="channel")
    found = {(n, r): tq for n, r, tq in qfx.qfx_quantizers(q) if n == "bn_relu"}
    assert set(found) == {("bn_relu", "weight"), ("bn_relu", "bias"), ("bn_relu", "output")}
    assert found["bn_relu", "weight"].qfx_channels == 4 and found["bn_relu", "bias"].qfx_channels == 4
    x = torch.randn(128, 2, 6, 6) * 2
    qfx.init_activations(q, [x])
    q.train()
    loss = ((q(x) - 0.5) ** 2).mean()
    loss.backward()
    for role in ("weight", "bias", "output"):
        g = found["bn_relu", role].frac_bits.grad
        assert g is not None and torch.count_nonzero(g) > 0, role
    q.eval()
    with torch.no_grad():
        before = q(x)
    frozen = dict(((n, r), f) for n, r, f in qfx.freeze(q))
    assert frozen["bn_relu", "weight"] == "int8" and frozen["bn_relu", "output"].startswith("fixed<8,")
    with torch.no_grad():
        after = q(x)
    assert torch.equal(before, after)
    g = read_graph(fpq.export_qonnx(q, None, x[:1]))
    assert np.array_equal(fpq.emulate(g, x.numpy()), after.double().numpy())


def test_cost_entry_present_and_monotone_in_bits():
    luts = []
    for bits in (4, 6, 8):
        q = _converted(f"int{bits}")
        rep = fpq.estimate_cost(q)
        row = next(r for r in rep.layers if r["layer"] == "batchnorm_bn_relu")
        assert row["op"] == "batchnorm" and row["lut"] > 0 and row["n_out"] == 4 * 6 * 6
        luts.append(row["lut"] + 1000 * row["dsp"])
        assert not any("bn_relu" in n and "no cost model" in n for n in rep.notes)
    assert luts[0] < luts[1] < luts[2], luts


def test_reconvert_keeps_batchnorm_and_its_scales():
    q = _converted("int8")
    x = torch.randn(64, 2, 6, 6)
    q2 = fpq.convert(q, fmt="int8")
    assert isinstance(q2.bn_relu, FpqBatchNorm)
    q2.fpq_record_shapes(x[:1])
    with torch.no_grad():
        assert torch.equal(q(x), q2(x))


def test_cost_penalty_prices_the_batchnorm_multipliers():
    """cost_penalty(q) includes each kept BatchNorm (a multiplier by s and an adder of
    t per channel), so learning narrower s lowers it: the gradient reaches s's width."""
    q = fpq.convert(_model(), fmt="fixed<8,3>", bias="fixed<12,4>")
    qfx.make_trainable(q, learn_width=True)
    qfx.init_activations(q, [torch.randn(64, 2, 6, 6) * 2])
    found = {(n, r): tq for n, r, tq in qfx.qfx_quantizers(q)}
    p = cost_penalty(q)
    p.backward()
    for name in ("bn_in", "bn_relu", "bn_flat"):
        g = found[name, "weight"].int_bits.grad
        assert g is not None and float(g.abs().sum()) > 0, name
    # two bits fewer on one BatchNorm's s: the cost model's value falls
    with torch.no_grad():
        found["bn_relu", "weight"].int_bits -= 2
    assert 0 < float(cost_penalty(q)) < float(p)


def test_binary_weights_leave_a_kept_batchnorm_int8_unless_overridden():
    """weights='binary' binarizes conv / linear weights; a kept BatchNorm's scale gets int8 (a binary
    s would keep only each channel's sign and power of two), and BiPer leaves it alone. An override
    naming the BatchNorm is used as given."""
    from fpq.nn.biper import biper_quantizers
    q = fpq.convert(_model(), weights="binary", activations="int8", method="biper", omega=4.0,
                    batchnorm="keep", overrides={"c1": {"weights": "int8"}})
    bns = {n: m for n, m in q.named_modules() if isinstance(m, FpqBatchNorm)}
    assert len(bns) == 4 and all(str(m.fpq_weight.fmt) == "int8" for m in bns.values())
    assert {n for n, _, _ in biper_quantizers(q)} == {"fc1", "fc2"}
    fpq.calibrate(q, [torch.randn(256, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 2], progress=False)
    q.eval()
    mw = fpq.export_qonnx(q, None, torch.zeros(1, 2, 6, 6))
    x = probe_inputs(read_graph(mw), 1000, seed=2)
    with torch.no_grad():
        assert np.array_equal(fpq.emulate(mw, x), q(torch.from_numpy(x)).double().numpy())
    q2 = fpq.convert(_model(), weights="binary", activations="int8", batchnorm="keep",
                     overrides={"bn_*": {"weights": "binary"}})
    assert all(str(m.fpq_weight.fmt) == "binary" for m in q2.modules() if isinstance(m, FpqBatchNorm))


@pytest.mark.slow
def test_hls_csim_kept_batchnorm_with_distributed_arithmetic(tmp_path):
    q = _converted("int8", batchnorm="keep")
    path = fpq.export_qonnx(q, tmp_path / "m.onnx", torch.zeros(1, 2, 6, 6))
    proj = fpq.to_hls(path, tmp_path / "prj", strategy="distributed_arithmetic")
    x = probe_inputs(read_graph(path), 1000, seed=6)
    assert np.array_equal(np.asarray(proj.predict(x), np.float64).reshape(-1, 5), fpq.emulate(path, x))
