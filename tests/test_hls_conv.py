"""fpq.to_hls on conv nets (io_stream and io_parallel): C-sim == fpq.emulate == torch, atol=0."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.export.graph import read_graph
from fpq.testing.conformance import probe_inputs

pytestmark = pytest.mark.slow


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.r2 = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        y = self.r1(self.c1(x))
        return self.fc(torch.flatten(self.r2(y + self.c2(y)), 1))


def conv2d_bn_pool():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 5))


# name -> (model factory, input shape, convert kwargs, to_hls kwargs). The format x backend x io
# cells of the example conv nets are in tests/test_hls_conformance.py; these are the special
# cases: a conv residual block (a Merge of streams) and average pooling.
CASES = {
    "residual-e4m3-stream": (Residual, (1, 6, 6), dict(fmt="e4m3"), dict(backend="Vivado", io_type="io_stream")),
    # average pooling: the exported max pool of conv2d_bn_pool turned into a 2x2 average pool in
    # the IR (fpq.export_qonnx of nn.AvgPool2d does not pass ONNX shape inference yet), so the
    # reference is the emulator of that IR only
    "avgpool-e3m2-parallel": (conv2d_bn_pool, (1, 8, 8), dict(fmt="e3m2"), dict(backend="Vivado", io_type="io_parallel")),
}


@pytest.fixture(scope="module", params=list(CASES))
def project(request, tmp_path_factory):
    factory, shape, conv_kw, hls_kw = CASES[request.param]
    torch.manual_seed(0)
    model = factory()
    with torch.no_grad():  # non-trivial batch-norm statistics, so the folding matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    model.eval()
    tmp = tmp_path_factory.mktemp("conv")
    q = fpq.convert(model, **conv_kw)
    calib = torch.randn((256,) + shape, generator=torch.Generator().manual_seed(1)) * 2
    fpq.calibrate(q, [calib])
    q.eval()
    path = str(tmp / "net.onnx")
    fpq.export_qonnx(q, path, calib[:1])
    graph = read_graph(path)
    if request.param.startswith("avgpool"):
        pools = [op for op in graph.ops if op.kind == "maxpool"]
        assert pools
        for op in pools:
            op.kind = "avgpool"
            op.attrs["count_include_pad"] = 0
            op.types.pop("output", None)  # as the IR reader leaves it: a mean is not of the input's type
            for user in graph.ops:
                if op.outputs[0] in user.inputs:
                    user.types.pop("input", None)
        q = None  # the torch model computes a max pool: not a reference here
    proj = fpq.to_hls(graph, tmp / "prj", **hls_kw)
    print(f"\n{request.param}: g++ {proj.compile_s:.1f} s")
    x = probe_inputs(graph, 2000, seed=3)
    return request.param, q, graph, proj, x


def test_csim_equals_emulator_and_torch(project):
    name, q, graph, proj, x = project
    y_hls = proj.predict(x)
    y_emu = np.asarray(fpq.emulate(graph, x), dtype=np.float64)
    assert y_hls.shape == (2000, 5)
    assert np.unique(y_hls).size > 8
    bad = np.argwhere(y_hls != y_emu)
    assert bad.size == 0, f"{name}: C-sim != emulator at {bad[:3].tolist()}"
    if q is not None:
        with torch.no_grad():
            y_torch = q(torch.from_numpy(x)).double().numpy()
        assert np.array_equal(y_hls, y_torch), f"{name}: C-sim != torch forward"


def test_every_traced_layer_matches_emulator(project):
    name, q, graph, proj, x = project
    tr = proj.trace(x[:32])
    _, emu = fpq.emulate(graph, x[:32], return_trace=True)
    assert any(k.startswith("conv") for k in tr) or any(k.startswith("quant") for k in tr)
    for op_name, v in tr.items():
        assert np.array_equal(v, np.asarray(emu[op_name], dtype=np.float64)), f"{name}: {op_name}"
