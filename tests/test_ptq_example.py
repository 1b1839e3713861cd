"""Smoke test of examples/ptq_digits.py in its --quick mode: the real code path (training,
conversion, fpq.ptq, selection on training loss, the table), checked for structure and sanity."""
from __future__ import annotations

import math


def test_ptq_digits_quick(load_script):
    ptq_digits = load_script("examples/ptq_digits.py")
    r = ptq_digits.main(quick=True, verbose=False)
    assert r["seeds"] == (0,) and list(r["formats"]) == [("W4A4", "int4"), ("W4A4", "e2m1")]
    assert 50.0 < r["float"] <= 100.0                       # 3 epochs already learn digits
    for key, f in r["formats"].items():
        (run,) = f["per_seed"]
        assert list(run["rows"]) == list(f["rows"]) == ["max", "AS+FS+GPTQ+BC"], key
        for label, (val_loss, test_acc) in run["rows"].items():
            assert math.isfinite(val_loss) and val_loss > 0, (key, label)
            n_right = test_acc * 450 / 100                   # a whole number of test images
            assert 0 <= test_acc <= 100 and abs(n_right - round(n_right)) < 1e-3, (key, label)
            assert f["rows"][label] == test_acc              # one seed: the mean is that seed
        assert f["best"] == ["AS+FS+GPTQ+BC"]     # the only combination (max is never chosen)
        assert f["chosen_test"] == run["rows"]["AS+FS+GPTQ+BC"][1]
        lost = r["float"] - f["rows"]["max"]
        if lost > 0:
            assert math.isclose(f["recovered"], (f["chosen_test"] - f["rows"]["max"]) / lost)
        else:
            assert math.isnan(f["recovered"])
    # at 4 bits max calibration alone loses accuracy on int4 and the PTQ recipe wins some back
    assert r["formats"][("W4A4", "int4")]["recovered"] > 0
    text = ptq_digits.table(r)
    for label in ("max", "AS+FS+GPTQ+BC", "chosen (val loss), test", "recovered", "chosen per seed"):
        assert label in text
    assert r["seconds"] < 60
