"""The model zoo (examples/models/): every model converts at int8 and e2m1 and verifies EXACT
(torch == emulator == qonnx executor, atol=0) on off-grid / tie / saturating inputs, at reduced
widths; the MLPerf Tiny ResNet-8, DS-CNN and AD autoencoder fitted to xc7z020 build an io_stream
HLS project whose C-sim equals the emulator bit for bit (slow); examples/model_zoo.py --quick."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fpq
from fpq.export import read_graph
from fpq.testing.conformance import probe_inputs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
from models import MLPERF_TINY, ZOO  # noqa: E402


def _converted(name, fmt, tmp_path):
    zm = ZOO[name](quick=True)
    q = fpq.convert(zm.model, fmt=fmt)
    fpq.calibrate(q, [zm.calibration(128)], progress=False)
    path = str(tmp_path / f"{name}_{fmt}.onnx")
    fpq.export_qonnx(q, path, zm.calibration(1))
    return zm, q, path


def test_zoo_shapes_and_sources():
    """Each entry runs in float at its input shape and names its published source; the full
    MobileNetV1-0.25 has the published parameter count (221,794 with BN statistics)."""
    for name, make in ZOO.items():
        zm = make(quick=True)
        assert zm.source and zm.task
        with torch.no_grad():
            assert zm.model(zm.calibration(2)).shape[0] == 2
    mb = ZOO["mobilenet_v1"]().model
    bn = sum(m.num_features for m in mb.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(p.numel() for p in mb.parameters()) + 2 * bn == 221_794
    assert ZOO["ds_cnn"]().input_shape == (1, 49, 10) and ZOO["resnet8"]().input_shape == (3, 32, 32)
    assert set(MLPERF_TINY) <= set(ZOO)
    r18 = ZOO["resnet18"]()   # torchvision's resnet18: 11,689,512 parameters
    assert sum(p.numel() for p in r18.model.parameters()) == 11_689_512 and r18.input_shape == (3, 224, 224)
    names = {n for n, _ in r18.model.named_parameters()}
    assert {"conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.bias", "fc.weight"} <= names


@pytest.mark.parametrize("fmt", ["int8", "e2m1"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("mobilenet_v1", "resnet18") else n
                                  for n in ZOO])
def test_zoo_verifies_exact(name, fmt, tmp_path):
    zm, q, path = _converted(name, fmt, tmp_path)
    x = probe_inputs(read_graph(path), 64, seed=3)
    rep = fpq.verify(q, x, qonnx_subset=2, model=path)
    assert rep.status == "EXACT", str(rep)
    assert "qonnx" in " ".join(rep.paths)


def test_mixed_policy_keeps_first_and_last_int8(load_script):
    zoo = load_script("examples/model_zoo.py")
    zm = ZOO["resnet8"](quick=True)
    kw = zoo.convert_kwargs(zm.model, "mixed")
    assert kw["overrides"] == {"stem.0": "int8", "fc": "int8"} and kw["fmt"] == "e2m1" and kw["inputs"] == "int8"
    q = fpq.convert(zm.model, **kw)
    fpq.calibrate(q, [zm.calibration(64)], progress=False)
    w = [str(lp.tensors["weight"].format) for lp in fpq.plan(q) if "weight" in lp.tensors]
    assert len(w) == 10 and w[0] == w[-1] == "int8" and set(w[1:-1]) == {"e2m1"}, w


def test_model_zoo_example_quick(load_script, tmp_path):
    zoo = load_script("examples/model_zoo.py")
    out = tmp_path / "zoo.md"
    rows = zoo.main(["--quick", "--models", "jet_mlp", "ad_autoencoder", "--formats", "int8", "mixed",
                     "--n-verify", "32", "--n-csim", "0", "--out", str(out)])
    assert [(r["model"], r["fmt"]) for r in rows] == [("jet_mlp", "int8"), ("jet_mlp", "mixed"),
                                                      ("ad_autoencoder", "int8"), ("ad_autoencoder", "mixed")]
    assert all(r["exact"] for r in rows)
    text = out.read_text()
    assert text.count("| yes (32 inputs") == 4 and "not measured (no data offline)" in text
    for r in rows:
        for part in ("xc7z020", "xcu250"):
            f = r["fits"][part]
            assert f["fits"] == ("result" in f)
            if f["fits"]:   # within 80% of each resource of the part
                assert max(f["result"].utilization().values()) <= 0.8 + 1e-9
    assert "does not fit" in zoo._fit_cell(zoo.fpq.export_qonnx(
        fpq.calibrate(fpq.convert(ZOO["ad_autoencoder"]().model, fmt="e4m3"),
                      [ZOO["ad_autoencoder"]().calibration(32)], progress=False), None,
        torch.zeros(1, 640)), "xc7z020", 0.01)["text"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet8", "ds_cnn", "ad_autoencoder"])
def test_mlperf_tiny_fitted_io_stream_csim(name, tmp_path):
    """Fit to xc7z020 (io_stream), build with the fit's settings, C-sim == emulator bit for bit."""
    zm, q, path = _converted(name, "int8", tmp_path)
    res = fpq.fit(path, part="xc7z020", io_types=("io_stream",))
    assert res.io_type == "io_stream" and max(res.utilization().values()) <= 0.8 + 1e-9
    proj = fpq.to_hls(q, tmp_path / "prj", zm.calibration(1), **res.hls_kwargs)
    x = probe_inputs(read_graph(path), 200, seed=5)
    rep = fpq.verify(q, x, proj, qonnx_subset=2, model=path)
    assert rep.status == "EXACT" and any("hls" in p.lower() or "csim" in p.lower() for p in rep.paths), str(rep)
    assert np.array_equal(proj.predict(x), np.asarray(fpq.emulate(path, x)))


def _mnist_or_skip():
    from fpq.data import mnist_path
    try:
        mnist_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_mnist_example_quick(load_script, tmp_path):
    """examples/mnist.py --quick on the MLP, int8 and mixed rows: accuracies on held-out images,
    EXACT, a fit to xc7z020 within 80%."""
    _mnist_or_skip()
    ex = load_script("examples/mnist.py")
    out = tmp_path / "mnist.md"
    rows = ex.main(["--quick", "--models", "mlp", "--formats", "int8 PTQ", "mixed PTQ", "--out", str(out)])
    assert [r["label"] for r in rows] == ["float", "int8 PTQ", "mixed PTQ"]
    assert rows[0]["acc"] > 60 and all(r["status"] == "EXACT" for r in rows[1:])
    assert all(abs(r["acc"] - rows[0]["acc"]) < 10 for r in rows[1:])   # int8 ends: close to float
    assert "held-out 1,000 test images" in out.read_text()


@pytest.mark.full   # 100 s on 2 cores; test_mnist_example_quick keeps the example's path in make test
def test_mnist_example_quick_all_rows(load_script):
    _mnist_or_skip()
    rows = load_script("examples/mnist.py").main(["--quick"])
    assert len(rows) == 12 and all(r["status"] == "EXACT" for r in rows if r["label"] != "float")


def test_ds_cnn_int8_does_not_fit_pynq_z2_and_says_why():
    """The full DS-CNN at int8 in io_stream on xc7z020 (80%): no setting fits, and the FitError
    names BRAM18 with the amount over, and that its io_stream FIFOs alone exceed the budget (the
    part no reuse factor or strategy changes: the same at reuse 1 and at each layer's largest)."""
    from fpq.fitting import FitError, _layer_sizes, valid_reuse_factors

    zm = ZOO["ds_cnn"]()
    q = fpq.convert(zm.model, fmt="int8")
    fpq.calibrate(q, [zm.calibration(64)], progress=False)
    tp = fpq.plan(q)
    with pytest.raises(FitError) as e:
        fpq.fit(tp, part="xc7z020", budget=0.8, io_types=("io_stream",))
    need, allowed = e.value.shortfall["bram18"]
    assert allowed == 0.8 * 280 and need > allowed
    fixed = e.value.fixed["bram18"]
    assert fixed > allowed
    assert f"BRAM18: needs {round(need):,}, the budget allows 224" in str(e.value)
    assert f"over the budget by {round(fixed - allowed):,} alone" in str(e.value)
    top = {lp.name: valid_reuse_factors(*_layer_sizes(lp))[-1] for lp in tp
           if not lp.attrs.get("fused_into") and _layer_sizes(lp) is not None}
    for rf, st in ((1, "Latency"), (top, "Resource")):
        rep = fpq.estimate_cost(tp, part="xc7z020", io_type="io_stream", reuse_factor=rf, strategy=st)
        fifo = sum(r.get("fifo_bram18", 0) + r.get("clone_fifo_bram18", 0) if r["layer"] in top else r["bram18"]
                   for r in rep.layers)
        assert fifo == fixed and rep.total["bram18"] >= fifo
