"""``fpq rtl``: writes to_rtl's Verilog of a QONNX model, prices it (the estimate's latency is the
Verilog's), places and routes it when nextpnr-ecp5 is installed; bad options are one error line
before any file is written."""
from __future__ import annotations

import json

import pytest
import torch

import fpq
from fpq.cli import main
from fpq.rtl import ToolMissingError
from fpq.rtl.pnr import nextpnr_cmd


@pytest.fixture(scope="module")
def onnx(tmp_path_factory):
    torch.manual_seed(0)
    q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)), fmt="int4")
    fpq.calibrate(q, [torch.randn(64, 3)], progress=False)
    path = tmp_path_factory.mktemp("m") / "m.onnx"
    fpq.export_qonnx(q.eval(), str(path), torch.zeros(1, 3))
    return str(path)


def _pnr_available() -> bool:
    try:
        nextpnr_cmd()
        return True
    except ToolMissingError:
        return False


def test_rtl_writes_verilog_and_prices_it(onnx, tmp_path, capsys):
    extra = ["--pnr", "--part", "LFE5U-25F"] if _pnr_available() else []
    argv = ["rtl", onnx, "--out", str(tmp_path / "o"), "--pipeline-every", "2", "--estimate", "--json"]
    assert main(argv + extra) == 0
    res = json.loads(capsys.readouterr().out)
    assert "module fpq_net(" in (tmp_path / "o" / "fpq_net.v").read_text()
    assert res["latency"] == res["estimate"]["latency"] > 0 and res["estimate"]["ff"] > 0
    assert (res["inputs"], res["outputs"], res["pipeline_every"]) == (3, 2, 2)
    if extra:
        assert res["pnr"]["fmax_mhz"] > 0 and res["pnr"]["latency"] == res["latency"]
    # a second run into the same folder needs --overwrite
    assert main(["rtl", onnx, "--out", str(tmp_path / "o")]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv, msg", [(["--pipeline-every", "-1"], "--pipeline-every"),
                                       (["--top", "9x"], "Verilog identifier"), (["--simulate", "-3"], "--simulate"),
                                       (["--freq", "0"], "--freq")])
def test_bad_options_are_one_line_before_any_file(onnx, tmp_path, capsys, argv, msg):
    assert main(["rtl", onnx, "--out", str(tmp_path / "o")] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fpq rtl: error: ") and msg in err[0]
    assert not (tmp_path / "o").exists()


def test_pnr_without_the_tool_names_the_extra(onnx, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FPQ_NEXTPNR_ECP5", str(tmp_path / "no-nextpnr"))
    assert main(["rtl", onnx, "--out", str(tmp_path / "o"), "--pnr"]) == 2
    assert "pip install 'fpq[pnr]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_model_is_one_line(tmp_path, capsys):
    assert main(["rtl", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("fpq rtl: error: ")
