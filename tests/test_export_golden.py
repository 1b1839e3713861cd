"""Regression against the golden QONNX files in tests/golden/ (written by tests/golden/make_golden.py)."""
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import fpq
from fpq.export.graph import read_graph
from fpq.verification import qonnx_trace

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.onnx"))


def test_golden_cases_exist(load_script):
    assert set(CASES) == set(load_script("tests/golden/make_golden.py").CASES)


@pytest.mark.parametrize("name", CASES)
def test_golden_file_still_emulates_to_its_outputs(name):
    path = GOLDEN / f"{name}.onnx"
    onnx.checker.check_model(onnx.load(path))
    data = np.load(GOLDEN / f"{name}.npz")
    x, y = data["x"], data["y"]
    np.testing.assert_array_equal(np.asarray(fpq.emulate(path, x), np.float64), y)
    graph = read_graph(path)
    if all(op.quant is None or op.quant.qonnx_exact for op in graph.ops):
        yq, _ = qonnx_trace(path, x[:3], graph)
        np.testing.assert_array_equal(yq, y[:3])


@pytest.mark.parametrize("name", ["mlp_int8", "conv1d_e2m1", "mlp_mixed"])
def test_export_today_reproduces_the_golden_outputs(name, load_script):
    """convert + export_qonnx of the same seeded model still computes exactly the golden outputs."""
    mg = load_script("tests/golden/make_golden.py")
    q, shape = mg.build(name)
    data = np.load(GOLDEN / f"{name}.npz")
    mw = fpq.export_qonnx(q, None, torch.zeros(1, *shape))
    np.testing.assert_array_equal(np.asarray(fpq.emulate(mw, data["x"]), np.float64), data["y"])
