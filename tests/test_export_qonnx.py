"""fpq.export_qonnx and the graph IR: formats survive, checker passes, qonnx runs the file."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import fpq
from fpq.testing.networks import conv2d_bn_net, mlp
from fpq.export.graph import FPQ_FORMAT_ATTR, UnsupportedGraphError, read_graph, typeplan_from_qonnx
from fpq.formats import Minifloat, parse_format


def _attrs(node):
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _export(model, shape, tmp_path, **conv):
    q = fpq.convert(model, **conv)
    path = fpq.export_qonnx(q, tmp_path / "m.onnx", torch.randn(4, *shape))
    return q, path


def test_export_keeps_every_quantizer_and_format(tmp_path):
    m, shape = mlp((16, 32, 16, 5))
    q, path = _export(m, shape, tmp_path, weights="e4m3", activations="int8", overrides={"4": {"weights": "binary"}})
    model = onnx.load(path)
    onnx.checker.check_model(model)
    nodes = list(model.graph.node)
    kinds = [n.op_type for n in nodes]
    # input + 3 layers x (weight, bias, output) quantizers, nothing constant-folded away
    assert kinds.count("FloatQuant") == 2 and kinds.count("BipolarQuant") == 1
    assert kinds.count("Quant") == 1 + 3 + 3
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in nodes:
        if n.op_type == "FloatQuant":
            a = _attrs(n)
            assert (a["has_inf"], a["has_nan"], a["has_subnormal"], a["saturation"]) == (0, 1, 1, 1)
            assert (inits[n.input[2]], inits[n.input[3]], inits[n.input[4]], inits[n.input[5]]) == (4, 3, 7, 448)
            assert parse_format(a[FPQ_FORMAT_ATTR]) == parse_format("e4m3")
            assert n.input[0] in inits  # the float weight stays, its quantizer with it
        if n.op_type in ("Quant", "FloatQuant", "BipolarQuant"):
            assert FPQ_FORMAT_ATTR in _attrs(n)
    # no Cast left, initializers are not graph inputs, stable IO names
    assert "Cast" not in kinds
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    # qonnx's executor runs the file
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    out = execute_onnx(ModelWrapper(str(path)), {"input": np.ones((1, 16), np.float32)})["output"]
    assert out.shape == (1, 5) and np.all(np.isfinite(out))


def test_fixed_format_gets_its_binary_point(tmp_path):
    m, shape = mlp((16, 8, 5))
    _, path = _export(m, shape, tmp_path, fmt="fixed<8,3>")
    model = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    fixed_nodes = [n for n in model.graph.node if _attrs(n).get(FPQ_FORMAT_ATTR, "").startswith("fixed")]
    assert fixed_nodes
    for n in fixed_nodes:
        assert float(inits[n.input[1]]) == 2.0 ** -5 and float(inits[n.input[3]]) == 8
    g = read_graph(path)
    assert g.ops[0].kind == "input_quant" and g.ops[0].quant.format == parse_format("fixed<8,3>")
    assert float(g.ops[0].quant.scale) == 1.0 and g.ops[0].quant.qonnx_exact


def test_graph_ir_and_typeplan_match_the_converted_model(tmp_path):
    m, shape = conv2d_bn_net()
    q, path = _export(m, shape, tmp_path, fmt="int8")
    g = read_graph(path)
    assert [op.kind for op in g.ops] == ["input_quant", "conv2d", "quant", "relu", "maxpool", "conv2d", "quant",
                                         "relu", "flatten", "linear", "quant", "output"]
    conv2 = g.ops[5]
    assert conv2.attrs == {"kernel": (3, 3), "strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1),
                           "groups": 2}
    assert conv2.weight.shape == (8, 2, 3, 3) and conv2.fan_in == 18 and conv2.out_shape == (1, 8, 2, 2)
    tp_onnx, tp_torch = typeplan_from_qonnx(path), q.fpq_typeplan(torch.zeros(1, *shape))
    torch_w = [lp for lp in tp_torch if "weight" in lp.tensors]
    onnx_w = [lp for lp in tp_onnx if "weight" in lp.tensors]
    assert len(torch_w) == len(onnx_w) == 3
    for a, b in zip(torch_w, onnx_w):
        for role in ("input", "weight", "bias", "product", "accumulator"):
            ta, tb = a.tensors[role], b.tensors[role]
            assert str(getattr(ta, "format", ta)) == str(getattr(tb, "format", tb)), (a.name, role)
        np.testing.assert_array_equal(a.values["weight"], b.values["weight"])
        np.testing.assert_array_equal(a.values["bias"], b.values["bias"])
        assert a.fan_in == b.fan_in


def _tiny_qonnx(tmp_path, quant_attrs=None, zero_point=0.0, extra=None, scale=0.25):
    """input -> Quant -> (extra op) written by hand, as a foreign tool would."""
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
             numpy_helper.from_array(np.asarray(zero_point, np.float32), "z"),
             numpy_helper.from_array(np.asarray(8.0, np.float32), "b")]
    nodes = [helper.make_node("Quant", ["x", "s", "z", "b"], ["q"], domain="qonnx.custom_op.general",
                              name="quant0", **(quant_attrs or {"signed": 1, "narrow": 0, "rounding_mode": "ROUND"}))]
    out = "q"
    if extra:
        nodes.append(helper.make_node(extra, ["q"], ["y"], name="odd0"))
        out = "y"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("qonnx.custom_op.general", 2)])
    p = tmp_path / "tiny.onnx"
    onnx.save(m, p)
    return p


def test_unsupported_op_is_named(tmp_path):
    with pytest.raises(UnsupportedGraphError, match=r"odd0.*Sigmoid.*supports: Quant"):
        read_graph(_tiny_qonnx(tmp_path, extra="Sigmoid"))


def test_nonzero_zero_point_is_refused(tmp_path):
    with pytest.raises(UnsupportedGraphError, match="zero-point must be a constant 0"):
        read_graph(_tiny_qonnx(tmp_path, zero_point=3.0))


def test_quant_rounding_modes_map_to_fixed(tmp_path):
    g = read_graph(_tiny_qonnx(tmp_path, {"signed": 1, "narrow": 0, "rounding_mode": "FLOOR"}))
    assert g.ops[0].quant.format == parse_format("fixed<8,8,TRN,SAT>")
    with pytest.raises(UnsupportedGraphError, match="CEIL"):
        read_graph(_tiny_qonnx(tmp_path, {"signed": 1, "narrow": 0, "rounding_mode": "CEIL"}))
    # off-grid values, out of range included: the IR quantizer equals qonnx's Quant
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    for mode in ("ROUND", "FLOOR", "DOWN", "HALF_UP", "HALF_DOWN"):
        p = _tiny_qonnx(tmp_path, {"signed": 1, "narrow": 1, "rounding_mode": mode} if mode == "ROUND"
                        else {"signed": 0, "narrow": 0, "rounding_mode": mode})
        g = read_graph(p)
        x = np.array([[-40.3, -0.125, 0.375, 70.0]], np.float32)   # ties at scale 0.25 and saturation
        want = execute_onnx(ModelWrapper(str(p)), {"x": x})["q"]
        np.testing.assert_array_equal(g.ops[0].quant(x), want)


def _floatquant_model(tmp_path, e, m, bias, max_val, has_inf, has_nan, has_sub):
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in
             (("s", 1.0), ("e", e), ("m", m), ("bias", bias), ("mx", max_val))]
    node = helper.make_node("FloatQuant", ["x", "s", "e", "m", "bias", "mx"], ["y"], domain="qonnx.custom_op.general",
                            name="fq", has_inf=has_inf, has_nan=has_nan, has_subnormal=has_sub, saturation=1,
                            rounding_mode="ROUND")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    p = tmp_path / "fq.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13),
                                                  helper.make_opsetid("qonnx.custom_op.general", 2)]), p)
    return p


def test_floatquant_maps_to_fpq_minifloats(tmp_path):
    q = read_graph(_floatquant_model(tmp_path, 4, 3, 7, 448, 0, 1, 1)).ops[0].quant
    assert q.format == parse_format("e4m3") and q.qonnx_exact
    q = read_graph(_floatquant_model(tmp_path, 5, 2, 15, 57344, 1, 1, 1)).ops[0].quant
    assert q.format == parse_format("e5m2")
    q = read_graph(_floatquant_model(tmp_path, 4, 3, 7, 480, 0, 0, 1)).ops[0].quant
    assert q.format == parse_format("e4m3_none")
    # qonnx ignores has_subnormal=0; fpq keeps it and says the executor differs
    q = read_graph(_floatquant_model(tmp_path, 2, 1, 1, 6, 0, 0, 0)).ops[0].quant
    assert q.format == Minifloat(2, 1, subnormals=False) and not q.qonnx_exact and "has_subnormal" in q.note
    with pytest.raises(UnsupportedGraphError, match="max_val=100"):
        read_graph(_floatquant_model(tmp_path, 4, 3, 7, 100, 0, 1, 1))


def test_div_quant_mul_is_one_quantizer(tmp_path):
    s = np.float32(0.1)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in
             (("s", s), ("one", 1.0), ("z", 0.0), ("b", 4.0))]
    nodes = [helper.make_node("Div", ["x", "s"], ["d"], name="div"),
             helper.make_node("Quant", ["d", "one", "z", "b"], ["q"], domain="qonnx.custom_op.general", name="quant",
                              signed=1, narrow=0, rounding_mode="ROUND"),
             helper.make_node("Mul", ["q", "s"], ["y"], name="mul")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])], inits)
    p = tmp_path / "dqm.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13),
                                                  helper.make_opsetid("qonnx.custom_op.general", 2)]), p)
    graph = read_graph(p)
    assert [op.kind for op in graph.ops] == ["input_quant", "output"]
    assert graph.ops[0].quant.format == parse_format("int4") and graph.ops[0].quant.scale == s
    x = np.array([[-1.0, -0.35, 0.05, 0.15, 0.2501, 9.0]], np.float32)
    np.testing.assert_array_equal(fpq.emulate(p, x), fpq.quantize(x, "int4", s))
