"""How narrow can the digits CNN's accumulators be? Accuracy and FPGA cost per accumulator width.

Trains the digits CNN of ``digits_cnn.py`` (fixed seed), converts it to int8 weights and
activations with exact accumulators, then with ``accumulator_bits=N`` for decreasing N (each
Linear / Conv accumulator keeps its exact LSB and N bits, wrapping on overflow as ap_fixed's
AP_WRAP). The bias is quantized on the product grid (a Fixed bias with no more fractional bits
than any layer's products), which a narrow accumulator needs. Per N it prints the PTQ accuracy,
the share of test images whose logits change against exact accumulators (how often a wrap
matters), accuracy after a short QAT where PTQ lost more than a point (the wrap in the forward
pass, straight-through gradient), ``fpq.estimate_cost`` LUT / FF, and checks the emulator
against torch bit for bit on the test images.

    python examples/accumulator_digits.py [--quick] [--seed 0]
"""
from __future__ import annotations

import copy
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _digits_common import accuracy, parser, train, trained_float  # noqa: E402
from digits_cnn import DigitsCNN  # noqa: E402

import fpq  # noqa: E402
from fpq.formats import Fixed  # noqa: E402

WIDTHS = (20, 18, 17, 16, 15, 14, 12)
QAT_THRESHOLD = 1.0


def _logits(q, x):
    q.eval()
    with torch.no_grad():
        return q(x)


def _bias_format(q) -> str:
    """A Fixed bias on the product grid of every layer (no more fractional bits than the
    coarsest products) with just the integer bits the biases need (sign included)."""
    plans = [lp for lp in fpq.plan(q) if isinstance(lp.tensors.get("product"), Fixed)]
    frac = min(lp.tensors["product"].frac_bits for lp in plans)
    top = max(float(np.abs(lp.values["bias"]).max()) for lp in plans if "bias" in lp.values)
    int_bits = int(np.floor(np.log2(max(top, 1.0)))) + 2
    return f"fixed<{int_bits + frac},{int_bits}>"


def main(quick: bool = False, seed: int = 0, verbose: bool = True) -> dict:
    t0 = time.time()
    data, model, base, calib = trained_float(DigitsCNN, quick=quick, seed=seed)
    probe = fpq.convert(model, fmt="int8")
    fpq.calibrate(probe, calib, progress=False)
    bias = _bias_format(probe)

    def converted(bits):
        q = fpq.convert(model, fmt="int8", bias=bias, accumulator_bits=bits)
        fpq.calibrate(q, calib, progress=False)
        return q

    exact = converted(None)
    widths = {lp.name: lp.tensors["accumulator"].width for lp in fpq.plan(exact)
              if isinstance(lp.tensors.get("accumulator"), Fixed)}
    ref_logits = _logits(exact, data.x_test)
    rows = [dict(bits="exact", ptq=accuracy(exact, data.x_test, data.y_test), changed=0.0, qat=None,
                 cost=fpq.estimate_cost(exact).total, exact_emulation=True)]
    if verbose:
        print(f"float {base:.2f}%; int8 with bias {bias}; exact accumulator widths {widths}")
    for bits in (WIDTHS[::2] if quick else WIDTHS):
        q = converted(bits)
        logits = _logits(q, data.x_test)
        changed = 100.0 * float((logits != ref_logits).any(1).float().mean())
        ptq = accuracy(q, data.x_test, data.y_test)
        emu = fpq.emulate(q, data.x_test.numpy())
        same = bool(np.array_equal(emu, logits.double().numpy()))
        cost = fpq.estimate_cost(q).total
        qat = None
        if ptq < rows[0]["ptq"] - QAT_THRESHOLD:
            qq = copy.deepcopy(q)
            train(qq, data, 1 if quick else 3, 1e-3, seed + 1)
            qat = accuracy(qq, data.x_test, data.y_test)
        rows.append(dict(bits=bits, ptq=ptq, changed=changed, qat=qat, cost=cost, exact_emulation=same))
        if verbose:
            print(f"N={bits}: PTQ {ptq:.2f}%, {changed:.1f}% of images changed"
                  + ("" if qat is None else f", QAT {qat:.2f}%") + f"  ({time.time() - t0:.0f} s)")
    out = dict(float=base, bias=bias, exact_widths=widths, rows=rows, seconds=time.time() - t0)
    if verbose:
        print()
        print("| accumulator bits | PTQ % | images changed % | QAT % | LUT | FF | emulator == torch |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for r in rows:
            print(f"| {r['bits']} | {r['ptq']:.2f} | {r['changed']:.1f} | "
                  f"{'-' if r['qat'] is None else format(r['qat'], '.2f')} | {r['cost']['lut']:,.0f} | "
                  f"{r['cost']['ff']:,.0f} | {'yes' if r['exact_emulation'] else 'NO'} |")
        print(f"(float {base:.2f}%, {out['seconds']:.0f} s)")
    return out


if __name__ == "__main__":
    ap = parser(__doc__, "few epochs and widths (a smoke run)")
    a = ap.parse_args()
    main(quick=a.quick, seed=a.seed)
