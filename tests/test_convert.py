"""fpq.convert: policy, overrides, errors, non-mutation, TypePlan, QAT, Brevitas QONNX export."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.conversion import FpqModel


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_unsupported_layer_names_path_type_and_list():
    m = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Mish()), nn.Linear(4, 2))
    with pytest.raises(ValueError) as e:
        fpq.convert(m, "int8")
    msg = str(e.value)
    assert "'1.0'" in msg and "Mish" in msg and "supported:" in msg and "Conv2d" in msg


def test_unsupported_function_and_constant_add():
    class Sig(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.erf(self.fc(x))

    class AddConst(Sig):
        def forward(self, x):
            return self.fc(x) + 1.0

    with pytest.raises(ValueError, match="erf.*supported:"):
        fpq.convert(Sig(), "int8")
    with pytest.raises(ValueError, match="constant"):
        fpq.convert(AddConst(), "int8")


def test_brevitas_layer_is_refused_by_path():
    from brevitas.nn import QuantLinear
    with pytest.raises(ValueError, match="'1' of type QuantLinear.*supported:"):
        fpq.convert(nn.Sequential(nn.Linear(3, 3), QuantLinear(3, 3)), "int8")


def test_lone_batchnorm_is_kept_elementwise_and_batch_statistics_refused():
    from fpq.nn.batchnorm import FpqBatchNorm

    m = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    assert isinstance(fpq.convert(m, "int8").get_submodule("0"), FpqBatchNorm)   # nothing to fold into
    m = nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match="BatchNorm1d without running statistics"):
        fpq.convert(m, "int8")


@pytest.mark.parametrize("bad", ["e0m3", "int0", "fixed<4,9,FOO>", "float9"])
def test_bad_format_raises_parse_error(bad):
    with pytest.raises(ValueError) as e:
        fpq.convert(small_cnn(), bad)
    with pytest.raises(ValueError) as ref:
        fpq.parse_format(bad)
    assert str(e.value) == str(ref.value)
    with pytest.raises(ValueError):
        fpq.convert(small_cnn(), "int8", overrides={"6": bad})


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale kind"):
        fpq.convert(small_cnn(), "int8", scale="log")
    with pytest.raises(ValueError, match="granularity"):
        fpq.convert(small_cnn(), "int8", granularity="row")
    with pytest.raises(ValueError, match="no format"):
        fpq.convert(small_cnn())
    with pytest.raises(ValueError, match="match no module"):
        fpq.convert(small_cnn(), "int8", overrides={"fc9": "int4"})


def test_original_not_mutated():
    m = small_cnn()
    before = copy.deepcopy(m.state_dict())
    types = [type(x) for x in m.modules()]
    x = torch.rand(5, 1, 8, 8)
    y0 = m(x)
    q = fpq.convert(m, "e4m3")
    fpq.calibrate(q, [x], progress=False)
    q.train()
    q(x).sum().backward()
    assert [type(x) for x in m.modules()] == types
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(m(x), y0)
    assert not m.training


def test_overrides_and_globs():
    m = small_cnn()
    q = fpq.convert(m, "int8", overrides={"[68]": "e2m1", "8": {"weights": "int4"}, "0": {"bias": "int12"}})
    x = torch.rand(1, 1, 8, 8)   # the plan is read from the QONNX export: it needs the input shape
    tp = fpq.plan(q, x)
    assert str(tp["0"].tensors["weight"].format) == "int8"
    assert str(tp["0"].tensors["bias"].format) == "int12"
    assert str(tp["6"].tensors["weight"].format) == "e2m1"
    # a minifloat requantizer is no cast: its own layer after the linear (its own circuit in HLS)
    assert str(tp["quant_6"].tensors["output"].format) == "e2m1" and "output" not in tp["6"].tensors
    # the exact name wins over the glob for the keys it sets; the glob sets the rest
    assert str(tp["8"].tensors["weight"].format) == "int4"
    assert str(tp["quant_8"].tensors["output"].format) == "e2m1"
    assert str(tp["input_quant"].tensors["output"].format) == "int8"
    # first / last layer at another format is a one-liner; inputs= sets the input quantizer
    q2 = fpq.convert(m, "e2m1", overrides={"0": "int8", "8": "int8"}, inputs="fixed<8,1>")
    tp2 = fpq.plan(q2, x)
    assert [str(tp2[n].tensors["weight"].format) for n in ("0", "6", "8")] == ["int8", "e2m1", "int8"]
    assert str(tp2["input_quant"].tensors["output"].format) == "fixed<8,1,RND_CONV,SAT>"


def test_typeplan_order_roles_and_table():
    q = fpq.convert(small_cnn(), "int8")
    fpq.calibrate(q, [torch.rand(8, 1, 8, 8)], progress=False)
    tp = fpq.plan(q)
    # the graph's ops; a cast requantizer after a conv / linear is fused into it (its output)
    assert [(l.name, l.op, l.attrs.get("fused_into")) for l in tp] == [
        ("input_quant", "input_quant", None), ("conv2d_0", "conv2d", None), ("quant_0", "quant", "conv2d_0"),
        ("relu_2", "relu", None), ("maxpool_3", "maxpool", None), ("flatten_4", "flatten", None),
        ("linear_6", "linear", None), ("quant_6", "quant", "linear_6"), ("relu_7", "relu", None),
        ("linear_8", "linear", None), ("quant_8", "quant", "linear_8"), ("output", "output", None)]
    conv = tp["0"]   # a torch module path finds its layer
    assert conv is tp["conv2d_0"]
    assert conv.fan_in == 9 and conv.attrs["kernel"] == (3, 3) and conv.attrs["inputs"] == ["input_quant"]
    assert conv.attrs["out_shape"] == (1, 4, 8, 8)
    assert {"input", "weight", "bias", "product", "accumulator", "output"} <= set(conv.tensors)
    assert tp["6"].fan_in == 64
    # the accumulator holds every sum exactly: 64 products of int8 x int8 plus the bias
    acc = tp["6"].tensors["accumulator"]
    assert acc.width >= 8 + 8 + 6
    w = tp["6"].values["weight"]
    s = float(tp["6"].tensors["weight"].scale)
    assert np.array_equal(w / s, np.round(w / s)) and np.abs(w / s).max() <= 128
    text = str(tp)
    assert "accumulator" in text and "int8 x 2^" in text


def test_reconvert_keeps_trained_weights_and_scales():
    m = small_cnn()
    q = fpq.convert(m, "int8")
    fpq.calibrate(q, [torch.rand(16, 1, 8, 8)], progress=False)
    with torch.no_grad():
        q.get_submodule("6").weight.mul_(0.5)   # as if trained
    q2 = fpq.convert(q, "int8", overrides={"8": "e4m3"})
    assert isinstance(q2, FpqModel)
    assert torch.equal(q2.get_submodule("6").weight, q.get_submodule("6").weight)
    assert torch.equal(q2.get_submodule("0").fpq_output.scale(), q.get_submodule("0").fpq_output.scale())
    assert str(q2.get_submodule("8").fpq_weight.fmt) == "e4m3"
    x = torch.rand(4, 1, 8, 8)
    q3 = fpq.convert(q, "int8")
    assert torch.equal(q3(x), q(x))


def test_qat_loss_decreases_and_scales_get_gradients():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(128, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    q = fpq.convert(m, "e3m2", scale="float")
    fpq.calibrate(q, [x], progress=False)
    q.train()
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(q(x), y)
        loss.backward()
        if not losses:
            for name, role, tq in q.fpq_quantizers():
                assert tq.log2_scale.grad is not None, (name, role)
            assert q.get_submodule("0").fpq_weight.log2_scale.grad.abs().sum() > 0
            assert q.get_submodule("2").fpq_output.log2_scale.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    # po2 scales stay powers of two while training (rounding STE on the log2 scale)
    qp = fpq.convert(m, "int8")
    qp.train()
    nn.functional.cross_entropy(qp(x), y).backward()
    tq = qp.get_submodule("0").fpq_weight
    assert tq.log2_scale.grad is not None
    s = float(tq.scale())
    assert s == 2.0 ** round(np.log2(s))


@pytest.mark.slow
def test_brevitas_qonnx_export_nodes(tmp_path):
    import onnx
    from brevitas.export import export_qonnx

    m = small_cnn()
    q = fpq.convert(m, "int8", overrides={"6": "e4m3", "8": {"weights": "binary"}})
    fpq.calibrate(q, [torch.rand(8, 1, 8, 8)], progress=False)
    path = tmp_path / "m.onnx"
    export_qonnx(q, torch.rand(1, 1, 8, 8), str(path))
    g = onnx.load(str(path)).graph
    ops = [n.op_type for n in g.node]
    assert "Quant" in ops and "FloatQuant" in ops and "BipolarQuant" in ops
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    val = lambda name: inits.get(name, consts.get(name))  # noqa: E731
    fq = [n for n in g.node if n.op_type == "FloatQuant"]
    for n in fq:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["has_inf"] == 0 and attrs["has_nan"] == 1 and attrs["saturation"] == 1
        # inputs: x, scale, exponent_bitwidth, mantissa_bitwidth, exponent_bias, max_val
        assert float(val(n.input[2])) == 4 and float(val(n.input[3])) == 3
        assert float(val(n.input[4])) == 7 and float(val(n.input[5])) == 448
    qn = [n for n in g.node if n.op_type == "Quant"]
    assert all(float(val(n.input[3])) in (8, 16) for n in qn)   # bit widths: int8 and int16 bias
    # a Fixed format exports as Quant(bit_width=W, scale=2**-F); its rounding mode as QONNX names it
    qf = fpq.convert(m, "fixed<8,3>", overrides={"8": "fixed<6,2,TRN,SAT>"})
    export_qonnx(qf, torch.rand(1, 1, 8, 8), str(tmp_path / "f.onnx"))
    gf = onnx.load(str(tmp_path / "f.onnx")).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in gf.initializer}
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in gf.node if n.op_type == "Constant"}
    fixed = {(float(val(n.input[3])), float(val(n.input[1]))) for n in gf.node if n.op_type == "Quant"}
    assert (8.0, 2.0 ** -5) in fixed and (6.0, 2.0 ** -4) in fixed
    modes = {onnx.helper.get_attribute_value(a) for n in gf.node if n.op_type == "Quant"
             for a in n.attribute if a.name == "rounding_mode"}
    assert b"FLOOR" in modes
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"}
    tq = q.get_submodule("0").fpq_weight
    assert any(val(n.input[1]) is not None and float(np.ravel(val(n.input[1]))[0]) == float(tq.scale())
               for n in qn)


def test_typeplan_flags_layers_float64_cannot_sum_exactly():
    m = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    assert all(not l.note for l in fpq.plan(fpq.convert(m, "e4m3")))
    tp = fpq.plan(fpq.convert(m, "e5m2"))  # 72-bit sums: exact in pieces (fpq.numerics.wide)
    assert not tp["0"].note and tp["0"].tensors["accumulator"].width == 70
    tp = fpq.plan(fpq.convert(m, "bf16"))
    assert "not guaranteed exact" in tp["0"].note and "accumulator" not in tp["0"].tensors
