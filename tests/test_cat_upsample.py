"""Issue #18 item 1: channel concatenation (torch.cat / torch.concat) and nearest-neighbour upsampling
(nn.Upsample / F.interpolate, integer factors, 1-D and 2-D), through every path: convert, QONNX export,
the reader (ONNX Concat / Resize), both emulators, qonnx's executor (fpq.verify EXACT), the cost model
and hls4ml's Concatenate / Resize in C-sim (slow). Both ops move values without arithmetic, so every
comparison is at atol=0, on off-grid probe inputs with saturating rows; two branches of different
formats join in their exact union type."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from onnx import numpy_helper as nh
from torch import nn

import fpq
from fpq.cost_model.estimate import estimate
from fpq.emulate import Emulator
from fpq.export import read_graph
from fpq.hls.builder import plan_hls
from fpq.ir import UnsupportedGraphError
from fpq.ir.plan import typeplan_from_graph
from fpq.testing.conformance import conformance_cell, probe_inputs
from fpq.typeplan import TensorType


class UNet(nn.Module):
    """conv -> maxpool -> conv -> upsample x2 -> cat with the skip -> conv (a U-Net's one level)."""

    def __init__(self, functional=False):
        super().__init__()
        torch.manual_seed(0)
        self.functional = functional
        self.enc = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.mid = nn.Conv2d(4, 6, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.Conv2d(10, 3, 3, padding=1)

    def forward(self, x):
        skip = F.relu(self.enc(x))
        y = F.relu(self.mid(self.pool(skip)))
        y = F.interpolate(y, scale_factor=2, mode="nearest") if self.functional else self.up(y)
        return self.dec(torch.cat([y, skip], dim=1) if not self.functional else torch.concat((y, skip), 1))


class CatMLP(nn.Module):
    """Two Linear branches of one input joined (torch.cat, dim=-1), a third joined after (3 inputs)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b, self.c = nn.Linear(6, 5), nn.Linear(6, 3), nn.Linear(6, 2)
        self.out = nn.Linear(10, 4)

    def forward(self, x):
        return self.out(torch.cat([F.relu(self.a(x)), self.b(x), self.c(x)], dim=-1))


class Up1d(nn.Module):
    """Conv1d -> nearest upsample x3 (F.interpolate) -> cat with a second conv's upsampled map."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.c1, self.c2 = nn.Conv1d(2, 3, 3, padding=1), nn.Conv1d(2, 2, 3, padding=1)
        self.up = nn.Upsample(scale_factor=3)
        self.fc = nn.Linear(5 * 15, 2)

    def forward(self, x):
        y = torch.cat([F.interpolate(self.c1(x), scale_factor=3, mode="nearest"), self.up(self.c2(x))], 1)
        return self.fc(torch.flatten(y, 1))


class HeightCat(nn.Module):
    """Feature maps joined along their height (dim=2, hls4ml's first axis), after an
    nn.UpsamplingNearest2d (an nn.Upsample subclass) of a (2, 1) factor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 3, (3, 1), stride=(2, 1), padding=(1, 0))
        self.up = nn.UpsamplingNearest2d(scale_factor=(2, 1))
        self.c = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return self.c(torch.cat((self.a(x), self.up(self.b(x))), dim=2))


NETS = {"unet": (UNet, (2, 8, 8)), "hcat": (HeightCat, (2, 4, 5)), "unet_functional": (lambda: UNet(True), (2, 8, 8)),
        "mlp": (CatMLP, (6,)), "up1d": (Up1d, (2, 5))}
FORMATS = {"int8": dict(fmt="int8"), "e4m3": dict(fmt="e4m3"),
           # each branch its own format: the join holds both (the union of int8 x 2^k and fixed<6,2>)
           "mixed": dict(fmt="int8", overrides={"enc": "fixed<6,2>", "a": "fixed<6,2>", "c": "e4m3",
                                                "c1": "fixed<6,2>"})}


def _converted(net, fmt):
    cls, shape = NETS[net]
    model = cls()
    kw = dict(FORMATS[fmt])
    names = {n for n, _ in model.named_modules()}
    kw["overrides"] = {k: v for k, v in kw.get("overrides", {}).items() if k in names}
    q = fpq.convert(model, **kw)
    fpq.calibrate(q, [torch.randn((128,) + shape, generator=torch.Generator().manual_seed(5)) * 2], progress=False)
    return q.eval(), shape


CASES = [(net, fmt) for net in ("unet", "mlp") for fmt in FORMATS] + \
    [("unet_functional", "int8"), ("up1d", "int8"), ("up1d", "mixed"), ("hcat", "e4m3")]


@pytest.mark.parametrize("net,fmt", CASES)
def test_verify_exact(net, fmt):
    """torch == numpy emulator == qonnx's executor (fpq.verify) == torch emulator, on 2,000 probes."""
    q, shape = _converted(net, fmt)
    x = torch.from_numpy(probe_inputs(read_graph(fpq.export_qonnx(q, None, torch.zeros((1,) + shape))), 2000))
    rep = fpq.verify(q, x, qonnx_subset=16)
    assert rep.exact and rep.verified, rep
    assert set(rep.paths) >= {"emulator", "torch", "qonnx"}
    g = read_graph(fpq.export_qonnx(q, None, x[:1]))
    kinds = [op.kind for op in g.ops]
    assert "concat" in kinds
    assert ("upsample" in kinds) == (net != "mlp")
    y_np = fpq.emulate(g, x.numpy())
    y_t = Emulator(g, backend="torch")(x.numpy())
    np.testing.assert_array_equal(np.asarray(y_t), y_np)
    with torch.no_grad():
        np.testing.assert_array_equal(q(x).double().numpy(), np.asarray(y_np, np.float64))


def test_hls_plan_joins_heights_and_qat_trains():
    """dim=2 of a (C, H, W) map is hls4ml's axis 1 (of H, W, C); a QAT step passes gradients through
    the upsampling and the join to the first layers."""
    q, shape = _converted("hcat", "int8")
    plan = plan_hls(read_graph(fpq.export_qonnx(q, None, torch.zeros((1,) + shape))))
    cat = next(L for L in plan.layers if L["class_name"] == "Concatenate")
    assert (cat["op"], cat["axis"]) == ("concatenate3d", 1)
    q, shape = _converted("unet", "e4m3")
    q.train()
    q(torch.randn((8,) + shape)).square().mean().backward()
    for m in (q.enc, q.mid):
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0


def test_union_type_of_different_branches():
    """int8 x 2^k joined with fixed<6,2>: the concat's type is the exact Fixed holding both, and every
    value of the join is one of it (the emulator's trace)."""
    q, shape = _converted("unet", "mixed")
    g = read_graph(fpq.export_qonnx(q, None, torch.zeros((1,) + shape)))
    cat = next(op for op in g.ops if op.kind == "concat")
    ta, tb = (g.tensor_type(i) for i in cat.inputs)
    assert ta.format != tb.format
    t = cat.types["output"]
    assert isinstance(t, TensorType) and str(t.format).startswith("fixed<")
    x = probe_inputs(g, 500)
    _, trace = Emulator(g)(x, return_trace=True)
    v = trace[cat.name].astype(np.float64)
    from fpq.numerics import quantize
    np.testing.assert_array_equal(quantize(v, t.format, t.scale), v)   # on its grid, none saturated
    for src, tin in zip(cat.inputs, (ta, tb)):   # and it holds every value either input type can take
        c, u = tin.carrier(), t.format
        assert c.frac_bits <= u.frac_bits and c.int_bits + (not c.signed) <= u.int_bits


def test_plan_cost_and_hls_layers():
    """The HLS plan joins channels on hls4ml's last axis in the union type, Resize keeps its input's
    type; the cost model prices both (wires in io_parallel; buffers / FIFOs in io_stream)."""
    q, shape = _converted("unet", "mixed")
    g = read_graph(fpq.export_qonnx(q, None, torch.zeros((1,) + shape)))
    tp = typeplan_from_graph(g)
    plan = plan_hls(g, tp)
    by = {L["class_name"]: L for L in plan.layers}
    cat, rs = by["Concatenate"], by["Resize"]
    assert cat["op"] == "concatenate3d" and cat["axis"] == 3            # (H, W, C): channels
    assert (rs["in_height"], rs["out_height"], rs["n_chan"], rs["algorithm"]) == (4, 8, 6, "nearest")
    assert plan.precisions[rs["name"]]["result"] == plan.precisions[rs["inputs"][0]]["result"]
    par = {r["layer"]: r for r in estimate(tp, io_type="io_parallel").layers}
    st = {r["layer"]: r for r in estimate(tp, io_type="io_stream").layers}
    for name in (cat["name"], rs["name"]):
        assert par[name]["lut"] == 0 and par[name]["ff"] == 0     # wires
        assert st[name]["lut"] + 36 * 18 * st[name]["bram18"] > 0  # an output FIFO, a row buffer
        assert st[name]["ii"] == 64                                # one output pixel per cycle
    assert st[rs["name"]]["row_buffer_ff"] == 4 * 6 * plan.precisions[rs["name"]]["result"].width
    rep = estimate(tp, io_type="io_stream")
    assert not [n for n in rep.notes if "no cost model" in n]
    # the skip (the ReLU after enc) feeds the pool and the join: hls4ml's Clone, two more FIFOs
    skip = g.producer(next(op for op in g.ops if op.kind == "concat").inputs[1])
    assert st[skip.name]["clone_fifos"] == 2 and "clone_fifos" not in par[skip.name]
    assert [r["layer"] for r in rep.layers if r.get("clone_fifos")] == [skip.name]


def test_hls_plan_vectors_and_1d_maps():
    """Three vectors join in a chain of two hls4ml Concatenates (torch order kept); 1-D maps join on
    hls4ml's last axis (channels) after a 1-D Resize of height 1."""
    q, shape = _converted("mlp", "mixed")
    plan = plan_hls(read_graph(fpq.export_qonnx(q, None, torch.zeros((1,) + shape))))
    cats = [L for L in plan.layers if L["class_name"] == "Concatenate"]
    assert [L["op"] for L in cats] == ["concatenate1d"] * 2 and cats[1]["inputs"][0] == cats[0]["name"]
    u = plan.precisions[cats[1]["name"]]["result"]
    for L in cats:
        for i in L["inputs"]:   # the union holds each input's type
            t = plan.precisions[i]["result"]
            assert t.frac_bits <= u.frac_bits and t.int_bits + (not t.signed) <= u.int_bits
    q, shape = _converted("up1d", "int8")
    plan = plan_hls(read_graph(fpq.export_qonnx(q, None, torch.zeros((1,) + shape))))
    rs = [L for L in plan.layers if L["class_name"] == "Resize"]
    assert [(L["in_height"], L["in_width"], L["out_width"]) for L in rs] == [(1, 5, 15)] * 2
    cat = next(L for L in plan.layers if L["class_name"] == "Concatenate")
    assert (cat["op"], cat["axis"]) == ("concatenate2d", 2)    # (W, C): channels


class _Tail(nn.Module):
    def __init__(self, tail):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.tail = tail    # an nn.Module (registered) or a function (traced through)

    def forward(self, x):
        return self.tail(self.conv(x))


@pytest.mark.parametrize("tail,name,why", [
    (lambda x: torch.cat([x, x], dim=0), "'cat'", "along the batch axis"),
    (lambda x: torch.concat([x, x], -4), "'concat'", "along the batch axis"),
    (lambda x: F.interpolate(x, scale_factor=1.5, mode="nearest"), "'interpolate'", "whole number"),
    (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), "'interpolate'", "mode 'bilinear' interpolates"),
    (nn.Upsample(scale_factor=2, mode="bilinear"), "'tail'", "mode 'bilinear' interpolates"),
    (lambda x: F.interpolate(x, size=(16, 16)), "'interpolate'", "must be given as scale_factor"),
])
def test_refused_by_convert(tail, name, why):
    with pytest.raises(ValueError) as e:
        fpq.convert(_Tail(tail), "int8")
    msg = str(e.value)
    assert name in msg and why in msg, msg
    assert "mode='nearest'" in msg or "dim=1" in msg, msg   # says what is allowed


def _resize_file(mode="nearest", scales=(1, 1, 2, 2), ctm="asymmetric", nearest_mode="floor", opset=13):
    """x -> Quant int8 2^-4 -> Resize -> out (channels-first 1x2x3x3)."""
    inits = [nh.from_array(np.array(v, np.float32), n) for n, v in (("s", 2.0 ** -4), ("z", 0.0), ("b", 8.0))]
    inits += [nh.from_array(np.array(scales, np.float32), "scales"), nh.from_array(np.zeros(0, np.float32), "roi")]
    nodes = [helper.make_node("Quant", ["x", "s", "z", "b"], ["xq"], name="Quant_0", domain="qonnx.custom_op.general",
                              signed=1, narrow=0, rounding_mode="ROUND"),
             helper.make_node("Resize", ["xq", "roi", "scales"], ["out"], name="Resize_0", mode=mode,
                              coordinate_transformation_mode=ctm, nearest_mode=nearest_mode)]
    out = [1, 2] + [int(3 * s) for s in scales[2:]]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, out)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("ctm,nearest_mode", [("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                                              ("half_pixel", "round_prefer_ceil"), ("pytorch_half_pixel", "floor")])
def test_foreign_nearest_resize_reads_when_it_repeats(ctm, nearest_mode):
    """A Resize written by others: read when onnx's own reference repeats each value (the index map),
    emulated == qonnx's executor; a mode that does not repeat is refused naming the node."""
    m = _resize_file(ctm=ctm, nearest_mode=nearest_mode)
    if (ctm, nearest_mode) == ("pytorch_half_pixel", "floor"):   # (x + 0.5) / 2 - 0.5 floors 1 to 0, 2 to 0
        with pytest.raises(UnsupportedGraphError, match="'Resize_0'.*does not repeat"):
            read_graph(m)
        return
    g = read_graph(m)
    assert [op.kind for op in g.ops] == ["input_quant", "upsample", "output"]
    assert g.ops[1].attrs["scales"] == (1, 1, 2, 2)
    rep = fpq.verify(m, qonnx_subset=30, n=30)
    assert rep.exact and rep.verified, rep


def test_foreign_upsample_opset9_1d():
    """The deprecated ONNX Upsample (opset 9, scales as an input) on a 1-D map, x3."""
    inits = [nh.from_array(np.array(v, np.float32), n) for n, v in (("s", 2.0 ** -4), ("z", 0.0), ("b", 8.0))]
    inits.append(nh.from_array(np.array((1, 1, 3), np.float32), "scales"))
    nodes = [helper.make_node("Quant", ["x", "s", "z", "b"], ["xq"], name="Quant_0", domain="qonnx.custom_op.general",
                              signed=1, narrow=0, rounding_mode="ROUND"),
             helper.make_node("Upsample", ["xq", "scales"], ["out"], name="Upsample_0", mode="nearest")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 12])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])
    assert read_graph(m).ops[1].attrs["scales"] == (1, 1, 3)
    rep = fpq.verify(m, n=20, qonnx_subset=20)
    assert rep.exact and rep.verified and "qonnx" in rep.paths, rep


@pytest.mark.parametrize("kw,why", [(dict(mode="linear"), "mode 'linear'"),
                                    (dict(scales=(1, 1, 1.5, 1.5)), "whole number"),
                                    (dict(scales=(2, 1, 1, 1)), "batch")])
def test_foreign_resize_refused(kw, why):
    with pytest.raises(UnsupportedGraphError, match=why):
        read_graph(_resize_file(**kw))


def test_foreign_concat_of_constants_refused():
    inits = [nh.from_array(np.array(v, np.float32), n) for n, v in (("s", 2.0 ** -4), ("z", 0.0), ("b", 8.0))]
    inits.append(nh.from_array(np.ones((1, 2), np.float32), "k"))
    nodes = [helper.make_node("Quant", ["x", "s", "z", "b"], ["xq"], name="Quant_0", domain="qonnx.custom_op.general",
                              signed=1, narrow=0, rounding_mode="ROUND"),
             helper.make_node("Concat", ["xq", "k"], ["out"], name="Concat_0", axis=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5])], inits)
    with pytest.raises(UnsupportedGraphError, match="'Concat_0' joins constant"):
        read_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    nodes[1] = helper.make_node("Concat", ["xq", "xq"], ["out"], name="Concat_0", axis=0)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])], inits[:3])
    with pytest.raises(UnsupportedGraphError, match="axis 0, the batch"):
        read_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


@pytest.mark.slow
@pytest.mark.parametrize("io_type,fmt", [("io_parallel", "mixed"), ("io_stream", "e4m3")])
def test_unet_csim_bit_exact(io_type, fmt, tmp_path):
    """C-sim == emulator == torch == qonnx at atol=0 on 2,000 probes (hls4ml's Concatenate / Resize)."""
    cls, shape = NETS["unet"]
    # "mixed": conformance_cell's formats in turn, enc int8, mid e4m3, dec fixed<8,3> (the join: int8 | e4m3)
    cell = conformance_cell(cls(), shape, fmt, tmp_path, io_type=io_type, n=2000)
    rep = cell.report
    assert rep.paths == ["emulator", "torch", "qonnx", "hls"]
    assert rep.exact, [r for r in rep.table if r["mismatches"]]
    classes = {layer.class_name for layer in cell.project.hls_model.get_layers()}
    assert {"Concatenate", "Resize"} <= classes


MODELS = Path(os.environ.get("FPQ_SHARED_MODELS") or Path(__file__).resolve().parents[1].parent / "shared" / "models")
ESPCN = MODELS / "qd_espcn_nnresize_quant.onnx"


@pytest.mark.skipif(not ESPCN.is_file(), reason=f"the shared QONNX files are not next to the repository ({MODELS})")
def test_espcn_refusal_names_batchnorm_only():
    """qonnx's ESPCN test model: its nearest Resize is read now; only its float BatchNorms are refused."""
    with pytest.raises(UnsupportedGraphError) as e:
        read_graph(ESPCN)
    msg = str(e.value)
    assert "BatchNormalization_11" in msg and "Resize_42" not in msg, msg


@pytest.mark.slow
@pytest.mark.skipif(not ESPCN.is_file(), reason=f"the shared QONNX files are not next to the repository ({MODELS})")
def test_espcn_resize_equals_qonnx():
    """The ESPCN file with its float BatchNorms rewritten by qonnx (BatchNormToAffine: float Mul / Add,
    which fpq reads as element-wise constant ops, not fixed-point exact): its Resize (opset 11,
    asymmetric / floor, x2) and every quantizer after it equal qonnx's executor on one 128x128 image."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.batchnorm_to_affine import BatchNormToAffine
    from qonnx.transformation.infer_shapes import InferShapes
    from fpq.verification import random_inputs
    mw = ModelWrapper(str(ESPCN)).transform(InferShapes()).transform(BatchNormToAffine())
    g = read_graph(mw)
    up = next(op for op in g.ops if op.kind == "upsample")
    assert up.attrs["scales"] == (1, 1, 2, 2)
    rep = fpq.verify(mw, random_inputs(g, 1, seed=0), qonnx_subset=1)
    rows = {r["layer"]: r for r in rep.table if r["path"] == "qonnx"}
    for name in [up.name, "<output>"] + [op.name for op in g.ops if op.kind == "quant"]:
        assert rows[name]["compared"] > 0 and rows[name]["mismatches"] == 0, rows[name]


class Inception1d(nn.Module):
    """Two padded Conv1d branches of one input joined by torch.cat (an Inception block, 1-D)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b = nn.Conv1d(2, 3, 3, padding=1), nn.Conv1d(2, 2, 5, padding=2)
        self.fc = nn.Linear(5 * 6, 2)

    def forward(self, x):
        return self.fc(torch.flatten(torch.cat([self.a(x), self.b(x)], 1), 1))


def test_shared_conv1d_input_padded_explicitly():
    """A padded Conv1d whose input another layer reads gets hls4ml's ZeroPadding1D from fpq (hls4ml 1.3's
    own io_stream pass inserts it before the wrong reader of a cloned stream)."""
    q = fpq.convert(Inception1d(), "int8")
    fpq.calibrate(q, [torch.randn(64, 2, 6)], progress=False)
    plan = plan_hls(read_graph(fpq.export_qonnx(q, None, torch.zeros(1, 2, 6))))
    by = {L["name"]: L for L in plan.layers}
    for conv in (L for L in plan.layers if L["class_name"] == "Conv1D"):
        pad = by[conv["inputs"][0]]
        assert pad["class_name"] == "ZeroPadding1D" and (conv["pad_left"], conv["pad_right"]) == (0, 0)
        assert conv["in_width"] == pad["out_width"] == 6 + pad["pad_left"] + pad["pad_right"]


@pytest.mark.slow
def test_inception1d_io_stream_csim(tmp_path):
    """Was wrong at every output (two padded Conv1d on one cloned input stream); now C-sim == emulator."""
    cell = conformance_cell(Inception1d(), (2, 6), "int8", tmp_path, io_type="io_stream", n=300)
    assert cell.report.exact, [r for r in cell.report.table if r["mismatches"]]
    assert "hls" in cell.report.paths
