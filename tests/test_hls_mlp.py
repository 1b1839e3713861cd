"""fpq.to_hls on the 16-64-32-32-5 MLP: C-sim == fpq.emulate == torch, atol=0, per format.

Each project is compiled once (module-scoped fixture) and shared by the tests of its format.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.export.graph import read_graph
from fpq.testing.conformance import probe_inputs

pytestmark = pytest.mark.slow

# name -> (convert kwargs, to_hls kwargs). The plain format x backend cells of this MLP are in
# tests/test_hls_conformance.py; these are the special cases: a torch model given to to_hls
# directly, the Resource strategy with reuse, and binary layers.
CASES = {
    "int8": (dict(fmt="int8"), dict(backend="Vitis")),
    "e3m2": (dict(fmt="e3m2"), dict(backend="Vitis", strategy="Resource", reuse_factor=4)),
    # binary hidden layer, int8 first/last weights; the binary input quantizer (scale >= 2) runs on
    # a float32 port so that fpq's float32 division by the scale decides tiny inputs' sign
    "binary": (dict(fmt="binary", overrides={"0": "int8", "6": "int8"}), dict(backend="Vivado")),
}
COMPILE_TIMES = {}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 5))


@pytest.fixture(scope="module", params=list(CASES))
def project(request, tmp_path_factory):
    conv_kw, hls_kw = CASES[request.param]
    tmp = tmp_path_factory.mktemp("mlp")
    q = fpq.convert(mlp(), **conv_kw)
    calib = torch.randn(512, 16, generator=torch.Generator().manual_seed(1)) * 2
    fpq.calibrate(q, [calib])
    q.eval()
    path = str(tmp / "mlp.onnx")
    fpq.export_qonnx(q, path, calib[:1])
    t0 = time.perf_counter()
    # the int8 case goes in as the torch model itself (to_hls exports it), the others as QONNX files
    target = q if request.param == "int8" else path
    proj = fpq.to_hls(target, tmp / "prj", example_input=calib[:1], **hls_kw)
    COMPILE_TIMES[request.param] = (time.perf_counter() - t0, proj.compile_s)
    print(f"\n{request.param}: to_hls {COMPILE_TIMES[request.param][0]:.1f} s (g++ {proj.compile_s:.1f} s)")
    graph = read_graph(path)
    x = probe_inputs(graph, 2000, seed=2)
    return request.param, q, path, proj, x


def test_csim_equals_emulator_and_torch(project):
    name, q, path, proj, x = project
    y_hls = proj.predict(x)
    y_emu = np.asarray(fpq.emulate(path, x), dtype=np.float64)
    with torch.no_grad():
        y_torch = q(torch.from_numpy(x)).double().numpy()
    assert y_hls.shape == (2000, 5)
    assert np.unique(y_hls).size > 8, "outputs collapsed: the probe is not exercising the network"
    bad = np.argwhere(y_hls != y_emu)
    assert bad.size == 0, f"{name}: C-sim != emulator at {bad[:3].tolist()}: {y_hls[tuple(bad[0])]} vs {y_emu[tuple(bad[0])]}"
    assert np.array_equal(y_hls, y_torch), f"{name}: C-sim != torch forward"


def test_project_is_complete_and_typed_by_fpq(project):
    name, q, path, proj, x = project
    out = proj.outdir
    for f in ("build_prj.tcl", "firmware/fpq_model.cpp", "firmware/parameters.h", "firmware/defines.h",
              "fpq_project.json"):
        assert (out / f).is_file(), f
    stamp = json.loads((out / "fpq_project.json").read_text())
    assert stamp["backend"] == CASES[name][1]["backend"]
    defines = (out / "firmware" / "defines.h").read_text()
    # every type is an explicit fpq type: hls4ml's default fixed<16,6> never appears
    assert "ap_fixed<16,6>" not in defines
    params = (out / "firmware" / "parameters.h").read_text()
    if name == "e3m2":  # minifloat quantizers run in fpq's C++
        assert "fpq::quantize_minifloat<" in params
        assert (out / "firmware" / "nnet_utils" / "fpq_minifloat.h").is_file()


def test_trace_matches_emulated_layers(project):
    """Every layer hls4ml traces equals the emulator's value of the same IR op."""
    name, q, path, proj, x = project
    tr = proj.trace(x[:64])
    _, emu = fpq.emulate(path, x[:64], return_trace=True)
    assert len(tr) >= 7, sorted(tr)
    for op_name, v in tr.items():
        want = np.asarray(emu[op_name], dtype=np.float64)
        assert np.array_equal(v, want), f"{name}: layer {op_name} differs from the emulator"


def test_minifloat_input_port_takes_float32_only(project):
    """A minifloat input quantizer runs after a wide port sized for float32 values; float64
    values that float32 cannot hold are refused rather than silently rounded twice."""
    name, q, path, proj, x = project
    fmt = next(op for op in read_graph(path).ops if op.kind == "input_quant").quant.format
    castable = isinstance(fmt, fpq.Fixed) or (isinstance(fmt, fpq.Int) and not fmt.narrow)
    assert proj.info["input_float32"] == (not castable)  # else the port type itself is the quantizer
    if castable:
        return
    x64 = x[:4].astype(np.float64) + 1e-12
    with pytest.raises(ValueError, match="float32"):
        proj.predict(x64)
    assert np.array_equal(proj.predict(x[:4].astype(np.float64)), proj.predict(x[:4]))
