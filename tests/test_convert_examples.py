"""The digits examples run end to end (quick mode) and return their results dict."""
from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_example_quick(name, load_script):
    threads = torch.get_num_threads()
    try:
        res = load_script(f"examples/{name}.py").main(quick=True, verbose=False)
    finally:
        torch.set_num_threads(threads)
    rows = ["float", "int8 W8A8 PTQ", "fixed<8,3> PTQ", "fixed<8,3> QAT", "e4m3 PTQ", "e3m2 PTQ",
            "e2m1 W4A4 PTQ", "e2m1 W4A4 QAT"]
    assert list(res)[:len(rows)] == rows
    assert res["float"] > 80.0       # a few epochs already learn the digits
    assert res["int8 W8A8 PTQ"] > res["float"] - 5.0
    assert all(0.0 <= res[r] <= 100.0 for r in rows)
