"""fpq.emulate == torch forward == qonnx executor, atol=0, on random off-grid inputs."""
import numpy as np
import pytest
import torch

import fpq
from fpq.emulate import Emulator
from fpq.testing.networks import MODELS, conv1d_net, mlp, residual_block
from fpq.export.graph import UnsupportedGraphError, read_graph
from fpq.verification import qonnx_trace, random_inputs

FORMATS = ["int8", "int4", "fixed<8,3>", "fixed<6,2,RND,SAT>", "e4m3", "e2m1", "e3m2", "e2m3"]
N = 400          # emulator / torch inputs per case
N_QONNX = 6      # qonnx's executor runs one sample at a time: a subset


def _torch_out(q, x):
    with torch.no_grad():
        return q(torch.from_numpy(x)).to(torch.float64).numpy()


def _check(q, shape, qonnx=True):
    mw = fpq.export_qonnx(q, None, torch.zeros(1, *shape))
    graph = read_graph(mw)
    x = random_inputs(graph, N, seed=1)
    assert np.abs(x).max() > 1.2 * np.abs(fpq.emulate(graph, x[:64], return_trace=True)[1]["input_quant"]).max()
    emu = Emulator(graph)
    y = emu(x)
    np.testing.assert_array_equal(y, _torch_out(q, x))
    if qonnx and all(op.quant is None or op.quant.qonnx_exact for op in graph.ops):
        yq, _ = qonnx_trace(mw, x[:N_QONNX], graph)
        np.testing.assert_array_equal(y[:N_QONNX], yq)
    return emu


@pytest.mark.parametrize("fmt", FORMATS)
def test_mlp_formats(fmt):
    m, shape = mlp((16, 32, 16, 5))
    emu = _check(fpq.convert(m, fmt=fmt), shape)
    assert all(emu.exact.values())


@pytest.mark.parametrize("fmt", ["int8", "fixed<8,3>", "e4m3", "e2m1"])
def test_conv1d_net(fmt):
    m, shape = conv1d_net()
    _check(fpq.convert(m, fmt=fmt), shape)


@pytest.mark.parametrize("fmt", ["int4", "e3m2", "e2m3"])
def test_conv2d_bn_net(fmt):
    m, shape = MODELS["conv2d_bn"]()
    _check(fpq.convert(m, fmt=fmt), shape)


def test_residual_block_and_mixed_formats():
    m, shape = residual_block()
    q = fpq.convert(m, weights="e2m1", activations="int8", overrides={"head": {"weights": "int4"}})
    _check(q, shape)


def test_float_accumulator_paths_are_chosen_by_the_typeplan():
    m, shape = mlp((16, 32, 16, 5))
    emu = Emulator(fpq.export_qonnx(fpq.convert(m, fmt="e4m3"), None, torch.zeros(1, 16)))
    # e4m3 x e4m3 products need 38 bits: more than float32's 24, within float64's 53
    assert set(emu.acc_dtype.values()) == {"float64"}
    emu = Emulator(fpq.export_qonnx(fpq.convert(m, fmt="int4"), None, torch.zeros(1, 16)))
    assert set(emu.acc_dtype.values()) == {"float32"}


def test_wide_accumulators_are_summed_in_pieces_and_wider_ones_refused():
    m, shape = mlp((16, 8, 5))
    # e5m2 x e5m2 sums need 72 bits: summed in pieces, rounded to odd (tests/test_wide.py)
    emu = Emulator(fpq.export_qonnx(fpq.convert(m, fmt="e5m2"), None, torch.zeros(1, 16)))
    assert set(emu.acc_dtype.values()) == {"wide"} and emu.rounded_to_odd == {"linear_0", "linear_2"}
    # bf16 values need a fixed-point carrier of hundreds of bits: no exact accumulator at all
    mw = fpq.export_qonnx(fpq.convert(m, fmt="bf16"), None, torch.zeros(1, 16))
    with pytest.raises(UnsupportedGraphError, match=r"layer linear_0: no exact fixed-point accumulator"):
        Emulator(mw)


def test_trace_and_input_forms(tmp_path):
    m, shape = mlp((16, 8, 5))
    q = fpq.convert(m, fmt="int8")
    path = fpq.export_qonnx(q, tmp_path / "m.onnx", torch.zeros(1, 16))
    x = random_inputs(read_graph(path), 50)
    y_path, trace = fpq.emulate(path, x, return_trace=True)
    from qonnx.core.modelwrapper import ModelWrapper
    np.testing.assert_array_equal(y_path, fpq.emulate(ModelWrapper(str(path)), x))
    np.testing.assert_array_equal(y_path, fpq.emulate(q, torch.from_numpy(x)))   # exported in memory
    assert list(trace) == [op.name for op in read_graph(path).ops]
    np.testing.assert_array_equal(trace["input_quant"], fpq.quantize(x, "int8", q.input_quant.fpq_output.scale().item()))
    with pytest.raises(ValueError, match=r"expected \(N, 16\)"):
        fpq.emulate(path, np.zeros((3, 15), np.float32))


@pytest.mark.parametrize("builder,fmt", [(mlp, "e4m3"), (mlp, "int8"), (conv1d_net, "int8"),
                                         (MODELS["conv2d_bn"], "int4"), (residual_block, "fixed<8,3>")])
def test_torch_backend_equals_numpy(builder, fmt):
    m, shape = builder()
    mw = fpq.export_qonnx(fpq.convert(m, fmt=fmt), None, torch.zeros(1, *shape))
    x = random_inputs(read_graph(mw), 200, seed=3)
    a, ta = Emulator(mw)(x, return_trace=True)
    torch_emu = Emulator(mw, backend="torch")
    b, tb = torch_emu(x, return_trace=True)
    np.testing.assert_array_equal(a, b.numpy())
    np.testing.assert_array_equal(a, torch_emu(x).numpy())  # the fused in-place schedule (no trace)
    for k in ta:
        np.testing.assert_array_equal(np.asarray(ta[k], np.float64), tb[k].to(torch.float64).numpy())


def _brevitas_mlp(minifloat: bool):
    """A plain Brevitas network (not made by fpq.convert), power-of-two scales."""
    import brevitas.nn as qnn
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFixedPoint
    from brevitas.quant.float_quant_ocp import Fp8e4m3OCPActPerTensorFloat, Fp8e4m3OCPWeightPerTensorFloat

    class W8(Fp8e4m3OCPWeightPerTensorFloat):
        scaling_impl_type = ScalingImplType.CONST
        scaling_init = 448.0 / 64   # Brevitas divides by the format maximum: scale 2^-6

    class A8(Fp8e4m3OCPActPerTensorFloat):
        scaling_impl_type = ScalingImplType.CONST
        scaling_init = 448.0 / 32

    w, a, r = (W8, A8, A8) if minifloat else (Int8WeightPerTensorFixedPoint, Int8ActPerTensorFixedPoint,
                                             Uint8ActPerTensorFixedPoint)
    torch.manual_seed(0)
    return torch.nn.Sequential(
        qnn.QuantIdentity(act_quant=a, return_quant_tensor=True),
        qnn.QuantLinear(16, 32, bias=True, weight_quant=w, return_quant_tensor=False),
        qnn.QuantReLU(act_quant=r, return_quant_tensor=True),
        qnn.QuantLinear(32, 5, bias=True, weight_quant=w)).eval()


@pytest.mark.parametrize("minifloat", [False, True])
def test_foreign_brevitas_qonnx(tmp_path, minifloat):
    from brevitas.export import export_qonnx
    m = _brevitas_mlp(minifloat)
    path = tmp_path / "brevitas.onnx"
    export_qonnx(m, torch.zeros(1, 16), str(path), dynamo=False)
    graph = read_graph(path)
    assert graph.ops[0].kind == "input_quant" and "bias" in graph.ops[1].types  # float bias held as exact fixed
    x = random_inputs(graph, N, seed=2)
    y = fpq.emulate(path, x)
    with torch.no_grad():  # Brevitas in float64: its sums are then exact too
        yt = m.double()(torch.from_numpy(x).double()).numpy()
    np.testing.assert_array_equal(y, yt)
    yq, _ = qonnx_trace(path, x[:N_QONNX], graph)
    np.testing.assert_array_equal(y[:N_QONNX], yq)


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_average_pools(fmt):
    """AvgPool2d, AvgPool1d (exported through a 2-D pool) and AdaptiveAvgPool(1): torch == emulator ==
    qonnx (ComputeInDouble lowers the pools to an exact sum and one float64 division)."""
    from torch import nn
    torch.manual_seed(0)
    m2 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    m1 = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.AvgPool1d(3, stride=2, padding=1), nn.Flatten(),
                       nn.Linear(4 * 7, 3)).eval()
    for m, shape in ((m2, (1, 8, 8)), (m1, (2, 16))):
        rep = fpq.verify(fpq.convert(m, fmt=fmt), random_inputs_for(m, shape), qonnx_subset=3)
        assert rep.exact and "qonnx" in rep.paths, str(rep)
        assert any(r["layer"].startswith("avgpool") and r["path"] == "qonnx" for r in rep.table)


def random_inputs_for(m, shape, n=200):
    return np.random.default_rng(5).normal(0, 40, size=(n, *shape)).astype(np.float32)


def test_foreign_brevitas_trunc_avgpool(tmp_path):
    """Brevitas' TruncAvgPool2d exports AveragePool + Trunc: emulator == Brevitas == qonnx."""
    import brevitas.nn as qnn
    from brevitas.export import export_qonnx
    from brevitas.quant import Uint8ActPerTensorFixedPoint
    m = torch.nn.Sequential(qnn.QuantIdentity(act_quant=Uint8ActPerTensorFixedPoint, return_quant_tensor=True),
                            qnn.TruncAvgPool2d(kernel_size=2, stride=2, return_quant_tensor=True)).eval()
    path = tmp_path / "trunc.onnx"
    export_qonnx(m, torch.zeros(1, 2, 4, 4), str(path), dynamo=False)
    graph = read_graph(path)
    assert [op.kind for op in graph.ops] == ["input_quant", "avgpool", "quant", "output"]
    assert graph.ops[2].quant.op_type == "Trunc"
    x = np.random.default_rng(0).uniform(-0.5, 1.5, size=(300, 2, 4, 4)).astype(np.float32)
    y = fpq.emulate(path, x)
    with torch.no_grad():
        yt = m(torch.from_numpy(x)).value.double().numpy()
    np.testing.assert_array_equal(y, yt)
    yq, _ = qonnx_trace(path, x[:N_QONNX], graph)
    np.testing.assert_array_equal(y[:N_QONNX], yq)


# -- the fused schedule's rounded-to-odd bias (Emulator._odd_bias)

@pytest.mark.parametrize("fmt", ["int8", "uint4", "fixed<8,3>", "fixed<8,3,RND_ZERO,SAT>", "fixed<6,2,TRN,SAT_SYM>",
                                 "fixed<7,7,RND_INF,WRAP>", "e4m3", "e2m1", "e3m2", "e5m2"])
def test_odd_bias_is_invisible_to_quantizers_on_the_grid(fmt):
    from fpq.emulate import odd_bias
    from fpq.formats import parse_format
    from fpq.formats.facts import exact_fixed
    rng = np.random.default_rng(0)
    p_exp = -6
    # the coarsest scale allowed: half the quantizer's finest step is exactly the grid p
    scale_exp = p_exp + 1 + exact_fixed(parse_format(fmt), 0).frac_bits
    scale = 2.0 ** scale_exp
    # sums on the grid: every one near zero, random ones over 4x the format's range, all near its edges
    edge = 1 << (exact_fixed(parse_format(fmt), scale_exp).int_bits - p_exp)
    codes = np.concatenate([np.arange(-(1 << 12), 1 << 12), rng.integers(-2 * edge, 2 * edge, 20000),
                            np.add.outer([-edge, edge // 2, edge], np.arange(-256, 256)).ravel()])
    a = codes * 2.0 ** p_exp
    b = rng.integers(-(1 << 20), 1 << 20, 24) * 2.0 ** (p_exp - 14)   # biases with 14 finer bits
    b[:4] = np.arange(4) * 2.0 ** p_exp                       # and some on the grid
    exact = fpq.quantize(a[:, None] + b[None, :], fmt, scale)
    np.testing.assert_array_equal(fpq.quantize(a[:, None] + odd_bias(b, p_exp)[None, :], fmt, scale), exact)
    # the test can fail: the bias moved to a grid point (below or above) differs, and so does a
    # quantizer one step finer
    hi = np.floor(b / 2.0 ** p_exp) * 2.0 ** p_exp
    assert not all(np.array_equal(fpq.quantize(a[:, None] + c[None, :], fmt, scale), exact)
                   for c in (hi, hi + 2.0 ** p_exp * (b != hi)))
    if "TRN" not in fmt:   # (a truncation's thresholds are whole steps: one step finer is still fine)
        assert not np.array_equal(fpq.quantize(a[:, None] + odd_bias(b, p_exp)[None, :], fmt, scale / 2),
                                  fpq.quantize(a[:, None] + b[None, :], fmt, scale / 2))


def test_odd_bias_fast_path_equals_the_exact_bias_end_to_end():
    """int8 MLP: biases carry 9 more fraction bits than the products (int16 x 2^-17 vs 2^-8), so
    the exact sum needs float64; the fused schedule runs it in float32 with odd biases."""
    m, shape = mlp()
    mw = fpq.export_qonnx(fpq.convert(m, fmt="int8"), None, torch.zeros(1, *shape))
    graph = read_graph(mw)
    x = random_inputs(graph, 20000, seed=5)
    emu = Emulator(graph)
    linears = [op.name for op in graph.ops if op.kind == "linear"]
    assert sorted(emu._fast_weights) == sorted(linears)
    assert all(emu._fast_weights[n][1].dtype == np.float32 and emu._weights[n][1].dtype == np.float64 for n in linears)
    exact, _ = emu(x, return_trace=True)            # op by op, exact float64 biases
    np.testing.assert_array_equal(emu(x), exact)
    np.testing.assert_array_equal(Emulator(graph, backend="torch")(x).numpy(), exact)
    # the inputs reach the cases that matter: biases merely truncated to the grid change outputs
    for n in linears:
        t = graph[n].types
        p = 2.0 ** -(t["input"].carrier().frac_bits + t["weight"].carrier().frac_bits)
        emu._fast_weights[n] = (emu._fast_weights[n][0], (np.floor(emu._weights[n][1] / p) * p).astype(np.float32))
    emu._steps = emu._compile()
    assert not np.array_equal(emu(x), exact)


def test_odd_bias_refused_where_a_reader_would_see_it():
    m, shape = residual_block()
    q = fpq.convert(m, fmt="int8")
    graph = read_graph(fpq.export_qonnx(q, None, torch.zeros(1, *shape)))
    emu = Emulator(graph)
    # fc2's sum is added to another tensor before any quantizer: it keeps the exact bias
    adds = [op for op in graph.ops if op.kind == "add"]
    assert adds
    feeding_add = {graph.producer(t).name for op in adds for t in op.inputs if graph.producer(t) is not None}
    for n in feeding_add:
        if graph[n].kind == "linear":
            assert n not in emu._fast_weights
    x = random_inputs(graph, 2000, seed=2)
    np.testing.assert_array_equal(emu(x), emu(x, return_trace=True)[0])


@pytest.mark.parametrize("cfg", [
    dict(cin=1, cout=4, hw=(8, 8), k=(3, 3), s=(1, 1), d=(1, 1), p=(1, 1, 1, 1), g=1),
    dict(cin=4, cout=8, hw=(4, 5), k=(3, 2), s=(2, 1), d=(1, 2), p=(0, 1, 2, 0), g=2),
    dict(cin=3, cout=6, hw=(9,), k=(4,), s=(2,), d=(2,), p=(1, 2), g=3),
])
def test_dense_conv_matrix_equals_im2col_and_torch(cfg):
    from fpq.emulate import conv_nd, dense_conv_matrix
    rng = np.random.default_rng(1)
    nd = len(cfg["hw"])
    w = rng.integers(-9, 10, (cfg["cout"], cfg["cin"] // cfg["g"]) + cfg["k"]).astype(np.float64)
    x = rng.integers(-9, 10, (50, cfg["cin"]) + cfg["hw"]).astype(np.float64)
    attrs = dict(kernel=cfg["k"], strides=cfg["s"], dilations=cfg["d"], pads=cfg["p"], groups=cfg["g"])
    t, out_shape = dense_conv_matrix(w, attrs, x.shape[1:])
    y = (x.reshape(50, -1) @ t).reshape((50,) + out_shape)
    np.testing.assert_array_equal(y, conv_nd(x, w, attrs))
    pad = cfg["p"]
    xt = torch.nn.functional.pad(torch.from_numpy(x), sum(((pad[i], pad[i + nd]) for i in reversed(range(nd))), ()))
    conv = torch.nn.functional.conv1d if nd == 1 else torch.nn.functional.conv2d
    ref = conv(xt, torch.from_numpy(w), stride=cfg["s"], dilation=cfg["d"], groups=cfg["g"])
    np.testing.assert_array_equal(y, ref.numpy())


def test_dense_conv_only_for_small_maps():
    from fpq.emulate import dense_conv_matrix
    attrs = dict(kernel=(3, 3), strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1), groups=1)
    assert dense_conv_matrix(np.ones((4, 1, 3, 3)), attrs, (1, 8, 8)) is not None
    assert dense_conv_matrix(np.ones((16, 1, 3, 3)), attrs, (1, 32, 32)) is None      # 16M entries
    assert dense_conv_matrix(np.ones((4, 1, 1, 1)), dict(attrs, kernel=(1, 1), pads=(0, 0, 0, 0)),
                             (1, 16, 16)) is None                                   # 256x the work


def test_float_scaled_inputs_proven_exact_from_their_values():
    """A float activation scale has no fixed-point type by format, but the values it produces
    (float32 q * s) are dyadic: with fixed-point weights the exact sum fits 53 bits, so float64
    sums it exactly and the emulator says so; with float weight scales too it does not."""
    from fpq.emulate import value_accumulator_bits
    m, shape = mlp()
    proven = fpq.convert(m, weights="fixed<8,1>", activations="int8", scale="float")
    both = fpq.convert(m, fmt="int8", scale="float")
    for q in (proven, both):
        fpq.calibrate(q, [torch.randn(256, *shape) * 2])
    g = read_graph(fpq.export_qonnx(proven, None, torch.zeros(1, *shape)))
    assert not any(op.types["input"].po2 for op in g.ops if op.kind == "linear")
    emu = Emulator(g)
    bits = {op.name: value_accumulator_bits(op) for op in g.ops if op.kind == "linear"}
    assert all(35 < b <= 53 for b in bits.values()), bits
    assert all(emu.exact.values())
    rep = fpq.verify(proven, random_inputs(g, 300, seed=1), qonnx_subset=4)
    assert rep.exact and not any("not proven" in n for n in rep.notes)
    g2 = read_graph(fpq.export_qonnx(both, None, torch.zeros(1, *shape)))
    emu2 = Emulator(g2)
    assert all(value_accumulator_bits(op) > 53 and not emu2.exact[op.name] for op in g2.ops if op.kind == "linear")
    assert any("not proven" in n for n in fpq.verify(both, random_inputs(g2, 300, seed=1), qonnx_subset=4).notes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("builder,fmt", [(mlp, "int8"), (mlp, "e4m3"), (MODELS["conv2d_bn"], "int8"),
                                         (MODELS["conv2d_bn"], "e2m1"), (residual_block, "fixed<8,3>")])
def test_cuda_emulator_equals_numpy(builder, fmt):
    """On a GPU (TF32 off, convs as GEMMs): the fused run and the trace equal the numpy emulator;
    fpq.emulate picks the GPU itself for a CUDA tensor."""
    m, shape = builder()
    graph = read_graph(fpq.export_qonnx(fpq.convert(m, fmt=fmt), None, torch.zeros(1, *shape)))
    x = random_inputs(graph, 20000, seed=7)
    ref, ref_trace = Emulator(graph)(x, return_trace=True)
    y = fpq.emulate(graph, torch.from_numpy(x).cuda())
    assert y.is_cuda
    np.testing.assert_array_equal(ref, y.cpu().numpy())
    _, trace = Emulator(graph, device="cuda")(x[:2000], return_trace=True)
    for k in ref_trace:
        np.testing.assert_array_equal(np.asarray(ref_trace[k][:2000], np.float64), trace[k].cpu().double().numpy())
