"""Issue 21, HLS builds of a sweep on the local engine (no Ray needed): a SIGTERM of the driver
while g++ compiles a point's project ends the driver with 143 and leaves no compiler running
(hls4ml's build_lib.sh shell and its g++ would otherwise be re-parented and compile on), and a
built point's command rebuilds its HLS project too."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from fpq.report import proctree
from fpq.report.builds import HlsPlan, rebuild_commands

ROOT = Path(__file__).resolve().parents[1]
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process tree is read from /proc")

SPEC = """
import torch
from torch import nn

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()

def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 8, generator=g)
    y = torch.randint(0, 4, (96,), generator=g)
    return x[:64], y[:64], x[64:], y[64:]
"""


@pytest.fixture()
def spec(tmp_path):
    p = tmp_path / "tiny.py"
    p.write_text(textwrap.dedent(SPEC))
    return str(p)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@LINUX
@pytest.mark.parametrize("compile_workers", [1, pytest.param(2, marks=pytest.mark.full)])
def test_sigterm_during_a_build_leaves_no_compiler_running(spec, tmp_path, compile_workers):
    """compile_workers=1: the build runs in the driver; 2: in a pool process. Either way SIGTERM
    while the compiler runs ends the sweep with 143, state "interrupted", and every process the
    driver had started (pool worker, shell, g++, cc1plus) is gone."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fpq.cli", "sweep", "--model", f"{spec}:model", "--data", f"{spec}:data",
           "--weights", "int8", "--activations", "int8", "--methods", "max", "--verify-samples", "4",
           "--verify-qonnx", "0", "--calib-samples", "64", "--no-progress", "--workers", "1", "--hls", "all",
           "--hls-samples", "4", "--compile-workers", str(compile_workers), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, below = time.time() + 240, {}
        while not any(_comm(p) in ("cc1plus", "g++") for p in below):
            assert proc.poll() is None, f"the sweep ended before its build compiled: {proc.stderr.read().decode()[-3000:]}"
            assert time.time() < deadline, "no compiler started in time"
            time.sleep(0.05)
            below = proctree.descendants([proc.pid])
        time.sleep(0.3)  # the compile well under way
        below.update(proctree.descendants([proc.pid]))
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 143, proc.stderr.read().decode()[-3000:]
    deadline, alive = time.time() + 15, below
    while alive and time.time() < deadline:  # SIGKILLed ones are gone at once; give the reaping a moment
        tab = proctree.table()
        alive = {p: s for p, s in below.items() if tab.get(p, (None, None))[1] == s
                 and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}
        time.sleep(0.1)
    assert not alive, f"still running after SIGTERM: {[(p, _comm(p)) for p in alive]}"
    assert json.loads((out / "progress.json").read_text())["state"] == "interrupted"


def test_a_built_points_command_rebuilds_its_hls_project():
    plan = HlsPlan("front", 8)
    cmd, py = "fpq sweep --model m.py:model --only abc", "fpq.sweep('m.py:model', only=['abc'])"
    got = rebuild_commands(cmd, py, plan)
    assert got == {"command": cmd + " --hls all --hls-samples 8",
                   "python": "fpq.sweep('m.py:model', only=['abc'], hls='all', hls_samples=8)"}
    # hls_options have no command-line flags: only the Python call can rebuild that project
    got = rebuild_commands(cmd, py, HlsPlan("all", 4, {"io_type": "io_stream"}))
    assert got["command"] == "" and got["python"].endswith(", hls='all', hls_samples=4, hls_options={'io_type': "
                                                           "'io_stream'})")


def test_sweep_records_carry_the_rebuild_command(spec, tmp_path):
    """A build refused at once (a reuse factor for a layer the model lacks: no compile) is still
    a built point: its record's Python call names the HLS settings, a plain point's does not."""
    from fpq.report.sweeping import sweep
    kw = dict(weights=["int8"], activations=["int8", "int4"], methods=("max",), verify_samples=4, verify_qonnx=0,
              calib_samples=64, progress=False, out=str(tmp_path), workers=1, hls="all", hls_samples=4,
              hls_options={"reuse_factor": {"no_such_layer": 2}})
    res = sweep(f"{spec}:model", f"{spec}:data", **kw)
    assert len(res.records) == 2
    for r in res.records:
        assert r["hls_status"] == "error" and "no_such_layer" in r["hls_error"]
        assert r["python"].endswith(f"only=[{r['id']!r}], hls='all', hls_samples=4, "
                                    "hls_options={'reuse_factor': {'no_such_layer': 2}})")
        assert r["command"] == ""  # hls_options: not expressible as flags


@LINUX
def test_proctree_finds_and_kills_grandchildren():
    """The helper the sweep relies on: a shell's background child is found below us and killed."""
    sh = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    try:
        deadline = time.time() + 10
        while not any(_comm(p) == "sleep" for p in proctree.descendants([sh.pid])):
            assert time.time() < deadline
            time.sleep(0.05)
        sleep = [p for p in proctree.descendants([sh.pid]) if _comm(p) == "sleep"]
        assert proctree.kill_below([sh.pid]) == 1
        sh.wait(10)  # its only child died (and was reaped by the shell): the shell's wait returns
        assert not set(sleep) & set(proctree.table())
    finally:
        if sh.poll() is None:
            sh.kill()
