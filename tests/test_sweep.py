"""fpq.sweep on a tiny MLP: grid, determinism, cache resume, parallel == serial, error cases."""
from __future__ import annotations

import copy
import csv
import importlib
import json
import os

import pytest
import torch
from torch import nn

import fpq
from fpq.data import load_digits_split
from fpq.report import grid, minifloat_splits, point_id
from fpq.report.records import TABLE_COLUMNS
from fpq.report.sweeping import read_cache, sweep

sweep_mod = importlib.import_module("fpq.report.sweeping")  # the module (monkeypatched below)


@pytest.fixture(scope="module")
def tiny():
    """A small trained MLP on the digits (8x8 images) and a trimmed split (fast points)."""
    torch.manual_seed(0)
    d = load_digits_split()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(d.x_train), d.y_train).backward()
        opt.step()
    model.eval()
    data = (d.x_train[:512], d.y_train[:512], d.x_test[:150], d.y_test[:150])
    return model, data


KW = dict(methods=("max",), workers=1, verify_samples=8, progress=False, calib_samples=256, verify_qonnx=2)


def _strip(records):
    """Records without the timing and the commands (they name the output folder)."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "command", "python")} for r in records]


def test_grid_lists_every_split():
    assert minifloat_splits(4) == ["e1m2", "e2m1"]
    assert minifloat_splits(8) == ["e1m6", "e2m5", "e3m4", "e4m3", "e5m2", "e6m1"]
    g = grid(range(3, 9), ("int", "minifloat"))
    assert len(g) == 6 + sum(b - 2 for b in range(3, 9))  # int3..8 and 1+2+...+6 splits
    assert len(set(g)) == len(g) and all(str(fpq.parse_format(s)) == s for s in g)
    assert grid([6], ("fixed",), fixed_int_bits=2) == ["fixed<6,2,RND_CONV,SAT>"]
    with pytest.raises(ValueError, match="unknown kind.*allowed: int, minifloat, fixed"):
        grid([4], ("float",))
    with pytest.raises(ValueError, match="bit widths"):
        grid([1, 4])


def test_sweep_records_deterministic_and_tidy(tiny, tmp_path):
    model, data = tiny
    a = sweep(model, data, weights=["fp4", "int4"], activations=["int8"], out=str(tmp_path / "a"), seed=3, **KW)
    b = sweep(model, data, weights=["fp4", "int4"], activations=["int8"], out=str(tmp_path / "b"), seed=3, **KW)
    assert a.computed == b.computed == 2
    assert _strip(a.records) == _strip(b.records)
    r0 = a.records[0]
    assert (r0["weights"], r0["activations"], r0["family"]) == ("e2m1", "int8", "mixed")  # alias -> canonical
    for r in a.records:
        assert r["status"] == "ok", r["error"]
        assert r["exact"] is True and "torch" in r["verify_paths"] and "qonnx" in r["verify_paths"]
        assert 0 <= r["accuracy"] <= 100 and r["lut"] > 0 and r["latency_ns"] > 0
        assert r["id"] == point_id(r) and "only=[" in r["python"]
    # accuracy is the metric on the held-out split, recomputed here independently
    q = fpq.convert(model, weights="int4", activations="int8")
    fpq.calibrate(q, [data[0][:256]], method="max", progress=False)
    with torch.no_grad():
        acc = 100.0 * float((q(data[2]).argmax(1) == data[3]).double().mean())
    assert a.records[1]["accuracy"] == acc
    with open(a.csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and tuple(rows[0]) == TABLE_COLUMNS  # the HLS fields empty: none built
    assert json.load(open(a.json_path))["records"][1]["weights"] == "int4"
    assert a.meta["float_accuracy"] > 80  # the tiny model learned something


def test_resume_recomputes_only_missing_points(tiny, tmp_path, monkeypatch):
    model, data = tiny
    out = str(tmp_path / "s")
    fmts = dict(weights=["int4", "e2m1"], activations=["int4", "e3m2"], out=out)
    ids = [point_id(dict(weights=w, activations=a, first_last=None, method="max", qat_epochs=0, seed=0))
           for w in fmts["weights"] for a in fmts["activations"]]
    first = sweep(model, data, only=ids[:2], **fmts, **KW)  # "killed" after two points
    assert first.computed == 2 and len(read_cache(os.path.join(out, "cache.jsonl"))) == 2
    with open(os.path.join(out, "cache.jsonl"), "a") as f:
        f.write('{"key": "' + ids[2] + '-trunc", "record": {"id": ')  # a line cut short by the kill
    calls = []
    real = sweep_mod.run_point

    def counting(model, data, cfg, st, metric):
        calls.append(point_id(cfg))
        return real(model, data, cfg, st, metric)

    monkeypatch.setattr(sweep_mod, "run_point", counting)
    full = sweep(model, data, **fmts, **KW)
    assert sorted(calls) == sorted(ids[2:])          # cached points are not recomputed
    assert full.computed == 2 and full.meta["cached"] == 2
    assert _strip(full.records[:2]) == _strip(first.records)
    calls.clear()
    again = sweep(model, data, **fmts, **KW)
    assert calls == [] and again.computed == 0
    # a changed model invalidates the cache (the key hashes the weights too)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[1].weight.mul_(0.5)
    sweep(other, data, only=ids[:1], **fmts, **KW)
    assert calls == ids[:1]
    # so does other fpq code (a cached point of an older cost model is not reused)
    calls.clear()
    monkeypatch.setattr(sweep_mod, "source_hash", lambda: "other code")
    sweep(model, data, only=ids[1:2], **fmts, **KW)
    assert calls == ids[1:2]


@pytest.mark.slow
def test_parallel_workers_match_serial(tiny, tmp_path):
    model, data = tiny
    kw = dict(KW, workers=2)
    par = sweep(model, data, weights=["int3", "e2m2"], activations=["int6"], out=str(tmp_path / "p"), **kw)
    ser = sweep(model, data, weights=["int3", "e2m2"], activations=["int6"], out=str(tmp_path / "s"), **KW)
    assert par.computed == 2 and _strip(par.records) == _strip(ser.records)


def _no_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a point ran although the input was bad")
    monkeypatch.setattr(sweep_mod, "run_point", boom)


def test_bad_input_fails_before_any_work(tiny, tmp_path, monkeypatch):
    model, data = tiny
    _no_work(monkeypatch)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="empty grid: no entries for weights, activations"):
        sweep(model, data, formats=[], out=str(out), **KW)
    with pytest.raises(ValueError, match="empty grid: no entries for methods"):
        sweep(model, data, formats=["int4"], out=str(out), **dict(KW, methods=()))
    with pytest.raises(ValueError, match=r"invalid format entries in weights: \[1\] 'e9m9x'.*\[2\] 'int0'"):
        sweep(model, data, weights=["int4", "e9m9x", "int0"], activations=["int4"], out=str(out), **KW)
    with pytest.raises(ValueError, match="unknown calibration method.*allowed: max, percentile, mse"):
        sweep(model, data, formats=["int4"], out=str(out), **dict(KW, methods=("minmax",)))
    with pytest.raises(ValueError, match="--only ids \\['nope'\\] are not points"):
        sweep(model, data, formats=["int4"], only="nope", out=str(out), **KW)
    with pytest.raises(TypeError, match="data must have x_train"):
        sweep(model, {"x": 1}, formats=["int4"], out=str(out), **KW)

    class Gated(nn.Module):  # LSTM: not a layer the pipeline takes
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(8, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x.reshape(-1, 8, 8))[0][:, -1]

    with pytest.raises(ValueError, match="cannot go through the fpq pipeline \\(convert failed"):  # LSTM, or its slicing
        sweep(Gated(), data, formats=["int4"], out=str(out), **KW)
    unpicklable = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    unpicklable.hook = lambda x: x
    with pytest.raises(ValueError, match="picklable"):
        sweep(unpicklable, data, formats=["int4"], out=str(out), **dict(KW, workers=2))
    assert not out.exists()  # nothing was started, not even the output folder


def test_first_last_override_and_qat(tiny, tmp_path):
    model, data = tiny
    res = sweep(model, data, weights=["int3"], activations=["int3"], first_last=["int8"], qat_epochs=1,
                out=str(tmp_path / "fl"), **KW)
    (r,) = res.records
    assert r["status"] == "ok" and r["exact"] is True and r["first_last"] == "int8" and r["qat_epochs"] == 1
    assert (res.meta["first_layer"], res.meta["last_layer"]) == ("1", "3")
    st = sweep_mod.Settings(first_layer="1", last_layer="3", calib_samples=256)
    cfg = {k: r[k] for k in ("weights", "activations", "first_last", "method", "qat_epochs", "seed")}
    q = sweep_mod.build_point(model, cfg, st, sweep_mod.as_sweep_data(data))
    layers = q.fpq_policy.layers
    assert layers["1"]["weights"] == layers["3"]["activations"] == "int8" and q.fpq_policy.inputs == "int8"
    assert sweep_mod.evaluate(q, data[2], data[3], sweep_mod.top1_accuracy) == r["accuracy"]  # QAT is seeded


def test_cli_report_and_sweep_errors(tiny, tmp_path, capsys):
    from fpq.cli import main
    model, data = tiny
    sweep(model, data, weights=["int4"], activations=["int4"], out=str(tmp_path / "r"), **KW)
    assert main(["report", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").exists() and "report:" in capsys.readouterr().out
    assert main(["sweep", "--model", "no_such_file.py:f", "--formats", "int4", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_profile_records_measured_inference(tiny, tmp_path):
    """With profile=..., each point carries its measured float and fake-quant throughput."""
    model, data = tiny
    res = sweep(model, data, weights=["int4"], activations=["int8"], out=str(tmp_path / "p"),
                profile={"device": "cpu", "batch": 8, "warmup": 1, "iters": 2}, **KW)
    (rec,) = res.records
    assert rec["status"] == "ok", rec["error"]
    assert rec["float_inf_per_s"] > 0 and rec["fake_quant_inf_per_s"] > 0 and rec["profile_device"]


def test_first_and_last_layers_are_weight_layers_not_a_kept_batchnorm():
    """A BatchNorm kept element-wise records weight formats (its per-channel scale) but is not the
    "first layer" of a first/last override."""
    import torch
    from torch import nn

    import fpq
    from fpq.report.sweeping import _layer_names

    m = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU(),
                      nn.BatchNorm1d(2)).eval()
    q = fpq.convert(m, fmt="int8")
    assert {"0", "5"} <= {n for n, f in q.fpq_policy.layers.items() if "weights" in f}
    assert _layer_names(q) == ("1", "3")
    assert torch.isfinite(q(torch.randn(4, 8))).all()
