"""Layers inside user-written submodule classes (issue #18): a converted fx GraphModule calls
``layer1.0.conv1`` directly, and the exporter would name its nodes "/conv1/..." (colliding across
blocks, matching no quantizer). They export, emulate, verify and build like flat models."""
import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.export import as_graph
from fpq.hls.builder import plan_hls
from fpq.testing.conformance import conformance_cell, probe_inputs
from fpq.testing.networks import nested_resnet


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.other = Inner()       # the same attribute names again, one level down
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.other(self.inner(x)))


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_submodule_classes_export_and_verify(fmt):
    torch.manual_seed(0)
    q = fpq.convert(Net().eval(), fmt=fmt)
    x = torch.randn(256, 4)
    fpq.calibrate(q, [x], progress=False)
    rep = fpq.verify(q, x)
    assert rep.status == "EXACT", rep
    tp = fpq.plan(q)
    # the plan finds each layer by its torch path, and the two `fc`s are two layers
    assert tp["inner.fc"].name != tp["other.fc"].name
    assert tp["inner.fc"].values["weight"].shape == (4, 4)
    np.testing.assert_array_equal(tp["other.fc"].values["weight"],
                                  q.other.fc.fpq_weight.quantize(q.other.fc.weight)[0].detach().numpy())


def test_resnet_blocks_plan_and_hls_plan():
    m, shape = nested_resnet()
    q = fpq.convert(m, fmt="int8")
    fpq.calibrate(q, [torch.randn(128, *shape)], progress=False)
    graph = as_graph(q, torch.zeros(1, *shape))
    convs = [op.module for op in graph.ops if op.kind == "conv2d"]
    assert convs == ["stem", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
    x = probe_inputs(graph, 500, seed=1)
    assert fpq.verify(q, torch.from_numpy(x)).status == "EXACT"
    hls = plan_hls(graph)
    assert sum(L["class_name"] == "Merge" for L in hls.layers) == 2


def test_resnet_blocks_csim_equals_emulator(tmp_path):
    """The C simulation of the nested network (io_stream, as ResNet-8 is built) is bit-exact."""
    m, shape = nested_resnet()
    rep = conformance_cell(m, shape, "int8", tmp_path, io_type="io_stream", n=500).report
    assert rep.paths == ["emulator", "torch", "qonnx", "hls"] and rep.exact, rep
