"""fpq.fit on real topologies (issue 18 item 5): the pricing the fit depends on (shared int8
multipliers on DSPs, io_stream FIFOs as SRL / LUTRAM / BRAM18 by depth x width, a strategy per
layer), a reduced-width ResNet-8 fitted to a Pynq-Z2 (xc7z020) in io_stream, and (slow) its
hls4ml project built from the fit's hls_kwargs with C-sim == emulator bit for bit."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.cost_model import estimate_cost
from fpq.cost_model.stream import _fifo, lutram_luts
from fpq.fitting import FitError, valid_reuse_factors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mlp(fmt="int8", n_in=32, hidden=48, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 10)).eval()
    q = fpq.convert(m, fmt=fmt)
    fpq.calibrate(q, [torch.randn(64, n_in)], progress=False)
    return q


def _resnet8_quick(fmt="int8"):
    """MLPerf Tiny ResNet-8 (examples/models/resnet8.py) at reduced widths (4-8-8 filters, 16x16)."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        from models import ZOO
    finally:
        sys.path.pop(0)
    zm = ZOO["resnet8"](quick=True)
    q = fpq.convert(zm.model, fmt=fmt)
    fpq.calibrate(q, [zm.calibration(64)], progress=False)
    q.eval()
    return q, zm


def test_shared_int8_multipliers_go_to_dsps():
    """Unrolled int8 weights are constants (shift-and-add LUTs, no DSP, hls4ml's weight < 9 bits
    rule); shared (reuse > 1) int8 x int8 multipliers multiply two variables: one DSP48 each.
    dsp_threshold=None keeps them in fabric; int4 x int4 shared products stay in LUTs."""
    q = _mlp("int8")
    r1 = estimate_cost(q, part="xc7z020").layers
    r4 = estimate_cost(q, part="xc7z020", reuse_factor=4).layers
    fab = estimate_cost(q, part="xc7z020", reuse_factor=4, dsp_threshold=None).layers
    for a, b, c in zip(r1, r4, fab):
        if a["op"] != "linear":
            continue
        assert a["dsp"] == 0 and a["mapping"] == "lut"
        assert b["mapping"] == "dsp" and b["dsp"] == b["n_mult"] <= -(-a["fan_in"] * a["n_out"] // 4)
        assert c["dsp"] == 0 and c["lut"] > b["lut"]          # the trade the fit can now make
    q4 = _mlp("int4")
    assert all(r["dsp"] == 0 for r in estimate_cost(q4, part="xc7z020", reuse_factor=4).layers)


@pytest.mark.parametrize("shape, bits, want", [
    ((1, 2, 4, 4), 8, (16, 0)),                         # 256 bits: SRL32s, one LUT per bit
    ((1, 4, 8, 8), 8, (lutram_luts(32, 64), 0)),       # 2048 bits but 64 words: LUTRAM
    ((1, 16, 32, 32), 8, (0, 8)),                       # 1024 x 128: eight 1K x 18 BRAM18s
    ((1, 64, 16, 16), 8, (0, 15)),                      # 256 x 512: fifteen 512 x 36 BRAM18s
])
def test_fifo_memory_by_depth_and_width(shape, bits, want):
    assert _fifo(shape, bits) == want
    assert lutram_luts(32, 64) == 4 * 11 and lutram_luts(12, 32) == 4 * 2


def test_strategy_per_layer_in_the_estimate():
    """A {layer: strategy} dict prices each layer under its own strategy: each row equals that
    layer's row under the uniform strategy (Resource moves a layer's weights into BRAM)."""
    q = _mlp("int8", 64, 128)
    names = [r["layer"] for r in estimate_cost(q).layers if r["op"] == "linear"]
    lat = {r["layer"]: r for r in estimate_cost(q, reuse_factor=64, strategy="Latency").layers}
    res = {r["layer"]: r for r in estimate_cost(q, reuse_factor=64, strategy="Resource").layers}
    mixed = {r["layer"]: r for r in estimate_cost(q, reuse_factor=64,
                                                  strategy={names[0]: "Resource", names[1]: "latency"}).layers}
    assert mixed[names[0]] == res[names[0]] and mixed[names[1]] == lat[names[1]]
    assert res[names[0]]["bram18"] > 0 == lat[names[0]]["bram18"]
    with pytest.raises(ValueError, match="strategy names 'nope'"):
        estimate_cost(q, strategy={"nope": "Resource"})
    with pytest.raises(ValueError, match="unknown strategy 'Fast' for layer"):
        estimate_cost(q, strategy={names[0]: "Fast"})


def test_reduced_resnet8_fits_a_pynq_z2_in_io_stream():
    """The fit of a reduced-width ResNet-8 to xc7z020 at 80%: io_stream, every resource within
    budget, hls4ml-valid reuse factors, the hls_kwargs reproduce the report; and on a part 1/50
    the size it says which resource runs out."""
    q, _ = _resnet8_quick()
    res = fpq.fit(q, part="xc7z020", budget=0.8, io_types=("io_stream",))
    caps = {"lut": 53200, "ff": 106400, "dsp": 220, "bram18": 280}
    assert all(res.report.total[k] <= 0.8 * c for k, c in caps.items())
    kw = res.hls_kwargs
    assert kw["io_type"] == "io_stream" and set(kw["reuse_factor"]) == set(res.strategies)
    tp = fpq.plan(q)
    from fpq.fitting import _layer_sizes
    for name, rf in kw["reuse_factor"].items():
        assert rf in valid_reuse_factors(*_layer_sizes(tp[name]))
    again = estimate_cost(q, part="xc7z020", reuse_factor=kw["reuse_factor"], strategy=kw["strategy"],
                          io_type="io_stream")
    assert again.total == res.report.total
    json.dumps(res.to_dict())
    from fpq.cost_model.devices import Device, get_device
    tiny = Device(**dict(vars(get_device("xc7z020")), name="tiny", lut=1000, ff=2000, dsp=4, bram18=6))
    with pytest.raises(FitError) as e:
        fpq.fit(q, part=tiny, budget=0.8)
    assert "does not fit 80% of tiny" in str(e.value) and e.value.shortfall
    for k, (need, allowed) in e.value.shortfall.items():
        assert need > allowed and f"{ {'lut': 'LUT', 'ff': 'FF', 'dsp': 'DSP', 'bram18': 'BRAM18'}[k]}: needs" in str(e.value)


def test_fit_cli_choices(tmp_path, capsys):
    from fpq.cli import main

    q = _mlp("int8", 64, 128)
    path = str(tmp_path / "m.onnx")
    fpq.export_qonnx(q, path, torch.randn(1, 64))
    assert main(["fit", path, "--io-type", "io_parallel", "--strategy", "Resource", "--dsp-threshold", "none",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["io_type"] == "io_parallel" and set(out["strategies"].values()) == {"Resource"}
    assert out["total"]["dsp"] == 0 and out["hls_kwargs"]["strategy"] == "Resource"
    assert main(["fit", path, "--dsp-threshold", "many"]) == 2
    assert "--dsp-threshold is a number of bits or 'none'" in capsys.readouterr().err


@pytest.mark.slow
def test_reduced_resnet8_fitted_project_csim_equals_emulator(tmp_path):
    """The fit's hls_kwargs (io_stream, per-layer reuse factors) build the hls4ml project of the
    reduced ResNet-8, with every other weighted layer switched to the Resource strategy so that the
    per-layer Strategy path is built (tests/test_model_zoo.py builds the fit's own choice): the
    layer configs carry each reuse factor and strategy, and the C-sim equals the emulator."""
    q, zm = _resnet8_quick()
    res = fpq.fit(q, part="xc7z020", budget=0.8, io_types=("io_stream",))
    mixed = {n: ("Resource" if i % 2 else "Latency") for i, n in enumerate(res.reuse_factor)}
    proj = fpq.to_hls(q, tmp_path / "prj", zm.calibration(1), **dict(res.hls_kwargs, strategy=mixed))
    for name, rf in res.reuse_factor.items():
        layer = proj.hls_model.graph[name]
        assert layer.get_attr("reuse_factor") == rf, name
        assert str(layer.get_attr("strategy")).lower() == mixed[name].lower(), name
    assert proj.info["strategy"] == mixed
    from fpq.testing.conformance import probe_inputs
    from fpq.export import as_graph
    x = np.asarray(probe_inputs(as_graph(q, zm.calibration(1)), 100, seed=3), dtype=np.float32)
    assert np.array_equal(proj.predict(x), np.asarray(fpq.emulate(q, torch.from_numpy(x))))


def test_fit_no_slower_than_one_reuse_factor_for_every_layer():
    """The search keeps the better of its per-layer descent and one reuse factor for every layer
    (each layer's nearest valid one): no uniform setting that fits has fewer latency cycles."""
    from fpq.fitting import _layer_sizes
    q = _mlp("int8", 64, 128)
    tp = fpq.plan(q)
    res = fpq.fit(tp, part="xc7z020", io_types=("io_parallel",))
    sizes = {n: _layer_sizes(tp[n]) for n in res.reuse_factor}
    for st in ("Latency", "Resource"):
        for r in (1, 2, 4, 8, 16, 32, 64, 128):
            rfs = {n: next((v for v in valid_reuse_factors(*nm) if v >= r), valid_reuse_factors(*nm)[-1])
                   for n, nm in sizes.items()}
            t = estimate_cost(tp, part="xc7z020", reuse_factor=rfs, strategy=st).total
            if all(t[k] <= 0.8 * c for k, c in (("lut", 53200), ("ff", 106400), ("dsp", 220), ("bram18", 280))):
                assert res.latency_cycles <= t["latency_cycles"], (st, r)


def test_to_hls_refuses_a_bad_per_layer_strategy(tmp_path):
    """A per-layer strategy naming no weighted layer, or one that is not Latency / Resource, is
    refused before any file is written."""
    q = _mlp("int8")
    with pytest.raises(ValueError, match="strategy names 'nope', which is no layer with weights"):
        fpq.to_hls(q, tmp_path / "a", torch.zeros(1, 32), strategy={"nope": "Resource"})
    with pytest.raises(ValueError, match="a per-layer strategy is Latency or Resource"):
        fpq.to_hls(q, tmp_path / "b", torch.zeros(1, 32), strategy={"0": "distributed_arithmetic"})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
