"""One TypePlan (issue 16): a converted model and its QONNX file give the same plan (the type of
every tensor of every layer), the same cost reports (io_parallel and io_stream, where the line
buffers need the input shapes), the same emulated outputs and the same HLS build: the hls4ml
layer list and every precision ``fpq.to_hls`` would write, compared before anything is written
or compiled (``plan_hls`` makes every build decision; hls4ml only renders it)."""
import dataclasses

import numpy as np
import pytest
import torch

import fpq
from fpq.export import as_graph, recorded_input
from fpq.export.graph import typeplan_from_graph
from fpq.hls.builder import plan_hls
from fpq.testing.networks import conv2d_bn_net, mlp, residual_block
from fpq.typeplan import TensorType


def _types(tp):
    """{(layer, role): (format, scale bytes) or the Fixed} and every attr that is plain data."""
    out = {}
    for lp in tp:
        for role, t in lp.tensors.items():
            out[(lp.name, role)] = ((str(t.format), t.scale.tobytes()) if isinstance(t, TensorType) else str(t))
        for role, v in lp.values.items():
            out[(lp.name, "values", role)] = np.asarray(v).tobytes()
        out[(lp.name, "op")] = (lp.op, lp.fan_in, lp.note, repr(sorted(lp.attrs.items())))
    return out


def _plain(v):
    """A comparable form of an HLSPlan field: arrays by dtype, shape and bytes, precisions by their C++ type."""
    if isinstance(v, np.ndarray):
        return ("array", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    if isinstance(v, (str, int, float, bool, type(None), np.generic)):
        return v
    return (type(v).__name__, str(v))   # Fixed / FloatPort: the type hls4ml is given


def _hls_build(src, example_input=None):
    """What fpq.to_hls builds from src, up to the point where hls4ml writes files: the graph, its
    one TypePlan and the HLSPlan (layers with their weights, every precision, the layouts)."""
    graph = as_graph(src, example_input)
    return {f.name: _plain(getattr(hp, f.name)) for hp in [plan_hls(graph, typeplan_from_graph(graph))]
            for f in dataclasses.fields(hp)}


@pytest.mark.parametrize("build, fmt", [(mlp, "int8"), (conv2d_bn_net, "int8"), (residual_block, "fixed<8,3>"),
                                        (conv2d_bn_net, "e4m3")])
def test_model_and_its_qonnx_file_have_one_plan(build, fmt, tmp_path):
    m, shape = build()
    q = fpq.convert(m, fmt)
    torch.manual_seed(0)
    fpq.calibrate(q, [torch.randn(32, *shape)], progress=False)
    path = tmp_path / "q.onnx"
    fpq.export_qonnx(q, path, torch.zeros(1, *shape))
    a, b = fpq.plan(q), fpq.plan(path)
    assert [lp.name for lp in a] == [lp.name for lp in b]
    assert _types(a) == _types(b)
    for io in ("io_parallel", "io_stream"):
        ca, cb = fpq.estimate_cost(q, io_type=io), fpq.estimate_cost(str(path), io_type=io)
        assert ca.to_dict() == cb.to_dict(), io
    x = torch.randn(16, *shape) * 2
    assert np.array_equal(fpq.emulate(q, x), fpq.emulate(str(path), x))
    ha, hb = _hls_build(q, recorded_input(q)), _hls_build(str(path))
    assert ha["precisions"] and ha["layers"]
    assert ha == hb


def test_stream_line_buffers_reach_the_cost_of_a_qonnx_file(tmp_path):
    """The QONNX plan carries in_shapes: a conv2d's line buffer and window are priced from either."""
    m, shape = conv2d_bn_net()
    q = fpq.convert(m, "int8")
    fpq.calibrate(q, [torch.randn(8, *shape)], progress=False)
    path = tmp_path / "q.onnx"
    fpq.export_qonnx(q, path, torch.zeros(1, *shape))
    rows = {r["layer"]: r for r in fpq.estimate_cost(str(path), io_type="io_stream").layers}
    assert rows["conv2d_0"]["line_buffer_lut"] > 0 and rows["conv2d_4"]["line_buffer_lut"] > 0
    # the requantizers after the convs are casts of their accumulators: no rows (and FIFOs) of their own
    assert not any(r["op"] == "quant" for r in rows.values())


def test_plan_of_a_model_without_shapes_says_what_it_needs():
    m, _ = conv2d_bn_net()
    q = fpq.convert(m, "int8")
    with pytest.raises(ValueError, match="input shape"):
        fpq.plan(q)
    assert len(fpq.plan(q, torch.zeros(1, 1, 8, 8)))
    assert len(fpq.plan(fpq.convert(mlp()[0], "int8")))   # a Linear first tells its input size


def test_float_scaled_layers_read_the_planned_value_accumulator():
    """A float activation scale has no accumulator type from the formats; the plan holds the exact
    sum of the values as stored (attrs['value_accumulator']) and the emulator (is float64 exact?),
    the cost model (adder width) and the HLS builder (accumulator precision) agree with it, also
    for the grouped conv, which HLS builds dense but sums over its true fan-in."""
    from fpq.emulate import Emulator

    m, shape = conv2d_bn_net()
    q = fpq.convert(m, weights="fixed<8,1>", activations="int8", scale="float")
    torch.manual_seed(0)
    fpq.calibrate(q, [torch.randn(32, *shape)], progress=False)
    graph = as_graph(q, recorded_input(q))
    tp = typeplan_from_graph(graph)
    planned = {lp.name: lp.attrs["value_accumulator"] for lp in tp if "value_accumulator" in lp.attrs}
    assert set(planned) == {"conv2d_0", "conv2d_4", "linear_7"}
    assert tp["conv2d_4"].attrs["groups"] == 2
    emu = Emulator(graph)
    rows = {r["layer"]: r for r in fpq.estimate_cost(graph).layers}
    hls = plan_hls(graph, tp)
    for name, acc in planned.items():
        assert emu.exact[name] == (acc.width <= 53)
        assert rows[name]["acc_bits"] == acc.width
        h = hls.precisions[hls.op_layer[name]]["accum"]
        assert (h.width, h.int_bits) == (acc.width, acc.int_bits), name


@pytest.mark.parametrize("make", [residual_block, conv2d_bn_net], ids=["residual_add", "conv_bn_relu"])
def test_requantizers_are_fused_where_hls_fuses_them(make):
    """The plan alone decides which cast requantizer the layer before computes (after a linear,
    a residual add, a ReLU ...): the HLS project builds exactly the planned layers, and the cost
    model prices one row per HLS layer, with the fused cast inside the add (no register of its
    own, so fewer FFs than an add followed by a quant layer)."""
    m, shape = make()
    q = fpq.convert(m, fmt="int8")
    torch.manual_seed(0)
    fpq.calibrate(q, [torch.randn(64, *shape)], progress=False)
    graph = as_graph(q, recorded_input(q))
    tp = typeplan_from_graph(graph)
    hls = plan_hls(graph, tp)
    fused = {lp.name: lp.attrs["fused_into"] for lp in tp if lp.attrs.get("fused_into")}
    assert fused and all(hls.op_layer[k] == v for k, v in fused.items())
    built = {L["name"] for L in hls.layers}
    assert not set(fused) & built
    rows = fpq.estimate_cost(graph).layers
    priced = {r["layer"] for r in rows if r["lut"] > 0 or r["ff"] > 0}
    assert priced <= built and {n for n in built if n in tp.layers and tp[n].op not in ("input_quant",)} <= \
        {r["layer"] for r in rows}
    for name, into in fused.items():
        assert tp[into].tensors["output"] is not None and tp[into].attrs["requant"] == name
        h = hls.precisions[into]["result"]
        out = tp[into].tensors["output"]
        assert h.width == out.carrier().width, name
    adds = [lp for lp in tp if lp.op == "add"]
    if adds:
        add = adds[0]
        assert add.attrs.get("requant") and "exact_output" in add.attrs
        r = next(r for r in rows if r["layer"] == add.name)
        assert r["ff"] == int(np.prod(add.attrs["out_shape"][1:])) * add.tensors["output"].carrier().width


def test_only_ops_hls_builds_as_layers_take_a_fused_requantizer():
    """A requantizer is fused only into an op the HLS builder makes a layer of (mul / div have
    none: their quantizer stays a layer of its own, which the cost model prices)."""
    from fpq.hls.builder import _Builder
    from fpq.ir import FREE_KINDS
    from fpq.ir.plan import REQUANT_FUSING

    assert all(hasattr(_Builder, f"op_{k}") for k in REQUANT_FUSING)
    assert not set(REQUANT_FUSING) & set(FREE_KINDS) and "mul" not in REQUANT_FUSING
