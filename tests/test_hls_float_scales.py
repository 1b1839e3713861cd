"""Quantizers whose scale is not a power of two in HLS: exact lookup tables over the values their
input can take (fpq.numerics.thresholds). The table search is checked against the quantizer itself;
the C-sim against torch and the emulator, atol=0, on off-grid probe inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fpq
from fpq.emulate import Emulator
from fpq.testing.networks import conv2d_bn_net, mlp
from fpq.export.graph import read_graph
from fpq.formats import Fixed, parse_format
from fpq.testing.conformance import probe_inputs
from fpq.numerics.thresholds import MAX_LEVELS, lookup_table

pytestmark = pytest.mark.slow


def _scaled(fmt: str, s: float):
    f, s64 = parse_format(fmt), np.float64(np.float32(s))
    return lambda x: (fpq.quantize(np.asarray(x, np.float64) / s64, f, 1.0) * s64).astype(np.float32)


@pytest.mark.parametrize("fmt,in_type", [("int8", Fixed(18, 6, True)), ("e4m3", Fixed(24, 9, True)),
                                         ("e2m1", "float32"), ("int4", Fixed(12, 12, False))])
def test_lookup_table_equals_the_quantizer(fmt, in_type):
    q = _scaled(fmt, 0.0123)
    th, lv = lookup_table(q, in_type)
    assert np.all(np.diff(th) > 0) and np.all(np.diff(lv) > 0) and len(lv) == len(th) + 1
    # every value of a small input type, or random float32 values (incl. huge and tiny ones)
    rng = np.random.default_rng(5)
    if in_type == "float32":
        x = np.concatenate([rng.standard_normal(50000) * 0.1, rng.standard_normal(1000) * 1e30,
                            rng.standard_normal(1000) * 1e-30, th, np.nextafter(th.astype(np.float32), -np.inf)])
        x = x.astype(np.float32)
    else:
        n = np.arange(-(1 << (in_type.width - 1)) if in_type.signed else 0, 1 << (in_type.width - in_type.signed))
        x = np.ldexp(n[:: max(1, n.size // 200000)].astype(np.float64), -(in_type.width - in_type.int_bits))
    table = lv[np.searchsorted(th, x, side="right")]
    np.testing.assert_array_equal(table, np.asarray(q(x), np.float64))


def test_lookup_table_refusals():
    with pytest.raises(ValueError, match="not monotone"):
        lookup_table(lambda x: np.cos(np.asarray(x, np.float64)), Fixed(10, 4, True))
    with pytest.raises(ValueError, match=f"more than {MAX_LEVELS} output levels"):
        lookup_table(_scaled("int16", 0.001), Fixed(40, 20, True))
    with pytest.raises(ValueError, match="wider than 53 bits"):
        lookup_table(_scaled("int8", 0.01), Fixed(60, 20, True))


def _build_and_compare(q, shape, outdir, io_type, n=2000):
    x0 = torch.randn(256, *shape) * 2
    fpq.calibrate(q, [x0])
    mw = fpq.export_qonnx(q, None, torch.zeros(1, *shape))
    graph = read_graph(mw)
    scales = [float(np.ravel(op.quant.scale)[0]) for op in graph.ops if op.kind in ("input_quant", "quant")]
    assert all(np.log2(s) != np.round(np.log2(s)) for s in scales), scales   # really not powers of two
    proj = fpq.to_hls(mw, outdir, io_type=io_type)
    x = probe_inputs(graph, n, seed=2)
    y_emu = Emulator(graph)(x)
    with torch.no_grad():
        y_torch = q(torch.from_numpy(x)).double().numpy()
    y_hls = np.asarray(proj.predict(x), np.float64).reshape(y_emu.shape)
    np.testing.assert_array_equal(y_emu, y_torch)
    np.testing.assert_array_equal(y_emu, y_hls)
    return proj


def test_mlp_float_activation_scales_exact_in_csim(tmp_path):
    """int8 activations and input with float scales, fixed-point weights: the input port is
    float32 and every quantizer a lookup; C-sim == emulator == torch on 2,000 probes."""
    m, shape = mlp()
    q = fpq.convert(m, weights="fixed<8,1>", activations="int8", scale="float")
    proj = _build_and_compare(q, shape, tmp_path / "prj", "io_parallel")
    assert "quantize_by_thresholds" in (tmp_path / "prj" / "firmware" / "parameters.h").read_text() + \
        "".join(p.read_text() for p in (tmp_path / "prj" / "firmware").glob("*.h"))
    assert proj.info["input_float32"]


def test_conv_net_minifloat_float_scales_io_stream(tmp_path):
    m, shape = conv2d_bn_net(groups=1)
    q = fpq.convert(m, weights="fixed<6,1>", activations="e3m2", scale="float")
    _build_and_compare(q, shape, tmp_path / "prj", "io_stream")


def test_foreign_brevitas_float_activation_scales(tmp_path):
    """A plain Brevitas network with Brevitas' float-scaled activation quantizers (its defaults)
    and power-of-two weight scales, exported by Brevitas itself, built and compared."""
    import brevitas.nn as qnn
    from brevitas.export import export_qonnx
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFloat

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True),
        qnn.QuantLinear(16, 32, bias=False, weight_quant=Int8WeightPerTensorFixedPoint),
        qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, return_quant_tensor=True),
        qnn.QuantLinear(32, 5, bias=False, weight_quant=Int8WeightPerTensorFixedPoint))
    net.train()
    with torch.no_grad():  # a few batches move the activation scales to learned, non-po2 values
        for _ in range(8):
            net(torch.randn(64, 16) * 1.7)
    net.eval()
    path = str(tmp_path / "brevitas.onnx")
    export_qonnx(net, torch.randn(1, 16), export_path=path)
    graph = read_graph(path)
    act_scales = [float(np.ravel(op.quant.scale)[0]) for op in graph.ops if op.kind in ("input_quant", "quant")]
    assert len(act_scales) == 2 and all(np.log2(s) != np.round(np.log2(s)) for s in act_scales), act_scales
    proj = fpq.to_hls(path, tmp_path / "prj")
    x = probe_inputs(graph, 2000, seed=4)
    np.testing.assert_array_equal(fpq.emulate(graph, x), np.asarray(proj.predict(x), np.float64).reshape(-1, 5))
