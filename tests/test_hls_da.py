"""fpq.to_hls(..., strategy="distributed_arithmetic"): hls4ml's da4ml kernels on fpq models.

C-sim == fpq.emulate (atol=0) on off-grid inputs, no multiplier in the generated kernels, and
clear refusals (before any file is written) where DA cannot build the network.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import fpq
from fpq.export import as_graph
from fpq.hls import HLSUnsupportedError
from fpq.testing.conformance import probe_inputs
from fpq.nn import multfree
from fpq.testing.networks import ConvResidual as _Net

pytest.importorskip("da4ml")


def _model(khot=None):
    torch.manual_seed(0)
    q = fpq.convert(_Net(), fmt="int8")
    x = torch.from_numpy(np.random.default_rng(0).uniform(-2, 2, (256, 1, 4, 4)).astype(np.float32))
    fpq.calibrate(q, [x], progress=False)
    if khot is not None:
        multfree.to_khot(q, khot, granularity="tensor")
    return q.eval(), x


@pytest.mark.parametrize("kw,match", [(dict(reuse_factor=4), "reuse_factor must be 1"),
                                      (dict(io_type="io_stream"), "io_parallel only")])
def test_refuses_before_writing(tmp_path, kw, match):
    q, x = _model()
    out = tmp_path / "prj"
    with pytest.raises(HLSUnsupportedError, match=match):
        fpq.to_hls(q, out, example_input=x[:1], strategy="distributed_arithmetic", **kw)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_strategy_names_the_allowed_ones(tmp_path):
    q, x = _model()
    with pytest.raises(ValueError, match="distributed_arithmetic"):
        fpq.to_hls(q, tmp_path / "prj", example_input=x[:1], strategy="adders")
    with pytest.raises(ValueError, match="da_options is for strategy='distributed_arithmetic' only"):
        fpq.to_hls(q, tmp_path / "prj", example_input=x[:1], da_options={"hard_dc": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow   # da4ml solve (numba, cached on disk after the first run) + g++ (~60 s)
def test_da_project_exact_and_multiplier_free(tmp_path):
    from fpq.hls import da

    q, x = _model(khot=2)
    proj = fpq.to_hls(q, tmp_path / "prj", example_input=x[:1], strategy="da")
    xp = probe_inputs(as_graph(q, x[:1]), 2000, seed=3)
    y = proj.predict(xp)
    assert np.array_equal(y, fpq.emulate(q, xp))
    with torch.no_grad():
        assert np.array_equal(y, q(torch.from_numpy(xp)).double().numpy())
    layers = {L.name: L for L in proj.hls_model.get_layers()}
    weighted = [n for n, L in layers.items() if L.class_name in da.WEIGHTED]
    assert len(weighted) == 3
    assert all(layers[n].get_attr("strategy") == "distributed_arithmetic" for n in weighted)
    assert set(da.kernel_costs(proj.hls_model)) == set(weighted)
    code = (proj.outdir / "firmware" / "nnet_utils" / "nnet_code_gen.h").read_text()
    kernels = re.findall(r"void (dense_da_\d+)\(", code)
    assert len(kernels) == 3
    assert "bit_shift" in code and not re.search(r"v\d+ \* v\d+", code)   # shifts and adds only
    top = (proj.outdir / "firmware" / "fpq_model.cpp").read_text()
    assert "dense_latency" not in top and "DenseLatency" not in top
