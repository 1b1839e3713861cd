"""PTQ algorithms on the digits CNN at W4A4 and W6A6, integer and minifloat; prints a table.

    python examples/ptq_digits.py [--quick] [--epochs N]

For every format: plain max calibration, each method alone (on top of max calibration), a set of
combinations, and the best combination. The best combination is the one with the lowest
cross-entropy loss on the calibration (training) images, never chosen on the test images; its
test accuracy is reported with the share of the accuracy lost by max calibration that it
recovers. Equalization is applied to the pair conv1 -> conv2 only: conv2 and conv3 feed the
residual add, which fpq's equalization does not cross (it raises an error naming the layer when
asked to). The 4-bit minifloats are e2m1 and e3m0 (e3m2 is a 6-bit format).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _digits_common import accuracy, train  # noqa: E402
from digits_cnn import DigitsCNN  # noqa: E402

import fpq  # noqa: E402
from fpq.data import load_digits_split  # noqa: E402

FORMATS = [("W4A4", "int4"), ("W4A4", "e2m1"), ("W4A4", "e3m0"),
           ("W6A6", "int6"), ("W6A6", "e2m3"), ("W6A6", "e3m2")]
SINGLE = ["weight_equalization", "act_equalization", "format_search", "gptq", "learned_round",
          "bias_correction"]
COMBOS = [["format_search", "gptq"], ["format_search", "gptq", "bias_correction"],
          ["format_search", "learned_round"], ["format_search", "learned_round", "bias_correction"],
          ["weight_equalization", "format_search", "gptq", "bias_correction"],
          ["act_equalization", "format_search", "gptq", "bias_correction"],
          ["weight_equalization", "format_search", "learned_round", "bias_correction"],
          # the same with MSE calibration of the activations instead of max
          ["format_search", "gptq", "bias_correction", "@mse"],
          ["format_search", "learned_round", "bias_correction", "@mse"],
          ["weight_equalization", "format_search", "learned_round", "bias_correction", "@mse"]]
SHORT = {"weight_equalization": "WE", "act_equalization": "AE", "format_search": "FS",
         "gptq": "GPTQ", "learned_round": "LR", "bias_correction": "BC"}


def label(methods) -> str:
    """"FS+GPTQ" etc.; a trailing "@mse" names the calibration method when it is not max."""
    names = [m for m in methods if not m.startswith("@")]
    cal = [m[1:] for m in methods if m.startswith("@")]
    text = "+".join(SHORT[m] for m in names) if names else "max"
    return text + (f"@{cal[0]}" if cal else "")


def run_one(model, fmt, methods, calib, data, round_iters):
    q = fpq.convert(model, fmt)
    cal = [m[1:] for m in methods if m.startswith("@")]
    methods = [m for m in methods if not m.startswith("@")]
    kw = {"calibration": cal[0] if cal else "max"}
    if any(m.endswith("equalization") for m in methods):
        kw["equalize_layers"] = ["conv1"]
    if "learned_round" in methods:
        kw["round_iters"] = round_iters
    if methods:
        fpq.ptq(q, calib, methods=methods, progress=False, **kw)
    else:
        fpq.calibrate(q, calib, progress=False)
    q.eval()
    with torch.no_grad():
        train_loss = float(F.cross_entropy(q(data.x_train).to(torch.float32), data.y_train))
    return q, train_loss, accuracy(q, data.x_test, data.y_test)


def main(quick: bool = False, epochs: int = 30, seed: int = 0, verbose: bool = True) -> dict:
    torch.set_num_threads(1)
    t0 = time.time()
    data = load_digits_split(seed=0)
    torch.manual_seed(seed)
    model = DigitsCNN()
    train(model, data, 3 if quick else epochs, 3e-3, seed)
    float_acc = accuracy(model, data.x_test, data.y_test)
    calib = [x for x, _ in data.batches(256, train=True)]
    formats = FORMATS[:2] if quick else FORMATS
    singles, combos = (SINGLE[2:4], COMBOS[:1]) if quick else (SINGLE, COMBOS)
    round_iters = 50 if quick else 400
    results = {"float": float_acc, "formats": {}}
    for width, fmt in formats:
        rows = {}
        for methods in [[]] + [[m] for m in singles] + combos:
            _, tr, te = run_one(model, fmt, methods, calib, data, round_iters)
            rows[label(methods)] = (tr, te)
            if verbose:
                print(f"  {width} {fmt:<5} {label(methods):<12} train loss {tr:.4f}  test {te:6.2f}"
                      f"  ({time.time() - t0:.0f} s)", flush=True)
        best = min((k for k in rows if "+" in k), key=lambda k: (rows[k][0], len(k)))
        lost = float_acc - rows["max"][1]
        recovered = (rows[best][1] - rows["max"][1]) / lost if lost > 0 else float("nan")
        results["formats"][(width, fmt)] = {"rows": rows, "best": best, "recovered": recovered}
    results["seconds"] = time.time() - t0
    if verbose:
        print(table(results))
    return results


def table(results) -> str:
    """Methods down, formats across: test accuracy %; then the chosen best and what it recovers."""
    fmts = list(results["formats"])
    labels = list(next(iter(results["formats"].values()))["rows"])
    w = max(len(k) for k in labels + ["recovered by best"]) + 2
    c = w - 1   # format columns wide enough for a method name
    head = f"{'method':<{w}}" + "".join(f"{wd + ' ' + f:>{c}}" for wd, f in fmts)
    lines = [f"digits CNN, test accuracy % (450 held-out images; float {results['float']:.2f}). "
             "max: max calibration only; WE / AE weight / activation equalization, FS format search, "
             "LR learned rounding, BC bias correction; @mse: MSE calibration instead of max.",
             head, "-" * len(head)]
    for k in labels:
        lines.append(f"{k:<{w}}" + "".join(f"{results['formats'][f]['rows'][k][1]:>{c}.2f}" for f in fmts))
    lines.append("-" * len(head))
    lines.append(f"{'best (train loss)':<{w}}" + "".join(f"{results['formats'][f]['best']:>{c}}" for f in fmts))
    lines.append(f"{'its test acc':<{w}}" + "".join(
        f"{results['formats'][f]['rows'][results['formats'][f]['best']][1]:>{c}.2f}" for f in fmts))
    lines.append(f"{'recovered by best':<{w}}" + "".join(
        f"{'-' if r != r else format(100 * r, '.0f') + '%':>{c}}"
        for r in (results["formats"][f]["recovered"] for f in fmts)))
    lines.append(f"(recovered: share of the accuracy max calibration lost that the best combination "
                 f"wins back; '-' where max calibration lost nothing. Total {results['seconds']:.0f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="few epochs, few rows (a smoke run)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(quick=a.quick, epochs=a.epochs, seed=a.seed)
