"""A module called more than once (one nn.ReLU / nn.MaxPool2d reused) is one TypePlan layer per call."""
import torch
from torch import nn

import fpq


class SharedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act, self.pool = nn.ReLU(), nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = self.pool(self.act(self.c1(x)))
        x = self.pool(self.act(self.c2(x)))
        return self.fc(torch.flatten(x, 1))


def test_each_call_of_a_shared_module_is_a_layer():
    torch.manual_seed(0)
    q = fpq.convert(SharedNet().eval(), "int8")
    fpq.calibrate(q, [torch.rand(4, 1, 8, 8)], progress=False)
    ops = [(layer.name, layer.op) for layer in fpq.plan(q)]
    assert [op for _, op in ops].count("maxpool") == 2
    assert [op for _, op in ops].count("relu") == 2
    assert len({name for name, _ in ops}) == len(ops)
    cost = fpq.estimate_cost(q)
    assert sum(1 for layer in cost.layers if layer["op"] == "maxpool") == 2
