"""The digits examples run end to end (quick mode) and return their results dict."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch


EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_example_quick(name):
    threads = torch.get_num_threads()
    try:
        res = _load(name).main(quick=True, verbose=False)
    finally:
        torch.set_num_threads(threads)
    rows = ["float", "int8 W8A8 PTQ", "fixed<8,3> PTQ", "fixed<8,3> QAT", "e4m3 PTQ", "e3m2 PTQ",
            "e2m1 W4A4 PTQ", "e2m1 W4A4 QAT"]
    assert list(res)[:len(rows)] == rows
    assert res["float"] > 80.0       # a few epochs already learn the digits
    assert res["int8 W8A8 PTQ"] > res["float"] - 5.0
    assert all(0.0 <= res[r] <= 100.0 for r in rows)
