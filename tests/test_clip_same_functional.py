"""Issue #18 item 2, "accepted by convert, refused later": ReLU6 / Hardtanh with any float bounds
(the IR's ``clip``), Conv with padding="same" (ONNX auto_pad), and the functional forms of
supported modules (F.relu6, F.hardtanh, torch.clamp, F.max_pool2d, F.avg_pool2d,
F.adaptive_avg_pool2d(x, 1), x.mean(spatial dims), torch.relu) convert, export, emulate, verify,
price and build -- or convert refuses them naming the call."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpq
from fpq.export import read_graph
from fpq.testing.conformance import conformance_cell


class ClipSame2d(nn.Module):
    """ReLU6 and Hardtanh(-1, 1.3) (1.3 is no float32) after convolutions padded "same" (the
    second with an even kernel side: asymmetric padding, the extra row / column at the end)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding="same")
        self.relu6 = nn.ReLU6()
        self.conv2 = nn.Conv2d(2, 2, (2, 3), padding="same")
        self.act = nn.Hardtanh(-1.0, 1.3)
        self.fc = nn.Linear(2 * 4 * 6, 3)
        with torch.no_grad():
            self.conv2.weight *= 4   # sums beyond both bounds of the Hardtanh, also in narrow formats

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.conv2(self.relu6(self.conv1(x)))), 1))


class ClipSame1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 4, padding="same", dilation=2)
        self.act = nn.Hardtanh(-1.0, 1.3)
        self.fc = nn.Linear(2 * 8, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.conv(x)), 1))


class Modules(nn.Module):
    """The module forms; ``Functional`` computes the same with the functional forms."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding="same")
        self.relu6 = nn.ReLU6()
        self.max_pool2d = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.avg_pool2d = nn.AvgPool2d(2, stride=2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding="same")
        self.clamp = nn.Hardtanh(-1.0, 1.3)
        self.hardtanh = nn.Hardtanh(-0.7, 2.5)
        self.mean = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.avg_pool2d(self.relu(self.max_pool2d(self.relu6(self.conv1(x)))))
        y = self.hardtanh(self.clamp(self.conv2(y)))
        return self.fc(torch.flatten(self.mean(y), 1))


class Functional(Modules):
    def forward(self, x):
        y = F.avg_pool2d(torch.relu(F.max_pool2d(F.relu6(self.conv1(x)), 2)), 2, stride=2)
        y = F.hardtanh(torch.clamp(self.conv2(y), -1.0, 1.3), -0.7, 2.5)
        return self.fc(y.mean((2, 3)))


class Functional1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding="same")
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = F.avg_pool1d(F.max_pool1d(torch.clip(self.conv(x), min=-0.5), 2), 2)
        y = F.adaptive_avg_pool1d(F.relu(y), 1)
        return self.fc(torch.flatten(y, 1))


def _converted(cls, shape, fmt, seed=0):
    torch.manual_seed(seed)
    q = fpq.convert(cls().eval(), fmt)
    x = torch.randn((256,) + shape, generator=torch.Generator().manual_seed(seed + 1)) * 2
    fpq.calibrate(q, [x], progress=False)
    return q, x


def test_clamp_bounds_are_float32():
    """torch clamps float32 activations with float32(1.3); fpq's float64 eval forward must too, and
    the exported Clip carries that number (float64 1.3 was refused by the export)."""
    q, x = _converted(ClipSame2d, (1, 4, 6), "int8")
    assert q.act.max_val == float(np.float32(1.3)) != 1.3
    ops = {op.name: op for op in read_graph(fpq.export_qonnx(q, None, x[:1]))}
    clip = ops["clip_act"]
    assert (clip.kind, clip.attrs["min"], clip.attrs["max"]) == ("clip", np.float32(-1.0), np.float32(1.3))
    assert ops["clip_relu6"].attrs == {"min": np.float32(0.0), "max": np.float32(6.0)}


@pytest.mark.parametrize("cls,shape", [(ClipSame2d, (1, 4, 6)), (ClipSame1d, (1, 8))])
@pytest.mark.parametrize("fmt", ["int8", "e4m3", "fixed<6,2,RND,SAT>"])
def test_clip_and_same_padding_verify(cls, shape, fmt):
    q, x = _converted(cls, shape, fmt)
    rep = fpq.verify(q, x.numpy(), qonnx_subset=8)
    assert rep.exact and rep.paths == ["emulator", "torch", "qonnx"], rep.table
    x = torch.cat([x, 8 * x])    # large inputs too: the Hardtanh saturates
    y, trace = fpq.emulate(q, x.numpy(), return_trace=True)
    np.testing.assert_array_equal(np.asarray(fpq.emulate(q, x, backend="torch")), y)
    with torch.no_grad():
        np.testing.assert_array_equal(q(x).numpy(), y)
    # not vacuous: the inputs reach both bounds of the Hardtanh
    assert (trace["clip_act"] == np.float32(1.3)).any() and (trace["clip_act"] == -1.0).any()


def _with_auto_pad(onnx_model, value):
    for node in onnx_model.graph.node:
        for a in node.attribute:
            if a.name == "auto_pad":
                a.s = value.encode()
    return onnx_model


def test_auto_pad_to_explicit_pads():
    """padding="same" exports auto_pad=SAME_UPPER (the odd pad at the end, as torch pads);
    SAME_LOWER puts it at the begin, VALID pads nothing (ONNX semantics)."""
    q, x = _converted(ClipSame2d, (1, 4, 6), "int8")
    mw = fpq.export_qonnx(q, None, x[:1])
    autos = [a.s for n in mw.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "auto_pad"]
    assert autos == [b"SAME_UPPER"] * 2
    pads = lambda m: [op.attrs["pads"] for op in read_graph(m) if op.kind == "conv2d"]  # noqa: E731
    # (top, left, bottom, right): 3x3 pads 1 all round; (2, 3) pads one row, at the end for UPPER
    assert pads(mw) == [(1, 1, 1, 1), (0, 1, 1, 1)]
    assert pads(_with_auto_pad(fpq.export_qonnx(q, None, x[:1]).model, "SAME_LOWER")) == [(1, 1, 1, 1), (1, 1, 0, 1)]
    assert pads(_with_auto_pad(fpq.export_qonnx(q, None, x[:1]).model, "VALID")) == [(0, 0, 0, 0), (0, 0, 0, 0)]


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_functional_forms_equal_module_forms(fmt):
    """The functional forms become the same quantized layers as the module forms: the same
    module types under the same names, the same outputs bit for bit, and a verified export."""
    qm, x = _converted(Modules, (1, 8, 8), fmt)
    qf, _ = _converted(Functional, (1, 8, 8), fmt)
    kinds = lambda q: {n: type(m).__name__ for n, m in q.named_children() if n != "relu"}  # noqa: E731
    assert kinds(qf) == kinds(qm)   # (torch.relu stays a call: parameter-free, as nn.ReLU)
    with torch.no_grad():
        np.testing.assert_array_equal(qf(x).numpy(), qm(x).numpy())
    rep = fpq.verify(qf, x.numpy(), qonnx_subset=8)
    assert rep.exact and rep.paths == ["emulator", "torch", "qonnx"], rep.table


def test_functional_forms_1d():
    q, x = _converted(Functional1d, (1, 16), "int8")
    assert {type(m).__name__ for m in q.children()} >= {"FpqClamp", "MaxPool1d", "FpqAvgPool"}
    assert fpq.verify(q, x.numpy(), qonnx_subset=8).exact


class _Mean(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fn = fn

    def forward(self, x):
        return self.fn(self, x)


@pytest.mark.parametrize("fn,what", [
    (lambda s, x: x.mean((2, 3)), "rank fpq cannot tell"),                  # the input: no Conv before
    (lambda s, x: s.conv(x).mean(1), "mean over dims [1] of a 4-D"),
    (lambda s, x: s.conv(x).mean(-1), "mean over dims [-1] of a 4-D"),
    (lambda s, x: torch.clamp(s.conv(x), min=x.min()), "clamp whose lower bound"),
])
def test_functional_refused_at_convert(fn, what):
    with pytest.raises(ValueError, match="fpq.convert") as e:
        fpq.convert(_Mean(fn).eval(), "int8")
    assert what in str(e.value)


def test_clip_cost_row():
    q, x = _converted(ClipSame2d, (1, 4, 6), "int8")
    rep = fpq.estimate_cost(q, example_input=x[:1])
    rows = {r["layer"]: r for r in rep.layers}
    for name in ("clip_relu6", "clip_act"):
        assert rows[name]["lut"] > 0 and rows[name]["ff"] == 2 * 4 * 6 * 8   # int8 results
    assert not [n for n in rep.notes if "clip" in n]


@pytest.mark.slow
def test_clip_same_hls_csim(tmp_path):
    """C-sim == emulator == torch == qonnx, atol=0, on probe inputs (ties, saturation)."""
    torch.manual_seed(0)
    rep = conformance_cell(ClipSame2d().eval(), (1, 4, 6), "int8", tmp_path, io_type="io_stream", n=500).report
    assert rep.paths == ["emulator", "torch", "qonnx", "hls"] and rep.exact, rep.table


@pytest.mark.slow
def test_functional_hls_csim(tmp_path):
    torch.manual_seed(0)
    rep = conformance_cell(Functional().eval(), (1, 8, 8), "e4m3", tmp_path, io_type="io_parallel", n=500).report
    assert rep.paths == ["emulator", "torch", "qonnx", "hls"] and rep.exact, rep.table
