"""fpq.to_rtl on convolutions (#23 item 1): Conv1d / Conv2d fully unrolled (every output element a
constant-coefficient dot product over its window, padding taps omitted, groups and strides), the
Verilog simulated with CXXRTL equals fpq.emulate bit for bit (atol=0) on off-grid random inputs."""
import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.rtl import Simulator, check, to_rtl
from fpq.verification import random_inputs


def _tiny_conv2d():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 2, groups=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4, 3)).eval(), (2, 4, 4)


def _tiny_conv1d():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv1d(2, 3, 3, padding=2, dilation=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 5, 2)).eval(), (2, 5)


CASES = {"c2_int8": (_tiny_conv2d, "int8", 1), "c2_e2m1": (_tiny_conv2d, "e2m1", 0), "c1_int4": (_tiny_conv1d, "int4", 2)}


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    out = {}
    for i, (key, (make, fmt, every)) in enumerate(CASES.items()):
        m, shape = make()
        q = fpq.convert(m, fmt=fmt)
        fpq.calibrate(q, [torch.randn((128,) + shape, generator=torch.Generator().manual_seed(2)) * 2])
        out[key] = to_rtl(q.eval(), None, torch.zeros((1,) + shape), pipeline_every=every, top=f"conv{i}")
    return out, Simulator(list(out.values()), tmp_path_factory.mktemp("sim"))


@pytest.mark.parametrize("key", list(CASES))
def test_conv_rtl_equals_emulator(nets, key):
    out, sim = nets
    net = out[key]
    x = random_inputs(net.graph, 2000, seed=7)
    r = check(net, x, simulator=sim, index=list(out).index(key))
    assert r["n"] == 2000
    assert r["mismatches"] == 0, (key, r["first"])
    assert len(np.unique(r["want"])) >= 10        # the check can fail: the outputs vary


def test_conv_layers_are_unrolled(nets):
    out, _ = nets
    convs = [li for li in out["c2_int8"].layers if li.kind == "conv2d"]
    assert [(li.params["n_in"], li.params["n_out"], li.params["pixels"]) for li in convs] == [(18, 4, 4), (8, 4, 1)]
    # padding taps are omitted: on the 4x4 map the stride-2 window at (0, 0) reads 4 of its 9 positions
    assert convs[0].params["multipliers"] < 18 * 4 * 4
