"""fpq.fit / `fpq fit`: io_type, strategy and per-layer reuse factors that fit a part's budget
(estimates only), hls4ml's valid reuse factors, the error when nothing fits, and one to_hls with
the fitted settings (its hls4ml config carries the per-layer reuse factors; C-sim == emulator)."""
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.cost_model import estimate_cost, get_device
from fpq.fitting import FitError, FitResult, valid_reuse_factors

PARTS = ("xc7z020", "xczu3eg", "xcu250", "xcvu9p", "xcvc1902")


def _mlp(n_in=32, hidden=64, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 10)).eval()
    q = fpq.convert(m, fmt="int8")
    x = torch.randn(64, n_in)
    fpq.calibrate(q, [x], progress=False)
    return q, x


def _cnn(seed=0):
    """DS-CNN's pattern: conv, depthwise conv, pointwise conv, classifier."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                      nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10)).eval()
    q = fpq.convert(m, fmt="int8")
    x = torch.randn(32, 4, 6, 6)
    fpq.calibrate(q, [x], progress=False)
    return q, x


def _within(res: FitResult):
    dev, t = res.device, res.report.total
    for k, cap in (("lut", dev.lut), ("ff", dev.ff), ("dsp", dev.dsp), ("bram18", dev.bram18)):
        assert t[k] <= res.budget * cap, (k, t[k], cap)


def test_valid_reuse_factors_are_hls4ml_s():
    from hls4ml.backends import get_backend

    be = get_backend("Vitis")
    for n_in, n_out in ((16, 8), (36, 16), (64, 10), (27, 5), (144, 16), (7, 3), (1, 12)):
        assert valid_reuse_factors(n_in, n_out) == be.get_valid_reuse_factors(n_in, n_out), (n_in, n_out)


def test_xczu3eg_datasheet_numbers():
    d = get_device("xczu3eg-sbva484-1-e")
    assert (d.name, d.lut, d.ff, d.dsp, d.bram18, d.uram) == ("xczu3eg", 70560, 141120, 360, 432, 0)
    assert {get_device(p).family for p in PARTS} == {"7series", "ultrascale+", "versal"}


def test_fit_raises_reuse_until_every_resource_fits():
    """An MLP that does not fit xc7z020 unrolled (estimate over 80% of its LUTs) fits after fit():
    every resource within budget, the reuse factors hls4ml-valid, and estimate_cost with the
    result's settings reproduces its report."""
    q, _ = _mlp(64, 128)
    full = estimate_cost(q, part="xc7z020")
    assert full.total["lut"] > 0.8 * 53200          # the case fit exists for
    for obj in ("latency", "throughput"):
        res = fpq.fit(q, part="xc7z020", budget=0.8, objective=obj)
        _within(res)
        assert max(res.reuse_factor.values()) > 1 and set(res.reuse_factor) == {"linear_0", "linear_2"}
        assert res.reuse_factor["linear_0"] in valid_reuse_factors(64, 128)
        assert res.reuse_factor["linear_2"] in valid_reuse_factors(128, 10)
        kw = res.hls_kwargs
        assert kw["part"] == "xc7z020clg400-1" and kw["io_type"] in ("io_parallel", "io_stream")
        again = estimate_cost(q, part="xc7z020", reuse_factor=kw["reuse_factor"], strategy=kw["strategy"],
                              io_type=kw["io_type"], clock_period=kw["clock_period"])
        assert again.total == res.report.total
        assert res.latency_ns == res.latency_cycles * 5.0 and res.ii >= 1
        assert "II" in str(res) and json.loads(json.dumps(res.to_dict()))["reuse_factor"] == res.reuse_factor
    # on a large part nothing needs sharing: fully unrolled is the lowest latency
    big = fpq.fit(q, part="xcu250", objective="latency")
    assert set(big.reuse_factor.values()) == {1} and big.latency_cycles <= res.latency_cycles


def test_fit_every_part_and_the_objectives():
    q, _ = _cnn()
    for part in PARTS:
        lat = fpq.fit(q, part=part, objective="latency")
        thr = fpq.fit(q, part=part, objective="throughput")
        _within(lat)
        _within(thr)
        assert lat.latency_cycles <= thr.latency_cycles and thr.ii <= lat.ii, part
        assert "conv2d_2" in lat.reuse_factor          # the depthwise conv has a reuse factor too
    # a tighter budget never buys a lower latency
    loose = fpq.fit(q, part="xc7z020", budget=0.9)
    tight = fpq.fit(q, part="xc7z020", budget=0.3)
    _within(tight)
    assert tight.latency_cycles >= loose.latency_cycles


def test_fit_full_part_number_kept_and_bad_arguments():
    q, x = _mlp()
    res = fpq.fit(q, part="xc7z020clg484-1", example_input=x[:1])
    assert res.device.name == "xc7z020" and res.hls_kwargs["part"] == "xc7z020clg484-1"
    for kw, msg in ((dict(budget=0), "budget"), (dict(budget=1.5), "budget"), (dict(objective="fast"), "objective"),
                    (dict(part="xc9z999"), "unknown device"), (dict(strategies=("Fast",)), "strategy"),
                    (dict(io_types=("io_serial",)), "io_type")):
        with pytest.raises(ValueError, match=msg):
            fpq.fit(q, **kw)


def test_fit_says_which_resource_runs_out_and_by_how_much():
    q, _ = _cnn()
    with pytest.raises(FitError) as e:
        fpq.fit(q, part="xc7z020", budget=0.001)
    msg = str(e.value)
    assert "does not fit 0% of xc7z020" in msg and "LUT: needs" in msg and "over (" in msg and "most in" in msg
    m = re.search(r"LUT: needs ([\d,]+), the budget allows ([\d,]+) \(0% of 53,200\), ([\d,]+) over", msg)
    need, allow, over = (int(g.replace(",", "")) for g in m.groups())
    assert allow == round(0.001 * 53200) and over == need - allow > 0
    # the cheapest setting: reuse cannot take the design below what the message names
    q_max = fpq.fit(q, part="xcu250", budget=1.0)
    assert need <= q_max.report.total["lut"]


def test_fit_cli(tmp_path, capsys):
    from fpq.cli import main

    q, x = _mlp(64, 128)
    path = str(tmp_path / "m.onnx")
    fpq.export_qonnx(q, path, x[:1])
    assert main(["fit", path, "--part", "xc7z020", "--budget", "0.8", "--objective", "throughput", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "xc7z020" and out["objective"] == "throughput"
    assert out["hls_kwargs"]["reuse_factor"] == out["reuse_factor"] and max(out["reuse_factor"].values()) > 1
    assert main(["fit", path, "--part", "xc7z020", "--budget", "0.001"]) == 2
    assert "fpq fit: error: the model does not fit" in capsys.readouterr().err


def test_to_hls_takes_the_fitted_settings(tmp_path):
    """fpq.to_hls(q, outdir, **fit(...).hls_kwargs): hls4ml's config holds each layer's reuse
    factor, the generated layer configs use it, and the C-sim equals the emulator bit for bit."""
    q, x = _mlp(64, 128)
    res = fpq.fit(q, part="xc7z020", io_types=("io_parallel",), strategies=("Latency",))
    rfs = res.reuse_factor
    assert len(set(rfs.values())) > 1 or max(rfs.values()) > 1
    with pytest.raises(ValueError, match="no layer with weights"):
        fpq.to_hls(q, tmp_path / "bad", **dict(res.hls_kwargs, reuse_factor={"nope": 2}))
    assert not (tmp_path / "bad").exists()
    # a torch module path names the same layer, in to_hls as in estimate_cost
    from fpq.export import as_graph
    from fpq.hls.options import layer_reuse_factors
    assert layer_reuse_factors(as_graph(q, x[:1]), {"0": 4, "linear_2": 2}) == (1, {"linear_0": 4, "linear_2": 2})
    assert estimate_cost(q, reuse_factor={"0": 4}).total == estimate_cost(q, reuse_factor={"linear_0": 4}).total
    proj = fpq.to_hls(q, tmp_path / "prj", **res.hls_kwargs)
    for name, rf in rfs.items():
        layer = proj.hls_model.graph[name]
        assert layer.get_attr("reuse_factor") == rf, name
    params = (tmp_path / "prj" / "firmware" / "parameters.h").read_text()
    for rf in set(rfs.values()):
        assert f"reuse_factor = {rf};" in params
    xs = torch.randn(200, 64) * 3
    assert np.array_equal(proj.predict(xs.numpy()), np.asarray(fpq.emulate(q, xs)))


def test_a_reuse_factor_for_an_unknown_layer_is_refused():
    """A typo in a per-layer reuse dict is an error naming the layers, not a silent reuse 1."""
    q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)), "int8")
    with pytest.raises(ValueError, match="reuse_factor names 'nope'.*linear"):
        fpq.estimate_cost(q, reuse_factor={"nope": 2})
    by_module = fpq.estimate_cost(q, reuse_factor={"0": 2}).total
    assert by_module == fpq.estimate_cost(q, reuse_factor={fpq.plan(q)["0"].name: 2}).total


def test_fit_digits_example(load_script):
    """examples/fit_digits.py: a fit per part, each within its budget, io_stream on the small part."""
    ex = load_script("examples/fit_digits.py")
    out = ex.main("int8", ("xc7z020", "xcu250"), 0.8)
    assert all(isinstance(r, FitResult) for r in out.values())
    assert out["xc7z020"].io_type == "io_stream"
    assert all(v <= 0.8 for r in out.values() for v in r.utilization().values())
