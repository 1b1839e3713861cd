"""Issue 15, items 6-8: an HLS project's path cannot become code, a project is independent of
where it was built (moved / copied projects predict the same bits, nothing calls exit() in the
Python process), and fpq.to_hls deletes only files it wrote.

One project is compiled (module fixture); the overwrite and refusal checks run without a compile
(refused before it, or with hls4ml's compile step replaced by a copy of that project's library).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.hls import load_project

ROOT = Path(__file__).resolve().parent.parent


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    q = fpq.convert(_mlp(), fmt="int8")
    x = torch.randn(128, 8, generator=torch.Generator().manual_seed(1)) * 2
    fpq.calibrate(q, [x], progress=False)
    q.eval()
    path = str(tmp_path_factory.mktemp("hostile_model") / "int8.onnx")
    fpq.export_qonnx(q, path, x[:1])
    return path


@pytest.fixture(scope="module")
def built(onnx_path, tmp_path_factory):
    """The one compiled project: (project, probe inputs, its C-sim output)."""
    proj = fpq.to_hls(onnx_path, tmp_path_factory.mktemp("hostile_built") / "prj")
    x = (np.random.default_rng(3).standard_normal((400, 8)) * 3).astype(np.float32)
    y = proj.predict(x)
    assert np.unique(y).size > 8
    return proj, x, y


@pytest.fixture
def no_compile(monkeypatch):
    """hls4ml's write / compile must not be reached (a refusal comes before them)."""
    from hls4ml.model.graph import ModelGraph

    def boom(self):
        raise AssertionError("to_hls went on to write / compile a project it should have refused")

    monkeypatch.setattr(ModelGraph, "write", boom)
    monkeypatch.setattr(ModelGraph, "_compile", boom)


@pytest.fixture
def fake_compile(built, monkeypatch):
    """hls4ml's compile step replaced by a copy of the built project's library (same model, so
    the same bits): overwrite rules are checked without running g++ again."""
    import ctypes

    from hls4ml.model.graph import ModelGraph

    proj = built[0]
    lib = proj.outdir / "firmware" / proj.info["library"]

    def compile_by_copy(self):
        out = Path(self.config.get_output_dir())
        dst = out / "firmware" / f"{self.config.get_project_name()}-{self.config.get_config_value('Stamp')}.so"
        shutil.copy2(lib, dst)
        self._top_function_lib = ctypes.cdll.LoadLibrary(str(dst))

    monkeypatch.setattr(ModelGraph, "_compile", compile_by_copy)


# ---------------------------------------------------------------- item 6: the path is not code

PAYLOAD = 'x") + std::to_string(system("touch PWNED")) + std::string("'


@pytest.mark.parametrize("name", [PAYLOAD, "a'b", 'a"b', "a\\b", "a\nb", "a\tb", "a$b", "a`b", "a;b", "a b", "a|b",
                                  "a*b", "a\x7fb"],
                         ids=["payload", "quote1", "quote2", "backslash", "newline", "tab", "dollar", "backtick",
                              "semicolon", "space", "pipe", "star", "del"])
def test_outdir_characters_that_break_out_are_refused_before_anything_is_written(onnx_path, tmp_path, monkeypatch,
                                                                                  no_compile, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"holds the character .* allowed: letters, digits and") as err:
        fpq.to_hls(onnx_path, tmp_path / "sub" / name)
    assert repr(next(c for c in name if not (c.isalnum() or c in "/._-+@,=~:"))) in str(err.value)
    assert list(tmp_path.iterdir()) == [], "a refused path must leave no file"


def test_breakout_character_in_a_parent_folder_is_refused(onnx_path, tmp_path, no_compile):
    parent = tmp_path / "we$ird"
    parent.mkdir()
    with pytest.raises(ValueError, match=r"character '\$'"):
        fpq.to_hls(onnx_path, parent / "prj")
    assert list(parent.iterdir()) == []


@pytest.mark.slow  # uses the compiled project
def test_project_holds_no_build_path_and_no_exit(built):
    """Weights compiled in (no weight text files read at run time), no file names the folder the
    project was built in or moved to, and the C-sim library imports no exit / abort."""
    proj = built[0]
    out = proj.outdir
    assert not list((out / "firmware" / "weights").glob("*.txt"))
    assert "WEIGHTS_DIR" not in (out / "build_lib.sh").read_text()
    needles = [str(out).encode(), str(out.parent).encode()]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 20
    for f in files:
        data = f.read_bytes()
        assert not any(n in data for n in needles), f"{f.relative_to(out)} holds the build path"
    assert "OutputDir: .\n" in (out / "hls4ml_config.yml").read_text()
    nm = shutil.which("nm")
    if nm is not None:  # binutils come with g++; the check is only skipped where it cannot run
        syms = subprocess.run([nm, "-D", "--undefined-only", str(out / "firmware" / proj.info["library"])],
                              capture_output=True, text=True, check=True).stdout.split()
        ends = {"exit", "_exit", "_Exit", "abort", "quick_exit", "system", "popen"}
        assert not ends & {s.split("@")[0] for s in syms}, "the C-sim library can end the Python process"


# ---------------------------------------------------------------- item 8: nothing is deleted

def test_non_empty_folder_is_refused_without_overwrite(onnx_path, tmp_path, no_compile):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "fpq_project.json").write_text("{}")  # a file of that name makes nothing fpq's
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True"):
        fpq.to_hls(onnx_path, out)
    assert sorted(p.name for p in out.iterdir()) == ["fpq_project.json", "notes.txt"]


def test_overwrite_never_replaces_files_no_manifest_lists(onnx_path, tmp_path, monkeypatch):
    """A folder with a stray fpq_project.json (no manifest) and the user's files: overwrite=True
    refuses (it would replace fpq_project.json) and deletes nothing."""
    from hls4ml.model.graph import ModelGraph

    # write() may run here (into a temporary sibling); the compile must not
    monkeypatch.setattr(ModelGraph, "_compile", lambda self: pytest.fail("compiled despite a conflict"))
    out = tmp_path / "mine"
    (out / "firmware").mkdir(parents=True)
    (out / "firmware" / "mine.txt").write_text("keep me")
    (out / "fpq_project.json").write_text('{"fpq_project": "fpq_model"}')
    (out / "build_prj.tcl").write_text("# my own script")
    with pytest.raises(FileExistsError, match="no fpq manifest .* lists as fpq's") as err:
        fpq.to_hls(onnx_path, out, overwrite=True)
    assert "build_prj.tcl" in str(err.value) and "fpq_project.json" in str(err.value)
    assert (out / "firmware" / "mine.txt").read_text() == "keep me"
    assert (out / "build_prj.tcl").read_text() == "# my own script"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], "the temporary build folder must be gone"


@pytest.mark.slow  # uses the compiled project
def test_forged_manifest_cannot_delete_outside_the_project(built, onnx_path, tmp_path, no_compile):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "prj"
    shutil.copytree(built[0].outdir, out)
    stamp = json.loads((out / "fpq_project.json").read_text())
    stamp["files"].append("../victim.txt")
    (out / "fpq_project.json").write_text(json.dumps(stamp))
    with pytest.raises(ValueError, match=r"manifest entry '\.\./victim\.txt' is not a plain path inside"):
        fpq.to_hls(onnx_path, out, overwrite=True)
    assert victim.read_text() == "keep me"


@pytest.mark.slow  # uses the compiled project
def test_overwrite_replaces_only_fpq_files(built, onnx_path, tmp_path, fake_compile):
    """Rerunning into a project with overwrite=True keeps vendor reports and the user's files,
    removes the earlier project's files (its library included) and predicts the same bits."""
    proj, x, y = built
    out = tmp_path / "prj"
    shutil.copytree(proj.outdir, out)
    report = out / "fpq_model_prj" / "solution1" / "syn" / "report" / "fpq_model_csynth.rpt"
    report.parent.mkdir(parents=True)
    report.write_text("vendor report")
    (out / "firmware" / "my_tb.cpp").write_text("user file in an fpq folder")
    (out / "README.mine").write_text("user file")
    old_lib = out / "firmware" / proj.info["library"]
    stale = out / "firmware" / "weights" / "w_old.h"  # an fpq file the new project does not write
    stale.write_text("// from the earlier project")
    stamp = json.loads((out / "fpq_project.json").read_text())
    stamp["files"].append("firmware/weights/w_old.h")
    (out / "fpq_project.json").write_text(json.dumps(stamp))

    new = fpq.to_hls(onnx_path, out, overwrite=True)
    assert report.read_text() == "vendor report"
    assert (out / "firmware" / "my_tb.cpp").read_text() == "user file in an fpq folder"
    assert (out / "README.mine").read_text() == "user file"
    assert not stale.exists() and not old_lib.exists()
    assert len(list((out / "firmware").glob("*.so"))) == 1
    manifest = set(json.loads((out / "fpq_project.json").read_text())["files"])
    assert "firmware/my_tb.cpp" not in manifest and "README.mine" not in manifest
    assert f"firmware/{new.info['library']}" in manifest
    assert np.array_equal(load_project(out).predict(x), y)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prj"]


def test_failed_compile_keeps_an_existing_failed_folder(onnx_path, tmp_path, monkeypatch):
    from hls4ml.model.graph import ModelGraph

    def broken(self):
        raise RuntimeError("g++ exploded")

    monkeypatch.setattr(ModelGraph, "_compile", broken)
    out = tmp_path / "prj"
    earlier = tmp_path / "prj.failed"
    earlier.mkdir()
    (earlier / "debug_notes.txt").write_text("keep me")
    with pytest.raises(RuntimeError, match=r"its sources are in .*prj\.failed-2") as err:
        fpq.to_hls(onnx_path, out)
    assert (earlier / "debug_notes.txt").read_text() == "keep me"
    assert (tmp_path / "prj.failed-2" / "build_prj.tcl").is_file()
    assert "unchanged" in str(err.value) and not out.exists()


@pytest.mark.slow  # uses the compiled project
def test_missing_library_is_a_python_error(built, tmp_path):
    out = tmp_path / "prj"
    shutil.copytree(built[0].outdir, out)
    lib = out / "firmware" / built[0].info["library"]
    lib.unlink()
    with pytest.raises(FileNotFoundError, match="compiled C-sim library .* is missing"):
        load_project(out)
    lib.write_bytes(b"not an ELF file")
    with pytest.raises(RuntimeError, match="cannot be loaded"):
        load_project(out)


# ---------------------------------------------------------------- item 7: relocatable, no exit()
# Last in the file: it moves the module's project.

_CHILD = """
import sys, numpy as np
from fpq.hls import load_project
y = load_project(sys.argv[1]).predict(np.load(sys.argv[2]))
np.save(sys.argv[3], y)
"""


@pytest.mark.slow  # uses the compiled project
def test_moved_and_copied_projects_predict_the_same_bits(built, tmp_path):
    proj, x, y = built
    old = proj.outdir
    moved = tmp_path / "moved"
    shutil.move(old, moved)
    # a fresh process (this one has the library loaded already): nothing may be read from the
    # old folder, and a C-sim failure must not end the process with exit()
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([sys.executable, "-c", _CHILD, str(moved), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, f"the moved project's C-sim died (rc {r.returncode}): {r.stderr[-800:]}"
    assert np.array_equal(np.load(tmp_path / "y.npy"), y)
    # a decoy at the old path with other weights; a copy (a new library instance in this
    # process) must not read them
    shutil.copytree(moved, old)
    for f in (old / "firmware" / "weights").glob("*.txt"):
        n = len(f.read_text().split(","))
        f.write_text(", ".join(["0.5"] * n))
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    assert np.array_equal(load_project(copy).predict(x), y)
    assert np.array_equal(load_project(moved).predict(x), y)
