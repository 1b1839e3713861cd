"""BiPer vs sign/STE binarization on the digits CNN (first and last layers int8, the rest binary).

Every variant starts from the same float initialization, uses the same policy (binary weights
with a per-output-channel po2 scale, binary activations, int8 input / first / last layer),
the same two-stage loop (``fpq.nn.biper.train_two_stage``: Adam, cosine decay, fresh optimizer
per stage) and the same epochs; only the weight binarizer differs:
  * BiPer: sign(sin(omega * w)), sine-surrogate gradient, stage 1 with sin(omega * w) weights,
    regularizer tau * mean(sin(omega * w)^2);
  * sign/STE (the baseline): sign(w), gradient where |w| <= 1 (BinaryConnect / XNOR-Net);
  * fpq STE: fpq's generic Binary quantizer, sign(w / s) * s with the gradient clipped to
    |w| <= s (the window follows the scale s = mean |w|, so large weights get no gradient).

    python examples/biper_digits.py [--quick] [--wide] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import fpq
from fpq.data import load_digits_split
from fpq.nn import biper

OMEGA = 32.0     # latent weights start in +-1/sqrt(fan_in) ~ +-0.06: omega * w within +-2
TAU = 1e-3
LR = 3e-3
EPOCHS = (5, 10)  # (stage 1, stage 2)
WIDE = ((32, 64, 64), (8, 12))  # --wide: channels, epochs
METHODS = ("fpq_ste", "sign_ste", "biper")


class BinaryDigitsCNN(nn.Module):
    """8x8 digits: conv(1->c1) int8 | conv(c1->c2) bin | pool | conv(c2->c3) bin | pool | fc int8."""

    def __init__(self, channels=(16, 32, 32)):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.pool1, self.pool2 = nn.MaxPool2d(2), nn.MaxPool2d(2)  # one module per call: one TypePlan layer each
        self.fc = nn.Linear(c3 * 2 * 2, 10)

    def forward(self, x):
        x = self.conv1(x)                  # its binary output quantizer is the sign activation
        x = self.pool1(self.conv2(x))      # 4x4
        x = self.pool2(self.conv3(x))      # 2x2
        return self.fc(torch.flatten(x, 1))


def convert(model: nn.Module, method: str):
    kw = dict(method="biper", omega=OMEGA) if method == "biper" else {}
    q = fpq.convert(model, fmt="binary", inputs="int8", granularity="channel",
                    overrides=biper.end_layer_overrides(model, "int8"), **kw)
    if method == "sign_ste":
        biper.to_sign_ste(q)
    return q


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def run_seed(data, seed: int, epochs: tuple, channels=(16, 32, 32)) -> dict:
    torch.manual_seed(seed)
    init = BinaryDigitsCNN(channels)
    calib = [x for x, _ in data.batches(256, train=True)]
    out = {}
    for method in METHODS:
        q = convert(init, method)
        fpq.calibrate(q, calib, progress=False)
        t0 = time.time()
        biper.train_two_stage(q, lambda ep: data.batches(64, train=True, shuffle=True, seed=seed * 1000 + ep),
                              epochs, lr=LR, tau=TAU if method == "biper" else 0.0, seed=seed)
        out[method] = accuracy(q, data.x_test, data.y_test)
        out[method + "_s"] = time.time() - t0
        out[method + "_model"] = q
    return out


def main(quick: bool = False, seeds=(0, 1, 2), verbose: bool = True, wide: bool = False) -> dict:
    torch.set_num_threads(1)
    data = load_digits_split(seed=0)
    channels, epochs = WIDE if wide else ((16, 32, 32), EPOCHS)
    epochs = (1, 1) if quick else epochs
    rows = {}
    for s in seeds:
        rows[s] = run_seed(data, s, epochs, channels)
        if verbose:
            r = rows[s]
            print(f"seed {s}: " + "  ".join(f"{LABELS[m]} {r[m]:.2f}% ({r[m + '_s']:.0f} s)" for m in METHODS),
                  flush=True)
    mean = {m: sum(rows[s][m] for s in seeds) / len(seeds) for m in METHODS}
    if verbose:
        print(table(rows, mean, epochs, channels))
    return {"seeds": rows, "mean": mean, "epochs": epochs, "channels": channels}


LABELS = {"fpq_ste": "fpq STE", "sign_ste": "sign/STE", "biper": "BiPer"}


def table(rows: dict, mean: dict, epochs: tuple, channels=(16, 32, 32)) -> str:
    head = f"{'seed':<6}" + "".join(f"{LABELS[m]:>10}" for m in METHODS)
    lines = [f"digits binary CNN {'-'.join(map(str, channels))} (int8 first/last layer), {epochs[0]}+{epochs[1]} "
             "epochs, test accuracy % (450 held-out images)", head, "-" * len(head)]
    for s, r in rows.items():
        lines.append(f"{s:<6}" + "".join(f"{r[m]:>10.2f}" for m in METHODS))
    lines.append(f"{'mean':<6}" + "".join(f"{mean[m]:>10.2f}" for m in METHODS))
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1+1 epochs (a smoke run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--wide", action="store_true", help="channels 32-64-64, 8+12 epochs (about 3x longer)")
    a = ap.parse_args()
    main(quick=a.quick, seeds=tuple(a.seeds), wide=a.wide)
