"""A built wheel is a working fpq: its package data (the cost model's measured operator tables,
fpq/cost_model/data/ -> cost_model/, and the HLS C++ header, fpq/hls/include/ -> hls/: one copy
each in the source tree) is in it, and a model is priced from the unpacked wheel alone, away from
the source tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("operators_xcup.csv", "holdout_xcup.csv", "da_xcup.csv")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    for d in ("fpq", "hls", "cost_model"):   # the package and the folders its links point into
        shutil.copytree(ROOT / d, src / d, symlinks=True, ignore=ignore)
    # offline: no index, no isolated build env (setuptools and wheel come from this venv)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True,
                       env={**os.environ, "PIP_NO_INPUT": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = (tmp / "dist").glob("fpq-*.whl")
    return whl


def test_wheel_ships_the_cost_tables(wheel):
    with zipfile.ZipFile(wheel) as z:
        for name in TABLES:
            assert z.read(f"fpq/cost_model/data/{name}") == (ROOT / "cost_model" / name).read_bytes()


def test_wheel_ships_the_hls_header(wheel):
    with zipfile.ZipFile(wheel) as z:
        data = z.read("fpq/hls/include/fpq_minifloat.h")
    assert data == (ROOT / "hls" / "fpq_minifloat.h").read_bytes()


def test_source_tree_keeps_one_copy_of_each_table():
    from fpq.cost_model import synth

    assert synth.TABLE.resolve() == (ROOT / "cost_model" / "operators_xcup.csv").resolve()
    assert synth.HOLDOUT_TABLE.resolve() == (ROOT / "cost_model" / "holdout_xcup.csv").resolve()


def test_a_model_is_priced_from_the_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = (
        "import torch, fpq\n"
        "from fpq.cost_model import synth\n"
        f"assert fpq.__file__.startswith({str(site)!r}), fpq.__file__\n"
        f"assert str(synth.TABLE).startswith({str(site)!r}) and synth.TABLE.is_file(), synth.TABLE\n"
        "torch.manual_seed(0)\n"
        "q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)), 'int8')\n"
        "fpq.calibrate(q, [torch.rand(16, 6)], progress=False)\n"
        "print(fpq.estimate_cost(q).total['lut'])\n")
    # run from an empty folder: neither the source tree nor its fpq is on the path, only the wheel's
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    import torch

    import fpq

    torch.manual_seed(0)
    q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)), "int8")
    fpq.calibrate(q, [torch.rand(16, 6)], progress=False)
    assert float(r.stdout.split()[-1]) == fpq.estimate_cost(q).total["lut"]   # the same table, the same price
