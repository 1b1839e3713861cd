"""Pools hls4ml cannot build exactly (issue #18): average pools over windows that are not a power
of two (3x3, DS-CNN's 25x5 as 5x3 here, a global pool over 5x5), the padded, overlapping max pool
of ResNet stems, in io_parallel and io_stream; the cost model prices the layers the project has;
a C-sim that needs more than the default 8 MB stack runs."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.cost_model.estimate import estimate
from fpq.export import read_graph
from fpq.hls.builder import HLSUnsupportedError, plan_hls
from fpq.ir.plan import typeplan_from_graph
from fpq.testing.conformance import conformance_cell


def stem_net():
    """MaxPool2d(3, 2, padding=1) (12x12 -> 6x6), then AvgPool2d(3) on the 6x6 map."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1), nn.AvgPool2d(3),
                         nn.Flatten(), nn.Linear(12, 2)), (2, 12, 12)


def dscnn_net():
    """AvgPool2d((5, 3)) (25x15 -> 5x5), then AdaptiveAvgPool2d(1) over the 5x5 map."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d((5, 3)), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(3, 2)), (2, 25, 15)


NETS = {"stem": stem_net, "dscnn": dscnn_net}


@pytest.mark.slow
@pytest.mark.parametrize("net,fmt,io_type", [("stem", "int8", "io_parallel"), ("stem", "e4m3", "io_stream"),
                                             ("dscnn", "e4m3", "io_parallel"), ("dscnn", "int8", "io_stream")])
def test_pools_csim_bit_exact(net, fmt, io_type, tmp_path):
    model, shape = NETS[net]()
    cell = conformance_cell(model, shape, fmt, tmp_path, io_type=io_type, n=500)
    rep = cell.report
    assert rep.paths == ["emulator", "torch", "qonnx", "hls"]
    assert rep.exact, [r for r in rep.table if r["mismatches"]]
    classes = {layer.class_name for layer in cell.project.hls_model.get_layers()}
    assert "FpqPool" in classes   # built by fpq::pool_layer, not refused


def _graph(net, tmp_path, fmt="int8"):
    model, shape = NETS[net]()
    q = fpq.convert(model, fmt=fmt)
    fpq.calibrate(q, [torch.randn((64,) + shape, generator=torch.Generator().manual_seed(3)) * 2])
    q.eval()
    path = str(tmp_path / "m.onnx")
    fpq.export_qonnx(q, path, torch.zeros((1,) + shape))
    return read_graph(path)


@pytest.mark.parametrize("net", list(NETS))
def test_cost_rows_match_hls_layers(net, tmp_path):
    g = _graph(net, tmp_path)
    tp = typeplan_from_graph(g)
    plan = plan_hls(g, tp)
    layers = {L["name"]: L for L in plan.layers if L["class_name"] != "InputLayer"}
    for io_type in ("io_parallel", "io_stream"):
        rows = {r["layer"]: r for r in estimate(tp, io_type=io_type).layers}
        assert set(layers) <= set(rows), f"HLS layers without a cost row: {set(layers) - set(rows)}"
        for name, L in layers.items():
            if L["class_name"] == "FpqPool" and not L["is_max"]:
                # the pool holds the exact window sum (its registers are that wide) and the
                # quantizer after it is the threshold lookup the project holds
                n_out = int(np.prod(L["out_shape"]))
                # io_stream: one input pixel per cycle, the datapath divided by the pixels (its II)
                pixels = rows[name]["ii"] if io_type == "io_stream" else 1
                assert rows[name]["ff"] == pytest.approx(n_out * plan.precisions[name]["result"].width / pixels)
                quant = next(M for M in plan.layers if M.get("inputs") == [name])
                assert quant["class_name"] == "FpqQuantize"
                assert rows[quant["name"]]["mapping"] == "threshold-lookup"
                n_th = int(re.search(r"quantize_by_thresholds<in_T, out_T, (\d+)>", quant["quantizer"])[1])
                assert rows[quant["name"]]["thresholds"] == n_th
        if io_type == "io_stream":
            assert all(rows[n]["line_buffer_lut"] > 0 for n, L in layers.items() if L["class_name"] == "FpqPool")


def test_sum_pool_without_quantizer_is_refused(tmp_path):
    """A non-power-of-two average nobody quantizes has no exact fixed-point value: refused, naming
    the pool, its window and what to do."""
    g = _graph("dscnn", tmp_path)
    pool = next(op for op in g.ops if op.kind == "avgpool")
    (quant,) = g.consumers(pool.outputs[0])
    for op in g.consumers(quant.outputs[0]):
        op.inputs = [pool.outputs[0] if i == quant.outputs[0] else i for i in op.inputs]
    g.ops.remove(quant)
    with pytest.raises(HLSUnsupportedError, match=rf"average pool {pool.name!r} averages windows of 15 values.*"
                                                  r"quantize the pool's output"):
        plan_hls(g)


@pytest.mark.slow
def test_csim_beyond_the_default_stack(tmp_path):
    """A 1M-value io_parallel project: its C-sim arrays overflow an 8 MB stack (Python died with
    SIGSEGV before the C-sim ran on a thread of its own). Run in a child process, so a crash
    fails this test instead of killing pytest."""
    n = 1_000_000
    model = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(n, 1))
    q = fpq.convert(model, fmt="int8")
    fpq.calibrate(q, [torch.randn(4, 1, n, generator=torch.Generator().manual_seed(0))])
    proj = fpq.to_hls(q, tmp_path / "prj", torch.zeros(1, 1, n))
    assert proj.info["csim_stack_bytes"] > 8 << 20
    x = np.random.default_rng(0).standard_normal((2, 1, n)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import resource, numpy as np
        from fpq.hls.project import load_project
        resource.setrlimit(resource.RLIMIT_STACK, (8 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))
        y = load_project({str(tmp_path / 'prj')!r}).predict(np.load({str(tmp_path / 'x.npy')!r}))
        np.save({str(tmp_path / 'y.npy')!r}, y)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"C-sim child died (rc {r.returncode}): {r.stderr[-2000:]}"
    y = np.load(tmp_path / "y.npy")
    np.testing.assert_array_equal(y, np.asarray(fpq.emulate(q, x), dtype=np.float64).reshape(y.shape))
