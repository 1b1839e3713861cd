"""Issue 15, exactness claims: verify never says EXACT without proof.

1. an fpq_format attribute that flips a Quant node's signedness / narrowness / rounding / overflow
   is refused naming the node; with no independent path compared the headline is NOT VERIFIED;
2. float64 inputs are quantized as doubles on every path (emulator, torch, qonnx), verify too;
3. NaN / inf inputs: one refusal on every path (emulate, verify, HLS predict);
4. verify runs in chunks: memory bounded by one chunk's trace, not the whole input's.
"""
import argparse
import tracemalloc

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import fpq
from fpq.emulate import Emulator
from fpq.testing.networks import conv2d_bn_net, mlp
from fpq.export.graph import UnsupportedGraphError, read_graph
from fpq.verification import random_inputs


def _exported(fmt, dims=(16, 8, 5)):
    m, shape = mlp(dims)
    q = fpq.convert(m, fmt=fmt)
    return q, fpq.export_qonnx(q, None, torch.zeros(1, *shape)), shape


def _set(node, name, value):
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _quant_node(mw, kind="Quant", which="output_quant"):
    return next(n for n in mw.graph.node if n.op_type == kind and which in n.name and "half_step" not in n.name)


# --------------------------------------------------------------------------- 1. contradictions

@pytest.mark.parametrize("fmt, attr, value, why", [
    ("int8", "fpq_format", "uint8", "signedness"),                        # flips signedness
    ("int8", "fpq_format", "int8_narrow", "narrowness"),                  # flips narrowness
    ("int8_narrow", "fpq_format", "int8", "narrowness"),
    ("fixed<8,3>", "narrow", 1, "narrow=1"),                              # fixed SAT over a narrow node
    ("fixed<8,3>", "fpq_format", "fixed<8,3,TRN,SAT>", "rounding_mode"),  # node rounds to nearest
    ("fixed<8,3,TRN,SAT_SYM>", "fpq_format", "fixed<8,3,TRN,SAT>", "narrow=1"),
    ("fixed<8,3,RND_CONV,WRAP>", "rounding_mode", "FLOOR", "rounding_mode"),
    ("e4m3", "fpq_format", "e4m3_nosat", "saturation"),
    ("e4m3", "fpq_format", "e4m3_fnuz", "inf / NaN"),
])
def test_fpq_format_contradicting_its_node_is_refused(fmt, attr, value, why):
    _, mw, _ = _exported(fmt)
    kind = "FloatQuant" if fmt.startswith("e") else "Quant"
    node = _quant_node(mw, kind)
    _set(node, attr, value)
    with pytest.raises(UnsupportedGraphError, match=why) as e:
        read_graph(mw)
    assert node.name in str(e.value) and "contradicts" in str(e.value)


def test_refinements_qonnx_cannot_write_are_still_read():
    for fmt in ("ue4m3", "e5m2_nosub", "fixed<6,2,RND_CONV,WRAP>", "fixed<6,2,RND_CONV,SAT_ZERO>", "int8_narrow"):
        read_graph(_exported(fmt)[1])


def test_no_independent_path_is_not_verified(tmp_path, capsys):
    """A file qonnx cannot execute (fixed WRAP), no torch model, no project: nothing but the
    emulator ran, so neither EXACT nor exit 0."""
    _, mw, _ = _exported("fixed<6,2,RND_CONV,WRAP>")
    path = tmp_path / "wrap.onnx"
    mw.save(str(path))
    rep = fpq.verify(str(path), n=50, qonnx_subset=4)
    assert not rep.verified and not rep.exact and rep.status == "NOT VERIFIED"
    assert str(rep).startswith("fpq.verify: NOT VERIFIED over 50 inputs")
    assert not fpq.verify(str(path), n=20, qonnx_subset=0).exact
    from fpq.cli.verify import cli_register
    parser = argparse.ArgumentParser(prog="fpq")
    cli_register(parser.add_subparsers())
    args = parser.parse_args(["verify", str(path), "--n", "20", "--qonnx-subset", "2"])
    assert args.func(args) != 0
    assert "NOT VERIFIED" in capsys.readouterr().out


# --------------------------------------------------------------------------- 2. float64 inputs

def test_float64_just_above_a_tie_is_quantized_as_given():
    """x = (k + 1/2) s + s 2^-40: a double just above a tie of the input quantizer (float32 would
    round it onto the tie). Every path must give the correct rounding of the double: k + 1."""
    q, mw, shape = _exported("fixed<8,3>")   # step s = 2^-5, range [-4, 4)
    s = 2.0 ** -5
    rng = np.random.default_rng(3)
    k = rng.integers(-120, 120, size=(96,) + shape)
    x = (k + 0.5) * s + s * 2.0 ** -40
    want = (k + 1) * s                       # exact: nearest grid point, no tie
    graph = read_graph(mw)
    first = graph.ops[0].name
    for backend in ("numpy", "torch"):
        _, tr = Emulator(graph, backend=backend)(x, return_trace=True)
        np.testing.assert_array_equal(np.asarray(tr[first], np.float64), want, err_msg=backend)
    rep = fpq.verify(q, x, qonnx_subset=8, chunk=40)
    assert rep.exact and rep.paths == ["emulator", "torch", "qonnx"], rep
    rows = {(r["layer"], r["path"]): r for r in rep.table}
    assert rows[(first, "torch")]["compared"] == x.size and rows[(first, "qonnx")]["compared"] == 8 * 16
    # verify compared the doubles: its outputs are those of the double input, not of float32(x)
    np.testing.assert_array_equal(rep.outputs["emulator"], np.asarray(Emulator(graph)(x), np.float64))
    assert not np.array_equal(rep.outputs["emulator"],
                              np.asarray(Emulator(graph)(x.astype(np.float32)), np.float64))


def test_float_scaled_input_refuses_doubles_that_are_not_float32():
    """A float (non-po2) input scale divides in float32 (the exported file, the HLS port): a
    double that float32 cannot hold is refused, one that it can is the float32 value."""
    m, shape = mlp((16, 8, 5))
    q = fpq.convert(m, weights="fixed<8,1>", activations="int8", scale="float")
    fpq.calibrate(q, [torch.randn(64, *shape)])
    graph = read_graph(fpq.export_qonnx(q, None, torch.zeros(1, *shape)))
    x32 = random_inputs(graph, 20)
    emu = Emulator(graph)
    np.testing.assert_array_equal(emu(x32.astype(np.float64)), emu(x32))
    x = x32.astype(np.float64)
    x[2, 3] += 1e-12
    with pytest.raises(ValueError, match=r"1 float64 value\(s\) are not float32 numbers \(the first at index \(2, 3\)"):
        emu(x)
    with pytest.raises(ValueError, match="not float32 numbers"):
        fpq.verify(q, x, qonnx_subset=0)


# --------------------------------------------------------------------------- 3. NaN / inf

def test_nonfinite_inputs_are_refused_everywhere():
    q, mw, shape = _exported("e4m3")
    graph = read_graph(mw)
    x = random_inputs(graph, 30)
    x[4, 2], x[7, 0], x[9, 9] = np.nan, np.inf, -np.inf
    msg = r"3 input value\(s\) are NaN or infinite \(the first at index \(4, 2\)"
    for backend in ("numpy", "torch"):
        with pytest.raises(ValueError, match=msg):
            Emulator(graph, backend=backend)(x)
    with pytest.raises(ValueError, match=msg):
        fpq.emulate(mw, torch.from_numpy(x))
    with pytest.raises(ValueError, match=msg):
        fpq.verify(q, x, qonnx_subset=2)
    with pytest.raises(ValueError, match=r"32 input value\(s\)"):   # all NaN: refused, not EXACT
        fpq.verify(mw, np.full((2, 16), np.nan), qonnx_subset=2)


def test_hls_predict_follows_the_same_rule():
    """HLSProject._prepare (the C-sim's input) refuses what emulate refuses, with the same words."""
    from fpq.hls.project import HLSProject
    proj = HLSProject.__new__(HLSProject)
    proj.info = {"input_shape": [4], "input_float32": False, "input_perm": None}
    x = np.zeros((3, 4))
    x[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"1 input value\(s\) are NaN or infinite \(the first at index \(1, 2\)"):
        proj._prepare(x)


# --------------------------------------------------------------------------- 4. bounded memory

class _Project:
    """An HLS stand-in (predict and trace from the emulator) that records the rows it is given."""

    def __init__(self, graph):
        self.emu, self.batches = Emulator(graph), []

    def predict(self, x):
        self.batches.append(len(x))
        return self.emu(x)

    def trace(self, x):
        return self.emu(x, return_trace=True)[1]


def test_verify_memory_is_bounded_by_one_chunk():
    m, shape = conv2d_bn_net()
    q = fpq.convert(m, fmt="int8")
    mw = fpq.export_qonnx(q, None, torch.zeros(1, *shape))
    graph = read_graph(mw)
    x = random_inputs(graph, 3000, seed=2)
    _, full = Emulator(graph)(x, return_trace=True)
    trace_bytes = sum(np.asarray(v).nbytes for v in full.values())   # one path's trace of every row
    del full
    proj = _Project(graph)
    tracemalloc.start()
    try:
        rep = fpq.verify(mw, x, project=proj, qonnx_subset=0, chunk=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rep.exact and rep.n_inputs == 3000 and proj.batches == [100] * 30
    rows = {(r["layer"], r["path"]): r for r in rep.table}
    assert rows[("<output>", "hls")]["compared"] == 3000 * 10
    # two paths' traces of the whole input would be 2 x trace_bytes; one chunk's are 1/30 of that
    # (measured: 3.1 MB chunked, 62 MB unchunked)
    assert peak < trace_bytes / 3, (peak, trace_bytes)
    # a mismatch in a later chunk is found and indexed globally
    bad = _Project(graph)
    orig = bad.trace

    def trace(x, _seen=[0]):
        tr = orig(x)
        if _seen[0] == 7:
            tr["quant_0"] = np.array(tr["quant_0"], np.float64)
            tr["quant_0"][3, 1, 2, 2] += 1.0
        _seen[0] += 1
        return tr
    bad.trace = trace
    rep = fpq.verify(mw, x, project=bad, qonnx_subset=0, chunk=100)
    assert not rep.exact and rep.first_mismatch.layer == "quant_0"
    assert rep.first_mismatch.index == (703, 1, 2, 2)
