"""Smoke test of examples/ptq_digits.py in its --quick mode: the real code path (training,
conversion, fpq.ptq in shared stages, selection on the validation KL, the table), checked for
structure and sanity; and the staged variants equal one fpq.ptq call each, bit for bit."""
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
        for label, (val_kl, val_ce, test_acc) in run["rows"].items():
            assert math.isfinite(val_kl) and val_kl > 0 and math.isfinite(val_ce) and val_ce > 0, (key, label)
            n_right = test_acc * 450 / 100                   # a whole number of test images
            assert 0 <= test_acc <= 100 and abs(n_right - round(n_right)) < 1e-3, (key, label)
            assert f["rows"][label] == test_acc              # one seed: the mean is that seed
        assert f["best"] == ["AS+FS+GPTQ+BC"]     # the only combination (max is never chosen)
        assert f["chosen_test"] == run["rows"]["AS+FS+GPTQ+BC"][2]
        lost = r["float"] - f["rows"]["max"]
        if lost > 0:
            assert math.isclose(f["recovered"], (f["chosen_test"] - f["rows"]["max"]) / lost)
        else:
            assert math.isnan(f["recovered"])
    # at 4 bits max calibration alone loses accuracy on int4 and the PTQ recipe wins some back
    assert r["formats"][("W4A4", "int4")]["recovered"] > 0
    text = ptq_digits.table(r)
    for label in ("max", "AS+FS+GPTQ+BC", "chosen (val KL), test", "recovered", "chosen per seed"):
        assert label in text
    assert r["seconds"] < 60


def test_ptq_digits_stages_equal_one_ptq_call(load_script):
    """run_variants shares leading stages between variants (copies of the model after them);
    each variant's model computes exactly what one fpq.ptq call with all its methods gives."""
    import torch

    import fpq
    from fpq.data import load_digits_split

    ptq_digits = load_script("examples/ptq_digits.py")
    torch.manual_seed(0)
    model = ptq_digits.DigitsCNN()
    data = load_digits_split(seed=0)
    calib = [x for x, _ in data.batches(64, train=True)][:1]
    variants = [["act_search", "format_search", "learned_round"],
                ["act_search", "format_search", "learned_round", "bias_correction"],
                ["act_equalization", "act_search", "format_search", "gptq", "bias_correction"],
                ["format_search", "block_round"], ["format_search", "block_round", "bias_correction"],
                ["bias_correction", "@mse"], []]
    assert ptq_digits.stages(variants[2]) == (("max", "act_equalization"), ("act_search",),
                                              ("format_search",), ("gptq",), ("bias_correction",))
    models = ptq_digits.run_variants(model, "e2m1", variants, calib, round_iters=20)
    x = data.x_test[:64]
    for v in variants:
        methods = [m for m in v if not m.startswith("@")]
        q = fpq.convert(model, "e2m1")
        kw = {"act_metric": "kl"} if "act_search" in methods else {}
        if "learned_round" in methods:
            kw["round_iters"] = 20
        if "block_round" in methods:
            kw["round_iters"] = 40        # the example gives block_round twice learned_round's steps
        if "learned_round" in methods or "bias_correction" in methods:
            kw["reference"] = "float"
        fpq.ptq(q, calib, methods=methods, progress=False,
                calibration="mse" if "@mse" in v else "max", **kw)
        staged = models[ptq_digits.label(v)]
        q.eval(), staged.eval()
        with torch.no_grad():
            assert torch.equal(q(x), staged(x)), v
        assert q.fpq_policy.layers == staged.fpq_policy.layers, v
        sq, ss = q.state_dict(), staged.state_dict()      # weights, biases, scales
        assert sq.keys() == ss.keys() and all(torch.equal(sq[k], ss[k]) for k in sq), v
