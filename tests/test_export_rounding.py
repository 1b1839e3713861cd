"""ap_fixed RND / RND_MIN_INF in QONNX: the exact two-node form (a half-step Quant node, then the
format's Quant node; proof at fpq.export.graph.TWO_NODE_ROUNDING), written by AnnotateFormats,
run by qonnx's executor and fused back into one quantizer by the reader."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.infer_shapes import InferShapes

import fpq
from fpq.testing.networks import mlp
from fpq.export.graph import (FPQ_ROLE_ATTR, HALF_STEP_ROLE, UnsupportedGraphError, read_graph,
                              typeplan_from_graph)
from fpq.export.transforms import AnnotateFormats
from fpq.formats import parse_format
from fpq.testing.conformance import probe_inputs

QONNX = "qonnx.custom_op.general"
TWO_NODE = ["fixed<6,2,RND,SAT>", "fixed<6,2,RND_MIN_INF,SAT>", "ufixed<6,2,RND,SAT>", "ufixed<5,3,RND_MIN_INF,SAT>",
            "fixed<6,2,RND,SAT_SYM>", "fixed<5,-1,RND_MIN_INF,SAT_SYM>", "ufixed<4,6,RND,SAT_SYM>",
            "fixed<2,1,RND_MIN_INF,SAT>", "ufixed<1,0,RND,SAT>", "fixed<23,3,RND,SAT>"]


def _one_quant(n: int, signed: bool, width: int) -> ModelWrapper:
    """A graph with one Quant node (scale 1, as Brevitas exports a Fixed quantizer) on an (1, n) input."""
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("zp", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("bits", TensorProto.FLOAT, [], [float(width)])]
    node = helper.make_node("Quant", ["x", "scale", "zp", "bits"], ["y"], name="/q/Quant", domain=QONNX,
                            signed=int(signed), narrow=0, rounding_mode="ROUND")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX, 1)])
    return ModelWrapper(model)


def _probe(fmt, seed=0) -> np.ndarray:
    """Every multiple of LSB/8 over twice the range (all ties, exactly), each tie one float32 ulp
    either side, random off-grid values and far saturating ones; float32."""
    step = 2.0 ** -fmt.frac_bits
    klo, khi = fmt.int_range
    lo, hi = klo * step, khi * step
    span = max(hi - lo, step)
    rng = np.random.default_rng(seed)
    if khi - klo <= 4096:
        fine = np.arange(np.floor((lo - span) / step) * 8, np.ceil((hi + span) / step) * 8 + 1) * (step / 8)
        ties = (np.arange(klo - 2, khi + 2) + 0.5) * step
    else:  # too many codes for every one: the range ends and a random sample of ties
        fine = np.concatenate([np.arange(klo - 4, klo + 4), np.arange(khi - 4, khi + 4)]).repeat(8) * step + \
            np.tile(np.arange(8) * (step / 8), 16)
        ties = np.concatenate([[klo - 1, klo, khi - 1, khi], rng.integers(klo, khi, 2000)]) * step + step / 2
    ties = ties.astype(np.float32)
    rand = rng.uniform(lo - span, hi + span, 4000)
    far = rng.choice([-1.0, 1.0], 200) * rng.uniform(1, 1e6, 200) * (abs(lo) + hi + 1)
    x = np.concatenate([fine, ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)),
                        rand, far]).astype(np.float32)
    assert np.array_equal(x[len(fine):len(fine) + len(ties)].astype(np.float64), ties.astype(np.float64))
    return x


@pytest.mark.parametrize("fmt", TWO_NODE)
def test_qonnx_executor_equals_fpq_quantize(fmt):
    fmt = parse_format(fmt)
    x = _probe(fmt)
    mw = _one_quant(x.size, fmt.signed, fmt.width).transform(AnnotateFormats({"/q/Quant": fmt}))
    mw = mw.transform(InferShapes())
    onnx.checker.check_model(mw.model)
    nodes = list(mw.graph.node)
    assert [n.op_type for n in nodes] == ["Quant", "Quant"]
    roles = [{a.name: helper.get_attribute_value(a) for a in n.attribute}.get(FPQ_ROLE_ATTR) for n in nodes]
    assert roles == [HALF_STEP_ROLE.encode(), None]
    y = execute_onnx(mw, {"x": x[None]})["y"][0]
    ref = fpq.quantize(x.astype(np.float64), fmt)
    np.testing.assert_array_equal(np.asarray(y, np.float64), ref, err_msg=str(fmt))
    # the probe really holds ties that the format decides (RND and RND_MIN_INF differ on them) and saturation
    assert set(fpq.quantize(np.array([-1e30, 1e30]), fmt)) <= set(ref)
    other = parse_format(str(fmt).replace("RND_MIN_INF", "TMP").replace("RND", "RND_MIN_INF").replace("TMP", "RND"))
    assert not np.array_equal(ref, fpq.quantize(x.astype(np.float64), other))
    # the reader sees one quantizer of the format, exact for qonnx
    g = read_graph(mw)
    assert [op.kind for op in g.ops] == ["input_quant", "output"]
    q = g.ops[0].quant
    assert q.format == fmt and float(q.scale) == 1.0 and q.qonnx_exact and not q.note
    assert g.ops[0].onnx_nodes == ["/q/Quant_half_step", "/q/Quant"]
    np.testing.assert_array_equal(q(x.astype(np.float64)), ref)


@pytest.mark.parametrize("fmt", ["fixed<6,2,TRN,SAT>", "fixed<6,2,RND,WRAP>", "fixed<6,2,RND_MIN_INF,SAT_ZERO>",
                                 "fixed<1,0,RND,SAT>", "fixed<24,4,RND,SAT>"])
def test_formats_without_the_two_node_form_stay_one_node(fmt):
    fmt = parse_format(fmt)
    mw = _one_quant(4, fmt.signed, fmt.width).transform(AnnotateFormats({"/q/Quant": fmt}))
    assert [n.name for n in mw.graph.node] == ["/q/Quant"]


def test_reader_ir_is_the_one_node_ir(tmp_path):
    """The fused pair reads exactly as the one-node form did: same ops, types and TypePlan; only
    qonnx_exact differs (the one-node form with ROUND computes another function)."""
    fmt = parse_format("fixed<6,2,RND,SAT>")
    pair = _one_quant(8, True, 6).transform(AnnotateFormats({"/q/Quant": fmt}))
    single = _one_quant(8, True, 6)
    node = single.graph.node[0]
    node.attribute.append(helper.make_attribute("fpq_format", str(fmt)))
    single.set_initializer("scale", np.asarray(2.0 ** -4, np.float32))
    ga, gb = read_graph(pair), read_graph(single)
    assert ga.summary() == gb.summary()
    assert typeplan_from_graph(ga).table() == typeplan_from_graph(gb).table()
    assert ga.ops[0].quant.qonnx_exact and not gb.ops[0].quant.qonnx_exact
    assert "RND" in gb.ops[0].quant.note


def _pair():
    return _one_quant(8, True, 6).transform(AnnotateFormats({"/q/Quant": parse_format("fixed<6,2,RND,SAT>")}))


def _set(node, name, value):
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def test_reader_refuses_a_broken_pair():
    # a mismatching half step (wrong rounding) names both nodes and the attribute
    mw = _pair()
    _set(mw.graph.node[0], "rounding_mode", "CEIL")
    with pytest.raises(UnsupportedGraphError, match=r"Quant_half_step.*/q/Quant.*rounding_mode=CEIL"):
        read_graph(mw)
    # a wrong half-step bit width
    mw = _pair()
    mw.set_initializer(mw.graph.node[0].input[3], np.asarray(6.0, np.float32))
    with pytest.raises(UnsupportedGraphError, match=r"half-step node.*bitwidth=6.0 \(expected 7\)"):
        read_graph(mw)
    # the partner's format has no two-node form
    mw = _pair()
    _set(mw.graph.node[1], "fpq_format", "fixed<6,2,RND_CONV,SAT>")
    with pytest.raises(UnsupportedGraphError, match=r"half-step node '/q/Quant_half_step' feeds Quant node"):
        read_graph(mw)
    # a half step with no partner: its output is the graph output
    mw = _pair()
    half = mw.graph.node[0]
    mw.graph.node.remove(mw.graph.node[1])
    half.output[0] = "y"
    with pytest.raises(UnsupportedGraphError, match=r"half-step node '/q/Quant_half_step'.*must feed exactly one"):
        read_graph(mw)
    # a partner with no half step: the CEIL node alone is not the format
    mw = _pair()
    main = mw.graph.node[1]
    main.input[0] = "x"
    mw.graph.node.remove(mw.graph.node[0])
    with pytest.raises(UnsupportedGraphError, match=r"'/q/Quant'.*no half-step node"):
        read_graph(mw)


def test_a_half_step_on_a_weight_without_partner_is_refused():
    """A weight path: half-step on the initializer feeding a MatMul directly (its partner gone)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.linspace(-1, 1, 12).tolist())
    inits = [w, helper.make_tensor("s", TensorProto.FLOAT, [], [2.0 ** -5]),
             helper.make_tensor("zp", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("b", TensorProto.FLOAT, [], [7.0])]
    half = helper.make_node("Quant", ["w", "s", "zp", "b"], ["wq"], name="/w/Quant_half_step", domain=QONNX,
                            signed=1, narrow=0, rounding_mode="FLOOR", fpq_role=HALF_STEP_ROLE)
    mm = helper.make_node("MatMul", ["x", "wq"], ["y"], name="/mm/MatMul")
    g = helper.make_graph([half, mm], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX, 1)])
    with pytest.raises(UnsupportedGraphError, match="Quant_half_step"):
        read_graph(model)


@pytest.mark.parametrize("fmt", ["fixed<6,2,RND,SAT>", "fixed<6,2,RND_MIN_INF,SAT_SYM>"])
def test_converted_model_verifies_exact_with_qonnx(fmt):
    m, shape = mlp((12, 16, 5))
    q = fpq.convert(m, fmt=fmt)
    fpq.calibrate(q, [torch.randn(128, *shape, generator=torch.Generator().manual_seed(1)) * 2])
    q.eval()
    mw = fpq.export_qonnx(q, None, torch.zeros(1, *shape))
    graph = read_graph(mw)
    halves = [n for n in mw.graph.node if any(a.name == FPQ_ROLE_ATTR for a in n.attribute)]
    # input, 2 weights, 2 outputs: every quantizer of the format is written as a pair
    assert len(halves) == 5
    assert all(q_.qonnx_exact for op in graph.ops for q_ in (op.quant, op.weight_quant) if q_ is not None)
    x = probe_inputs(graph, 200, seed=3)
    rep = fpq.verify(q, x, qonnx_subset=24, model=mw)
    assert rep.exact, rep
    assert "qonnx" in rep.paths and not [n for n in rep.notes if "qonnx path" in n], rep.notes
    out = {r["path"]: r for r in rep.table if r["layer"] == "<output>"}
    assert out["qonnx"]["compared"] == 24 * 5 and out["qonnx"]["mismatches"] == 0
    assert out["torch"]["compared"] == 200 * 5 and out["torch"]["mismatches"] == 0


@pytest.mark.parametrize("fmt", ["fixed<6,2,TRN,SAT_SYM>", "fixed<7,1,RND_ZERO,SAT_SYM>", "fixed<5,3,TRN_ZERO,SAT_SYM>",
                                 "fixed<8,3,RND_CONV,SAT_SYM>", "fixed<6,0,RND_INF,SAT_SYM>"])
def test_symmetric_saturation_is_one_exact_narrow_quant_node(fmt):
    """ap_fixed SAT_SYM (codes +-(2^(W-1) - 1)) is QONNX's narrow range: with a rounding QONNX has,
    the format is one Quant node (narrow=1) that qonnx's executor computes exactly."""
    m, shape = mlp((12, 16, 5))
    q = fpq.convert(m, fmt=fmt)
    q.eval()
    mw = fpq.export_qonnx(q, None, torch.zeros(1, *shape))
    attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in mw.graph.node]
    ours = [a for a in attrs if a.get("fpq_format") == str(parse_format(fmt)).encode()]
    assert len(ours) == 5 and all(a["narrow"] == 1 for a in ours)   # input, 2 weights, 2 outputs
    graph = read_graph(mw)
    quantizers = [q_ for op in graph.ops for q_ in (op.quant, op.weight_quant) if q_ is not None]
    assert all(q_.qonnx_exact for q_ in quantizers)
    x = probe_inputs(graph, 200, seed=3)
    rep = fpq.verify(q, x, qonnx_subset=24, model=mw)
    assert rep.exact and "qonnx" in rep.paths, rep
    out = {r["path"]: r for r in rep.table if r["layer"] == "<output>"}
    assert out["qonnx"]["compared"] == 24 * 5 and out["qonnx"]["mismatches"] == 0
    # the most negative code really is excluded (qonnx and fpq agree on the clamp)
    f = parse_format(fmt)
    lo = -(2 ** (f.width - 1) - 1) * 2.0 ** -f.frac_bits
    y = execute_onnx(_one_quant(1, True, parse_format(fmt).width).transform(AnnotateFormats({"/q/Quant": fmt})),
                     {"x": np.array([[-1e6]], np.float32)})["y"]
    assert float(y.ravel()[0]) == float(fpq.quantize(np.array([-1e6]), parse_format(fmt))[0]) == lo
