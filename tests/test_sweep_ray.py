"""Issue 21: fpq.sweep on Ray. The same 12-point digits sweep on both engines gives the same store
record for record; a SIGKILLed Ray worker's point runs again and every point is stored once; a
driver killed mid-sweep (SIGKILL on the local engine; SIGTERM or SIGKILL on a Ray it started)
resumes without computing a stored point twice, and leaves no process behind.

One local Ray (2 CPUs) serves the whole module (and the resumed sweeps); the killed Ray drivers
start, and must stop, their own."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fpq[ray]' (make install does)")
# psutil: Ray ships it (ray/thirdparty_files, on sys.path once ray is imported)
psutil = pytest.importorskip("psutil", reason="psutil (shipped with Ray) finds the Ray worker processes")

from fpq.data import load_digits_split  # noqa: E402
from fpq.report.sweeping import point_id, read_cache, sweep, top1_accuracy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRID = dict(weights=["int4", "e2m1", "int6"], activations=["int8", "e3m2"], methods=("max", "mse"))  # 12 points
KW = dict(verify_samples=8, verify_qonnx=0, calib_samples=256, progress=False)  # torch == emulator (QONNX: 0.2 s/sample)
COMPARED = ("id", "weights", "activations", "method", "status", "error", "accuracy", "lut", "ff", "dsp", "bram18",
            "latency_cycles", "latency_ns", "ii", "bops", "ebops", "datapath", "exact", "verify_paths", "mismatch")


def _trained():
    torch.manual_seed(0)
    d = load_digits_split()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(d.x_train), d.y_train).backward()
        opt.step()
    return model.eval(), (d.x_train[:512], d.y_train[:512], d.x_test[:150], d.y_test[:150])


SPEC = """
import torch
from torch import nn
from fpq.data import load_digits_split

def model():
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    m.load_state_dict(torch.load({state!r}))
    return m.eval()

def data():
    d = load_digits_split()
    return d.x_train[:512], d.y_train[:512], d.x_test[:150], d.y_test[:150]
"""


@pytest.fixture(scope="module")
def tiny():
    return _trained()


@pytest.fixture(scope="module")
def spec(tiny, tmp_path_factory):
    """A model / data spec file of the same trained MLP (for the `fpq sweep` driver subprocesses)."""
    d = tmp_path_factory.mktemp("spec")
    torch.save(tiny[0].state_dict(), d / "state.pt")
    (d / "tiny.py").write_text(textwrap.dedent(SPEC.format(state=str(d / "state.pt"))))
    return str(d / "tiny.py")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray for the module; its workers import this file (slow_metric) and mark the
    points they run in FPQ_RAY_TEST_MARKS. Its node advertises one unit of fpq_compile, as a
    cluster node that may run HLS builds does (`ray start --resources='{"fpq_compile": 1}'`)."""
    marks = tmp_path_factory.mktemp("marks")
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "FPQ_RAY_TEST_MARKS": str(marks), "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=2, resources={"fpq_compile": 1}, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": env})
    try:
        yield {"address": ray.get_runtime_context().gcs_address, "marks": marks}
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local_store(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    res = sweep(*tiny, **GRID, **KW, out=str(out), engine="local", workers=2)
    return res, _store(out)


def _store(out) -> list:
    """Every complete line of the store, in order (a duplicate key would show here)."""
    lines = Path(out, "cache.jsonl").read_text().splitlines()
    return [json.loads(s) for s in lines if s.strip()]


def _fields(rec: dict) -> dict:
    return {k: rec[k] for k in COMPARED}


def test_both_engines_store_the_same_records(tiny, cluster, local_store, tmp_path):
    local, local_lines = local_store
    res = sweep(*tiny, **GRID, **KW, out=str(tmp_path), engine="ray")
    assert res.computed == 12 and res.meta["engine"] == "ray" and local.meta["engine"] == "local"
    ray_lines = _store(tmp_path)
    assert len(ray_lines) == len(local_lines) == 12
    by_key = {e["key"]: e["record"] for e in local_lines}
    assert set(by_key) == {e["key"] for e in ray_lines}  # same spec hashes: the engine is not part of a point
    for e in ray_lines:
        assert _fields(e["record"]) == _fields(by_key[e["key"]]), e["key"]  # bit-identical floats, == on JSON
        assert e["record"]["status"] == "ok" and e["record"]["exact"] is True
    assert [_fields(r) for r in res.records] == [_fields(r) for r in local.records]
    prog = json.loads((tmp_path / "progress.json").read_text())
    assert (prog["state"], prog["done"], prog["failed"], prog["running"], prog["total"]) == ("finished", 12, 0, 0, 12)


def slow_metric(logits, targets):
    """top-1 accuracy, after marking this worker busy and staying busy long enough to be killed."""
    marks = os.environ.get("FPQ_RAY_TEST_MARKS")
    if marks:
        Path(marks, f"{os.getpid()}-{time.time_ns()}").touch()
        time.sleep(1.5)
    return top1_accuracy(logits, targets)


def test_sigkilled_worker_point_runs_again_and_is_stored_once(tiny, cluster, local_store, tmp_path):
    marks, killed = cluster["marks"], []

    def killer():  # SIGKILL the first Ray worker seen inside a point
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for m in os.listdir(marks):
                pid = int(m.split("-")[0])
                if pid != os.getpid() and "ray::" in " ".join(psutil.Process(pid).cmdline()):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = sweep(*tiny, **dict(GRID, weights=["int4", "e2m1"], methods=("max",)), **KW, out=str(tmp_path),
                engine="ray", metric=slow_metric)
    t.join(5)
    assert killed, "no Ray worker was seen inside a point"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == "zombie"
    lines = _store(tmp_path)
    assert len(lines) == len({e["key"] for e in lines}) == 4 == res.computed  # each point stored exactly once
    local = {r["id"]: r for r in local_store[0].records}
    for r in res.records:
        assert r["status"] == "ok", r["error"]
        assert _fields(r) == _fields(local[r["id"]])  # the retried point's result too
    assert len(os.listdir(marks)) >= 5  # 4 points plus the one that ran again after the kill


class Boom(BaseException):
    """Not an Exception: run_point's own per-step handlers let it through to the engine."""


def boom_metric(logits, targets):
    if os.environ.get("FPQ_RAY_TEST_MARKS"):  # in a Ray worker (the driver's float accuracy runs it too)
        raise Boom("the metric blew up")
    return top1_accuracy(logits, targets)


def test_point_that_raises_is_recorded_and_the_sweep_goes_on(tiny, cluster, tmp_path):
    res = sweep(*tiny, weights=["int4", "int6"], activations=["int8"], methods=("max",), **KW, out=str(tmp_path),
                engine="ray", metric=boom_metric)
    assert [r["status"] for r in res.records] == ["error", "error"]
    assert all(r["error"].startswith("engine: RayTaskError") and "the metric blew up" in r["error"] for r in res.records)
    assert len(_store(tmp_path)) == 2  # recorded ...
    again = sweep(*tiny, weights=["int4", "int6"], activations=["int8"], methods=("max",), **KW, out=str(tmp_path),
                  engine="ray", metric=boom_metric)
    assert again.computed == 2  # ... and tried again on resume: the engine lost it, the point did not fail


def _cli(spec, out, *extra):
    return [sys.executable, "-m", "fpq.cli", "sweep", "--model", f"{spec}:model", "--data", f"{spec}:data",
            "--weights", *GRID["weights"], "--activations", *GRID["activations"], "--methods", *GRID["methods"],
            "--verify-samples", "8", "--verify-qonnx", "0", "--calib-samples", "256", "--no-progress",
            "--out", str(out), *extra]


def _run_until_stored(cmd, out, n, env=None):
    """Start the driver and return it once ``n`` points are stored (it is still running)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **(env or {}))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    cache, deadline = Path(out, "cache.jsonl"), time.time() + 150
    while not (cache.exists() and cache.read_text().count("\n") >= n):
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended early ({proc.returncode}): {proc.stderr.read().decode()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("the sweep stored too few points in time")
        time.sleep(0.1)
    return proc


def _resume_and_check(spec, out, engine, address=None):
    before = {e["key"] for e in _store(out)}
    assert 2 <= len(before) < 12, "the driver was not killed mid-sweep"
    res = sweep(f"{spec}:model", f"{spec}:data", **GRID, **KW, out=str(out), engine=engine, address=address,
                workers=2 if engine == "ray" else 1)  # local: in this process (spawning workers costs ~20 s here)
    lines = _store(out)
    keys = [e["key"] for e in lines]
    assert len(keys) == len(set(keys)) == 12  # nothing stored twice, nothing lost
    assert res.computed == 12 - len(before) and res.meta["cached"] == len(before)
    assert all(r["status"] == "ok" for r in res.records)
    assert {r["id"] for r in res.records} == {point_id(dict(weights=w, activations=a, first_last=None, method=m,
                                                             qat_epochs=0, seed=0))
                                             for w in ["int4", "e2m1", "int6"] for a in ["int8", "e3m2"]
                                             for m in ["max", "mse"]}
    return res


def test_sigkilled_local_driver_resumes_on_ray(spec, cluster, local_store, tmp_path):
    proc = _run_until_stored(_cli(spec, tmp_path, "--engine", "local", "--workers", "2"), tmp_path, 2)
    kids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert json.loads((tmp_path / "progress.json").read_text())["state"] == "running"  # it had no say
    res = _resume_and_check(spec, tmp_path, "ray", cluster["address"])  # the other engine picks it up
    assert not [k for k in kids if psutil.pid_exists(k) and psutil.Process(k).status() != "zombie"]
    local = {r["id"]: _fields(r) for r in local_store[0].records}
    assert {r["id"]: _fields(r) for r in res.records} == local


@pytest.mark.parametrize("sig, resume_on", [(signal.SIGTERM, "local"), (signal.SIGKILL, "ray")])
def test_killed_ray_driver_stops_its_ray_and_resumes(spec, cluster, tmp_path, sig, resume_on):
    """The driver starts its own Ray (no --address). SIGTERM ends it with 143 after it stopped Ray;
    SIGKILL gives it no say: Ray's fate-sharing and fpq's reaper end GCS, raylet, workers and
    agents. Either way no process it started is left, and the other engine (or Ray again)
    finishes the sweep."""
    proc = _run_until_stored(_cli(spec, tmp_path, "--engine", "ray", "--workers", "2"), tmp_path, 2)
    kids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert kids, "the Ray driver started no processes"
    proc.send_signal(sig)
    rc = proc.wait(60)
    assert rc == (143 if sig == signal.SIGTERM else -signal.SIGKILL), proc.stderr.read().decode()[-2000:]
    deadline = time.time() + 30
    alive = kids
    while alive and time.time() < deadline:
        alive = [k for k in kids if psutil.pid_exists(k) and psutil.Process(k).status() != "zombie"]
        time.sleep(0.2)
    assert not alive, f"processes of the killed Ray sweep still run: {[psutil.Process(k).cmdline() for k in alive]}"
    state = json.loads((tmp_path / "progress.json").read_text())["state"]
    assert state == ("interrupted" if sig == signal.SIGTERM else "running")
    _resume_and_check(spec, tmp_path, resume_on, cluster["address"] if resume_on == "ray" else None)


def test_live_report_and_refusals(tiny, tmp_path):
    """A report of a stopped sweep shows the points stored so far and its counts; bad engine /
    address arguments are refused before any work."""
    from fpq.report.html import report
    res = sweep(*tiny, weights=["int4"], activations=["int8"], methods=("max",), **KW, out=str(tmp_path),
                workers=1)
    prog = json.loads((tmp_path / "progress.json").read_text())
    prog.update(state="running", total=5, done=1, running=2, pid=os.getpid())  # as a running driver writes it
    (tmp_path / "progress.json").write_text(json.dumps(prog))
    page = Path(report(str(tmp_path), str(tmp_path / "r"))).read_text()
    assert "sweep running (local engine): 1 done, 0 failed, 2 running of 5 points" in page
    assert res.records[0]["id"] in page
    with pytest.raises(ValueError, match="unknown engine 'dask'; allowed: local, ray"):
        sweep(*tiny, formats=["int4"], out=str(tmp_path / "x"), engine="dask")
    with pytest.raises(ValueError, match="address='auto' is for engine='ray'"):
        sweep(*tiny, formats=["int4"], out=str(tmp_path / "x"), address="auto")
    with pytest.raises(ValueError, match="not a Ray cluster address; allowed: 'auto'"):
        sweep(*tiny, formats=["int4"], out=str(tmp_path / "x"), engine="ray", address="somewhere")
    assert not (tmp_path / "x").exists()
    assert read_cache(str(tmp_path / "cache.jsonl"), context="other") == {}


def test_hls_build_runs_as_a_ray_task_that_holds_the_compile_resource(tiny, cluster, tmp_path):
    """A reuse factor for a layer the model lacks: fpq.to_hls refuses it at once (no compile), so
    this stays fast; the failure is recorded with where the task ran and what it held, and is not
    built again."""
    kw = dict(weights=["int4"], activations=["int8"], methods=("max",), **KW, out=str(tmp_path), engine="ray",
              hls="all", hls_samples=4, hls_options={"reuse_factor": {"no_such_layer": 2}})
    res = sweep(*tiny, **kw)
    (r,) = res.records
    assert r["status"] == "ok" and r["hls_status"] == "error" and r["hls_exact"] is None
    assert r["hls_error"].startswith("ValueError: reuse_factor names 'no_such_layer', which is no layer")
    assert r["hls_where"].startswith("ray on ") and "fpq_compile=1" in r["hls_where"] and "CPU=1" in r["hls_where"]
    assert res.meta["hls"]["built"] == 1
    again = sweep(*tiny, **kw)
    assert again.computed == 0 and again.meta["hls"]["built"] == 0 and again.meta["hls"]["cached"] == 1
    assert [e for e in _store(tmp_path) if "hls" in e][0]["hls"] == {k: r[k] for k in ["id", *again.records[0]]
                                                                    if k == "id" or k.startswith("hls_")}


def test_hls_on_a_cluster_without_the_compile_resource_is_refused_up_front(tiny, cluster, tmp_path, monkeypatch):
    """As if the cluster's nodes did not advertise the resource the builds need: a clear error
    before any point runs, not builds pending forever."""
    from fpq.report import builds
    monkeypatch.setattr(builds, "COMPILE_RESOURCE", "fpq_compile_big")  # no node advertises this one
    t0 = time.time()
    with pytest.raises(ValueError, match=r"needs a node that advertises the custom resource 'fpq_compile_big'.*"
                                         r"ray start \.\.\. --resources="):
        sweep(*tiny, weights=["int4"], activations=["int8"], methods=("max",), **KW, out=str(tmp_path),
              engine="ray", hls="front", hls_samples=4)
    assert time.time() - t0 < 60
    assert not (tmp_path / "cache.jsonl").exists() or _store(tmp_path) == []  # no point ran


HLS_FIELDS = ("hls_exact", "hls_samples", "hls_mismatch", "hls_status", "hls_error")


@pytest.mark.slow
def test_hls_builds_c_sim_the_same_on_both_engines(tiny, cluster, tmp_path):
    """A real build and C-sim of one tiny point on each engine (the local one in the pool of
    compile workers): the same records, exact, stored once."""
    kw = dict(weights=["int4"], activations=["int8"], methods=("max",), **KW, hls="all", hls_samples=8)
    local = sweep(*tiny, **kw, out=str(tmp_path / "local"), workers=1, compile_workers=2)
    on_ray = sweep(*tiny, **kw, out=str(tmp_path / "ray"), engine="ray")
    for res in (local, on_ray):
        (built,) = res.records
        assert built["exact"] is True and built["hls_exact"] is True and built["hls_status"] == "ok", built["hls_error"]
        assert built["hls_seconds"] > 0.5 and built["hls_mismatch"] == ""
    assert [{k: r[k] for k in HLS_FIELDS} for r in local.records] == [{k: r[k] for k in HLS_FIELDS} for r in on_ray.records]
    assert local.records[0]["hls_where"].startswith("local on ") and "fpq_compile=1" in on_ray.records[0]["hls_where"]
    assert str(os.getpid()) not in local.records[0]["hls_where"]  # compile_workers=2: a pool process built it
    for out in ("local", "ray"):
        keys = [e["key"] for e in _store(tmp_path / out)]
        assert len(keys) == len(set(keys)) == 2 and sum("-hls-" in k for k in keys) == 1
