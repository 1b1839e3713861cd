"""fpq's HLS C++ header is package data: a non-editable wheel carries it, and the source tree
keeps one copy of it (fpq/hls/include/ links to the top-level hls/)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from fpq.hls import cpp

ROOT = Path(__file__).resolve().parent.parent


def test_header_lookup_is_the_one_source_file():
    assert cpp.header_path().is_file()
    assert cpp.header_path().resolve() == (ROOT / "hls" / "fpq_minifloat.h").resolve()


def test_wheel_ships_the_header(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    for d in ("fpq", "hls"):
        shutil.copytree(ROOT / d, src / d, symlinks=True, ignore=ignore)
    # offline: no index, no isolated build env (setuptools and wheel come from this venv)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True,
                       env={**os.environ, "PIP_NO_INPUT": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "dist").glob("fpq-*.whl")
    with zipfile.ZipFile(wheel) as z:
        data = z.read("fpq/hls/include/fpq_minifloat.h")
    assert data == (ROOT / "hls" / "fpq_minifloat.h").read_bytes()
