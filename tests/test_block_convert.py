"""fpq.convert with block-scaled formats (issue 20, step 5, torch side): an MLP at mxfp4, nvfp4,
mxfp8_e4m3, mxint8 and weights="nvfp4", activations="mxfp8_e4m3" computes exactly the numpy
reference's block quantization of its weights and activations (atol=0 in eval mode), trains with
straight-through gradients (stochastic rounding only in training), exports to QONNX with fpq's
BlockQuant node, which qonnx's executor runs (== torch, atol=0), and what is not built refuses it
naming the layer (pools with block formats; a block-scaled bias; HLS of block weights with
scalar activations)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.numerics.blocks import block_quantize

FORMATS = ["mxfp4", "nvfp4", "mxfp8_e4m3", "mxint8"]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def inputs(n=2000):
    """Off-grid inputs over many binades, blocks of zeros and one huge outlier per row group."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 64)) * np.exp2(rng.integers(-8, 8, size=(n, 1)))
    x[::7, :32] = 0.0
    x[::11, 5] = 3e4
    return torch.tensor(x, dtype=torch.float32)


def reference(model: nn.Sequential, x: torch.Tensor, w_fmt: str, a_fmt: str, q) -> np.ndarray:
    """The network by the numpy reference: input, weights and each Linear's output block-quantized,
    the bias int16 as converted. The float64 matmul is exact here: every product of an element
    pair has at most 2 + 2 (mxfp4) .. 8 + 8 (mxint8) + 24 (NVFP4's tensor scale) significant bits
    and the 64 / 48 summands span few enough binades, which the equality itself confirms against
    the model's exact eval path (fpq.numerics.wide)."""
    l1, l2 = q.get_submodule("0"), q.get_submodule("2")
    act_ts = {}
    for name, role, tq in q.fpq_quantizers():
        if role == "output" and not tq.fmt.po2_scale:
            act_ts[name] = float(tq.tensor_scale_t)
    ts_in = None if fpq.parse_format(a_fmt).po2_scale else float(q.get_submodule("input_quant").fpq_output.tensor_scale_t)
    h = block_quantize(x.numpy(), a_fmt, ts_in).values
    for i, layer in ((0, l1), (2, l2)):
        w = block_quantize(model[i].weight.detach().numpy(), w_fmt).values
        b = layer.bias_quant(layer.bias).value.detach().double().numpy()
        h = block_quantize(h @ w.T + b, a_fmt, act_ts.get(str(i))).values  # the Linear's output quantizer
        if i == 0:
            h = np.maximum(h, 0)  # then the ReLU (fpq keeps it after the layer's quantizer)
    return h


@pytest.mark.parametrize("w_fmt, a_fmt", [(f, f) for f in FORMATS] + [("nvfp4", "mxfp8_e4m3")])
def test_converted_mlp_equals_reference(w_fmt, a_fmt):
    model = mlp()
    q = fpq.convert(model, weights=w_fmt, activations=a_fmt)
    x = inputs()
    fpq.calibrate(q, [x[:256]])
    if not fpq.parse_format(a_fmt).po2_scale:  # the activation tensor scale: calibrated, s_t = amax / (448 * 6)
        ts = float(q.get_submodule("input_quant").fpq_output.tensor_scale_t)
        assert ts == float(np.float32(np.float32(x[:256].abs().max()) / np.float32(2688.0))) != 1.0
    y = q(x).detach().double().numpy()
    w = q.get_submodule("0").fpq_weight
    assert isinstance(w.fmt, fpq.formats.BlockFormat) and str(w.fmt) == str(fpq.parse_format(w_fmt))
    # the layer's own quantized weight is the reference's
    qw = q.get_submodule("0").quant_weight()
    qw = getattr(qw, "value", qw)
    assert np.array_equal(qw.detach().double().numpy(), block_quantize(model[0].weight.detach().numpy(), w_fmt).values)
    assert np.array_equal(y, reference(model, x, w_fmt, a_fmt, q))


def test_qat_gradients_and_stochastic_rounding():
    q = fpq.convert(mlp(), fmt="mxfp4").train()
    x = inputs(64)
    loss = q(x).square().mean()
    loss.backward()
    g = q.get_submodule("0").weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    tq = q.get_submodule("0").fpq_weight
    tq.stochastic, tq.generator = True, torch.Generator().manual_seed(3)
    a = q.get_submodule("0").quant_weight()
    tq.generator = torch.Generator().manual_seed(3)
    b = q.get_submodule("0").quant_weight()
    assert torch.equal(getattr(a, "value", a), getattr(b, "value", b))
    q.eval()  # eval: round to nearest even whatever the option says
    e = q.get_submodule("0").quant_weight()
    ref = block_quantize(q.get_submodule("0").weight.detach().numpy(), "mxfp4").values
    assert np.array_equal(getattr(e, "value", e).detach().double().numpy(), ref)


def test_refusals_name_the_layer(tmp_path):
    x = inputs(8)
    q = fpq.convert(mlp(), weights="nvfp4", activations="int8")   # HLS and cost: tests/test_block_hls.py
    with pytest.raises(ValueError, match="linear 'linear_0': HLS builds a block-scaled Linear whose input and "
                                         "weights are both block-scaled"):
        fpq.to_hls(q, tmp_path / "p", x)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AvgPool2d(2))   # block convs: tests/test_block_conv.py
    with pytest.raises(ValueError, match="layer '2' \\(AvgPool2d\\) has the block-scaled activations format"):
        fpq.convert(conv, fmt="mxfp4")
    with pytest.raises(ValueError, match="a bias is added in the accumulator"):
        fpq.convert(mlp(), fmt="mxfp4", bias="mxfp4")
    assert fpq.convert(conv, fmt="mxfp4", overrides={"2": "e4m3"}) is not None


def qonnx_outputs(mw, x: torch.Tensor) -> np.ndarray:
    from qonnx.core.onnx_exec import execute_onnx

    from fpq.verification import qonnx_double_model
    md = qonnx_double_model(mw)   # sums in float64, as fpq.verify runs qonnx
    return np.concatenate([np.asarray(execute_onnx(md, {"input": x[i:i + 1].numpy()})["output"], dtype=np.float64)
                           for i in range(len(x))])


def exported(w_fmt, a_fmt, x, tmp_path):
    q = fpq.convert(mlp(), weights=w_fmt, activations=a_fmt)
    fpq.calibrate(q, [x[:256]], progress=False)
    path = fpq.export_qonnx(q, tmp_path / "m.onnx", x[:1])
    return q, path


@pytest.mark.parametrize("w_fmt, a_fmt", [(f, f) for f in FORMATS] + [("nvfp4", "mxfp8_e4m3")])
def test_qonnx_export_runs_in_qonnx_executor_exactly(w_fmt, a_fmt, tmp_path):
    import onnx

    from fpq.export.block_ops import DOMAIN, block_format_of
    x = inputs()
    q, path = exported(w_fmt, a_fmt, x, tmp_path)
    m = onnx.load(path)
    onnx.checker.check_model(m)
    blocks = [n for n in m.graph.node if n.domain == DOMAIN]
    assert sorted(str(block_format_of(n)) for n in blocks) == sorted(
        [str(fpq.parse_format(a_fmt))] * 3 + [str(fpq.parse_format(w_fmt))] * 2)
    muls = [n for n in m.graph.node if n.op_type == "Mul" and n.name.endswith("_tensor_scale")]
    assert len(muls) == sum(not block_format_of(n).po2_scale for n in blocks)
    # 2,000 off-grid inputs run through torch (test above); qonnx's executor takes one sample a
    # call (~12 ms): 200 rows here (every 7th with a zero block, every 11th with the outlier), all
    # 2,000 in the slow test below
    rows = torch.cat([x[:100], x[1000:1100]])
    assert np.array_equal(qonnx_outputs(path, rows), q(rows).detach().double().numpy())


@pytest.mark.full   # 30-50 s per format; the fast verify tests run qonnx on a subset
@pytest.mark.parametrize("fmt", FORMATS)
def test_qonnx_executor_2000_inputs(fmt, tmp_path):
    x = inputs()
    q, path = exported(fmt, fmt, x, tmp_path)
    assert np.array_equal(qonnx_outputs(path, x), q(x).detach().double().numpy())
