"""examples/qfx_digits.py --smoke: every path of the script (hand-picked, learned binary points per
tensor and per channel, learned widths with the cost penalty, freeze, int8 / K-hot / power-of-two
QAT, verify, cost) runs and is exact."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow   # ~25 s of CPU: the script itself, one epoch per variant


def test_smoke_run_every_variant_exact_and_costed(load_script):
    ex = load_script("examples/qfx_digits.py")
    all_rows, text = ex.main(smoke=True, seeds=(0,), verbose=False)
    rows = all_rows[0]
    cost_row = "QFX width<=8, cost x 1e-07"
    assert list(rows) == ["float", "W4 hand-picked", "W4 QFX per-tensor", "W4 QFX per-channel", cost_row,
                          "int8 weights", "K-hot K=2", "power-of-two K=1"]
    for label, r in rows.items():
        if label == "float":
            continue
        assert r["exact"], label                       # torch == emulator == qonnx, atol=0
        assert r["lut"] > 0 and r["weight_dsp"] == 0, (label, r)
    assert 2 <= rows[cost_row]["mean_width"] <= 8
    for label in ("W4 QFX per-tensor", "W4 QFX per-channel", cost_row):
        assert rows[label]["frozen_equal"], label      # freezing kept the outputs bit for bit
    assert rows["W4 hand-picked"]["format"] == "fixed<4,2> everywhere"
    # fewer nonzero power-of-two terms per weight: fewer LUTs for the same int8 carrier
    assert rows["power-of-two K=1"]["lut"] < rows["K-hot K=2"]["lut"] < rows["int8 weights"]["lut"]
    assert "K-hot K=2" in text
