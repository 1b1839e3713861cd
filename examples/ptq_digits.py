"""PTQ algorithms on the digits CNN at W4A4 and W6A6, integer and minifloat; prints a table.

    python examples/ptq_digits.py [--quick] [--epochs N] [--seeds 0 1 2 3 4]

For each seed a float CNN is trained on the training images. PTQ calibrates on 768 of them
(the calibration split) and every variant is scored on the other 579 (the validation split, also
carved from the training images). For every format: plain max calibration, each method alone,
and a set of combinations. Per seed, the combination whose outputs on the validation split are
closest to the float network's (mean KL divergence of the softmaxes) is chosen, never on the test
images: PTQ's aim is to reproduce the float network, and the KL uses every validation image's
whole output, where cross-entropy at ~99% accuracy hangs on the few images near a decision
boundary (that criterion's choice is printed too, for comparison). The table gives test
accuracies averaged over the seeds, the chosen combinations' mean test accuracy and the share of
the accuracy lost by max calibration that it recovers (on the means: 450 test images, one image
= 0.22 points, so one seed alone is mostly noise at W4A4).

Equalization and per-channel activation scales act on both regions of the CNN: conv1 -> conv2,
and across the residual add, producers conv2 and conv3 (the add's operands take the same channel
scaling) with consumers conv3 and fc. Activation search compares softmaxes (act_metric="kl");
learned rounding and bias correction use the float network as reference (reference="float");
block rounding (BR, BRECQ with QDrop) always does, with 800 steps (twice learned rounding's).
The 4-bit minifloats are e2m1 and e3m0 (e3m2 is a 6-bit format). Variants that begin with the
same methods share that computation (``run_variants``). ``--quick`` (the smoke test): one seed,
3 training epochs, one calibration batch, two formats, max and one combination.
"""
from __future__ import annotations

import argparse
import copy
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
from fpq.nn.layers import link_input_quantizers  # noqa: E402
from fpq.ptq import ORDER  # noqa: E402
from fpq.ptq._common import weight_layers  # noqa: E402

FORMATS = [("W4A4", "int4"), ("W4A4", "e2m1"), ("W4A4", "e3m0"),
           ("W6A6", "int6"), ("W6A6", "e2m3"), ("W6A6", "e3m2")]
SINGLE = ["weight_equalization", "act_equalization", "act_channel_scales", "act_search",
          "format_search", "gptq", "learned_round", "block_round", "bias_correction"]
COMBOS = [["act_search", "format_search", "gptq", "bias_correction"],
          ["act_search", "format_search", "learned_round"],
          ["act_search", "format_search", "learned_round", "bias_correction"],
          ["act_search", "format_search", "block_round"],
          ["act_search", "format_search", "block_round", "bias_correction"],
          ["act_equalization", "act_search", "format_search", "gptq", "bias_correction"],
          ["act_channel_scales", "act_search", "format_search", "gptq", "bias_correction"],
          # MSE calibration of the activations instead of max (no activation search)
          ["format_search", "gptq", "bias_correction", "@mse"]]
SHORT = {"weight_equalization": "WE", "act_equalization": "AE", "act_channel_scales": "ACS",
         "act_search": "AS", "format_search": "FS", "gptq": "GPTQ", "learned_round": "LR",
         "block_round": "BR", "bias_correction": "BC"}


def label(methods) -> str:
    """"FS+GPTQ" etc.; a trailing "@mse" names the calibration method when it is not max."""
    names = [m for m in methods if not m.startswith("@")]
    cal = [m[1:] for m in methods if m.startswith("@")]
    text = "+".join(SHORT[m] for m in names) if names else "max"
    return text + (f"@{cal[0]}" if cal else "")


def stages(methods) -> tuple:
    """The variant as a sequence of fpq.ptq calls, each on the previous one's model: the methods
    before calibration plus calibration, then act_search, format_search, the rounding, and bias
    correction (given the float weights from before the rounding, see ``apply_stage``). The calls
    compose to exactly what one fpq.ptq call with all the methods computes (same order; each
    method seeds its own randomness), so variants that share leading stages share their models
    (``run_variants``): e.g. AS+FS+BR+BC continues from AS+FS+BR's model."""
    cal = ([m[1:] for m in methods if m.startswith("@")] or ["max"])[0]
    methods = [m for m in methods if not m.startswith("@")]
    out = [(cal,) + tuple(m for m in ORDER if m in methods and m in _BEFORE)]
    out += [(m,) for m in ("act_search", "format_search") if m in methods]
    out += [(m,) for m in ("gptq", "learned_round", "block_round", "bias_correction") if m in methods]
    return tuple(out)


_BEFORE = ("weight_equalization", "act_equalization", "act_channel_scales")


_ROUNDING = ("gptq", "learned_round", "block_round")


def apply_stage(q, stage, calib, round_iters):
    """One fpq.ptq call; a stage starting with a calibration method calibrates, others keep scales.
    A rounding stage keeps the float weights it started from in the model's meta (copied with it), for
    the bias correction stage after it (what one fpq.ptq call passes from rounding to correction)."""
    cal, methods = (stage[0], list(stage[1:])) if stage[0] in ("max", "mse", "percentile") else (None, list(stage))
    kw = {}
    if "act_search" in methods:
        kw["act_metric"] = "kl"      # a classifier: compare softmaxes, not raw logits
    if "learned_round" in methods:
        kw["round_iters"] = round_iters
    if "block_round" in methods:      # its default is 800 steps of 32 samples (block_round.run)
        kw["round_iters"] = 2 * round_iters
    if "learned_round" in methods or "bias_correction" in methods:
        kw["reference"] = "float"
    if "bias_correction" in methods and "pre_rounding_weights" in q.meta:
        kw["float_weights"] = q.meta["pre_rounding_weights"]
    if any(m in methods for m in _ROUNDING):     # in meta: GraphModule's deepcopy keeps it
        q.meta["pre_rounding_weights"] = {n: m.weight.detach().clone() for n, m in weight_layers(q)}
    fpq.ptq(q, calib, methods=methods, progress=False, calibration=cal, **kw)


def _copy(q):
    """A deep copy whose layers link to its own input quantizers (the copied links point at q)."""
    c = copy.deepcopy(q)
    link_input_quantizers(c)
    return c


def run_variants(model, fmt, variants, calib, round_iters):
    """{label: quantized model} of every variant; a model after stages that a later variant also
    starts with is kept and copied instead of recomputed."""
    plans = {label(v): stages(v) for v in variants}
    shared = {}
    for st in plans.values():
        for i in range(1, len(st) + 1):
            shared[st[:i]] = shared.get(st[:i], 0) + 1
    done, out = {(): fpq.convert(model, fmt)}, {}
    for lab, st in plans.items():
        i = max(i for i in range(len(st) + 1) if st[:i] in done)
        q = _copy(done[st[:i]])
        for j in range(i, len(st)):
            apply_stage(q, st[j], calib, round_iters)
            if shared[st[:j + 1]] > 1:
                done[st[:j + 1]] = _copy(q)
        out[lab] = q
    return out


@torch.no_grad()
def scores(q, model, val, data):
    """(validation KL to the float network, validation cross-entropy, test accuracy %)."""
    q.eval()
    yq = q(val[0]).to(torch.float64)
    p = torch.log_softmax(model(val[0]).to(torch.float64), 1)
    kl = float((p.exp() * (p - torch.log_softmax(yq, 1))).sum(1).mean())
    return kl, float(F.cross_entropy(yq, val[1])), accuracy(q, data.x_test, data.y_test)


def main(quick: bool = False, epochs: int = 30, seeds=(0, 1, 2, 3, 4), verbose: bool = True) -> dict:
    torch.set_num_threads(1)
    t0 = time.time()
    data = load_digits_split(seed=0)
    seeds = (seeds[0],) if quick else tuple(seeds)
    split = data.batches(256, train=True, shuffle=True, seed=1234)
    n_cal = 1 if quick else 3
    calib = [x for x, _ in split[:n_cal]]                     # the calibration split
    val = (torch.cat([x for x, _ in split[n_cal:]]), torch.cat([y for _, y in split[n_cal:]]))
    formats = FORMATS[:2] if quick else FORMATS
    singles, combos = ([], COMBOS[:1]) if quick else (SINGLE, COMBOS)
    variants = [[]] + [[m] for m in singles] + combos
    labels = [label(m) for m in variants]
    round_iters = 50 if quick else 400
    floats, per_seed = [], {f: [] for f in formats}
    for seed in seeds:
        torch.manual_seed(seed)
        model = DigitsCNN()
        train(model, data, 3 if quick else epochs, 3e-3, seed)
        model.eval()
        floats.append(accuracy(model, data.x_test, data.y_test))
        for width, fmt in formats:
            models = run_variants(model, fmt, variants, calib, round_iters)
            rows = {k: scores(models[k], model, val, data) for k in labels}
            if verbose:
                for k, (kl, ce, te) in rows.items():
                    print(f"  seed {seed} {width} {fmt:<5} {k:<18} val KL {kl:.5f} CE {ce:.4f}  "
                          f"test {te:6.2f}", flush=True)
                print(f"  ({time.time() - t0:.0f} s)", flush=True)
            # the chosen combination: lowest validation KL to the float network (ties: the shorter)
            combos_here = [k for k in rows if "+" in k]
            best = min(combos_here, key=lambda k: (rows[k][0], len(k)))
            by_ce = min(combos_here, key=lambda k: (rows[k][1], len(k)))
            per_seed[(width, fmt)].append({"rows": rows, "best": best, "best_ce": by_ce})
    float_acc = sum(floats) / len(floats)
    results = {"float": float_acc, "floats": floats, "seeds": seeds, "formats": {}}
    for key, runs in per_seed.items():
        mean = {k: sum(r["rows"][k][2] for r in runs) / len(runs) for k in labels}
        chosen = sum(r["rows"][r["best"]][2] for r in runs) / len(runs)
        chosen_ce = sum(r["rows"][r["best_ce"]][2] for r in runs) / len(runs)
        lost = float_acc - mean["max"]
        recovered = (chosen - mean["max"]) / lost if lost > 0 else float("nan")
        results["formats"][key] = {"rows": mean, "per_seed": runs, "best": [r["best"] for r in runs],
                                   "chosen_test": chosen, "recovered": recovered,
                                   "chosen_test_ce": chosen_ce}
    results["seconds"] = time.time() - t0
    if verbose:
        print(table(results))
    return results


def table(results) -> str:
    """Methods down, formats across: mean test accuracy %; then the chosen combinations."""
    fmts = list(results["formats"])
    labels = list(next(iter(results["formats"].values()))["rows"])
    w = max(len(k) for k in labels + ["chosen (val KL), test"]) + 2
    c = w - 1
    head = f"{'method':<{w}}" + "".join(f"{wd + ' ' + f:>{c}}" for wd, f in fmts)
    seeds = ", ".join(str(s) for s in results["seeds"])
    lines = [f"digits CNN, test accuracy % (450 held-out images), mean over seeds {seeds}; float "
             f"{results['float']:.2f} ({', '.join(f'{a:.2f}' for a in results['floats'])}). "
             "max: max calibration only; WE / AE weight / activation equalization, ACS per-channel "
             "activation scales, AS activation search, FS (weight) format search, GPTQ, LR learned "
             "rounding, BR block-wise learned rounding, BC bias correction; @mse: MSE calibration instead of max.",
             head, "-" * len(head)]
    for k in labels:
        lines.append(f"{k:<{w}}" + "".join(f"{results['formats'][f]['rows'][k]:>{c}.2f}" for f in fmts))
    lines.append("-" * len(head))
    lines.append(f"{'chosen (val KL), test':<{w}}" + "".join(
        f"{results['formats'][f]['chosen_test']:>{c}.2f}" for f in fmts))
    lines.append(f"{'recovered':<{w}}" + "".join(
        f"{'-' if r != r else format(100 * r, '.0f') + '%':>{c}}"
        for r in (results["formats"][f]["recovered"] for f in fmts)))
    lines.append(f"{'(chosen by val CE), test':<{w}}" + "".join(
        f"{results['formats'][f]['chosen_test_ce']:>{c}.2f}" for f in fmts))
    for f in fmts:
        runs = results["formats"][f]["per_seed"]
        lines.append(f"chosen per seed, {f[0]} {f[1]}: " + ", ".join(
            f"{r['best']} ({r['rows'][r['best']][2]:.2f})" for r in runs)
            + "; by val CE: " + ", ".join(f"{r['best_ce']} ({r['rows'][r['best_ce']][2]:.2f})" for r in runs))
    lines.append(f"(recovered: share of the accuracy max calibration lost that the chosen combinations "
                 f"win back, on the seed means; '-' where max calibration lost nothing. "
                 f"Total {results['seconds']:.0f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="few epochs, few rows (a smoke run)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    a = ap.parse_args()
    main(quick=a.quick, epochs=a.epochs, seeds=a.seeds)
