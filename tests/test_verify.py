"""fpq.verify: exact on a good model; names the corrupted layer; CLI."""
import argparse

import numpy as np
import onnx
import torch
from onnx import numpy_helper

import fpq
from fpq.emulate import Emulator
from fpq.testing.networks import conv1d_net, mlp
from fpq.export.graph import read_graph
from fpq.verification import random_inputs


def _model(fmt="int8"):
    m, shape = mlp((16, 32, 16, 5))
    return fpq.convert(m, fmt=fmt), shape


def test_verify_exact_on_a_good_model():
    q, shape = _model("e4m3")
    x = torch.randn(300, *shape) * 40   # e4m3 max 448 x scale: plenty saturate
    rep = fpq.verify(q, x, qonnx_subset=8)
    assert rep.exact and rep.first_mismatch is None
    assert rep.paths == ["emulator", "torch", "qonnx"]
    layers = {(r["layer"], r["path"]) for r in rep.table}
    assert ("linear_2", "torch") in layers and ("quant_2", "qonnx") in layers and ("<output>", "torch") in layers
    assert all(r["mismatches"] == 0 and r["compared"] > 0 for r in rep.table)
    assert str(rep).startswith("fpq.verify: EXACT over 300 inputs")


def test_verify_binary_linear_chain():
    """Two binary Linears back to back (no ReLU between): qonnx's BipolarQuant keeps a float64
    input's dtype, and the cast fpq adds for it must not collide with the consumer's own cast."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    q = fpq.convert(m, fmt="binary", granularity="channel")
    x = torch.randn(64, 8)
    fpq.calibrate(q, [x])
    rep = fpq.verify(q, x, qonnx_subset=4)
    assert rep.exact and "qonnx" in rep.paths


def test_verify_names_the_corrupted_layer(tmp_path):
    q, shape = _model("int8")
    path = fpq.export_qonnx(q, tmp_path / "good.onnx", torch.zeros(1, *shape))
    model = onnx.load(path)
    for init in model.graph.initializer:
        if init.name == "2.weight":   # the float weight of the second linear layer, before its quantizer
            w = numpy_helper.to_array(init).copy()
            w[3, 7] = -w[3, 7] + 0.5
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, bad)
    x = random_inputs(read_graph(bad), 200, seed=4)
    rep = fpq.verify(q, x, model=bad, qonnx_subset=4)
    assert not rep.exact
    m = rep.first_mismatch
    assert m.layer == "linear_2" and m.path == "torch"
    assert m.index[1] == 3 and m.values["emulator"] != m.values["torch"]
    # earlier layers agree; the qonnx executor reads the same (corrupted) file and agrees with the emulator
    rows = {(r["layer"], r["path"]): r for r in rep.table}
    assert rows[("quant_0", "torch")]["mismatches"] == 0
    assert rows[("linear_2", "qonnx")]["mismatches"] == 0
    assert "NOT EXACT" in str(rep) and "linear_2" in str(rep)
    # and the same file against itself (no torch model) is exact
    assert fpq.verify(str(path), x, qonnx_subset=4).exact


class _Project:
    """Stands in for an HLS project: predict (and trace) from the emulator, one value off."""

    def __init__(self, graph, bad_layer=None):
        self.emu = Emulator(graph)
        self.bad_layer = bad_layer

    def predict(self, x):
        return self.emu(x)

    def trace(self, x):
        _, tr = self.emu(x, return_trace=True)
        tr = {k: np.array(v, dtype=np.float64) for k, v in tr.items()}
        if self.bad_layer:
            tr[self.bad_layer][5, 1] += 0.25
        return tr


def test_verify_with_a_project():
    m, shape = conv1d_net()
    q = fpq.convert(m, fmt="int8")
    mw = fpq.export_qonnx(q, None, torch.zeros(1, *shape))
    graph = read_graph(mw)
    x = random_inputs(graph, 100)
    rep = fpq.verify(mw, x, project=_Project(graph), qonnx_subset=0)
    assert rep.exact and rep.paths == ["emulator", "hls"]
    rep = fpq.verify(mw, x, project=_Project(graph, "quant_3"), qonnx_subset=0)
    assert not rep.exact and rep.first_mismatch.layer == "quant_3" and rep.first_mismatch.path == "hls"
    assert rep.first_mismatch.index[:2] == (5, 1)


def test_cli_verify_and_export(tmp_path, capsys):
    from fpq.cli.export import cli_register as reg_export
    from fpq.cli.verify import cli_register as reg_verify
    q, shape = _model("e2m1")
    path = fpq.export_qonnx(q, tmp_path / "m.onnx", torch.zeros(1, *shape))
    parser = argparse.ArgumentParser(prog="fpq")
    sub = parser.add_subparsers()
    reg_verify(sub)
    reg_export(sub)
    args = parser.parse_args(["verify", str(path), "--n", "200", "--seed", "1", "--qonnx-subset", "4"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "EXACT over 200 inputs" in out and "qonnx" in out
    args = parser.parse_args(["export", str(path), "--out", str(tmp_path / "n.onnx")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "linear_0" in out and "accumulator" in out
    onnx.checker.check_model(onnx.load(tmp_path / "n.onnx"))


def test_format_qonnx_cannot_express_is_reported():
    m, shape = mlp((16, 8, 5))
    q = fpq.convert(m, fmt="fixed<6,2,RND_CONV,WRAP>")
    x = torch.randn(200, *shape) * 6     # fixed<6,2> spans [-2, 1.94]: most inputs wrap
    rep = fpq.verify(q, x, qonnx_subset=4)
    assert rep.exact   # torch == emulator; the qonnx path is reported, not counted
    assert any("qonnx path not comparable" in n and "WRAP" in n for n in rep.notes)
