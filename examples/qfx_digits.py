"""QFX on the digits CNN: learned binary points vs the best hand-picked one, and K-hot weights.

    python examples/qfx_digits.py [--quick | --smoke] [--seeds 0 1 2] [--hls] [--da] [--batchnorm keep]

1. For W = 4, 6, 8 bits: every hand-picked fixed<W,I> (one binary point for all weights and
   activations, I = 0..W) is converted from the same float model and trained (QAT) for the
   same epochs; the best test accuracy is the baseline. QFX starts from data (each weight's
   binary point where max |w| fits, each activation's where the calibration maximum fits),
   learns every tensor's binary point (per tensor; and per weight channel) during the same
   QAT, and is frozen into plain Fixed / Int x 2^-F formats.
2. Learned widths too (2..8 bits per tensor) with the cost-model penalty
   (``cost_penalty(q)``) at a few coefficients: the accuracy / LUT trade.
3. K-hot weights (K = 2, per-tensor power-of-two scale, int8 activations) vs int8 weights,
   both QAT from the same float model.
Every final model is checked with fpq.verify (torch == fpq.emulate == qonnx executor, atol=0,
on the test images and on off-grid random inputs) and, with --hls, against the hls4ml C-sim;
each is costed with fpq.estimate_cost (xcvu9p, reuse 1, hls4ml Latency). Biases are int16 in
every row. Accuracies are on the 450 held-out images; mean over the seeds. With --da the
multiplier-free variants are also built with hls4ml's distributed-arithmetic strategy (da4ml:
shift-and-add kernels, no multiplier) and that C-sim is checked too. --smoke runs every path
once on one width with one epoch (a test of the script, not a result). ``--batchnorm keep``
keeps the CNN's BatchNorms element-wise instead of folding them into the convs (QFX then also
learns the binary points of their scale and output; see fpq.nn.batchnorm).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _digits_common import accuracy, train  # noqa: E402
from digits_cnn import DigitsCNN  # noqa: E402

import fpq  # noqa: E402
from fpq.cost_model.penalty import cost_penalty  # noqa: E402
from fpq.data import load_digits_split  # noqa: E402
from fpq.nn import multfree, qfx  # noqa: E402

BITS_LR = 0.05   # Adam step of the binary points: a point moves by about this much per step


def qat_qfx(q, data, epochs: int, seed: int, lr: float = 1e-3, cost_lambda: float = 0.0):
    """QAT with the binary-point parameters in their own Adam group (a larger step: they must
    cross rounding boundaries to change the format); ``cost_lambda`` > 0 adds that multiple of
    the cost model's LUT estimate (``cost_penalty(q)``) to the loss."""
    torch.manual_seed(seed)
    bits = [p for n, p in q.named_parameters() if n.endswith("frac_bits") or n.endswith("int_bits")]
    ids = {id(p) for p in bits}
    rest = [p for p in q.parameters() if id(p) not in ids]
    opt = torch.optim.Adam([{"params": rest, "lr": lr}, {"params": bits, "lr": BITS_LR}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for ep in range(epochs):
        q.train()
        for xb, yb in data.batches(64, train=True, shuffle=True, seed=seed * 1000 + ep):
            opt.zero_grad()
            loss = F.cross_entropy(q(xb), yb)
            if cost_lambda:
                loss = loss + cost_lambda * cost_penalty(q)
            loss.backward()
            opt.step()
        sched.step()
    q.eval()


def checked(q, data, x_check, label: str, hls: bool, notes: list, da: bool = False, qonnx_subset: int = 64) -> dict:
    """Accuracy, exactness (torch == emulator == qonnx [== C-sim]) and cost of a final model;
    with ``da`` also the C-sim of the distributed-arithmetic (da4ml) project against the emulator."""
    acc = accuracy(q, data.x_test, data.y_test)
    csim_da = None
    if da:
        with tempfile.TemporaryDirectory(prefix="qfx_da_") as tmp:
            try:
                p = fpq.to_hls(q, os.path.join(tmp, "prj"), example_input=data.x_test[:1],
                               strategy="distributed_arithmetic")
                csim_da = bool(np.array_equal(p.predict(x_check), fpq.emulate(q, x_check)))
            except Exception as e:
                notes.append(f"{label}: DA to_hls failed: {type(e).__name__}: {e}")
    with tempfile.TemporaryDirectory(prefix="qfx_hls_") as tmp:
        proj = None
        if hls:
            try:
                proj = fpq.to_hls(q, os.path.join(tmp, "prj"), example_input=data.x_test[:1])
            except Exception as e:  # report, do not hide: the row then says C-sim "n/a"
                notes.append(f"{label}: to_hls failed: {type(e).__name__}: {e}")
        rep = fpq.verify(q, x_check, project=proj, qonnx_subset=qonnx_subset)
    cost = fpq.estimate_cost(fpq.plan(q, x_check[:1]))   # a QAT-only model recorded no input shape
    weight_dsp = sum(r["dsp"] for r in cost.layers if r["op"] in ("conv2d", "linear"))
    return dict(acc=acc, exact=bool(rep.exact), csim=None if proj is None else bool(rep.exact), csim_da=csim_da,
                lut=float(cost.total["lut"]), dsp=int(cost.total["dsp"]), weight_dsp=int(weight_dsp))


def formats_of(q) -> str:
    tp = fpq.plan(q)
    parts = []
    for lp in tp:
        if lp.op in ("conv2d", "linear", "batchnorm"):
            parts.append(f"{lp.name}: w {lp.tensors['weight'].describe()}, out {lp.tensors['output'].describe()}")
    return "; ".join(parts)


def run(seed: int, epochs: int, qat_epochs: int, widths, hls: bool, verbose: bool, da: bool = False,
        int_points=None, n_random: int = 200, n_test_check=None, qonnx_subset: int = 64, cost_lambdas=(),
        max_width: int = 8, batchnorm: str = "fold"):
    torch.manual_seed(seed)
    data = load_digits_split(seed=0)
    model = DigitsCNN()
    train(model, data, epochs, 3e-3, seed)
    rng = np.random.default_rng(seed)
    x_rand = rng.uniform(-0.5, 1.5, (n_random,) + tuple(data.x_test.shape[1:])).astype(np.float32)
    x_check = np.concatenate([data.x_test.numpy()[:n_test_check], x_rand])
    calib = [x for x, _ in data.batches(256, train=True)]
    rows, notes, t0 = {}, [], time.time()
    rows["float"] = dict(acc=accuracy(model, data.x_test, data.y_test))

    def log(label):
        if verbose:
            r = rows[label]
            print(f"  seed {seed} {label}: {r['acc']:.2f}%  ({time.time() - t0:.0f} s)", flush=True)

    def freeze_and_check(q, label):
        """Freeze the learned points; the frozen model must give the trained one's outputs."""
        with torch.no_grad():
            before = q(data.x_test)
        frozen = qfx.freeze(q)
        with torch.no_grad():
            same = torch.equal(before, q(data.x_test))
        rows[label] = checked(q, data, x_check, label, hls, notes, qonnx_subset=qonnx_subset)
        rows[label]["frozen_equal"] = same
        rows[label]["format"] = formats_of(q)
        return frozen

    for W in widths:
        # hand-picked: one binary point for every tensor, each trained the same way
        best = None
        for I in (range(0, W + 1) if int_points is None else int_points):
            q = fpq.convert(model, fmt=f"fixed<{W},{I}>", batchnorm=batchnorm)
            train(q, data, qat_epochs, 1e-3, seed + 1)
            a = accuracy(q, data.x_test, data.y_test)
            if best is None or a > best[1]:
                best = (I, a, q)
        label = f"W{W} hand-picked"
        rows[label] = checked(best[2], data, x_check, label, hls, notes, qonnx_subset=qonnx_subset)
        rows[label]["format"] = f"fixed<{W},{best[0]}> everywhere"
        log(label)
        for gran in ("tensor", "channel"):
            q = fpq.convert(model, fmt=f"fixed<{W},{max(1, W // 2)}>", batchnorm=batchnorm)
            qfx.make_trainable(q, granularity=gran, init="max")
            qfx.init_activations(q, calib)
            qat_qfx(q, data, qat_epochs, seed + 1)
            label = f"W{W} QFX per-{gran}"
            freeze_and_check(q, label)
            log(label)
    for lam in cost_lambdas:
        # learned widths (2..max_width bits) and points, traded against the cost model's LUTs
        q = fpq.convert(model, fmt=f"fixed<{max_width},{max_width // 2}>", batchnorm=batchnorm)
        qfx.make_trainable(q, learn_width=True, min_width=2, max_width=max_width, init="max")
        qfx.init_activations(q, calib)
        qat_qfx(q, data, qat_epochs, seed + 1, cost_lambda=lam)
        label = f"QFX width<={max_width}, cost x {lam:g}"
        frozen = freeze_and_check(q, label)
        rows[label]["mean_width"] = float(np.mean([fpq.parse_format(f).width for _, _, f in frozen]))
        log(label)
    for label, k in (("int8 weights", None), ("K-hot K=2", 2), ("power-of-two K=1", 1)):
        q = fpq.convert(model, fmt="int8", batchnorm=batchnorm)
        fpq.calibrate(q, calib, progress=False)
        if k is not None:
            multfree.to_khot(q, k, granularity="tensor")
        train(q, data, qat_epochs, 1e-3, seed + 1)
        rows[label] = checked(q, data, x_check, label, hls, notes, da=da and k is not None, qonnx_subset=qonnx_subset)
        log(label)
    return rows, notes


def table(all_rows: list, hls: bool) -> str:
    labels = list(all_rows[0])
    n = len(all_rows)
    head = (f"{'model':<28} {'acc % (mean)':>12} {'min..max':>13} {'exact':>6} {'C-sim':>6} {'DA C-sim':>8} "
            f"{'LUT':>8} {'DSP':>4} {'wDSP':>5}")
    lines = [head, "-" * len(head)]
    for lab in labels:
        accs = [r[lab]["acc"] for r in all_rows]
        r0 = all_rows[-1][lab]
        if "exact" not in r0:
            lines.append(f"{lab:<28} {np.mean(accs):>12.2f} {min(accs):>6.2f}..{max(accs):<6.2f}")
            continue
        exact = all(r[lab]["exact"] and r[lab].get("frozen_equal", True) for r in all_rows)
        csim = "n/a" if not hls or any(r[lab]["csim"] is None for r in all_rows) else \
            str(all(r[lab]["csim"] for r in all_rows))
        csim_da = "n/a" if any(r[lab].get("csim_da") is None for r in all_rows) else \
            str(all(r[lab]["csim_da"] for r in all_rows))
        lines.append(f"{lab:<28} {np.mean(accs):>12.2f} {min(accs):>6.2f}..{max(accs):<6.2f} {str(exact):>6} "
                     f"{csim:>6} {csim_da:>8} {r0['lut']:>8.0f} {r0['dsp']:>4} {r0['weight_dsp']:>5}")
    lines.append(f"({n} seed(s); LUT / DSP of the last seed's model, xcvu9p reuse 1; wDSP: DSPs of "
                 "conv / dense layers)")
    return "\n".join(lines)


def main(quick=False, seeds=(0,), hls=False, verbose=True, widths=(4, 6, 8), da=False, smoke=False,
         cost_lambdas=(0.0, 3e-8, 1e-7), batchnorm="fold"):
    torch.set_num_threads(1)
    epochs, qat_epochs = (1, 1) if smoke else (5, 2) if quick else (30, 10)
    extra = dict(int_points=(2,), n_random=16, n_test_check=16, qonnx_subset=8) if smoke else {}
    if smoke:
        widths, cost_lambdas = widths[:1], cost_lambdas[-1:]
    all_rows, all_notes = [], []
    for s in seeds:
        rows, notes = run(s, epochs, qat_epochs, widths, hls, verbose, da=da, cost_lambdas=cost_lambdas,
                          batchnorm=batchnorm, **extra)
        all_rows.append(rows)
        all_notes += notes
    text = table(all_rows, hls)
    if verbose:
        print("\ndigits CNN, QFX learned binary points and multiplier-free weights")
        print(text)
        for lab, r in all_rows[-1].items():
            if "format" in r:
                print(f"  {lab}: {r['format']}")
        for note in all_notes:
            print("note:", note)
    return all_rows, text


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few epochs")
    ap.add_argument("--smoke", action="store_true", help="every path once: one width, one epoch (tests the script)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--cost-lambdas", type=float, nargs="*", default=[0.0, 3e-8, 1e-7],
                    help="coefficients of the cost-model penalty for the learned-width rows (none: skip them)")
    ap.add_argument("--hls", action="store_true", help="also build each model with fpq.to_hls and check the C-sim")
    ap.add_argument("--da", action="store_true", help="also build the multiplier-free variants with hls4ml's "
                    "distributed-arithmetic strategy (da4ml) and check that C-sim")
    ap.add_argument("--batchnorm", choices=("fold", "keep"), default="fold",
                    help="fold the BatchNorms into the convs (default) or keep them element-wise")
    a = ap.parse_args()
    main(quick=a.quick, seeds=tuple(a.seeds), hls=a.hls, da=a.da, smoke=a.smoke, cost_lambdas=tuple(a.cost_lambdas),
         batchnorm=a.batchnorm)
