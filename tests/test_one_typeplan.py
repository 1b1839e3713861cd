"""One TypePlan (issue 16): a converted model and its QONNX file give the same plan (the type of
every tensor of every layer), the same cost reports (io_parallel and io_stream, where the line
buffers need the input shapes) and the same emulated outputs."""
import numpy as np
import pytest
import torch

import fpq
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
