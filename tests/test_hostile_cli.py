"""Issue #15, the command line and the sweep tried as a hostile or careless user would:
pickles do not run without --trust-pickle (item 9), the report escapes every value and forged
cache / result records are refused (item 10), every bad input is one ``fpq CMD: error:`` line
with exit 2 (item 13), and a killed sweep leaves no worker behind (item 15)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from fpq.cli import main
from fpq.report import grid
from fpq.report.grid import describe
from fpq.report.sweeping import SweepResult, load_results, load_spec, read_cache, sweep
from fpq.report.html import report


# ----------------------------------------------------------------------------- item 13: the CLI rule
def _run(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def _one_error_line(capsys, cmd, *argv, match=None):
    rc, err = _run(capsys, cmd, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"fpq {cmd}: error: "), (rc, err)
    if match:
        assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(os.urandom(64) + b"\x00\xff" * 40)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")  # parses as an empty ModelProto
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    return {"corrupt": str(corrupt), "empty": str(empty), "dir": str(folder), "missing": str(tmp_path / "no.onnx")}


def test_the_four_reported_cases(capsys, bad_files, tmp_path):
    out = tmp_path / "never.onnx"
    _one_error_line(capsys, "info", "fixed<8,100000>", match="float64")
    _one_error_line(capsys, "convert", "/etc/passwd:Net", "--out", str(out), match="not a .py file")
    _one_error_line(capsys, "verify", bad_files["missing"], match="does not exist")
    _one_error_line(capsys, "verify", bad_files["corrupt"], match="not an ONNX model file")
    assert not out.exists()


@pytest.mark.parametrize("cmd,extra", [("verify", []), ("cost", []), ("export", []), ("hls", ["--out", "HLSOUT"]),
                                       ("rtl", ["--out", "HLSOUT"])])
def test_qonnx_commands_refuse_bad_files(capsys, bad_files, tmp_path, cmd, extra):
    extra = [str(tmp_path / "hls") if e == "HLSOUT" else e for e in extra]
    _one_error_line(capsys, cmd, bad_files["missing"], *extra, match="does not exist")
    _one_error_line(capsys, cmd, bad_files["dir"], *extra, match="is a directory")
    _one_error_line(capsys, cmd, bad_files["corrupt"], *extra, match="not an ONNX model file")
    _one_error_line(capsys, cmd, bad_files["empty"], *extra, match="not a valid ONNX model")
    assert not (tmp_path / "hls").exists()  # refused before any file is written


def test_convert_profile_sweep_report_refuse_bad_input(capsys, tmp_path):
    out = tmp_path / "never.onnx"
    src = tmp_path / "m.py"
    src.write_text("import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Linear(64, 10))\n")
    (tmp_path / "dir.py").mkdir()
    _one_error_line(capsys, "convert", str(tmp_path / "nope.py") + ":Net", "--out", str(out), match="does not exist")
    _one_error_line(capsys, "convert", "no_such_pkg.mod:Net", "--out", str(out), match="no module named")
    _one_error_line(capsys, "convert", str(tmp_path / "dir.py") + ":Net", "--out", str(out))
    _one_error_line(capsys, "convert", f"{src}:make", "--fmt", "e9m9x", "--out", str(out), match="Accepted forms")
    _one_error_line(capsys, "convert", f"{src}:make", "--fmt", "int8", "--calib", str(tmp_path),
                    "--out", str(out), match="is a directory")
    _one_error_line(capsys, "convert", f"{src}:make", "--fmt", "int8", "--input-shape", "8,x",
                    "--out", str(out), match="--input-shape")
    _one_error_line(capsys, "convert", f"{src}:make", "--fmt", "int8", "--state", str(tmp_path / "w.pt"),
                    "--out", str(out), match="does not exist")
    assert not out.exists()
    _one_error_line(capsys, "profile", str(tmp_path / "missing.pt"))
    _one_error_line(capsys, "profile", "/etc/passwd", match="not a torch.save file")
    _one_error_line(capsys, "sweep", "--model", "/etc/passwd:Net", "--formats", "int4", "--out", str(tmp_path / "s"))
    _one_error_line(capsys, "sweep", "--model", f"{src}:make", "--formats", "e9m9x", "--out", str(tmp_path / "s"),
                    match="e9m9x")
    _one_error_line(capsys, "report", str(tmp_path / "missing"))
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    _one_error_line(capsys, "report", str(bad), match="not a JSON file")
    _one_error_line(capsys, "info", "e9m9x", match="Accepted forms")
    _one_error_line(capsys, "info", "fixed<100000,8>")


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("fpq convert: error: ")


def test_internal_bug_is_told_apart(capsys, monkeypatch):
    """A bug (not bad input) exits 1 with one line pointing at FPQ_DEBUG; FPQ_DEBUG=1 shows it."""
    from fpq.cli import formats

    def buggy(args):
        return {}["no such key"]

    monkeypatch.setattr(formats, "run", buggy)
    rc, err = _run(capsys, "formats")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("fpq formats: internal error") and "KeyError" in err and "FPQ_DEBUG=1" in err
    monkeypatch.setenv("FPQ_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["formats"])


# ----------------------------------------------------------------------------- item 9: pickles
class _Evil:
    """Unpickling this creates a folder: stands for any code a pickle may run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_model_runs_nothing_without_trust_pickle(tmp_path, capsys):
    marker = str(tmp_path / "pwned")
    evil = tmp_path / "model.pt"
    torch.save(_Evil(marker), evil)
    with pytest.raises(ValueError, match="--trust-pickle"):
        load_spec(str(evil))
    assert _run(capsys, "profile", str(evil))[0] == 2
    _one_error_line(capsys, "sweep", "--model", str(evil), "--formats", "int4", "--out", str(tmp_path / "s"),
                    match="--trust-pickle")
    assert not os.path.exists(marker)
    # a state dict is tensors only: read safely, and refused as not being a model
    sd = tmp_path / "sd.pt"
    torch.save(nn.Linear(3, 2).state_dict(), sd)
    with pytest.raises(ValueError, match="not a model"):
        load_spec(str(sd))
    # with the flag a whole model loads (the user vouches for the file)
    whole = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Linear(3, 2)), whole)
    assert isinstance(load_spec(str(whole), trust_pickle=True), nn.Sequential)
    for cmd in ("sweep", "profile"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--trust-pickle" in text and "can run any code" in text


# ----------------------------------------------------------------------------- item 10: report and records
def _records(n=6):
    fmts = grid([4, 5], ("int", "minifloat"))
    out = []
    for i in range(n):
        w, a = fmts[i % len(fmts)], fmts[(2 * i + 1) % len(fmts)]
        (wk, wb), (ak, ab) = describe(w), describe(a)
        out.append({"id": f"p{i:03d}", "weights": w, "activations": a, "first_last": None, "method": "max",
                    "family": wk if wk == ak else "mixed", "w_kind": wk, "w_bits": wb, "a_kind": ak, "a_bits": ab,
                    "accuracy": 90.0 - i, "lut": 1000.0 * (i + 1), "dsp": i, "latency_ns": 5.0, "exact": True,
                    "verify_samples": 8, "verify_paths": "emulator+torch+qonnx", "status": "ok", "error": "",
                    "command": "", "python": ""})
    return out


XSS = "<script>alert(1)</script>"


def test_report_escapes_every_meta_value(tmp_path):
    meta = {"float_accuracy": 97.5, "metric": XSS, "n_test": XSS, "seconds": 1.0, "workers": XSS,
            "computed": XSS, "cached": XSS, "seed": XSS, "first_layer": XSS, "last_layer": XSS}
    page = report(SweepResult(_records(), meta, "", "", "", 0), str(tmp_path / "r"))
    text = open(page, encoding="utf-8").read()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_forged_results_file_is_refused(tmp_path, capsys):
    page = report(_records(), str(tmp_path / "r"))
    folder = os.path.dirname(page)
    path = os.path.join(folder, "results.json")
    good = json.load(open(path))
    forgeries = [({"exact": "yes"}, "exact"), ({"lut": -1}, "lut"), ({"weights": "e9m9x"}, "weights"),
                 ({"w_bits": 64}, "w_bits"), ({"status": "error"}, "exact"), ({"verify_paths": None}, "exact"),
                 ({"dsp": float("inf")}, "dsp"), ({"owner": XSS}, "owner")]
    for change, field in forgeries:
        obj = json.loads(json.dumps(good))
        obj["records"][3].update(change)
        json.dump(obj, open(path, "w"))
        with pytest.raises(ValueError, match=rf"records\[3\].*field '{field}'"):
            load_results(path)
    obj = json.loads(json.dumps(good))
    obj["meta"]["workers"] = XSS
    json.dump(obj, open(path, "w"))
    _one_error_line(capsys, "report", path, match="meta field 'workers'")
    csv_path = os.path.join(folder, "results.csv")
    lines = open(csv_path).read().splitlines()
    header = lines[0].split(",")
    cells = lines[2].split(",")
    cells[header.index("exact")] = "yes"
    open(csv_path, "w").write("\n".join([lines[0], lines[1], ",".join(cells), *lines[3:]]) + "\n")
    with pytest.raises(ValueError, match="line 3 .*field 'exact'"):
        load_results(csv_path)


@pytest.fixture(scope="module")
def small():
    from fpq.data import load_digits_split
    torch.manual_seed(0)
    d = load_digits_split()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    return model, (d.x_train[:128], d.y_train[:128], d.x_test[:32], d.y_test[:32])


def test_forged_cache_line_is_recomputed(small, tmp_path):
    model, data = small
    kw = dict(weights=["int4"], activations=["int6"], methods=("max",), workers=1, verify_samples=2,
              verify_qonnx=0, calib_samples=64, progress=False, out=str(tmp_path / "s"))
    honest = sweep(model, data, **kw)
    (rec,) = honest.records
    assert rec["exact"] is True and rec["status"] == "ok"
    cache = tmp_path / "s" / "cache.jsonl"
    entry = json.loads(cache.read_text())
    forgeries = [({"exact": "yes"}, "exact"), ({"accuracy": XSS}, "accuracy"), ({"lut": -3}, "lut"),
                 ({"weights": "int5", "w_bits": 5}, "id"), ({"verify_samples": 0}, "exact"), ({"method": "magic"}, "method")]
    for change, field in forgeries:
        forged = dict(entry, record=dict(entry["record"], **change))
        cache.write_text(json.dumps({"key": "x-y", "record": {}}) + "\n" + json.dumps(forged) + "\n")
        with pytest.warns(UserWarning, match=rf"line 2 is not a record fpq.sweep wrote \(field '{field}'"):
            assert read_cache(str(cache)) == {}
    # the sweep does not take a forged line: it warns, recomputes the point and records the truth
    forged = dict(entry, record=dict(entry["record"], exact="yes", accuracy=100.0))
    cache.write_text(json.dumps(forged) + "\n")
    with pytest.warns(UserWarning, match="line 1 .*field 'exact'"):
        again = sweep(model, data, **kw)
    assert again.computed == 1 and again.records[0]["exact"] is True
    assert again.records[0]["accuracy"] == rec["accuracy"]


# ----------------------------------------------------------------------------- item 15: a killed sweep
def _stat(pid: int):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])  # state, parent pid


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if _stat(int(d))[1] == pid:
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _alive(pid: int) -> bool:
    try:
        return _stat(pid)[0] not in ("Z", "X")  # a zombie has ended (only its exit status is left)
    except (OSError, ValueError, IndexError):
        return False


SCRIPT = """
import os, sys, time
import torch
from torch import nn
import fpq
from fpq.data import load_digits_split

def slow_metric(logits, targets):  # runs in the workers: mark that this one is busy, then stay busy
    open(os.path.join(sys.argv[2], str(os.getpid())), "w").close()
    time.sleep(120)
    return 0.0

if __name__ == "__main__":
    torch.manual_seed(0)
    d = load_digits_split()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    fpq.sweep(model, (d.x_train[:64], d.y_train[:64], d.x_test[:16], d.y_test[:16]), weights=["int4", "int5"],
              activations=["int8"], methods=("max",), workers=2, verify_samples=0, progress=False,
              calib_samples=64, metric=slow_metric, out=sys.argv[1])
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads processes from /proc (Linux)")
def test_killed_sweep_leaves_no_worker_alive(tmp_path):
    script = tmp_path / "run_sweep.py"
    script.write_text(textwrap.dedent(SCRIPT))
    marks = tmp_path / "busy"
    marks.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(marks)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kids = []
    try:
        deadline = time.time() + 240
        while len(os.listdir(marks)) < 2:  # both workers are inside a point
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the sweep's workers did not start"
            time.sleep(0.2)
        kids = _children(proc.pid)
        workers = {int(p) for p in os.listdir(marks)}
        assert workers <= set(kids)  # the workers and the resource tracker
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while any(_alive(k) for k in kids) and time.time() < deadline:
            time.sleep(0.1)
        assert not [k for k in kids if _alive(k)], "processes of the killed sweep are still running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in kids:  # do not leave them behind when the test fails
            if _alive(k):
                os.kill(k, signal.SIGKILL)
